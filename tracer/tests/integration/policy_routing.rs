//! Issue #10, item 1: traffic leaves by the interface the kernel forwards it out of, policy rules
//! (by source, by firewall mark) included, and where that is an interface pathtrace does not
//! watch it says so, with the route. A namespace plays the host (`support::hostns`): uplink u1
//! holds the main table's default route, u2 a second table's, u3 only a prefix route
//! (10.98.0.0/24). The ground truth is tcpdump on each uplink.

use serde_json::Value;

use crate::support::{
    hostns::{HostNs, Tcpdump},
    lab::json_lines,
    privileged, serial,
};

const REMOTE: &str = "10.99.0.1";
const BEHIND_U3: &str = "10.98.0.1";

/// The host namespace with three uplinks; `rules` completes the policy routing.
fn topology(prefix: &str) -> HostNs {
    let mut ns = HostNs::new(prefix);
    let t = ns.tag.clone();
    ns.uplink(1, &[REMOTE]);
    ns.uplink(2, &[REMOTE]);
    ns.uplink(3, &[BEHIND_U3]);
    ns.ip(&format!("route add default via 10.77.2.2 dev {t}u1"));
    ns.ip(&format!("route add 10.98.0.0/24 via 10.77.4.2 dev {t}u3"));
    ns.ip(&format!(
        "route add default via 10.77.3.2 dev {t}u2 table 100"
    ));
    ns.ip(&format!(
        "route add 10.98.0.0/24 via 10.77.4.2 dev {t}u3 table 100"
    ));
    ns
}

fn trace(ns: &HostNs, args: &[&str], secs: &str, traffic: impl FnOnce()) -> Vec<Value> {
    ns.trace(args, secs, traffic)
}

/// The final state of the outbound flow of `proto` to `dst`.
fn flow_to<'a>(lines: &'a [Value], proto: &str, dst: &str) -> &'a Value {
    lines
        .iter()
        .rev()
        .find(|l| {
            l["type"] == "flow"
                && l["proto"] == proto
                && l["origin"] == "outbound"
                && l["dst"]
                    .as_str()
                    .is_some_and(|d| d.starts_with(&format!("{dst}:")))
        })
        .unwrap_or_else(|| panic!("no {proto} flow to {dst} in {lines:?}"))
}

fn last_hop(flow: &Value) -> String {
    let hops = flow["hops"].as_array().expect("hops");
    let h = hops.last().expect("a hop");
    format!(
        "{} {}",
        h["hook"].as_str().unwrap_or(""),
        h["dir"].as_str().unwrap_or("")
    )
}

fn ping(ns: &HostNs, dst: &str) {
    ns.in_ctr(&["ping", "-c", "2", "-i", "0.2", "-W", "1", dst]);
}

/// Echo requests to `dst` tcpdump printed.
fn requests(lines: &[String], dst: &str) -> usize {
    lines
        .iter()
        .filter(|l| l.contains(&format!("> {dst}: ICMP echo request")))
        .count()
}

