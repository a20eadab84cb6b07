use std::collections::HashSet;

use super::{
    iptables::{iptables_chain_names, split_words},
    model::{
        parse_nat_range, parse_port_range, BaseChain, Family, Hook, NatRange, Net, ParsedRule,
    },
    nft::{parse_nft_chain_header, parse_nft_ruleset},
    parse_iptables_save, NatRuleset, Sets, SOURCE_IP6TABLES_NFT, SOURCE_IPTABLES_LEGACY,
    SOURCE_IPTABLES_NFT,
};
use crate::model::{Endpoint, NatKind, NatQuery, NatRule, Proto, RuleAttributor};

/// `iptables -t nat -S` of a Docker host running one container (172.17.0.2) with `-p 8080:80`.
const DOCKER: &str = "\
-P PREROUTING ACCEPT
-P INPUT ACCEPT
-P OUTPUT ACCEPT
-P POSTROUTING ACCEPT
-N DOCKER
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER
-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE
-A POSTROUTING -s 172.17.0.2/32 -d 172.17.0.2/32 -p tcp -m tcp --dport 80 -j MASQUERADE
-A DOCKER -i docker0 -j RETURN
-A DOCKER ! -i docker0 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 172.17.0.2:80
";

/// `nft -a -s list ruleset` of a host with iptables-nft's Docker nat table, a filter table, and
/// a native nftables NAT table.
const NFT: &str = r#"table ip nat { # handle 1
	chain DOCKER { # handle 1
		iifname "docker0" counter return # handle 4
	}

	chain POSTROUTING { # handle 2
		type nat hook postrouting priority srcnat; policy accept;
		oifname != "docker0" ip saddr 172.17.0.0/16 counter masquerade # handle 3
	}
}
table ip filter { # handle 2
	chain FORWARD { # handle 6
		type filter hook forward priority filter; policy drop;
		oifname "docker0" ct state related,established counter accept # handle 14
	}
}
table inet lab { # handle 3
	set blocked { # handle 2
		type ipv4_addr
		elements = { 192.0.2.1, 192.0.2.2 }
	}

	chain post { # handle 4
		type nat hook postrouting priority srcnat + 5; policy accept;
		ip saddr 10.0.0.0/24 oifname != "br0" masquerade # handle 5
		oifname "eth1" meta l4proto { tcp, udp } snat ip to 203.0.113.10-203.0.113.20:20000-30000 comment "range" # handle 6
		ip saddr @blocked masquerade # handle 7
		ct state new masquerade # handle 8
	}

	chain pre { # handle 9
		type nat hook prerouting priority dstnat; policy accept;
		fib daddr type local jump published # handle 10
	}

	chain published { # handle 11
		iifname "br0" return # handle 12
		iifname != "docker0" tcp dport 8080 dnat ip to 172.17.0.2:80 # handle 13
		meta l4proto udp th dport { 53, 5353 } redirect to :5300 # handle 14
	}

	chain unused { # handle 15
		masquerade # handle 16
	}
}
"#;

fn ep(s: &str) -> Endpoint {
    let (a, p) = s.rsplit_once(':').expect("addr:port");
    Endpoint::new(
        a.trim_matches(['[', ']']).parse().expect("addr"),
        p.parse().expect("port"),
    )
}

fn snat<'a>(before: &str, after: &str, peer: &str, out: Option<&'a str>) -> NatQuery<'a> {
    NatQuery {
        kind: NatKind::Snat,
        proto: Proto::Tcp,
        before: ep(before),
        after: ep(after),
        peer: ep(peer),
        in_iface: None,
        out_iface: out,
    }
}

fn dnat<'a>(before: &str, after: &str, peer: &str, iif: Option<&'a str>) -> NatQuery<'a> {
    NatQuery {
        kind: NatKind::Dnat,
        proto: Proto::Tcp,
        before: ep(before),
        after: ep(after),
        peer: ep(peer),
        in_iface: iif,
        out_iface: None,
    }
}

fn docker() -> NatRuleset {
    NatRuleset::new(parse_iptables_save(
        SOURCE_IPTABLES_NFT,
        Family::Ip,
        DOCKER,
        &Sets::default(),
    ))
}

fn nft() -> NatRuleset {
    let mut sets = Sets::default();
    let rules = parse_nft_ruleset(NFT, &HashSet::new(), &mut sets);
    NatRuleset::with(rules, sets, Vec::new())
}

