//! Issue #10, item 4: NAT is credited to the rule that did it, or to candidates with the reason
//! pathtrace cannot choose, and the rule counters that moved during the trace decide where they
//! can. A namespace plays the host (`support::hostns`); the ground truth is the rules' own
//! counters (`iptables -v`, nft `counter`) and conntrack.

use std::time::Duration;

use serde_json::Value;

use crate::support::{hostns::HostNs, lab::json_lines, privileged, serial};

const REMOTE: &str = "10.99.0.1";

/// The host namespace with one uplink (u1, 10.77.2.1) to the remote.
fn topology(prefix: &str) -> HostNs {
    let mut ns = HostNs::new(prefix);
    let t = ns.tag.clone();
    ns.uplink(1, &[REMOTE]);
    ns.ip(&format!("route add default via 10.77.2.2 dev {t}u1"));
    ns
}

/// Traces the container toward the remote for `secs` while `traffic` runs; the JSON lines.
fn trace(ns: &HostNs, secs: &str, traffic: impl FnOnce()) -> Vec<Value> {
    ns.trace(&["--to", REMOTE], secs, traffic)
}

/// The final SNAT step of every outbound flow of `proto`.
fn snat_steps(lines: &[Value], proto: &str) -> Vec<Value> {
    crate::support::lab::final_flows(lines)
        .into_values()
        .filter(|f| f["proto"] == proto && f["origin"] == "outbound")
        .filter_map(|f| {
            f["nat"]
                .as_array()?
                .iter()
                .find(|n| n["kind"] == "snat")
                .cloned()
        })
        .collect()
}

/// `iptables -t nat -L POSTROUTING -v -x -n`: (packets, target) per rule.
fn postrouting_counters(ns: &HostNs) -> Vec<(u64, String)> {
    let text = ns.host(&[
        "iptables",
        "-t",
        "nat",
        "-L",
        "POSTROUTING",
        "-v",
        "-x",
        "-n",
    ]);
    text.lines()
        .skip(2)
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            Some((w.first()?.parse().ok()?, w.get(2)?.to_string()))
        })
        .collect()
}

