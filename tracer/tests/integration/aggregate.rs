//! Issue #13: the default mode counts in the kernel and sends events for a sample. Against
//! ground truth: iperf3's own count of the datagrams it sent, the kernel's per-hook counters
//! (`seen`, `filtered`) and an iptables rule's packet counter for a forced drop.
//!
//! A 10 s UDP flood through the lab, traced in the default mode: every hop of the flood's flow
//! counts exactly what iperf3 sent; the flows' per-hop counts add up to each hook's admitted
//! packets; the sampled packets were followed at every hop (the same number at each). Then a
//! host FORWARD rule drops a UDP port: the packets, sampled or not, are counted at the hop
//! they stopped after, with the kernel's reason, as many as the rule's counter says.

use std::{process::Command, time::Duration};

use crate::support::{
    kernel::{in_ns, iperf_udp, pathtrace_programs, poll},
    lab::{final_flows, json_lines, pathtrace, sh, TestLab},
    privileged, serial,
};

/// Runs pathtrace on the lab in the default mode for `secs` on a thread; returns once its
/// programs are loaded.
fn trace(lab: &tracer::lab::Lab, secs: &str) -> std::thread::JoinHandle<std::process::Output> {
    let args = [
        "--netns",
        &lab.ctr_netns,
        "--to",
        &lab.wan_addr.to_string(),
        "--json",
        "--duration",
        secs,
    ]
    .map(str::to_string);
    let handle = std::thread::spawn(move || pathtrace(&args.each_ref().map(String::as_str)));
    assert!(
        poll(Duration::from_secs(10), || pathtrace_programs().len() >= 2),
        "pathtrace did not load its programs"
    );
    std::thread::sleep(Duration::from_millis(700));
    handle
}