#[test]
fn docker_rules_parse_and_keep_their_text() {
    let rs = docker();
    let texts: Vec<_> = rs.rules().into_iter().map(|r| r.text).collect();
    assert_eq!(texts.len(), 6);
    assert_eq!(
        texts[2],
        "-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE"
    );
    assert!(rs.parsed().iter().all(ParsedRule::is_understood), "{rs:#?}");
    assert!(rs.rules().iter().all(|r| r.source == "iptables-nft"));
}

#[test]
fn docker_masquerade_is_attributed() {
    let rs = docker();
    let q = snat(
        "172.17.0.2:40000",
        "192.0.2.10:40000",
        "198.51.100.7:443",
        Some("eth0"),
    );
    assert_eq!(
        rs.rule_for(&q).as_deref(),
        Some("-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE")
    );
    // Unknown out interface: still the MASQUERADE rule.
    let q = snat(
        "172.17.0.2:40000",
        "192.0.2.10:1024",
        "198.51.100.7:443",
        None,
    );
    assert!(rs.rule_for(&q).is_some_and(|t| t.contains("MASQUERADE")));
}

#[test]
fn docker_hairpin_masquerade_is_attributed() {
    let q = snat(
        "172.17.0.2:40000",
        "172.17.0.1:40000",
        "172.17.0.2:80",
        Some("docker0"),
    );
    assert_eq!(
            docker().rule_for(&q).as_deref(),
            Some("-A POSTROUTING -s 172.17.0.2/32 -d 172.17.0.2/32 -p tcp -m tcp --dport 80 -j MASQUERADE")
        );
}

#[test]
fn docker_published_port_is_attributed() {
    let rule =
        "-A DOCKER ! -i docker0 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 172.17.0.2:80";
    let rs = docker();
    let q = dnat(
        "192.0.2.10:8080",
        "172.17.0.2:80",
        "198.51.100.7:50000",
        Some("eth0"),
    );
    assert_eq!(rs.rule_for(&q).as_deref(), Some(rule));
    // Locally generated (OUTPUT), interface unknown.
    let q = dnat("192.0.2.10:8080", "172.17.0.2:80", "192.0.2.10:50000", None);
    assert_eq!(rs.rule_for(&q).as_deref(), Some(rule));
}

#[test]
fn docker_negative_cases() {
    let rs = docker();
    // Leaving by docker0 itself: `! -o docker0` does not match, nor does the hairpin rule.
    let q = snat(
        "172.17.0.2:40000",
        "192.0.2.10:40000",
        "198.51.100.7:443",
        Some("docker0"),
    );
    assert_eq!(rs.rule_for(&q), None);
    // Another source subnet.
    let q = snat(
        "10.9.0.2:40000",
        "192.0.2.10:40000",
        "198.51.100.7:443",
        Some("eth0"),
    );
    assert_eq!(rs.rule_for(&q), None);
    // Coming in by docker0: DOCKER returns first.
    let q = dnat(
        "192.0.2.10:8080",
        "172.17.0.2:80",
        "172.17.0.3:5000",
        Some("docker0"),
    );
    assert_eq!(rs.rule_for(&q), None);
    // The rule maps to port 80, not 81; another port is not published; UDP is not published.
    let q = dnat(
        "192.0.2.10:8080",
        "172.17.0.2:81",
        "198.51.100.7:50000",
        Some("eth0"),
    );
    assert_eq!(rs.rule_for(&q), None);
    let q = dnat(
        "192.0.2.10:9090",
        "172.17.0.2:80",
        "198.51.100.7:50000",
        Some("eth0"),
    );
    assert_eq!(rs.rule_for(&q), None);
    let q = NatQuery {
        proto: Proto::Udp,
        ..dnat(
            "192.0.2.10:8080",
            "172.17.0.2:80",
            "198.51.100.7:5",
            Some("eth0"),
        )
    };
    assert_eq!(rs.rule_for(&q), None);
    // A v6 packet is not seen by an iptables (v4) table.
    let q = snat(
        "[fd00::2]:4000",
        "[fd00::1]:4000",
        "[fd01::7]:443",
        Some("eth0"),
    );
    assert_eq!(rs.rule_for(&q), None);
}

