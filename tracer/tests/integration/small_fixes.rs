//! Issue #10, item 9: the smaller ways pathtrace misled or broke. Closed pipes, colour codes in
//! redirected logs, a capture another tool wrote, a bare IPv6 `ADDR:PORT`, `/proc/PID/ns/net`
//! labels, a shared namespace's veth owner, `--max-flows 0`, `lab down` without a name, and the
//! subcommands' `--help`.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::Value;
use tracer::lab::Lab;

use crate::support::{
    docker::TestContainer,
    docker_or_skip,
    lab::{json_lines, pathtrace, sh, TestLab},
    privileged, serial, BIN,
};

/// `sh -c CMD` with `BIN` in `$PT`: (exit status of the whole pipeline's first command, stderr).
fn pipeline(cmd: &str) -> (Option<i32>, String) {
    let out = Command::new("bash")
        .args(["-c", &format!("{cmd}; exit ${{PIPESTATUS[0]}}")])
        .env("PT", BIN)
        .stdout(Stdio::null())
        .output()
        .expect("bash");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn closed_pipes_plain_logs_foreign_captures_and_labels() {
    let _serial = serial();
    if !privileged("closed_pipes_plain_logs_foreign_captures_and_labels") {
        return;
    }
    let lab_guard = TestLab::up("sf");
    let lab = &lab_guard.0;
    let wan = lab.wan_addr.to_string();
    let dir = std::env::temp_dir().join(format!("pathtrace-small-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let capture = dir.join("ours.pcapng");
    let ping = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.ctr_netns,
            "ping",
            "-c",
            "30",
            "-i",
            "0.05",
            &wan,
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("ping");
    let out = pathtrace(&[
        "--netns",
        &lab.ctr_netns,
        "--to",
        &wan,
        "--duration",
        "2",
        "-w",
        capture.to_str().unwrap_or(""),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Closed pipes: no panic (exit 101), no abort, twenty times over (it was 2 in 6 when the
    // log library reported its own failed write to the closed stderr with a panicking print).
    for _ in 0..20 {
        let (code, err) = pipeline(&format!("$PT inspect --netns {} | head -1", lab.ctr_netns));
        assert_eq!(code, Some(0), "inspect | head -1: {err}");
        let (code, err) = pipeline(&format!("$PT show {} 2>&1 | head -3", capture.display()));
        assert_eq!(code, Some(0), "show | head -3: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    // A live trace into a closed pipe warns on stderr (its log): no colour codes in a file.
    let log = dir.join("stderr.log");
    let (code, _) = pipeline(&format!(
        "$PT --netns {} --to {wan} --duration 1.5 2>{} | head -1",
        lab.ctr_netns,
        log.display()
    ));
    assert_eq!(code, Some(0));
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(logged.contains("WARN"), "a warning was logged: {logged:?}");
    assert!(
        !logged.contains('\u{1b}'),
        "no ANSI codes in a redirected log: {logged:?}"
    );
    drop(ping);

    // A capture tcpdump wrote (converted to pcapng): said so, counted per interface, no flows.
    let pcap = dir.join("tcpdump.pcap");
    let foreign = dir.join("tcpdump.pcapng");
    let mut dump = Command::new("tcpdump")
        .args([
            "-n",
            "-i",
            &lab.host_veth,
            "-w",
            pcap.to_str().unwrap_or(""),
            "icmp",
        ])
        .stderr(Stdio::null())
        .spawn()
        .expect("tcpdump");
    std::thread::sleep(Duration::from_millis(800));
    sh(
        "ip",
        &[
            "netns",
            "exec",
            &lab.ctr_netns,
            "ping",
            "-c",
            "3",
            "-i",
            "0.2",
            &wan,
        ],
    );
    std::thread::sleep(Duration::from_millis(300));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(dump.id() as i32),
        nix::sys::signal::SIGINT,
    )
    .ok();
    dump.wait().ok();
    sh(
        "editcap",
        &[
            "-F",
            "pcapng",
            pcap.to_str().unwrap_or(""),
            foreign.to_str().unwrap_or(""),
        ],
    );
    let packets = sh("tcpdump", &["-n", "-r", pcap.to_str().unwrap_or("")])
        .lines()
        .count() as u64;
    let shown = pathtrace(&["show", foreign.to_str().unwrap_or(""), "--json"]);
    let err = String::from_utf8_lossy(&shown.stderr);
    assert!(err.contains("was not written by pathtrace"), "{err}");
    let lines = json_lines(&shown.stdout);
    assert!(
        lines.iter().all(|l| l["type"] != "flow"),
        "no flows from a foreign file: {lines:?}"
    );
    let summary = lines.last().expect("summary");
    let counted: u64 = summary["hooks"]
        .as_array()
        .map(|h| h.iter().filter_map(|h| h["emitted"].as_u64()).sum())
        .unwrap_or(0);
    assert_eq!(
        counted, packets,
        "packets per interface, as tcpdump -r counts them"
    );

    // `/proc/PID/ns/net`: hooks named after the process, not `net`.
    let mut sleeper = Command::new("ip")
        .args(["netns", "exec", &lab.ctr_netns, "sleep", "30"])
        .spawn()
        .expect("sleep in the lab");
    std::thread::sleep(Duration::from_millis(300));
    let proc_ns = format!("/proc/{}/ns/net", sleeper.id());
    let label = format!("sleep-{}:eth0", sleeper.id());
    let traced = pathtrace(&["--netns", &proc_ns, "--to", &wan, "--duration", "1"]);
    let first = String::from_utf8_lossy(&traced.stdout)
        .lines()
        .next()
        .unwrap_or("")
        .to_string();
    assert!(first.contains(&format!("{label} egress")), "{first}");
    let inspected = pathtrace(&["inspect", "--netns", &proc_ns, "--json"]);
    let v = json_lines(&inspected.stdout);
    assert_eq!(v[0]["name"], format!("sleep-{}", sleeper.id()), "{v:?}");
    sleeper.kill().ok();
    sleeper.wait().ok();

    // Bad input: one line, exit 2.
    for (args, want) in [
        (
            vec!["--netns", lab.ctr_netns.as_str(), "--max-flows", "0"],
            "--max-flows 0",
        ),
        (
            vec!["verify", "--netns", "no-such-ns", "--to", "fd00::1:443"],
            "write [fd00::1]:443",
        ),
    ] {
        let out = pathtrace(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn lab_down_without_a_name_takes_only_the_last_lab() {
    let _serial = serial();
    if !privileged("lab_down_without_a_name_takes_only_the_last_lab") {
        return;
    }
    let first = TestLab::up("la");
    let second_guard = TestLab::up("lb");
    let second = &second_guard.0;
    let out = pathtrace(&["lab", "down"]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stdout.trim(), format!("lab {} removed", second.name));
    assert!(
        stderr.contains("other labs are still up") && stderr.contains(&first.0.name),
        "{stderr}"
    );
    let names: Vec<String> = Lab::list()
        .expect("labs")
        .into_iter()
        .map(|l| l.name)
        .collect();
    assert!(
        names.contains(&first.0.name) && !names.contains(&second.name),
        "{names:?}"
    );
    // The last one made is gone now: without a name, nothing is taken down.
    let again = pathtrace(&["lab", "down"]);
    let err = String::from_utf8_lossy(&again.stderr);
    assert_eq!(again.status.code(), Some(2), "{err}");
    assert!(err.contains("name the one to take down"), "{err}");
    assert!(Lab::list()
        .expect("labs")
        .iter()
        .any(|l| l.name == first.0.name));
}

#[test]
fn a_shared_namespace_veth_is_named_after_its_owner() {
    let _serial = serial();
    let test = "a_shared_namespace_veth_is_named_after_its_owner";
    if !(docker_or_skip(test) && privileged(test)) {
        return;
    }
    let owner = TestContainer::run("pt-owner", &[], &["sleep", "3600"]).expect("owner");
    let sharer = TestContainer::run(
        "pt-sharer",
        &["--network", &format!("container:{}", owner.name)],
        &["sleep", "3600"],
    )
    .expect("sharer");
    let out = pathtrace(&["inspect", "--json"]);
    let reports = json_lines(&out.stdout);
    let report = |name: &str| -> Value {
        reports
            .iter()
            .find(|r| r["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no report of {name}: {reports:?}"))
    };
    let veth = report(&owner.name)["interfaces"][0]["host_veth"]["name"].clone();
    for r in [report(&owner.name), report(&sharer.name)] {
        let ports = r["interfaces"][0]["bridge"]["ports"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let port = ports.iter().find(|p| p["name"] == veth);
        // Its own veth is not listed among the other ports; where it is, it is the owner's.
        if let Some(p) = port {
            assert_eq!(p["container"], owner.name.as_str(), "{r}");
        }
    }
    // Another container on docker0 lists the veth as the owner's, never the sharer's.
    let other = TestContainer::run("pt-other", &[], &["sleep", "3600"]).expect("other");
    let out = pathtrace(&["inspect", "--container", &other.name, "--json"]);
    let r = json_lines(&out.stdout);
    let ports = r[0]["interfaces"][0]["bridge"]["ports"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let port = ports
        .iter()
        .find(|p| p["name"] == veth)
        .cloned()
        .unwrap_or_default();
    assert_eq!(port["container"], owner.name.as_str(), "{ports:?}");
}

#[test]
fn every_subcommand_help_has_examples_and_no_empty_option() {
    for cmd in [
        vec!["verify"],
        vec!["diff"],
        vec!["show"],
        vec!["cleanup"],
        vec!["inspect"],
        vec!["lab"],
    ] {
        let mut args = cmd.clone();
        args.push("--help");
        let out = pathtrace(&args);
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(help.contains("Example"), "{cmd:?} --help: {help}");
        let lines: Vec<&str> = help.lines().collect();
        for (i, l) in lines.iter().enumerate() {
            let t = l.trim_start();
            let option = t.starts_with('-') && !t.starts_with("- ") && !t.contains("Print help");
            let described = t.split("  ").filter(|s| !s.trim().is_empty()).count() > 1
                || lines.get(i + 1).is_some_and(|n| !n.trim().is_empty());
            assert!(
                !option || described,
                "{cmd:?}: option without a description: {l}"
            );
        }
    }
}