#[test]
fn a_source_rule_sends_traffic_out_of_the_second_uplink() {
    let _serial = serial();
    if !privileged("a_source_rule_sends_traffic_out_of_the_second_uplink") {
        return;
    }
    let ns = topology("ps");
    let t = ns.tag.clone();
    ns.ip("rule add from 10.77.1.0/24 lookup 100 pref 100");
    let host = ns.host_ns();
    let dumps: Vec<Tcpdump> = (1..=3)
        .map(|i| Tcpdump::start(&host, &format!("{t}u{i}"), "icmp"))
        .collect();
    // No --to: every default route a rule can send the container's traffic to is hooked.
    let lines = trace(&ns, &[], "4", || {
        ping(&ns, REMOTE);
        ping(&ns, BEHIND_U3);
    });
    let seen: Vec<Vec<String>> = dumps.into_iter().map(Tcpdump::stop).collect();
    let counts: Vec<[usize; 2]> = seen
        .iter()
        .map(|s| [requests(s, REMOTE), requests(s, BEHIND_U3)])
        .collect();
    eprintln!("echo requests per uplink (to {REMOTE}, to {BEHIND_U3}): {counts:?}");
    assert_eq!(
        counts,
        [[0, 0], [2, 0], [0, 2]],
        "ground truth: the rule sends both out of u2 and u3"
    );

    let remote = flow_to(&lines, "icmp", REMOTE);
    assert_eq!(last_hop(remote), format!("host:{t}u2 egress"), "{remote}");
    assert_eq!(
        remote["nat"][0]["after"]
            .as_str()
            .map(|a| a.starts_with("10.77.3.1:")),
        Some(true),
        "{remote}"
    );
    assert_eq!(remote["stops"], Value::Array(Vec::new()), "{remote}");
    assert!(
        seen[1].iter().any(|l| l.contains("10.77.3.1 > 10.99.0.1")),
        "tcpdump on u2 saw the SNAT address"
    );

    // u3 is on no default route: not hooked, and the flow says it left by it.
    let behind = flow_to(&lines, "icmp", BEHIND_U3);
    let stops = behind["stops"].as_array().expect("stops");
    assert_eq!(stops.len(), 1, "{behind}");
    assert_eq!(stops[0]["cause"], "untraced_exit", "{behind}");
    assert_eq!(stops[0]["via"], format!("{t}u3"), "{behind}");
    assert_eq!(stops[0]["after"], format!("host:{t}br"), "{behind}");
    let route = stops[0]["route"].as_str().unwrap_or("");
    assert!(route.contains(&format!("dev {t}u3 table 100")), "{route}");

    // --uplink u3: now it is seen leaving by it, and nothing is said to be missing.
    let u3 = format!("{t}u3");
    let lines = trace(&ns, &["--uplink", &u3], "3", || ping(&ns, BEHIND_U3));
    let behind = flow_to(&lines, "icmp", BEHIND_U3);
    assert_eq!(last_hop(behind), format!("host:{t}u3 egress"), "{behind}");
    assert_eq!(behind["stops"], Value::Array(Vec::new()), "{behind}");

    // verify tells the two uplinks apart.
    for (via, code) in [(format!("{t}u2"), 0), (format!("{t}u1"), 1)] {
        let ctr = ns.ctr_ns();
        let out = ns.pathtrace(&[
            "verify",
            "--netns",
            &ctr,
            "--to",
            REMOTE,
            "--expect-via",
            &via,
            "--json",
        ]);
        let v = json_lines(&out.stdout);
        assert_eq!(out.status.code(), Some(code), "--expect-via {via}: {v:?}");
        let check = v[0]["checks"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["name"] == "via"))
            .cloned()
            .unwrap_or_default();
        assert_eq!(
            check["observed"],
            format!("leaves by host:{t}u2"),
            "{check}"
        );
    }
}

#[test]
fn a_mark_rule_splits_one_destination_over_two_uplinks() {
    let _serial = serial();
    if !privileged("a_mark_rule_splits_one_destination_over_two_uplinks") {
        return;
    }
    let ns = topology("pm");
    let t = ns.tag.clone();
    ns.mark_udp(5353, "0x7");
    ns.ip("rule add fwmark 0x7 lookup 100 pref 100");
    let host = ns.host_ns();
    let dumps: Vec<Tcpdump> = (1..=2)
        .map(|i| Tcpdump::start(&host, &format!("{t}u{i}"), "icmp or udp port 5353"))
        .collect();
    // With --to, the route the kernel gives the container's packets, and the one it would give
    // them marked: both uplinks.
    let lines = trace(&ns, &["--to", REMOTE], "3", || {
        ping(&ns, REMOTE);
        ns.in_ctr(&["bash", "-c", &format!("echo x > /dev/udp/{REMOTE}/5353")]);
    });
    let seen: Vec<Vec<String>> = dumps.into_iter().map(Tcpdump::stop).collect();
    let udp = |s: &[String]| {
        s.iter()
            .filter(|l| l.contains(&format!("> {REMOTE}.5353:")))
            .count()
    };
    let counts: Vec<[usize; 2]> = seen.iter().map(|s| [requests(s, REMOTE), udp(s)]).collect();
    eprintln!("per uplink (echo requests, UDP datagrams): {counts:?}");
    assert_eq!(
        counts,
        [[2, 0], [0, 1]],
        "ground truth: ICMP out of u1, the marked UDP out of u2"
    );
    let icmp = flow_to(&lines, "icmp", REMOTE);
    assert_eq!(last_hop(icmp), format!("host:{t}u1 egress"), "{icmp}");
    let udp = flow_to(&lines, "udp", REMOTE);
    assert_eq!(last_hop(udp), format!("host:{t}u2 egress"), "{udp}");
    assert_eq!(udp["stops"], Value::Array(Vec::new()), "{udp}");
    assert_eq!(
        udp["nat"][0]["after"]
            .as_str()
            .map(|a| a.starts_with("10.77.3.1:")),
        Some(true),
        "{udp}"
    );
}