#[test]
fn lab_masquerade() {
    let rule = "-A POSTROUTING -s 10.200.1.0/24 ! -o pt-br0 -j MASQUERADE";
    let rs = NatRuleset::new(parse_iptables_save(
        SOURCE_IPTABLES_LEGACY,
        Family::Ip,
        rule,
        &Sets::default(),
    ));
    let q = snat(
        "10.200.1.2:33000",
        "10.200.0.1:33000",
        "10.200.9.9:80",
        Some("pt-up0"),
    );
    assert_eq!(rs.rule_for(&q).as_deref(), Some(rule));
    let icmp = NatQuery {
        proto: Proto::Icmp,
        ..snat(
            "10.200.1.2:7",
            "10.200.0.1:7",
            "10.200.9.9:0",
            Some("pt-up0"),
        )
    };
    assert_eq!(rs.rule_for(&icmp).as_deref(), Some(rule));
    let q = snat(
        "10.200.1.2:33000",
        "10.200.0.1:33000",
        "10.200.9.9:80",
        Some("pt-br0"),
    );
    assert_eq!(rs.rule_for(&q), None, "wrong out iface");
    let q = snat(
        "10.200.2.2:33000",
        "10.200.0.1:33000",
        "10.200.9.9:80",
        Some("pt-up0"),
    );
    assert_eq!(rs.rule_for(&q), None, "wrong source subnet");
}

#[test]
fn snat_range_must_hold_the_new_source() {
    let text =
        "-A POSTROUTING -o eth+ -p udp -j SNAT --to-source 203.0.113.1-203.0.113.4:1000-2000\n\
                    -A POSTROUTING -o eth+ -j SNAT --to-source 203.0.113.9";
    let rs = NatRuleset::new(parse_iptables_save(
        SOURCE_IPTABLES_NFT,
        Family::Ip,
        text,
        &Sets::default(),
    ));
    let udp = |after: &str| NatQuery {
        proto: Proto::Udp,
        ..snat("10.0.0.2:5000", after, "198.51.100.1:53", Some("eth3"))
    };
    assert!(rs
        .rule_for(&udp("203.0.113.3:1500"))
        .is_some_and(|t| t.contains("1000-2000")));
    // The first rule surely matched but would not give this address: nothing else ran.
    assert_eq!(rs.rule_for(&udp("203.0.113.9:1500")), None);
    assert_eq!(rs.rule_for(&udp("203.0.113.3:999")), None);
    let tcp = snat(
        "10.0.0.2:5000",
        "203.0.113.9:5000",
        "198.51.100.1:53",
        Some("eth3"),
    );
    assert!(rs
        .rule_for(&tcp)
        .is_some_and(|t| t.ends_with("203.0.113.9")));
}

#[test]
fn ip6tables_rules_apply_to_v6_only() {
    let text = "-A POSTROUTING -o eth0 -j MASQUERADE\n\
                    -A PREROUTING -d fd00::/64 -p tcp -j DNAT --to-destination [fd00::9]:80";
    let rs = NatRuleset::new(parse_iptables_save(
        SOURCE_IP6TABLES_NFT,
        Family::Ip6,
        text,
        &Sets::default(),
    ));
    let v4 = snat(
        "10.0.0.2:5000",
        "192.0.2.1:5000",
        "198.51.100.1:80",
        Some("eth0"),
    );
    assert_eq!(rs.rule_for(&v4), None);
    let v6 = snat(
        "[fd01::2]:5000",
        "[2001:db8::1]:5000",
        "[2001:db8:9::1]:80",
        Some("eth0"),
    );
    assert_eq!(
        rs.rule_for(&v6).as_deref(),
        Some("-A POSTROUTING -o eth0 -j MASQUERADE")
    );
    let d = dnat(
        "[fd00::5]:8080",
        "[fd00::9]:80",
        "[2001:db8:9::1]:4000",
        Some("eth0"),
    );
    assert!(rs.rule_for(&d).is_some_and(|t| t.contains("[fd00::9]:80")));
}