/// `(hook dir, packets, samples)` of each hop of a flow's leg.
fn hops(flow: &serde_json::Value, leg: &str) -> Vec<(String, u64, u64)> {
    let n = |h: &serde_json::Value, k: &str| h[k].as_u64().unwrap_or(0);
    flow[leg]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|h| {
                    let name = format!("{} {}", h["hook"].as_str().unwrap_or("?"), h["dir"]);
                    (name, n(h, "packets"), n(h, "samples"))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The flow to `dst` with the most packets out.
fn flow_to(lines: &[serde_json::Value], dst: &str) -> serde_json::Value {
    final_flows(lines)
        .into_values()
        .filter(|f| f["proto"] == "udp" && f["dst"] == dst)
        .max_by_key(|f| f["packets_out"].as_u64())
        .unwrap_or_else(|| panic!("no UDP flow to {dst}"))
}

#[test]
fn a_udp_flood_is_counted_exactly_at_every_hop_and_sampled_whole() {
    let _serial = serial();
    if !privileged("a_udp_flood_is_counted_exactly_at_every_hop_and_sampled_whole") {
        return;
    }
    let lab_guard = TestLab::up("ag");
    let lab = &lab_guard.0;
    let wan = lab.wan_addr.to_string();
    let port = "5203";
    let _server = in_ns(&lab.wan_netns, &["iperf3", "-s", "-1", "-p", port]);
    let tracer = trace(lab, "14");
    let sent = iperf_udp(&lab.ctr_netns, &wan, port, "0", "10").sent;
    let out = tracer.join().expect("pathtrace thread");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = json_lines(&out.stdout);
    let summary = lines.last().expect("a summary line");
    assert_eq!(summary["mode"], "aggregate", "{summary}");
    let flow = flow_to(&lines, &format!("{wan}:{port}"));
    assert_eq!(flow["counts"], "kernel", "{flow}");
    let out_hops = hops(&flow, "hops");
    eprintln!("iperf3 sent {sent} datagrams; the flow's hops: {out_hops:?}");
    assert_eq!(out_hops.len(), 4, "{flow}");
    assert!(sent > 100_000, "a 10 s flood: {sent} datagrams");
    // iperf3's count, and the 4-byte datagram its UDP test opens with on the same ports.
    let want = sent + 1;
    assert_eq!(
        out_hops[0].1, want,
        "the container's eth0 egress counts every datagram iperf3 sent"
    );
    // Where a later hop has fewer (the kernel may drop some on the way under a flood), the
    // difference is a stop, with the kernel's reason.
    let stops = flow["stops"].as_array().expect("stops");
    let stopped: u64 = stops.iter().map(|s| s["count"].as_u64().unwrap_or(0)).sum();
    for w in out_hops.windows(2) {
        assert!(w[1].1 <= w[0].1, "{out_hops:?}");
    }
    let last = out_hops.last().map_or(0, |h| h.1);
    assert_eq!(
        stopped,
        want - last,
        "the stops account for every packet a later hop lacks: {stops:?}"
    );
    // Sampled by fingerprint: the same packets at every hop, about 1 in 64 of them.
    let samples: Vec<u64> = out_hops.iter().map(|h| h.2).collect();
    assert!(
        samples
            .windows(2)
            .all(|w| w[1] <= w[0] && w[0] - w[1] <= stopped),
        "a sampled packet is followed at every hop it reaches: {samples:?}"
    );
    let (lo, hi) = (sent / 64 / 2, sent / 64 * 2 + 16);
    assert!(
        (lo..=hi).contains(&samples[0]),
        "{} samples of {sent} at 1/64",
        samples[0]
    );
    // Every packet each hook admitted is in some flow's count at that hop.
    let hooks = summary["hooks"].as_array().expect("hooks");
    let flows = final_flows(&lines);
    let mut aggregated = 0;
    for h in hooks {
        let n = |k: &str| h[k].as_u64().unwrap_or(0);
        let (name, dir) = (h["hook"].as_str().unwrap_or("?"), h["dir"].clone());
        assert_eq!(
            n("seen"),
            n("filtered") + n("emitted") + n("lost") + n("aggregated"),
            "{h}"
        );
        assert_eq!(n("lost"), 0, "{h}");
        aggregated += n("aggregated");
        let in_flows: u64 = flows
            .values()
            .flat_map(|f| {
                ["hops", "hops_back"]
                    .iter()
                    .filter_map(|k| f[*k].as_array())
                    .flatten()
                    .filter(|hop| hop["hook"] == name && hop["dir"] == dir)
                    .map(|hop| hop["packets"].as_u64().unwrap_or(0))
                    .collect::<Vec<_>>()
            })
            .sum();
        assert_eq!(
            in_flows,
            n("seen") - n("filtered"),
            "{name} {dir}: the flows' counts against the kernel's"
        );
    }
    assert!(
        aggregated > sent,
        "most packets were only counted, not sent as events: {aggregated}"
    );
    assert!(summary.get("unattributed_packets").is_none(), "{summary}");
}

/// An iptables rule in the host's FORWARD chain, removed when dropped.
struct ForwardDrop(Vec<String>);

impl ForwardDrop {
    fn insert(bridge: &str, port: &str) -> Self {
        // The 64-byte datagrams (92 bytes of IP), not iperf3's 4-byte hello, without which its
        // test does not start.
        let rule: Vec<String> = [
            "-i", bridge, "-p", "udp", "--dport", port, "-m", "length", "--length", "80:65535",
            "-j", "DROP",
        ]
        .map(str::to_string)
        .to_vec();
        let mut args = vec!["-I".to_string(), "FORWARD".to_string()];
        args.extend(rule.iter().cloned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        sh("iptables", &args);
        Self(rule)
    }

    /// The rule's packet counter.
    fn packets(&self) -> u64 {
        let listing = sh("iptables", &["-L", "FORWARD", "-v", "-x", "-n"]);
        let port = self.0[5].clone();
        listing
            .lines()
            .find(|l| l.contains("DROP") && l.contains(&format!("dpt:{port}")))
            .and_then(|l| l.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("no counter for the rule: {listing}"))
    }
}

impl Drop for ForwardDrop {
    fn drop(&mut self) {
        let mut args = vec!["-D".to_string(), "FORWARD".to_string()];
        args.extend(self.0.iter().cloned());
        let out = Command::new("iptables").args(&args).output();
        if !out.is_ok_and(|o| o.status.success()) {
            eprintln!("could not remove iptables -I FORWARD {}", self.0.join(" "));
        }
    }
}

#[test]
fn dropped_packets_are_counted_at_their_hop_whether_sampled_or_not() {
    let _serial = serial();
    if !privileged("dropped_packets_are_counted_at_their_hop_whether_sampled_or_not") {
        return;
    }
    let lab_guard = TestLab::up("ad");
    let lab = &lab_guard.0;
    let wan = lab.wan_addr.to_string();
    let port = "5204";
    let _server = in_ns(&lab.wan_netns, &["iperf3", "-s", "-1", "-p", port]);
    let rule = ForwardDrop::insert(&lab.bridge, port);
    let tracer = trace(lab, "6");
    let sent = iperf_udp(&lab.ctr_netns, &wan, port, "2M", "2").sent;
    let out = tracer.join().expect("pathtrace thread");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dropped = rule.packets();
    drop(rule);
    let lines = json_lines(&out.stdout);
    let flow = flow_to(&lines, &format!("{wan}:{port}"));
    let out_hops = hops(&flow, "hops");
    eprintln!(
        "iperf3 sent {sent}; the rule dropped {dropped}; hops {out_hops:?}; stops {}",
        flow["stops"]
    );
    assert!(sent > 1_000, "{sent}");
    assert_eq!(dropped, sent, "the rule takes every datagram but the hello");
    // Up to the bridge every datagram and the hello; beyond it the hello only.
    let at = |name: &str| out_hops.iter().find(|h| h.0.contains(name)).map(|h| h.1);
    assert_eq!(at("eth0"), Some(sent + 1), "{out_hops:?}");
    assert_eq!(at(&lab.bridge), Some(sent + 1), "{out_hops:?}");
    assert_eq!(at(&lab.uplink), Some(1), "{out_hops:?}");
    let stops = flow["stops"].as_array().expect("stops");
    assert_eq!(stops.len(), 1, "{stops:?}");
    let stop = &stops[0];
    assert_eq!(stop["count"].as_u64(), Some(dropped), "{stop}");
    assert_eq!(stop["cause"], "dropped", "{stop}");
    assert_eq!(stop["reason"], "NETFILTER_DROP", "{stop}");
    assert_eq!(
        stop["after"],
        format!("host:{}", lab.bridge),
        "stopped after the bridge's ingress: {stop}"
    );
    // Most of them were never sent as events: the drops were found by their tuple.
    let samples = out_hops
        .iter()
        .find(|h| h.0.contains(&lab.bridge))
        .map_or(0, |h| h.2);
    assert!(samples * 4 < sent, "{samples} samples of {sent}");
}
