//! tcpdump's habits where they fit, on the built-in lab with the real binary: `-w -` streams the
//! capture to stdout (tshark reads it from a pipe, one interface per hook, while the flows go
//! to stderr), `-c N` stops after N sightings, `-r FILE` is `show FILE`; and the status line is
//! drawn on a terminal's stderr while tracing, erased at the end, and never written to a pipe.

use std::{
    collections::BTreeSet,
    process::{Command, Stdio},
    time::Duration,
};

use tracer::capture::testframes::TempDir;

use crate::{
    support::{kernel::KernelState, lab::TestLab, privileged, serial, BIN},
    tui::Tmux,
};

#[test]
fn habits_of_tcpdump_on_the_lab() {
    let _serial = serial();
    if !privileged("habits_of_tcpdump_on_the_lab") {
        return;
    }
    let lab = TestLab::up("th");
    let l = &lab.0;
    let before = KernelState::take(l);
    let traffic = lab.start_traffic();
    let wan = l.wan_addr.to_string();

    // `-w -` into tshark: every hook an interface, packets on each; flows and notes on stderr.
    let mut trace = Command::new(BIN)
        .args([
            "--netns",
            &l.ctr_netns,
            "--to",
            &wan,
            "--duration",
            "3",
            "-w",
            "-",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run pathtrace");
    let pipe = trace.stdout.take().expect("stdout");
    let tshark = Command::new("tshark")
        .args(["-r", "-", "-T", "fields", "-e", "frame.interface_name"])
        .stdin(pipe)
        .output()
        .expect("run tshark (apt-get install tshark)");
    let traced = trace.wait_with_output().expect("pathtrace ends");
    let stderr = String::from_utf8_lossy(&traced.stderr);
    assert!(traced.status.success(), "pathtrace -w -: {stderr}");
    assert!(
        tshark.status.success(),
        "tshark -r -: {}",
        String::from_utf8_lossy(&tshark.stderr)
    );
    let names: BTreeSet<String> = String::from_utf8_lossy(&tshark.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    eprintln!("tshark -r - saw packets on: {names:?}");
    let expected: BTreeSet<String> = [
        format!("{}:{}", l.ctr_netns, l.ctr_ifname),
        format!("host:{}", l.host_veth),
        format!("host:{}", l.bridge),
        format!("host:{}", l.uplink),
    ]
    .into();
    assert_eq!(names, expected, "one interface per hooked interface");
    assert!(
        stderr.contains("=> SNAT (MASQUERADE)"),
        "flows on stderr: {stderr}"
    );
    assert!(
        !stderr.contains("packet sightings"),
        "no status line on a piped stderr: {stderr}"
    );

    // `-c N`: stops after N sightings (each packet at each hook), well before --duration.
    let dir = TempDir::new("tcpdump-habits");
    let file = dir.path("c.pcapng");
    let started = std::time::Instant::now();
    let out = Command::new(BIN)
        .args([
            "--netns",
            &l.ctr_netns,
            "--to",
            &wan,
            "-c",
            "40",
            "--duration",
            "20",
        ])
        .arg("-w")
        .arg(&file)
        .output()
        .expect("run pathtrace -c");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "-c ended the trace"
    );
    // `-r FILE` prints what `show FILE` prints.
    let show = Command::new(BIN)
        .arg("show")
        .arg(&file)
        .output()
        .expect("show");
    let read = Command::new(BIN).arg("-r").arg(&file).output().expect("-r");
    assert!(
        read.status.success(),
        "{}",
        String::from_utf8_lossy(&read.stderr)
    );
    assert_eq!(read.stdout, show.stdout, "-r FILE is show FILE");
    let shown = String::from_utf8_lossy(&read.stdout);
    assert!(
        shown.contains("=> SNAT (MASQUERADE)") && shown.contains(" flows, "),
        "{shown}"
    );
    // `show --hook HOOK -w OUT`: one hook's packets, for Wireshark's TCP analysis.
    let one = dir.path("bridge.pcapng");
    let bridge = format!("host:{}", l.bridge);
    let out = Command::new(BIN)
        .arg("show")
        .arg(&file)
        .args(["--hook", &bridge, "-w"])
        .arg(&one)
        .output()
        .expect("show --hook");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fields = Command::new("tshark")
        .arg("-r")
        .arg(&one)
        .args(["-T", "fields", "-e", "frame.interface_name"])
        .output()
        .expect("tshark");
    let names: BTreeSet<String> = String::from_utf8_lossy(&fields.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(
        names,
        BTreeSet::from([bridge.clone()]),
        "only {bridge}'s packets"
    );
    let bad = Command::new(BIN)
        .arg("show")
        .arg(&file)
        .args(["--hook", "host:nosuch0", "-w"])
        .arg(dir.path("x.pcapng"))
        .output()
        .expect("show --hook bad");
    let err = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(2), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("no such hook") && err.contains(&bridge),
        "{err}"
    );
    before.assert_restored(l, "after -w - and -c");

    // On a terminal, the status line while tracing; gone when the trace ends.
    let tmux = Tmux::start(
        "status",
        &format!("{BIN} --netns {} --to {wan} --duration 4", l.ctr_netns),
    );
    let live = tmux.wait_for("status line", Duration::from_secs(20), |s| {
        s.contains("packet sightings")
    });
    eprintln!("status line while tracing:\n{live}");
    assert_eq!(tmux.exit_code(Duration::from_secs(20)), 0);
    let after = tmux.screen();
    assert!(
        !after.contains("packet sightings"),
        "erased at the end:\n{after}"
    );
    assert!(after.contains(" evicted"), "the final report:\n{after}");
    traffic.stop();
}