#[test]
fn nft_ruleset_parses_nat_chains_only() {
    let rs = nft();
    let texts: Vec<_> = rs
        .rules()
        .into_iter()
        .filter(|r| r.source == "nftables")
        .map(|r| r.text)
        .collect();
    assert!(texts.contains(
            &"table ip nat chain POSTROUTING: oifname != \"docker0\" ip saddr 172.17.0.0/16 counter masquerade # handle 3".to_string()
        ));
    assert!(texts.contains(
        &"table inet lab chain post: type nat hook postrouting priority srcnat + 5; policy accept;"
            .to_string()
    ));
    assert!(
        !texts.iter().any(|t| t.contains("chain FORWARD")),
        "filter chains are not NAT"
    );
    assert!(
        !texts.iter().any(|t| t.contains("chain unused")),
        "unreachable chain"
    );
    assert!(
        !texts.iter().any(|t| t.contains("192.0.2.1,")),
        "set elements are not rules"
    );
    // The named set is kept apart, for a replay to resolve `@blocked` the same way.
    let sets: Vec<_> = rs
        .rules()
        .into_iter()
        .filter(|r| r.source == "nftables-set")
        .map(|r| r.text)
        .collect();
    assert_eq!(sets, ["table inet lab set blocked: 192.0.2.1, 192.0.2.2"]);
}

#[test]
fn nft_attribution() {
    let rs = nft();
    // Docker's masquerade, as iptables-nft wrote it, runs first (priority 100 < 105).
    let q = snat(
        "172.17.0.2:40000",
        "192.0.2.10:40000",
        "198.51.100.7:443",
        Some("eth0"),
    );
    assert!(rs
        .rule_for(&q)
        .is_some_and(|t| t.starts_with("table ip nat chain POSTROUTING:")));
    let q = snat(
        "10.0.0.5:40000",
        "192.0.2.10:40000",
        "198.51.100.7:443",
        Some("eth0"),
    );
    assert_eq!(
            rs.rule_for(&q).as_deref(),
            Some("table inet lab chain post: ip saddr 10.0.0.0/24 oifname != \"br0\" masquerade # handle 5")
        );
    let q = snat(
        "10.1.0.5:40000",
        "203.0.113.15:25000",
        "198.51.100.7:443",
        Some("eth1"),
    );
    assert!(rs.rule_for(&q).is_some_and(|t| t.contains("# handle 6")));
    // Outside the snat range: handle 6 surely matches and would have made another rewrite.
    let q = snat(
        "10.1.0.5:40000",
        "203.0.113.99:25000",
        "198.51.100.7:443",
        Some("eth1"),
    );
    assert_eq!(rs.attribute(&q), None);
    // Handle 7's named set does not hold the source; handle 8's `ct state new` holds for every
    // packet NAT rules see (a connection's first).
    let q = snat(
        "10.0.0.5:40000",
        "192.0.2.10:40000",
        "198.51.100.7:443",
        Some("br0"),
    );
    assert!(rs.rule_for(&q).is_some_and(|t| t.contains("# handle 8")));
    // From the set: handle 7.
    let q = snat(
        "192.0.2.2:40000",
        "192.0.2.10:40000",
        "198.51.100.7:443",
        Some("br0"),
    );
    assert!(rs.rule_for(&q).is_some_and(|t| t.contains("# handle 7")));
    // Prerouting: jump into `published`.
    let q = dnat(
        "192.0.2.10:8080",
        "172.17.0.2:80",
        "198.51.100.7:50000",
        Some("eth0"),
    );
    assert!(rs.rule_for(&q).is_some_and(|t| t.contains("# handle 13")));
    let q = dnat(
        "192.0.2.10:8080",
        "172.17.0.2:80",
        "198.51.100.7:50000",
        Some("br0"),
    );
    assert_eq!(rs.rule_for(&q), None, "returned before the dnat");
    let q = NatQuery {
        proto: Proto::Udp,
        ..dnat(
            "192.0.2.10:5353",
            "192.0.2.10:5300",
            "198.51.100.7:50000",
            Some("eth0"),
        )
    };
    assert!(rs
        .rule_for(&q)
        .is_some_and(|t| t.contains("redirect to :5300")));
}

#[test]
fn iptables_nft_chains_are_not_listed_twice() {
    let managed: HashSet<(Family, String)> = iptables_chain_names(DOCKER)
        .map(|c| (Family::Ip, c.to_string()))
        .collect();
    let rules = parse_nft_ruleset(NFT, &managed, &mut Sets::default());
    assert!(rules.iter().all(|r| r.table != "nat"), "{rules:#?}");
    assert!(rules.iter().any(|r| r.table == "lab"));
    // An ip6 table named nat is another family: kept.
    let managed6: HashSet<_> = [(Family::Ip6, "POSTROUTING".to_string())].into();
    let rules = parse_nft_ruleset(NFT, &managed6, &mut Sets::default());
    assert!(rules.iter().any(|r| r.table == "nat"));
}

