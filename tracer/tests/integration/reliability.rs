//! Reliability of the real binary on the built-in lab: it leaves nothing behind on any way out
//! (normal end, SIGINT, SIGTERM, SIGKILL + `pathtrace cleanup`), it coexists with other tc
//! programs and with a second pathtrace on the same hooks, the traced path delivers data intact,
//! bad input fails with one line and exit code 2, and under load it stops at once and counts
//! what it lost.

use std::{
    net::{SocketAddr, TcpListener},
    os::unix::process::ExitStatusExt as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use nix::sys::signal::Signal::{self, SIGINT, SIGKILL, SIGTERM};
use serde_json::Value;
use tracer::{
    attach::TcMode,
    lab::{
        traffic::{icmp_echo, tcp_exchange, tcp_server},
        Lab,
    },
};

use crate::support::{
    kernel::{
        held_by, in_ns, pathtrace_programs, poll, receive, send, summary_rows, tc_state,
        wait_until_alone, Foreign, KernelState, RouteGuard, Running,
    },
    lab::TestLab,
    privileged, serial, BIN,
};

fn trace_args<'a>(lab: &'a Lab, wan: &'a str, mode: &'a str) -> Vec<&'a str> {
    vec!["--netns", &lab.ctr_netns, "--to", wan, "--tc-mode", mode]
}

// ---------------------------------------------------------------------------------------------
// 1. Leave no trace
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    Duration,
    Signal(Signal),
}

#[test]
fn leaves_no_trace_on_any_exit() {
    let _serial = serial();
    if !privileged("leaves_no_trace_on_any_exit") {
        return;
    }
    let lab_guard = TestLab::up("rn");
    let lab = &lab_guard.0;
    let traffic = lab_guard.start_traffic();
    let before = KernelState::take(lab);
    for mode in ["tcx", "netlink"] {
        for end in [
            End::Duration,
            End::Signal(SIGINT),
            End::Signal(SIGTERM),
            End::Signal(SIGKILL),
        ] {
            end_one(lab, mode, end, &before);
        }
    }
    assert!(traffic.stop().rounds.tcp_exchanges_ok > 0);
}

fn end_one(lab: &Lab, mode: &str, end: End, before: &KernelState) {
    let what = format!("[{mode} {end:?}]");
    let wan = lab.wan_addr.to_string();
    let mut args = trace_args(lab, &wan, mode);
    if end == End::Duration {
        args.extend(["--duration", "2"]);
    }
    let mut run = Running::start(&args);
    let held = held_by(run.pid());
    assert!(held.programs.len() >= 8, "{what} programs held: {held:?}");
    if mode == "tcx" {
        assert!(held.links.len() >= 8, "{what} TCX links held: {held:?}");
    }
    if let End::Signal(sig) = end {
        run.signal(sig);
    }
    let done = run.wait();
    if end == End::Signal(SIGKILL) {
        assert_eq!(done.status.signal(), Some(9), "{what} {done:?}");
    } else {
        assert!(done.status.success(), "{what} exit: {done:?}");
    }
    if end == End::Signal(SIGKILL) && mode == "netlink" {
        // cls_bpf filters outlive the process; `pathtrace cleanup` removes them.
        assert!(
            tc_state(lab).contains("pathtrace_h"),
            "{what} filters should remain after SIGKILL:\n{}",
            tc_state(lab)
        );
        run_cleanup(&what);
    }
    let gone = poll(Duration::from_secs(3), || {
        let loaded = pathtrace_programs();
        !loaded.iter().any(|(id, _)| held.programs.contains(id))
    });
    assert!(
        gone,
        "{what} programs of the ended pathtrace still loaded: held {:?}, loaded {:?}",
        held.programs,
        pathtrace_programs()
    );
    let links_left: Vec<u32> = aya::programs::loaded_links()
        .filter_map(Result::ok)
        .map(|l| l.id())
        .filter(|id| held.links.contains(id))
        .collect();
    assert!(links_left.is_empty(), "{what} links left: {links_left:?}");
    before.assert_restored(lab, &format!("{what} state differs from before"));
}

