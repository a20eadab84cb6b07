//! Privileged: traffic already running while the hooks attach one after another (slowed down, as
//! on a loaded host or under emulation) and while they detach. Packets that crossed a hook
//! before it was attached are not losses: ping, the ground truth, got every reply, and no flow
//! may claim one; what pathtrace could not see is said as such.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use crate::support::{
    lab::{final_flows, json_lines, TestLab},
    privileged, serial, BIN,
};

/// Attaching each hook waits this long, so that 8 hooks take over a second.
const DELAY_MS: &str = "150";

#[test]
fn packets_crossing_while_hooks_attach_are_not_losses() {
    let _serial = serial();
    if !privileged("packets_crossing_while_hooks_attach_are_not_losses") {
        return;
    }
    let lab_guard = TestLab::up("ed");
    let lab = &lab_guard.0;
    for mode in ["netlink", "tcx"] {
        let wan = lab.wan_addr.to_string();
        // 100 echo requests a second, for longer than the trace: running before it attaches and
        // while it detaches.
        let ping = Command::new("ip")
            .args([
                "netns",
                "exec",
                &lab.ctr_netns,
                "ping",
                "-q",
                "-i",
                "0.01",
                "-w",
                "4",
                &wan,
            ])
            .stdout(Stdio::piped())
            .spawn()
            .expect("ping");
        std::thread::sleep(Duration::from_millis(300));
        let out = Command::new(BIN)
            .env("PATHTRACE_TEST_ATTACH_DELAY_MS", DELAY_MS)
            .args(["--netns", &lab.ctr_netns, "--to", &wan, "--tc-mode", mode])
            .args(["--json", "--duration", "1s"])
            .output()
            .expect("pathtrace");
        let ping = ping.wait_with_output().expect("ping ends");
        let ping_text = String::from_utf8_lossy(&ping.stdout);
        assert!(
            ping_text.contains(" 0% packet loss"),
            "{mode}: the ground truth itself lost packets, the test shows nothing:\n{ping_text}"
        );
        assert!(
            out.status.success(),
            "{mode}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let flows = final_flows(&json_lines(&out.stdout));
        let icmp: Vec<_> = flows.values().filter(|f| f["proto"] == "icmp").collect();
        assert!(!icmp.is_empty(), "{mode}: no ICMP flow seen");
        let stops: Vec<&serde_json::Value> = icmp
            .iter()
            .flat_map(|f| f["stops"].as_array().into_iter().flatten())
            .collect();
        let losses: Vec<_> = stops
            .iter()
            .filter(|s| s["cause"] == "not_seen" || s["cause"] == "dropped")
            .collect();
        assert!(
            losses.is_empty(),
            "{mode}: losses claimed that ping contradicts: {losses:?}"
        );
        // The scenario happened: packets crossed while hooks were attaching or detaching.
        let unseen: u64 = stops
            .iter()
            .filter(|s| s["cause"] == "not_attached")
            .map(|s| s["count"].as_u64().unwrap_or(0))
            .sum();
        let early = icmp.iter().any(|f| f["before_path_complete"] == true);
        eprintln!("{mode}: {unseen} packets not seen where a hook was not attached; flow marked as first seen while attaching: {early}");
        assert!(
            early,
            "{mode}: the ping flow began before the hooks were all attached, and is not marked so"
        );
        assert!(
            unseen > 0,
            "{mode}: no packet was said to cross an unattached hook"
        );
    }
}
