//! Capture, replay, verify and diff on the built-in lab, with the real binary and real tshark:
//! the capture opens in tshark with one interface per hook and the per-hook counts pathtrace
//! itself reports; `show --json` reproduces the live flows; `verify` passes with the lab's
//! MASQUERADE and fails (exit 1, saying why) without it; `diff` names the NAT change.

use std::collections::BTreeMap;

use tracer::lab::traffic;

use crate::support::{
    lab::{final_flows, json_lines, our_programs_settled, pathtrace, sh, TestLab},
    privileged, serial,
};

fn tmp(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("pathtrace-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    dir.join(name)
}

/// Removes the lab's MASQUERADE rule for the guard's lifetime (restored on drop, also on panic).
struct NoMasquerade(String);

impl NoMasquerade {
    fn new(rule: &str) -> Self {
        let mut args: Vec<String> = rule.split_whitespace().map(str::to_string).collect();
        args[0] = "-D".into();
        let mut full = vec!["-t".to_string(), "nat".to_string()];
        full.extend(args);
        sh(
            "iptables",
            &full.iter().map(String::as_str).collect::<Vec<_>>(),
        );
        Self(rule.to_string())
    }
}

impl Drop for NoMasquerade {
    fn drop(&mut self) {
        let mut args = vec!["-t", "nat"];
        args.extend(self.0.split_whitespace());
        if let Err(e) = std::process::Command::new("iptables").args(&args).status() {
            eprintln!("restoring {}: {e}", self.0);
        }
    }
}

#[test]
fn capture_opens_in_tshark_and_replays_to_the_live_flows() {
    let _serial = serial();
    if !privileged("capture_opens_in_tshark_and_replays_to_the_live_flows") {
        return;
    }
    let lab = TestLab::up("c");
    let traffic = lab.start_traffic();
    let file = tmp("live.pcapng");
    let wan = lab.0.wan_addr.to_string();
    let live = pathtrace(&[
        "--netns",
        &lab.0.ctr_netns,
        "--to",
        &wan,
        "--json",
        "--duration",
        "3",
        "-w",
        file.to_str().unwrap(),
    ]);
    traffic.stop();
    assert!(
        live.status.success(),
        "{}",
        String::from_utf8_lossy(&live.stderr)
    );
    let live_lines = json_lines(&live.stdout);

    // tshark: one interface per hook, named by its label, with pathtrace's own emitted counts.
    let names = sh(
        "tshark",
        &[
            "-r",
            file.to_str().unwrap(),
            "-T",
            "fields",
            "-e",
            "frame.interface_name",
        ],
    );
    let mut per_iface: BTreeMap<String, u64> = BTreeMap::new();
    // The kernel's drop reports have an interface of their own (when there were any).
    for name in names.lines().filter(|n| *n != "pathtrace:drops") {
        *per_iface.entry(name.to_string()).or_default() += 1;
    }
    let summary = live_lines.last().expect("summary");
    let mut emitted: BTreeMap<String, u64> = BTreeMap::new();
    for h in summary["hooks"].as_array().expect("hooks") {
        *emitted
            .entry(h["hook"].as_str().unwrap().to_string())
            .or_default() += h["emitted"].as_u64().unwrap();
    }
    assert_eq!(
        per_iface.len(),
        4,
        "one interface name per hooked interface: {per_iface:?}"
    );
    assert_eq!(
        per_iface, emitted,
        "tshark's per-interface packets vs pathtrace's per-hook emitted"
    );
    let ifaces = sh(
        "tshark",
        &[
            "-r",
            file.to_str().unwrap(),
            "-T",
            "fields",
            "-e",
            "frame.interface_description",
        ],
    );
    assert!(
        ifaces.lines().all(|l| l.contains("pathtrace slot")
            || l.starts_with("pathtrace: the kernel's drop reports")),
        "interface descriptions: {ifaces}"
    );

    // Replay: the same flows as the live run's final state.
    let shown = pathtrace(&["show", file.to_str().unwrap(), "--json"]);
    assert!(
        shown.status.success(),
        "{}",
        String::from_utf8_lossy(&shown.stderr)
    );
    let replayed = final_flows(&json_lines(&shown.stdout));
    let live_final = final_flows(&live_lines);
    assert!(!live_final.is_empty());
    assert_eq!(
        replayed, live_final,
        "show --json differs from the live run"
    );
    assert_eq!(our_programs_settled(), Vec::<String>::new());
}

#[test]
fn verify_passes_then_fails_without_masquerade_and_diff_names_it() {
    let _serial = serial();
    if !privileged("verify_passes_then_fails_without_masquerade_and_diff_names_it") {
        return;
    }
    let lab = TestLab::up("v");
    let wan_ns = lab.0.wan_ns().expect("wan ns");
    let server = traffic::tcp_server(&wan_ns, 0).expect("server");
    let to = format!("{}:{}", lab.0.wan_addr, server.local_addr().port());
    let up = lab.0.uplink_addr.to_string();
    let (before, after) = (tmp("before.pcapng"), tmp("after.pcapng"));
    let capture = |file: &std::path::Path| {
        let ctr = lab.0.ctr_ns().expect("ctr ns");
        let wan = lab.0.wan_addr.into();
        let pinger = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(800));
            traffic::icmp_echo(&ctr, wan, 3, std::time::Duration::from_millis(200))
        });
        let out = pathtrace(&[
            "--netns",
            &lab.0.ctr_netns,
            "--to",
            &lab.0.wan_addr.to_string(),
            "--duration",
            "2.5",
            "-w",
            file.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The capture is under test, not the pings: their own outcome does not matter here.
        drop(pinger.join().expect("the pinger thread"));
    };

    let pass = pathtrace(&[
        "verify",
        "--netns",
        &lab.0.ctr_netns,
        "--to",
        &to,
        "--expect-snat",
        &up,
        "--expect-via",
        &lab.0.uplink,
    ]);
    let text = String::from_utf8_lossy(&pass.stdout);
    assert_eq!(pass.status.code(), Some(0), "verify should pass:\n{text}");
    assert!(text.starts_with("PASS"), "{text}");
    assert!(text.contains(&lab.0.masquerade_rule_text), "{text}");
    capture(&before);

    {
        let _gone = NoMasquerade::new(&lab.0.masquerade_rule_text);
        let fail = pathtrace(&[
            "verify",
            "--netns",
            &lab.0.ctr_netns,
            "--to",
            &to,
            "--expect-snat",
            &up,
            "--json",
        ]);
        assert_eq!(
            fail.status.code(),
            Some(1),
            "verify should fail: {}",
            String::from_utf8_lossy(&fail.stdout)
        );
        let v: serde_json::Value = serde_json::from_slice(&fail.stdout).expect("verify JSON");
        crate::support::schema::check(&v);
        assert_eq!(v["result"], "fail");
        let snat = v["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "snat")
            .expect("snat check");
        assert_eq!(snat["ok"], false);
        assert_eq!(snat["observed"], "no SNAT");
        assert!(
            v["flow"]["nat"].as_array().unwrap().is_empty(),
            "no NAT step without the rule: {}",
            v["flow"]
        );
        capture(&after);
    }

    let diff = pathtrace(&["diff", before.to_str().unwrap(), after.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&diff.stdout);
    assert_eq!(
        diff.status.code(),
        Some(1),
        "diff should report a change:\n{text}"
    );
    assert!(text.contains("nat changed"), "{text}");
    assert!(text.contains(&format!("SNAT to {up}")), "{text}");
    let same = pathtrace(&["diff", before.to_str().unwrap(), before.to_str().unwrap()]);
    assert_eq!(
        same.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&same.stdout)
    );
    drop(server);
    assert_eq!(our_programs_settled(), Vec::<String>::new());
}