/// `pathtrace cleanup` (never `--force`: it would remove other people's hooks on this shared
/// machine). It refuses while another pathtrace runs, so wait for them first.
fn run_cleanup(what: &str) {
    if !wait_until_alone(Duration::from_secs(30)) {
        panic!("{what} another pathtrace kept running for 30 s: cannot run `pathtrace cleanup` without disturbing it");
    }
    let out = Command::new(BIN).arg("cleanup").output().expect("cleanup");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{what} cleanup: {:?} {stdout} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let removed: u32 = stdout
        .lines()
        .last()
        .and_then(|l| l.strip_prefix("removed "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(removed >= 8, "{what} cleanup removed too little:\n{stdout}");
}

// ---------------------------------------------------------------------------------------------
// 2. Coexistence
// ---------------------------------------------------------------------------------------------

/// Sends `n` pings and `n` one-message TCP exchanges from the container to the wan host; returns
/// how many packets certainly crossed the bridge's ingress (answered pings; SYN, ACK, data and
/// FIN of each exchange).
fn burst(lab: &Lab, tcp: SocketAddr, n: usize) -> u64 {
    let ctr = lab.ctr_ns().expect("ctr ns");
    let ping = icmp_echo(
        &ctr,
        lab.wan_addr.into(),
        n as u16,
        Duration::from_millis(2),
    )
    .expect("ping");
    assert_eq!(ping.replies.len(), n, "every ping answered: {ping:?}");
    for _ in 0..n {
        tcp_exchange(&ctr, tcp, 1, b"coexist").expect("tcp exchange");
    }
    n as u64 + 4 * n as u64
}

/// Runs a [`burst`]; every foreign program must have seen at least the packets it sent.
fn burst_seen_by(lab: &Lab, tcp: SocketAddr, foreign: &[&Foreign], what: &str) {
    let before: Vec<u64> = foreign.iter().map(|f| f.seen()).collect();
    let sent = burst(lab, tcp, 20);
    for (f, b) in foreign.iter().zip(before) {
        let saw = f.seen() - b;
        assert!(
            saw >= sent,
            "{what}: foreign {:?} program (slot {}) saw {saw} of {sent} packets",
            f.mode,
            f.slot
        );
    }
}

#[test]
fn coexists_with_foreign_tc_programs() {
    let _serial = serial();
    if !privileged("coexists_with_foreign_tc_programs") {
        return;
    }
    let lab_guard = TestLab::up("rc");
    let lab = &lab_guard.0;
    let before_tc = tc_state(lab);
    let server = tcp_server(&lab.wan_ns().expect("wan"), 0).expect("server");
    let tcp = SocketAddr::new(lab.wan_addr.into(), server.local_addr().port());
    let wan = lab.wan_addr.to_string();
    for (early_mode, late_mode) in [
        (TcMode::Tcx, TcMode::Netlink),
        (TcMode::Netlink, TcMode::Tcx),
    ] {
        for pt_mode in ["tcx", "netlink"] {
            let what = format!("[foreign {early_mode:?} then pathtrace {pt_mode}]");
            let early = Foreign::attach(lab, early_mode, 20);
            let mut run = Running::start(&trace_args(lab, &wan, pt_mode));
            let late = Foreign::attach(lab, late_mode, 21);
            burst_seen_by(
                lab,
                tcp,
                &[&early, &late],
                &format!("{what} while pathtrace ran"),
            );
            run.signal(SIGINT);
            let done = run.wait();
            assert!(done.status.success(), "{what} pathtrace: {done:?}");
            assert!(
                done.stdout
                    .lines()
                    .any(|l| l.starts_with(&format!("icmp {}:", lab.ctr_addr))
                        && l.contains(&format!("-> {wan}:"))),
                "{what} pathtrace reported no ICMP flow:\n{}",
                done.stdout
            );
            for f in [&early, &late] {
                assert!(
                    f.attached(lab),
                    "{what} foreign {:?} detached by pathtrace",
                    f.mode
                );
            }
            burst_seen_by(
                lab,
                tcp,
                &[&early, &late],
                &format!("{what} after pathtrace ended"),
            );
            drop((early, late));
            // Also when pathtrace added the bridge's clsact qdisc and left it to the late
            // foreign filter: the last one out removes it.
            assert_eq!(tc_state(lab), before_tc, "{what} tc state afterwards");
        }
    }
    drop(server);
    assert_eq!(
        tc_state(lab),
        before_tc,
        "tc state after the foreign programs left"
    );
}

#[test]
fn two_pathtraces_on_the_same_hooks() {
    let _serial = serial();
    if !privileged("two_pathtraces_on_the_same_hooks") {
        return;
    }
    let lab_guard = TestLab::up("rd");
    let lab = &lab_guard.0;
    let before = KernelState::take(lab);
    let traffic = lab_guard.start_traffic();
    let wan = lab.wan_addr.to_string();
    for (a, b) in [("tcx", "tcx"), ("netlink", "netlink"), ("tcx", "netlink")] {
        let spawn = |mode: &str| {
            let mut args = trace_args(lab, &wan, mode);
            args.extend(["--json", "--duration", "4"]);
            Command::new(BIN)
                .args(args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn")
        };
        let (first, second) = (spawn(a), spawn(b));
        for (mode, child) in [(a, first), (b, second)] {
            let out = child.wait_with_output().expect("wait");
            let what = format!("[{a} + {b}: the {mode} one]");
            assert!(
                out.status.success(),
                "{what} {}",
                String::from_utf8_lossy(&out.stderr)
            );
            check_three_flows(lab, &String::from_utf8_lossy(&out.stdout), &what);
        }
    }
    assert!(traffic.stop().rounds.tcp_exchanges_ok > 0);
    before.assert_restored(lab, "after two pathtraces");
}

/// For each of ICMP, TCP and UDP, a flow from the container with replies, on the lab's four hops
/// each way and through one NAT step. Flows in flight when the trace started or ended miss hops
/// (attaching and detaching take a few ms per hook), so any complete one counts.
fn check_three_flows(lab: &Lab, stdout: &str, what: &str) {
    let lines: Vec<Value> = crate::support::lab::json_lines(stdout.as_bytes());
    assert!(!lines.is_empty(), "{what}: no JSON lines");
    // The last line of each flow id is its final state.
    let mut last = std::collections::BTreeMap::new();
    for l in lines.iter().filter(|l| l["type"] == "flow") {
        last.insert(l["id"].as_u64(), l);
    }
    let len = |v: &Value| v.as_array().map_or(0, Vec::len);
    let ctr = format!("{}:", lab.ctr_addr);
    for proto in ["icmp", "tcp", "udp"] {
        let complete = last.values().any(|f| {
            f["proto"] == proto
                && f["src"].as_str().is_some_and(|s| s.starts_with(&ctr))
                && (len(&f["hops"]), len(&f["hops_back"]), len(&f["nat"])) == (4, 4, 1)
        });
        assert!(complete, "{what} no complete {proto} flow in:\n{stdout}");
    }
    let summary = lines.last().expect("summary");
    assert_eq!(summary["type"], "summary", "{what}");
    assert_eq!(len(&summary["hooks"]), 8, "{what}");
}

// ---------------------------------------------------------------------------------------------
// 3. Integrity across the traced NAT path
// ---------------------------------------------------------------------------------------------

#[test]
fn payload_arrives_intact_through_the_traced_nat_path() {
    let _serial = serial();
    if !privileged("payload_arrives_intact_through_the_traced_nat_path") {
        return;
    }
    let lab_guard = TestLab::up("ri");
    let lab = &lab_guard.0;
    let wan = lab.wan_addr.to_string();
    for mode in ["tcx", "netlink"] {
        let wan_addr = lab.wan_addr;
        let listener = lab
            .wan_ns()
            .expect("wan")
            .run(move || TcpListener::bind((wan_addr, 0)))
            .expect("wan netns")
            .expect("bind");
        let dst = listener.local_addr().expect("addr");
        let receiver = std::thread::spawn(move || receive(listener));
        let run = Running::start(&trace_args(lab, &wan, mode));
        let (sent, sent_digest) = send(&lab.ctr_ns().expect("ctr"), dst);
        let (got, got_digest, first_bad) = receiver.join().expect("receiver").expect("receive");
        let mut run = run;
        run.signal(SIGINT);
        let done = run.wait();
        assert!(done.status.success(), "[{mode}] {done:?}");
        assert_eq!(got, sent, "[{mode}] bytes received");
        assert_eq!(first_bad, None, "[{mode}] first corrupted byte");
        assert_eq!(got_digest, sent_digest, "[{mode}] FNV-1a digest");
        let header = format!("tcp {}:", lab.ctr_addr);
        let flow = done
            .stdout
            .lines()
            .find(|l| l.starts_with(&header) && l.contains(&format!("-> {dst}")))
            .unwrap_or_else(|| {
                panic!(
                    "[{mode}] pathtrace did not report the transfer:\n{}",
                    done.stdout
                )
            });
        assert!(
            !flow.contains(", 0 back"),
            "[{mode}] no replies seen: {flow}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 4. Bad input
// ---------------------------------------------------------------------------------------------

/// Runs pathtrace with `args`; expects exit code 2 and, when `one_line`, exactly one line on
/// stderr; every word of `expect` must appear in that line (clap: in its first line).
fn bad_input(
    prefix: &[&str],
    args: &[&str],
    env: &[(&str, &str)],
    one_line: bool,
    expect: &[&str],
) {
    let (program, pre) = match prefix.split_first() {
        Some((p, rest)) => (*p, rest.to_vec()),
        None => (BIN, Vec::new()),
    };
    let mut cmd = Command::new(program);
    cmd.args(pre).args(args).envs(env.iter().copied());
    let out = cmd.output().expect("run pathtrace");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.trim().lines().collect();
    let what = format!("{prefix:?} {args:?}");
    assert_eq!(
        out.status.code(),
        Some(2),
        "{what}: exit {:?}, stderr {stderr}",
        out.status
    );
    if one_line {
        assert_eq!(lines.len(), 1, "{what}: one line on stderr, got:\n{stderr}");
    }
    let first = lines.first().copied().unwrap_or("");
    for e in expect {
        assert!(first.contains(e), "{what}: {first:?} should mention {e:?}");
    }
    eprintln!("ok {what}: {first}");
}

#[test]
fn bad_input_fails_with_one_line_and_leaves_nothing() {
    let _serial = serial();
    if !privileged("bad_input_fails_with_one_line_and_leaves_nothing") {
        return;
    }
    let lab_guard = TestLab::up("rb");
    let lab = &lab_guard.0;
    let before = KernelState::take(lab);
    let ns = lab.ctr_netns.clone();
    let wan = lab.wan_addr.to_string();
    let trace = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = ["--netns", &ns, "--to", &wan].map(String::from).to_vec();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let run = |args: Vec<String>, one_line: bool, expect: &[&str]| {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        bad_input(&[], &a, &[], one_line, expect);
    };
    // Not root: the binary must be executable by nobody (the target dir is world-readable here).
    let mut nobody = vec![
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        BIN,
    ];
    let t = trace(&[]);
    nobody.extend(t.iter().map(String::as_str));
    bad_input(&nobody, &[], &[], true, &["needs root", "sudo"]);
    run(
        vec!["--netns".into(), format!("nope-{}", std::process::id())],
        true,
        &["not found", "ip netns list"],
    );
    run(
        trace(&["--iface", "nope0"]),
        true,
        &["nope0", "not found", "ip -n"],
    );
    // Unroutable --to: the host here may have a default route, so make one address unreachable.
    let unroutable = "203.0.113.77";
    let routable = Command::new("ip")
        .args(["route", "get", unroutable])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let route = routable.then(|| {
        eprintln!(
            "note: {unroutable} is routable on this host; adding `unreachable {unroutable}/32`"
        );
        let st = Command::new("ip")
            .args(["route", "add", "unreachable", "203.0.113.77/32"])
            .status();
        assert!(
            st.is_ok_and(|s| s.success()),
            "adding the unreachable route"
        );
        RouteGuard("203.0.113.77/32")
    });
    run(
        ["--netns", &ns, "--to", unroutable]
            .map(String::from)
            .to_vec(),
        true,
        &["no route", unroutable, "ip route get"],
    );
    drop(route);
    run(
        trace(&["--filter-proto", "sctp"]),
        true,
        &["sctp", "tcp, udp, icmp"],
    );
    run(
        trace(&["--filter-host", "10.0.0.0/33"]),
        true,
        &["10.0.0.0/33", "ADDR/LEN"],
    );
    run(
        trace(&["--duration", "0s"]),
        false,
        &["--duration", "out of range"],
    );
    run(
        trace(&["--duration", "abc"]),
        false,
        &["--duration", "bad duration"],
    );
    run(trace(&["--count", "0"]), false, &["--count", "0"]);
    bad_capture_inputs(&trace);
    bad_input(
        &[],
        &["--container", "x"],
        &[("DOCKER_HOST", "unix:///nonexistent.sock")],
        true,
        &["/nonexistent.sock", "dockerd running"],
    );
    // dockerd runs wherever the tests run (`cargo xtask setup` starts it).
    let name = format!("no-such-ctr-{}", std::process::id());
    bad_input(
        &[],
        &["--container", &name],
        &[],
        true,
        &["no container named", &name],
    );
    // A kernel without TCX or BTF: `kernel_without_tcx_or_btf_falls_back_and_says_so`.
    before.assert_restored(lab, "bad input left something");
}

/// `-w` to an unwritable path, and `show` on broken files — where the binary has them.
fn bad_capture_inputs(trace: &dyn Fn(&[&str]) -> Vec<String>) {
    let args = trace(&["-w", "/proc/nope/x.pcapng", "--duration", "1"]);
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    bad_input(&[], &a, &[], true, &["/proc/nope/x.pcapng"]);
    let dir = std::env::temp_dir().join(format!("pt-rel-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    // Section header block: type, length 28, byte-order magic, version major/minor, section length.
    let mut shb = Vec::new();
    shb.extend_from_slice(&0x0A0D_0D0Au32.to_le_bytes());
    shb.extend_from_slice(&28u32.to_le_bytes());
    shb.extend_from_slice(&0x1A2B_3C4Du32.to_le_bytes());
    let mut newer = shb.clone();
    newer.extend_from_slice(&2u16.to_le_bytes());
    newer.extend_from_slice(&0u16.to_le_bytes());
    newer.extend_from_slice(&(-1i64).to_le_bytes());
    newer.extend_from_slice(&28u32.to_le_bytes());
    for (name, bytes) in [
        ("empty.pcapng", Vec::new()),
        ("truncated.pcapng", shb[..10].to_vec()),
        ("text.pcapng", b"hello, this is not a capture\n".to_vec()),
        ("newer.pcapng", newer),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, bytes).expect("write test file");
        let p = path.to_string_lossy().into_owned();
        bad_input(&[], &["show", &p], &[], true, &[name]);
    }
    std::fs::remove_dir_all(&dir).ok();
}

// ---------------------------------------------------------------------------------------------
// 5. Responsiveness under load
// ---------------------------------------------------------------------------------------------

#[test]
fn stops_within_a_second_under_load_and_counts_losses() {
    let _serial = serial();
    if !privileged("stops_within_a_second_under_load_and_counts_losses") {
        return;
    }
    let lab_guard = TestLab::up("rl");
    let lab = &lab_guard.0;
    let wan = lab.wan_addr.to_string();
    let port = "5201";
    let _server = in_ns(&lab.wan_netns, &["iperf3", "-s", "-1", "-p", port]);
    std::thread::sleep(Duration::from_millis(300));
    // Small UDP datagrams as fast as iperf3 can send them, for at most 10 s.
    let _client = in_ns(
        &lab.ctr_netns,
        &[
            "iperf3", "-c", &wan, "-p", port, "-u", "-b", "0", "-l", "64", "-t", "10",
        ],
    );
    for ring in ["8192", "4"] {
        let mut args = trace_args(lab, &wan, "tcx");
        // Event losses are what this checks: one event per packet per hook.
        args.extend(["--ring-size", ring, "--every-packet"]);
        let mut run = Running::start(&args);
        std::thread::sleep(Duration::from_secs(3));
        let sent = Instant::now();
        run.signal(SIGINT);
        let done = run.wait();
        let took = sent.elapsed();
        let what = format!("[ring {ring} KiB]");
        eprintln!("{what} stopped {took:?} after SIGINT");
        assert!(done.status.success(), "{what} {done:?}");
        assert!(
            took < Duration::from_secs(1),
            "{what} took {took:?} to stop after SIGINT"
        );
        let rows = summary_rows(&done.stdout);
        assert_eq!(rows.len(), 8, "{what} summary rows:\n{}", done.stdout);
        let mut lost = 0;
        for (label, dir, [seen, filtered, emitted, l]) in &rows {
            assert_eq!(
                *seen,
                filtered + emitted + l,
                "{what} {label} {dir}: seen {seen} filtered {filtered} emitted {emitted} lost {l}"
            );
            lost += l;
        }
        let udp_seen = rows.iter().map(|r| r.2[0]).max().unwrap_or(0);
        assert!(udp_seen > 10_000, "{what} under load: {rows:?}");
        if lost > 0 {
            assert!(
                done.stdout.contains("events lost at"),
                "{what} losses not reported:\n{}",
                done.stdout
            );
        }
        if ring == "4" {
            assert!(
                lost > 0,
                "{what} a 4 KiB ring under this load should lose events: {rows:?}"
            );
        }
        eprintln!("{what} lost {lost}: {rows:?}");
    }
}

/// What a kernel without TCX (Linux < 6.6) or without BTF makes pathtrace do, on this kernel: the
/// version pathtrace reads is made old with `setarch --uname-2.6` (uname then reports 2.6.x), and
/// BTF is hidden by a private mount namespace with an empty tmpfs over `/sys/kernel/btf`. Either
/// way it still traces (netlink filters; no drop reasons), says so once, and leaves nothing.
#[test]
fn kernel_without_tcx_or_btf_falls_back_and_says_so() {
    let _serial = serial();
    if !privileged("kernel_without_tcx_or_btf_falls_back_and_says_so") {
        return;
    }
    let lab_guard = TestLab::up("rk");
    let lab = &lab_guard.0;
    let before = KernelState::take(lab);
    let traffic = lab_guard.start_traffic();
    let wan = lab.wan_addr.to_string();
    let args = [
        "--netns",
        lab.ctr_netns.as_str(),
        "--to",
        &wan,
        "--duration",
        "3",
    ];
    let old_kernel = ["setarch", "x86_64", "--uname-2.6", BIN];

    let out = Command::new(old_kernel[0])
        .args(&old_kernel[1..])
        .args(args)
        .output()
        .expect("run setarch");
    let said = traced_all_hooks(&out, "netlink", "uname 2.6");
    assert!(
        said.contains("no TCX links") && said.contains("netlink clsact filters instead"),
        "uname 2.6: the fallback should be said: {said}"
    );
    bad_input(
        &old_kernel,
        &[&args[..], &["--tc-mode", "tcx"]].concat(),
        &[],
        true,
        &["TCX links need Linux >= 6.6", "--tc-mode netlink"],
    );

    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(r#"mount -t tmpfs none /sys/kernel/btf && exec "$0" "$@""#)
        .arg(BIN)
        .args(args)
        .output()
        .expect("run unshare");
    let said = traced_all_hooks(&out, "tcx", "no BTF");
    assert!(
        said.contains("drop reasons unavailable")
            && said.contains("/sys/kernel/btf/vmlinux")
            && said.contains("need a kernel with BTF"),
        "no BTF: the missing drop reasons should be said: {said}"
    );
    assert!(traffic.stop().rounds.tcp_exchanges_ok > 0);
    before.assert_restored(lab, "fallback runs left something");
}

/// Exit 0, attached in `mode`, and every one of the 8 hooks emitted packets of the lab's traffic.
/// Returns the notes pathtrace printed (lines starting with `**`, on either stream).
fn traced_all_hooks(out: &std::process::Output, mode: &str, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{what}: {:?}\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with(&format!("tracing 8 hooks ({mode})"))),
        "{what}: {stdout}"
    );
    let rows = summary_rows(&stdout);
    assert_eq!(rows.len(), 8, "{what}: hook summary rows in\n{stdout}");
    for (hook, dir, [_, _, emitted, _]) in rows {
        assert!(
            emitted > 0,
            "{what}: {hook} {dir} emitted nothing\n{stdout}"
        );
    }
    eprintln!("ok {what}: traced all 8 hooks with {mode}");
    stdout
        .lines()
        .chain(stderr.lines())
        .filter(|l| l.starts_with("**"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A tmpfs mounted for one test, unmounted (and its directory removed) on drop.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(size: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("pt-full-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mount point");
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "pathtrace-test",
            ])
            .arg(&dir)
            .status()
            .expect("run mount")
            .success();
        assert!(ok, "mount -t tmpfs on {}", dir.display());
        Self(dir)
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        if let Err(e) = Command::new("umount").arg(&self.0).status() {
            eprintln!("umount {}: {e}", self.0.display());
        }
        std::fs::remove_dir(&self.0).ok();
    }
}

/// `-w` onto a filesystem that fills up while capturing (a 128 KiB tmpfs): one line naming the
/// problem, exit 2, the summary printed, a file that `show` and tshark read up to its last whole
/// block, and nothing left attached.
#[test]
fn disk_full_while_capturing_keeps_a_valid_file() {
    let _serial = serial();
    if !privileged("disk_full_while_capturing_keeps_a_valid_file") {
        return;
    }
    let lab_guard = TestLab::up("rf");
    let lab = &lab_guard.0;
    let before = KernelState::take(lab);
    let wan = lab.wan_addr.to_string();
    let disk = SmallDisk::mount("128k");
    let file = disk.0.join("cap.pcapng");
    // 400 echo requests in 4 s, 8 hooks each: well over 128 KiB of packet blocks.
    let _ping = in_ns(
        &lab.ctr_netns,
        &["ping", "-q", "-c", "400", "-i", "0.01", &wan],
    );
    let out = Command::new(BIN)
        .args([
            "--netns",
            &lab.ctr_netns,
            "--to",
            &wan,
            "--duration",
            "4",
            "-w",
        ])
        .arg(&file)
        .output()
        .expect("run pathtrace");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stdout}\n{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(
        lines.len() == 1
            && lines[0].contains("disk full while writing")
            && lines[0].contains("cap.pcapng"),
        "one line naming the problem: {stderr}"
    );
    assert_eq!(
        summary_rows(&stdout).len(),
        8,
        "the summary still printed:\n{stdout}"
    );
    let show = Command::new(BIN)
        .arg("show")
        .arg(&file)
        .output()
        .expect("show");
    assert!(
        show.status.success(),
        "show: {}",
        String::from_utf8_lossy(&show.stderr)
    );
    let tshark = Command::new("tshark")
        .arg("-r")
        .arg(&file)
        .output()
        .expect("tshark");
    let packets = String::from_utf8_lossy(&tshark.stdout).lines().count();
    assert!(
        tshark.status.success() && packets > 100,
        "tshark read {packets} packets: {}",
        String::from_utf8_lossy(&tshark.stderr)
    );
    eprintln!(
        "ok disk full: {}; file {} bytes, {packets} packets",
        lines[0],
        std::fs::metadata(&file).map_or(0, |m| m.len())
    );
    drop(disk);
    before.assert_restored(lab, "disk full left something");
}