#[test]
fn from_rules_round_trips() {
    let mut sets = Sets::default();
    let mut parsed = parse_iptables_save(SOURCE_IPTABLES_NFT, Family::Ip, DOCKER, &sets);
    parsed.extend(parse_nft_ruleset(NFT, &HashSet::new(), &mut sets));
    let local = vec![std::net::IpAddr::from([192, 0, 2, 10])];
    let original = NatRuleset::with(parsed, sets, local);
    let replayed = NatRuleset::from_rules(&original.rules());
    assert_eq!(original.parsed(), replayed.parsed());
    let q = dnat(
        "192.0.2.10:8080",
        "172.17.0.2:80",
        "198.51.100.7:50000",
        Some("eth0"),
    );
    assert_eq!(original.rule_for(&q), replayed.rule_for(&q));
    assert!(replayed.rule_for(&q).is_some());
    // Unknown sources are kept but never match.
    let odd = NatRuleset::from_rules(&[NatRule {
        source: "pf".into(),
        text: "nat on em0 from 10.0.0.0/8 to any -> (em0)".into(),
    }]);
    assert_eq!(odd.rules().len(), 1);
    assert_eq!(odd.rule_for(&q), None);
}

#[test]
fn small_parsers() {
    assert_eq!(
        parse_nat_range("[fd00::1]-[fd00::5]:100-200"),
        Some(NatRange {
            addrs: Some(("fd00::1".parse().unwrap(), "fd00::5".parse().unwrap())),
            ports: Some((100, 200)),
        })
    );
    assert_eq!(
        parse_nat_range(":8080").map(|r| (r.addrs, r.ports)),
        Some((None, Some((8080, 8080))))
    );
    assert!(parse_nat_range("fd00::1").is_some_and(|r| r.ports.is_none()));
    assert!(
        Net::parse("10.1.0.0/255.0.255.0").is_some_and(|n| n.contains("10.9.0.7".parse().unwrap()))
    );
    assert!(Net::parse("10.1.0.0/255.255.0.0").is_some_and(|n| matches!(n, Net::Range { .. })));
    assert!(Net::parse("0.0.0.0/0").is_some_and(|n| n.contains("203.0.113.1".parse().unwrap())));
    assert_eq!(Net::parse("10.0.0.0/33"), None);
    assert_eq!(
        parse_nft_chain_header("type nat hook output priority -100; policy accept;"),
        Some(BaseChain {
            hook: Hook::Output,
            priority: -100
        })
    );
    assert_eq!(
        parse_nft_chain_header("type filter hook forward priority filter;"),
        None
    );
    assert_eq!(
        split_words(r#"-m comment --comment "a \"b\" c" -j X"#)[3],
        r#"a "b" c"#
    );
    assert_eq!(parse_port_range("1000:"), Some((1000, 65535)));
}

#[test]
fn garbage_never_panics() {
    const PIECES: &[&str] = &[
        "-A",
        "POSTROUTING",
        "!",
        "-s",
        "-d",
        "-o",
        "-i",
        "-p",
        "tcp",
        "-m",
        "--dport",
        "-j",
        "DNAT",
        "SNAT",
        "--to-source",
        "--to-destination",
        "MASQUERADE",
        "1.2.3.4:",
        "[::1]-",
        ":-",
        "10.0.0.0/99",
        "\"",
        "\\",
        "{",
        "}",
        "#",
        "ip",
        "saddr",
        "daddr",
        "!=",
        "snat",
        "dnat",
        "to",
        "masquerade",
        "jump",
        "goto",
        "table",
        "chain",
        "type",
        "nat",
        "hook",
        "priority",
        "srcnat",
        "+",
        ";",
        "counter",
        "packets",
        "th",
        "dport",
        "fib",
        "meta",
        "l4proto",
        "€",
        "",
        "65536",
        "0-",
        "ip6",
        "redirect",
        "NETMAP",
        "--to",
        "\n",
    ];
    // A fixed xorshift sequence: reproducible noise.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let queries = [
        snat("10.0.0.2:1", "1.2.3.4:2", "5.6.7.8:3", Some("eth0")),
        dnat("10.0.0.2:1", "1.2.3.4:2", "5.6.7.8:3", None),
        snat("[::1]:1", "[::2]:2", "[::3]:3", None),
    ];
    for _ in 0..2000 {
        let n = (next() % 24) as usize;
        let line: Vec<&str> = (0..n)
            .map(|_| PIECES[(next() % PIECES.len() as u64) as usize])
            .collect();
        let line = line.join(if next() % 3 == 0 { "" } else { " " });
        let mut rules =
            parse_iptables_save(SOURCE_IPTABLES_NFT, Family::Ip, &line, &Sets::default());
        rules.extend(parse_nft_ruleset(
            &format!("table ip t {{\nchain c {{\n{line}\n}}\n}}"),
            &HashSet::new(),
            &mut Sets::default(),
        ));
        rules.extend(parse_nft_ruleset(
            &line,
            &HashSet::new(),
            &mut Sets::default(),
        ));
        let rs = NatRuleset::new(rules);
        let back = NatRuleset::from_rules(&rs.rules());
        for q in &queries {
            // Only "does not panic" is asserted here.
            drop(rs.rule_for(q));
            drop(back.rule_for(q));
        }
    }
}

