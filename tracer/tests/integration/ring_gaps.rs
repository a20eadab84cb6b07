//! Issue #10, item 3: a gap the ring buffer made is never printed as a packet loss. A 4 KiB ring
//! under a UDP flood loses events; iperf3's receiver counts the datagrams that really arrived
//! (the ground truth). No flow may claim more lost packets than iperf3 lost, the events the ring
//! had no room for are said to be that, and one SNAT rewrite stays one step.

use std::time::Duration;

use crate::support::{
    kernel::{iperf_udp, pathtrace_programs, poll},
    lab::{json_lines, pathtrace, TestLab},
    privileged, serial,
};

#[test]
fn a_full_ring_buffer_is_never_shown_as_packet_loss() {
    let _serial = serial();
    if !privileged("a_full_ring_buffer_is_never_shown_as_packet_loss") {
        return;
    }
    let lab_guard = TestLab::up("rg");
    let lab = &lab_guard.0;
    let wan = lab.wan_addr.to_string();
    let port = "5202";
    let _server =
        crate::support::kernel::in_ns(&lab.wan_netns, &["iperf3", "-s", "-1", "-p", port]);
    let ns = lab.ctr_netns.clone();
    let args = [
        "--netns",
        &ns,
        "--to",
        &wan,
        "--ring-size",
        "4",
        // Event losses are what this checks: one event per packet per hook.
        "--every-packet",
        "--json",
        "--duration",
        "6",
    ]
    .map(str::to_string);
    let trace = std::thread::spawn(move || pathtrace(&args.each_ref().map(String::as_str)));
    assert!(
        poll(Duration::from_secs(10), || pathtrace_programs().len() >= 2),
        "pathtrace did not load its programs"
    );
    std::thread::sleep(Duration::from_millis(500));
    let totals = iperf_udp(&lab.ctr_netns, &wan, port, "5M", "2");
    let (sent, really_lost) = (totals.sent, totals.lost);
    let out = trace.join().expect("pathtrace thread");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = json_lines(&out.stdout);
    let summary = lines.last().expect("a summary line");
    let ring_lost: u64 = summary["hooks"]
        .as_array()
        .expect("hooks")
        .iter()
        .map(|h| h["lost"].as_u64().unwrap_or(0))
        .sum();
    eprintln!("iperf3: {sent} sent, {really_lost} lost; ring buffer: {ring_lost} events lost");
    assert!(
        ring_lost > 0,
        "a 4 KiB ring under {sent} datagrams in 2 s should lose events: {summary}"
    );
    let udp = crate::support::lab::final_flows(&lines)
        .into_values()
        .filter(|f| f["proto"] == "udp" && f["dst"] == format!("{wan}:{port}"))
        .max_by_key(|f| f["packets_out"].as_u64())
        .expect("the iperf3 UDP flow");
    let stops = udp["stops"].as_array().expect("stops");
    let count = |causes: &[&str]| -> u64 {
        stops
            .iter()
            .filter(|s| causes.contains(&s["cause"].as_str().unwrap_or("")))
            .map(|s| s["count"].as_u64().unwrap_or(0))
            .sum()
    };
    let claimed = count(&["dropped", "not_seen"]);
    let unseen = count(&["events_lost"]);
    eprintln!("flow claims {claimed} lost, {unseen} not seen (ring buffer): {stops:?}");
    assert!(
        claimed <= really_lost,
        "the flow claims {claimed} packets lost; iperf3's receiver lost {really_lost}: {udp}"
    );
    assert!(
        unseen > 0,
        "packets whose later events the ring dropped must be said to be unseen: {udp}"
    );
    for s in stops.iter().filter(|s| s["cause"] == "events_lost") {
        assert!(s["at"].is_string() && s["at_dir"].is_string(), "{s}");
    }
    let snat = udp["nat"]
        .as_array()
        .expect("nat")
        .iter()
        .filter(|n| n["kind"] == "snat")
        .count();
    assert_eq!(snat, 1, "one MASQUERADE, one step: {}", udp["nat"]);
}