fn udp_datagrams(ns: &HostNs, n: usize) {
    for _ in 0..n {
        ns.in_ctr(&["bash", "-c", &format!("echo x > /dev/udp/{REMOTE}/5353")]);
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_mark_based_snat_is_chosen_by_its_counter_not_credited_to_masquerade() {
    let _serial = serial();
    if !privileged("a_mark_based_snat_is_chosen_by_its_counter_not_credited_to_masquerade") {
        return;
    }
    let ns = topology("nm");
    ns.mark_udp(5353, "0x1");
    // To the very address MASQUERADE would pick: the rewrite alone cannot tell them apart.
    ns.host(&[
        "iptables",
        "-t",
        "nat",
        "-I",
        "POSTROUTING",
        "1",
        "-m",
        "mark",
        "--mark",
        "0x1",
        "-j",
        "SNAT",
        "--to-source",
        "10.77.2.1",
    ]);
    let lines = trace(&ns, "5", || {
        udp_datagrams(&ns, 3);
        // Well after the datagrams' counters were read: the ping's interval is its own.
        std::thread::sleep(Duration::from_millis(1500));
        ns.in_ctr(&["ping", "-c", "2", "-i", "0.2", "-W", "1", REMOTE]);
    });
    let counters = postrouting_counters(&ns);
    eprintln!("iptables -t nat -L POSTROUTING -v: {counters:?}");
    assert_eq!(
        counters,
        [(3, "SNAT".to_string()), (1, "MASQUERADE".to_string())],
        "ground truth: the mark rule NATed the 3 datagrams, MASQUERADE the ping"
    );
    let ct = ns.host(&["conntrack", "-L", "-p", "udp"]);
    assert!(
        ct.contains("dport=5353") && ct.contains("dst=10.77.2.1"),
        "{ct}"
    );

    let udp = snat_steps(&lines, "udp");
    assert_eq!(udp.len(), 3, "{lines:?}");
    for step in &udp {
        assert_eq!(step["rule_confidence"], "counters", "{step}");
        assert!(
            step["rule"]
                .as_str()
                .is_some_and(|r| r.contains("--mark 0x1")),
            "{step}"
        );
        assert_eq!(
            step["candidates"].as_array().map(Vec::len),
            Some(2),
            "{step}"
        );
        assert!(
            step["why"]
                .as_str()
                .is_some_and(|w| w.contains("firewall mark")),
            "{step}"
        );
    }
    let icmp = snat_steps(&lines, "icmp");
    assert_eq!(icmp.len(), 1, "{lines:?}");
    assert_eq!(icmp[0]["rule_confidence"], "counters", "{}", icmp[0]);
    assert!(
        icmp[0]["rule"]
            .as_str()
            .is_some_and(|r| r.contains("MASQUERADE")),
        "{}",
        icmp[0]
    );
}

#[test]
fn nft_named_sets_and_ipsets_are_evaluated() {
    let _serial = serial();
    if !privileged("nft_named_sets_and_ipsets_are_evaluated") {
        return;
    }
    let ns = topology("nn");
    // Only nftables NAT: the iptables MASQUERADE of the topology goes.
    ns.host(&["iptables", "-t", "nat", "-F", "POSTROUTING"]);
    // The container (10.77.1.2) but not the bridge's own address: the host's IGMP reports from
    // 10.77.1.1 pass the nat hook too, which would make the counter's ground truth two connections.
    let ruleset = "table ip labnat {
  set labnets { type ipv4_addr; flags interval; elements = { 10.9.9.0/24, 10.77.1.2/31 } }
  chain post { type nat hook postrouting priority srcnat; ip saddr @labnets counter masquerade; }
}
";
    let file = std::env::temp_dir().join(format!("pathtrace-nft-{}.nft", ns.tag));
    std::fs::write(&file, ruleset).expect("write nft ruleset");
    ns.host(&["nft", "-f", file.to_str().unwrap_or("")]);
    std::fs::remove_file(&file).ok();
    let ping = || {
        ns.in_ctr(&["ping", "-c", "2", "-i", "0.2", "-W", "1", REMOTE]);
    };
    let lines = trace(&ns, "3", ping);
    let counter = ns.host(&["nft", "list", "chain", "ip", "labnat", "post"]);
    assert!(
        counter.contains("counter packets 1 "),
        "ground truth: one connection: {counter}"
    );
    let steps = snat_steps(&lines, "icmp");
    assert_eq!(steps.len(), 1, "{lines:?}");
    assert_eq!(steps[0]["rule_confidence"], "evaluated", "{}", steps[0]);
    assert!(
        steps[0]["rule"]
            .as_str()
            .is_some_and(|r| r
                .starts_with("table ip labnat chain post: ip saddr @labnets counter masquerade")),
        "{}",
        steps[0]
    );
    // inspect names the same rule.
    let ctr = ns.ctr_ns();
    let out = ns.pathtrace(&["inspect", "--netns", &ctr, "--json"]);
    let v = json_lines(&out.stdout);
    let rules = v[0]["nat_rules"].as_array().cloned().unwrap_or_default();
    assert!(
        rules
            .iter()
            .any(|r| r["text"].as_str().is_some_and(|t| t.contains("@labnets"))),
        "{v:?}"
    );

    // ipset: `-m set --match-set`.
    ns.host(&["nft", "delete", "table", "ip", "labnat"]);
    ns.host(&["ipset", "create", &format!("{}set", ns.tag), "hash:net"]);
    ns.host(&["ipset", "add", &format!("{}set", ns.tag), "10.77.1.0/24"]);
    ns.host(&[
        "iptables",
        "-t",
        "nat",
        "-A",
        "POSTROUTING",
        "-m",
        "set",
        "--match-set",
        &format!("{}set", ns.tag),
        "src",
        "-j",
        "MASQUERADE",
    ]);
    ns.host(&["conntrack", "-F"]);
    let lines = trace(&ns, "3", ping);
    let counters = postrouting_counters(&ns);
    assert_eq!(counters, [(1, "MASQUERADE".to_string())], "ground truth");
    let steps = snat_steps(&lines, "icmp");
    assert_eq!(steps.len(), 1, "{lines:?}");
    assert_eq!(steps[0]["rule_confidence"], "evaluated", "{}", steps[0]);
    assert!(
        steps[0]["rule"]
            .as_str()
            .is_some_and(|r| r.contains("--match-set")),
        "{}",
        steps[0]
    );
    // The netns goes, and its ipset with it (ipsets are per network namespace).
}
