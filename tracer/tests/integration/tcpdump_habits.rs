//! tcpdump's habits where they fit, on the built-in lab with the real binary: `-w -` streams the
//! capture to stdout (tshark reads it from a pipe, one interface per hook, while the flows go
//! to stderr), `-c N` stops after N sightings, `-r FILE` is `show FILE`; and the status line is
//! drawn on a terminal's stderr while tracing, erased at the end, and never written to a pipe.

use std::{
    collections::BTreeSet,
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use tracer::{capture::testframes::TempDir, lab::Lab};

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
    // The kernel's drop reports have an interface of their own (when there were any).
    let names: BTreeSet<String> = String::from_utf8_lossy(&tshark.stdout)
        .lines()
        .filter(|n| *n != "pathtrace:drops")
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
    // With the drop reports of the packets written, if any.
    let names: BTreeSet<String> = String::from_utf8_lossy(&fields.stdout)
        .lines()
        .filter(|n| *n != "pathtrace:drops")
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

/// A FORWARD rule dropping UDP to one port from the lab's bridge; removed on drop.
pub(crate) struct DropRule(Vec<String>);

impl DropRule {
    pub(crate) fn insert(bridge: &str, port: &str) -> Self {
        let rule: Vec<String> = ["-i", bridge, "-p", "udp", "--dport", port, "-j", "DROP"]
            .map(str::to_string)
            .to_vec();
        let status = Command::new("iptables")
            .args(["-I", "FORWARD"])
            .args(&rule)
            .status()
            .expect("iptables");
        assert!(status.success(), "iptables -I FORWARD {rule:?}");
        Self(rule)
    }

    fn packets(&self) -> u64 {
        let out = Command::new("iptables")
            .args(["-L", "FORWARD", "-v", "-x", "-n"])
            .output()
            .expect("iptables -L");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find(|l| l.contains("DROP") && l.contains(&format!("dpt:{}", self.0[5])))
            .and_then(|l| l.split_whitespace().next()?.parse().ok())
            .expect("the rule's counter")
    }
}

impl Drop for DropRule {
    fn drop(&mut self) {
        let ok = Command::new("iptables")
            .args(["-D", "FORWARD"])
            .args(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("could not remove iptables -I FORWARD {}", self.0.join(" "));
        }
    }
}

/// A 4-second trace of the lab written to `file` (stdout and stderr piped), once attached, with
/// three UDP datagrams of one socket sent to `port` meanwhile (which a [`DropRule`] drops).
pub(crate) fn capture_with_drops(l: &Lab, port: &str, file: &Path) -> Child {
    let trace = Command::new(BIN)
        .args(["--netns", &l.ctr_netns, "--to", &l.wan_addr.to_string()])
        .args(["--duration", "4", "-w"])
        .arg(file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run pathtrace");
    assert!(
        crate::support::kernel::wait_attached(trace.id(), 8, Duration::from_secs(20)),
        "pathtrace attached its 8 hooks"
    );
    // One socket: one flow of three datagrams.
    let send = format!(
        "exec 3>/dev/udp/{}/{port}; for i in 1 2 3; do echo x >&3; sleep 0.1; done",
        l.wan_addr
    );
    let sent = Command::new("ip")
        .args(["netns", "exec", &l.ctr_netns, "bash", "-c", &send])
        .status()
        .expect("send");
    assert!(sent.success());
    trace
}

#[test]
fn a_capture_keeps_the_kernels_drop_reasons() {
    let _serial = serial();
    if !privileged("a_capture_keeps_the_kernels_drop_reasons") {
        return;
    }
    let lab = TestLab::up("tr");
    let l = &lab.0;
    let port = "5299";
    let rule = DropRule::insert(&l.bridge, port);
    let dir = TempDir::new("capture-drops");
    let file = dir.path("drops.pcapng");
    let live = capture_with_drops(l, port, &file)
        .wait_with_output()
        .expect("pathtrace ends");
    let live_text = String::from_utf8_lossy(&live.stdout);
    assert!(
        live.status.success(),
        "{}",
        String::from_utf8_lossy(&live.stderr)
    );
    let dropped = rule.packets();
    drop(rule);
    assert_eq!(dropped, 3, "the rule took the three datagrams");
    let expected = format!(
        "lost: 3 after host:{} ingress (reason: NETFILTER_DROP)",
        l.bridge
    );
    assert!(live_text.contains(&expected), "live:\n{live_text}");
    // Replayed from the file, the same stop with the same reason.
    let show = Command::new(BIN)
        .arg("show")
        .arg(&file)
        .output()
        .expect("show");
    let shown = String::from_utf8_lossy(&show.stdout);
    assert!(
        show.status.success(),
        "{}",
        String::from_utf8_lossy(&show.stderr)
    );
    eprintln!("show of the capture:\n{shown}");
    assert!(
        shown.contains(&expected),
        "show prints the reason:\n{shown}"
    );
    // Wireshark's reader: the drops interface, each report's comment.
    let tshark = Command::new("tshark")
        .arg("-r")
        .arg(&file)
        .args(["-Y", "frame.interface_name == \"pathtrace:drops\""])
        .args(["-T", "fields", "-e", "frame.comment"])
        .output()
        .expect("tshark");
    let comments = String::from_utf8_lossy(&tshark.stdout);
    assert!(
        tshark.status.success(),
        "{}",
        String::from_utf8_lossy(&tshark.stderr)
    );
    let reports: Vec<&str> = comments.lines().filter(|c| !c.is_empty()).collect();
    assert_eq!(reports.len(), 3, "{comments}");
    for r in reports {
        assert!(r.starts_with("kernel drop NETFILTER_DROP fp="), "{r}");
        assert!(r.contains(&format!(":{port}")), "{r}");
    }
}