#[test]
fn jump_loops_end() {
    let text = "-A POSTROUTING -j A\n-A A -j B\n-A B -j A\n-A POSTROUTING -j MASQUERADE";
    let rs = NatRuleset::new(parse_iptables_save(
        SOURCE_IPTABLES_NFT,
        Family::Ip,
        text,
        &Sets::default(),
    ));
    let q = snat("10.0.0.2:1", "1.2.3.4:2", "5.6.7.8:3", Some("eth0"));
    assert_eq!(
        rs.rule_for(&q).as_deref(),
        Some("-A POSTROUTING -j MASQUERADE")
    );
}

/// `iptables -t nat -S -v` of a host that SNATs marked packets (a mangle rule sets the mark)
/// and masquerades the rest.
const MARKED: &str = "\
-P POSTROUTING ACCEPT -c 0 0
-A POSTROUTING -m mark --mark 0x1 -c 3 180 -j SNAT --to-source 10.77.2.9
-A POSTROUTING -s 10.77.1.0/24 ! -o br0 -c 7 420 -j MASQUERADE
";

#[test]
fn a_mark_match_makes_candidates_not_a_choice() {
    let rs = NatRuleset::new(parse_iptables_save(
        SOURCE_IPTABLES_NFT,
        Family::Ip,
        MARKED,
        &Sets::default(),
    ));
    // Counters are read, and kept out of the text.
    let counters: Vec<_> = rs
        .parsed()
        .iter()
        .map(|r| (r.text.as_str(), r.counter))
        .collect();
    assert_eq!(
        counters,
        [
            (
                "-A POSTROUTING -m mark --mark 0x1 -j SNAT --to-source 10.77.2.9",
                Some(3)
            ),
            (
                "-A POSTROUTING -s 10.77.1.0/24 ! -o br0 -j MASQUERADE",
                Some(7)
            )
        ]
    );
    // To the SNAT rule's address: it or the MASQUERADE (which may pick that address too).
    let q = snat(
        "10.77.1.2:40000",
        "10.77.2.9:40000",
        "10.99.0.1:53",
        Some("u1"),
    );
    let a = rs.attribute(&q).expect("an attribution");
    assert_eq!(a.rule, None);
    assert_eq!(a.confidence, crate::model::RuleConfidence::Candidates);
    assert_eq!(a.candidates.len(), 2, "{a:?}");
    assert!(a.candidates[0].contains("--mark 0x1"), "{a:?}");
    assert!(
        a.why
            .as_deref()
            .is_some_and(|w| w.contains("firewall mark")),
        "{a:?}"
    );
    // To another address the SNAT rule cannot give: the MASQUERADE, decided.
    let q = snat(
        "10.77.1.2:40000",
        "10.77.2.1:40000",
        "10.99.0.1:53",
        Some("u1"),
    );
    assert_eq!(
        rs.rule_for(&q).as_deref(),
        Some("-A POSTROUTING -s 10.77.1.0/24 ! -o br0 -j MASQUERADE")
    );
}

