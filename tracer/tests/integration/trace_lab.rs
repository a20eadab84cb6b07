//! End to end on the built-in lab, with the real binary: the hop paths and the MASQUERADE step
//! for ICMP, TCP and UDP, in both tc modes, and nothing of ours left attached after a normal
//! end, SIGINT or SIGTERM.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use tracer::lab::Lab;

use crate::support::{
    kernel::{held_by, KernelState},
    lab::TestLab,
    privileged, serial, BIN,
};

fn json_trace(lab: &Lab, mode: &str) -> Vec<Value> {
    let out = Command::new(BIN)
        .args([
            "--netns",
            &lab.ctr_netns,
            "--to",
            &lab.wan_addr.to_string(),
            "--json",
            "--duration",
            "4",
            "--tc-mode",
            mode,
        ])
        .output()
        .expect("run pathtrace");
    assert!(
        out.status.success(),
        "pathtrace failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    crate::support::lab::json_lines(&out.stdout)
}

fn check_flows(lab: &Lab, lines: &[Value], mode: &str) {
    let ctr = lab.ctr_addr.to_string();
    let up = lab.uplink_addr.to_string();
    let outbound = [
        format!("{}:{} egress", lab.ctr_netns, lab.ctr_ifname),
        format!("host:{} ingress", lab.host_veth),
        format!("host:{} ingress", lab.bridge),
        format!("host:{} egress", lab.uplink),
    ];
    let inbound = [
        format!("host:{} ingress", lab.uplink),
        format!("host:{} egress", lab.bridge),
        format!("host:{} egress", lab.host_veth),
        format!("{}:{} ingress", lab.ctr_netns, lab.ctr_ifname),
    ];
    let hops = |v: &Value, key: &str| -> Vec<String> {
        v[key]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|h| {
                        format!(
                            "{} {}",
                            h["hook"].as_str().unwrap_or(""),
                            h["dir"].as_str().unwrap_or("")
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    for proto in ["icmp", "tcp", "udp"] {
        // The flow seen at the most hooks, in its final state (a flow's last line). Flows in
        // flight while the hooks attach one by one at the start, or detach at the end, are
        // seen at only some of them; every flow in between crosses all eight.
        let flow = lines
            .iter()
            .filter(|v| {
                v["type"] == "flow" && v["proto"] == proto && v["packets_back"].as_u64() > Some(0)
            })
            // Of equals, max_by_key keeps the last: the final report's line.
            .max_by_key(|v| hops(v, "hops").len() + hops(v, "hops_back").len())
            .unwrap_or_else(|| panic!("[{mode}] no {proto} flow with replies in {lines:#?}"));
        assert_eq!(
            hops(flow, "hops"),
            outbound,
            "[{mode}] {proto} outbound hops"
        );
        assert_eq!(
            hops(flow, "hops_back"),
            inbound,
            "[{mode}] {proto} reply hops"
        );
        let nat = flow["nat"].as_array().expect("nat array");
        assert_eq!(nat.len(), 1, "[{mode}] {proto}: one NAT step: {nat:?}");
        let step = &nat[0];
        assert_eq!(step["kind"], "snat");
        assert!(
            step["before"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{ctr}:")),
            "[{mode}] {proto} before: {step}"
        );
        assert!(
            step["after"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{up}:")),
            "[{mode}] {proto} after: {step}"
        );
        assert_eq!(
            step["rule"],
            lab.masquerade_rule_text.as_str(),
            "[{mode}] {proto} rule"
        );
        assert_eq!(step["between"][0], format!("host:{}", lab.bridge));
        assert_eq!(step["between"][1], format!("host:{}", lab.uplink));
        assert_eq!(
            flow["src"].as_str().unwrap().split(':').next(),
            Some(ctr.as_str())
        );
    }
    let summary = lines.last().expect("summary");
    assert_eq!(summary["type"], "summary");
    let hooks = summary["hooks"].as_array().expect("hooks");
    assert_eq!(hooks.len(), 8, "[{mode}] 8 hooks");
    for h in hooks {
        let (seen, filtered, emitted, lost, aggregated) = (
            h["seen"].as_u64().unwrap(),
            h["filtered"].as_u64().unwrap(),
            h["emitted"].as_u64().unwrap(),
            h["lost"].as_u64().unwrap(),
            h["aggregated"].as_u64().unwrap(),
        );
        assert_eq!(
            seen,
            filtered + emitted + lost + aggregated,
            "[{mode}] counters add up: {h}"
        );
        assert!(emitted > 0, "[{mode}] {h}");
        assert_eq!(lost, 0, "[{mode}] {h}");
    }
}

#[test]
fn lab_paths_and_masquerade_in_both_tc_modes() {
    let _serial = serial();
    if !privileged("lab_paths_and_masquerade_in_both_tc_modes") {
        return;
    }
    let lab = TestLab::up("tp");
    let before = KernelState::take(&lab.0);
    let traffic = lab.start_traffic();
    for mode in ["tcx", "netlink"] {
        let lines = json_trace(&lab.0, mode);
        check_flows(&lab.0, &lines, mode);
        before.assert_restored(&lab.0, &format!("after a normal end ({mode})"));
    }
    let report = traffic.stop();
    assert!(report.rounds.tcp_exchanges_ok > 0);
}

#[test]
fn signals_detach_everything() {
    let _serial = serial();
    if !privileged("signals_detach_everything") {
        return;
    }
    let lab = TestLab::up("ts");
    let before = KernelState::take(&lab.0);
    for mode in ["tcx", "netlink"] {
        for (sig, name) in [
            (nix::sys::signal::SIGINT, "SIGINT"),
            (nix::sys::signal::SIGTERM, "SIGTERM"),
        ] {
            let mut child = Command::new(BIN)
                .args([
                    "--netns",
                    &lab.0.ctr_netns,
                    "--to",
                    &lab.0.wan_addr.to_string(),
                    "--tc-mode",
                    mode,
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn pathtrace");
            // Wait until it says it is tracing.
            let stdout = child.stdout.take().expect("stdout");
            let mut lines = BufReader::new(stdout).lines();
            let started = Instant::now();
            let first = lines.next().and_then(Result::ok).unwrap_or_default();
            assert!(
                first.starts_with("tracing 8 hooks"),
                "[{mode} {name}] unexpected first line {first:?}"
            );
            assert!(
                held_by(child.id()).programs.len() >= 8,
                "[{mode}] programs should be loaded while tracing"
            );
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig)
                .expect("kill");
            let status = child.wait().expect("wait");
            assert!(status.success(), "[{mode} {name}] exit status {status:?}");
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "[{mode} {name}] slow to stop"
            );
            before.assert_restored(&lab.0, &format!("after {name} ({mode})"));
        }
    }
}