#[test]
fn named_sets_maps_ipsets_and_address_types_are_evaluated() {
    let text = "\
table ip labnat { # handle 3
	set labnets { # handle 1
		type ipv4_addr
		flags interval
		elements = { 10.9.9.9,
			     10.200.1.0/24 }
	}
	map portmap { # handle 2
		type inet_service : ipv4_addr
		elements = { 8080 : 10.0.0.2, 9090 : 10.0.0.3 }
	}
	chain post { # handle 3
		type nat hook postrouting priority srcnat; policy accept;
		ip saddr @labnets counter packets 12 bytes 720 masquerade # handle 5
		fib saddr type local masquerade # handle 6
	}
	chain pre { # handle 4
		type nat hook prerouting priority dstnat; policy accept;
		dnat to tcp dport map @portmap # handle 7
		ct state new dnat to udp dport map { 53 : 10.0.0.53 } # handle 8
	}
}
";
    let mut sets = Sets::default();
    let rules = parse_nft_ruleset(text, &HashSet::new(), &mut sets);
    let local = vec![std::net::IpAddr::from([10, 77, 2, 1])];
    let rs = NatRuleset::with(rules, sets, local);
    let masq = rs
        .parsed()
        .iter()
        .find(|r| r.text.contains("@labnets"))
        .expect("rule");
    assert_eq!(masq.counter, Some(12));
    assert_eq!(masq.text, "ip saddr @labnets counter masquerade # handle 5");
    let q = snat(
        "10.200.1.2:40000",
        "10.77.2.1:40000",
        "10.99.0.1:53",
        Some("u1"),
    );
    assert!(
        rs.rule_for(&q).is_some_and(|r| r.contains("@labnets")),
        "{:?}",
        rs.attribute(&q)
    );
    // Not in the set, not a local source: no rule.
    let q = snat(
        "10.201.1.2:40000",
        "10.77.2.1:40000",
        "10.99.0.1:53",
        Some("u1"),
    );
    assert_eq!(rs.attribute(&q), None);
    // The host's own source: `fib saddr type local`.
    let q = snat(
        "10.77.2.1:40000",
        "10.77.2.1:40001",
        "10.99.0.1:53",
        Some("u1"),
    );
    assert!(rs.rule_for(&q).is_some_and(|r| r.contains("handle 6")));
    // A map: the key picks the target.
    let q = dnat(
        "10.77.2.1:9090",
        "10.0.0.3:9090",
        "10.99.0.1:5000",
        Some("u1"),
    );
    assert!(rs.rule_for(&q).is_some_and(|r| r.contains("handle 7")));
    let q = dnat(
        "10.77.2.1:9090",
        "10.0.0.2:9090",
        "10.99.0.1:5000",
        Some("u1"),
    );
    assert_eq!(
        rs.attribute(&q),
        None,
        "9090 maps to 10.0.0.3, not 10.0.0.2"
    );
    // `ct state new` holds in NAT chains; the `tcp dport` map does not apply to UDP.
    let udp = NatQuery {
        proto: Proto::Udp,
        ..dnat("10.77.2.1:53", "10.0.0.53:53", "10.99.0.1:5000", Some("u1"))
    };
    assert!(rs.rule_for(&udp).is_some_and(|r| r.contains("handle 8")));
    // A replay resolves the set and map from the snapshot alone.
    let back = NatRuleset::from_rules(&rs.rules());
    let without_counters = |rs: &NatRuleset| -> Vec<ParsedRule> {
        let mut rules = rs.parsed().to_vec();
        rules.iter_mut().for_each(|r| r.counter = None);
        rules
    };
    assert_eq!(without_counters(&back), without_counters(&rs));
    // ipset: `-m set --match-set`.
    let mut ipsets = Sets::default();
    ipsets.read_ipset_save(
        "create labset hash:net family inet hashsize 1024 maxelem 65536\nadd labset 10.200.1.0/24\n",
    );
    let rs = NatRuleset::new(parse_iptables_save(
        SOURCE_IPTABLES_NFT,
        Family::Ip,
        "-A POSTROUTING -m set --match-set labset src -j MASQUERADE\n-A POSTROUTING -m set --match-set other src -j MASQUERADE\n",
        &ipsets,
    ));
    let q = snat(
        "10.200.1.2:40000",
        "10.77.2.1:40000",
        "10.99.0.1:53",
        Some("u1"),
    );
    assert!(rs.rule_for(&q).is_some_and(|r| r.contains("labset")));
    let q = snat(
        "10.201.1.2:40000",
        "10.77.2.1:40000",
        "10.99.0.1:53",
        Some("u1"),
    );
    let a = rs
        .attribute(&q)
        .expect("the unread set's rule is a candidate");
    assert!(a
        .why
        .is_some_and(|w| w.contains("ipset other could not be read")));
}
