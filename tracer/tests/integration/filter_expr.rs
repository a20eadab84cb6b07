//! Issue #14: pcap-filter expressions judged as tcpdump judges them. For every expression of the
//! corpus and every frame of it (`support::corpus`), pathtrace's verdict equals tcpdump's: the
//! userspace evaluation (libpcap's program, run by `tracer::filter::cbpf`) on the capture as
//! written (snapped frames included), and the kernel side (its eBPF translation in the kernel
//! object's filter subprogram, run by the kernel through `BPF_PROG_TEST_RUN`) on the frames as
//! a hook holds them (a frame is all its bytes: the kernel never sees a snapped one).

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use aya::programs::{SchedClassifier, TestRun, TestRunOptions};
use serde_json::Value;
use tracer::{
    attach::{LoadOptions, TcMode, Tracer},
    filter::{ebpf::TranslateError, Expression},
    lab::{traffic, Lab},
};
use tracer_common::{config::FilterConfig, names::PROGRAM_FILTER_TEST};

use crate::support::{
    corpus::{frames, tcpdump_verdicts, write_pcap, Frame, EXPRESSIONS},
    kernel::wait_attached,
    lab::{final_flows, json_lines, our_programs_settled, pathtrace, sh, TestLab},
    privileged, serial, BIN,
};

/// The kernel object with `expr` in its filter subprogram, and the test program that returns
/// the subprogram's verdict.
fn load(expr: &Expression) -> Tracer {
    let opts = LoadOptions {
        filter: FilterConfig {
            flags: tracer_common::config::FILTER_EXPR,
            ..FilterConfig::NONE
        },
        ring_bytes: 1 << 16,
        kernel_log: false,
        drop_reasons: false,
        mode: tracer_common::config::ModeConfig::EVERY_PACKET,
        expression: Some(expr.clone()),
    };
    let mut tracer = Tracer::load(&opts, TcMode::Auto)
        .unwrap_or_else(|e| panic!("{:?}: load the object: {e}", expr.text()));
    let prog: &mut SchedClassifier = tracer
        .ebpf_mut()
        .program_mut(PROGRAM_FILTER_TEST)
        .expect("the filter test program")
        .try_into()
        .expect("a classifier");
    prog.load().unwrap_or_else(|e| {
        panic!(
            "{:?}: the verifier refused the translation: {e} ({:?})",
            expr.text(),
            std::error::Error::source(&e)
        )
    });
    tracer
}

/// The kernel's verdict on `frame`, or `None` when it would not build a test skb from it.
fn kernel_keeps(tracer: &mut Tracer, frame: &[u8]) -> Option<bool> {
    let prog: &mut SchedClassifier = tracer
        .ebpf_mut()
        .program_mut(PROGRAM_FILTER_TEST)
        .expect("program")
        .try_into()
        .expect("classifier");
    let mut out = vec![0u8; frame.len() + 64];
    let opts = TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        ..TestRunOptions::default()
    };
    prog.test_run(opts).ok().map(|r| r.return_value != 0)
}

#[test]
fn every_expression_judges_every_frame_as_tcpdump_does() {
    let _serial = serial();
    if !privileged("every_expression_judges_every_frame_as_tcpdump_does") {
        return;
    }
    let frames = frames();
    // As a hook holds them: every frame whole (a snapped one ends where its capture did).
    let whole: Vec<Frame> = frames
        .iter()
        .map(|f| Frame {
            bytes: f.bytes.clone(),
            wire_len: f.bytes.len() as u32,
            what: f.what.clone(),
        })
        .collect();
    let dir = tracer::capture::testframes::TempDir::new("filter-corpus");
    let dir = &dir.0;
    let (captured, hooked) = (dir.join("corpus.pcap"), dir.join("whole.pcap"));
    write_pcap(&captured, &frames).expect("write the corpus");
    write_pcap(&hooked, &whole).expect("write the whole frames");
    let (mut pairs, mut kernel_pairs, mut not_run, mut refused) =
        (0usize, 0usize, 0usize, Vec::new());
    for expr in EXPRESSIONS {
        let e = Expression::new(expr)
            .unwrap_or_else(|e| panic!("{expr:?}: {e}"))
            .expect("not empty");
        let want = tcpdump_verdicts(&captured, expr, frames.len());
        for (i, f) in frames.iter().enumerate() {
            assert_eq!(
                e.keeps(&f.bytes, f.wire_len),
                want[i],
                "userspace vs tcpdump: {expr:?} on frame {i} ({})",
                f.what
            );
            pairs += 1;
        }
        match tracer::filter::ebpf::translate(e.program()) {
            Ok(_) => {}
            // Said plainly, never widened: `protochain` loops, which the kernel side refuses.
            Err(TranslateError::BackwardJump(_)) if expr.contains("protochain") => {
                refused.push(*expr);
                continue;
            }
            Err(err) => panic!("{expr:?}: {err}"),
        }
        let want = tcpdump_verdicts(&hooked, expr, whole.len());
        let mut tracer = load(&e);
        for (i, f) in whole.iter().enumerate() {
            match kernel_keeps(&mut tracer, &f.bytes) {
                Some(keeps) => {
                    assert_eq!(
                        keeps,
                        want[i],
                        "kernel vs tcpdump: {expr:?} on frame {i} ({}, {} bytes)",
                        f.what,
                        f.bytes.len()
                    );
                    kernel_pairs += 1;
                }
                None => not_run += 1,
            }
        }
    }
    eprintln!(
        "{} expressions x {} frames: {pairs} userspace verdicts and {kernel_pairs} kernel verdicts equal tcpdump's; \
         {not_run} (expression, frame) pairs the kernel would not build a test skb for; \
         refused by the kernel side (a loop): {refused:?}",
        EXPRESSIONS.len(),
        frames.len()
    );
    assert!(EXPRESSIONS.len() >= 60 && frames.len() >= 2000);
    // Only frames cut inside their L3 header may go unrun, and they must stay few.
    assert!(not_run * 20 < kernel_pairs, "{not_run} pairs not run");
}

/// The fuzzer's half of "never a verifier rejection of an expression that parsed": every input
/// its runs kept (`fuzz/corpus/filter_expression/`, see fuzz/README.md) that parses, compiles and
/// translates within the subprogram's room is loaded here, and this kernel's verifier must take
/// it. (The fuzz target itself never loads a program: a load per input would be 10,000 times
/// slower than its other checks.)
#[test]
fn the_verifier_accepts_every_expression_the_fuzzer_kept_that_translates() {
    let _serial = serial();
    if !privileged("the_verifier_accepts_every_expression_the_fuzzer_kept_that_translates") {
        return;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/filter_expression");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .collect();
    files.sort();
    let (mut loaded, mut refused) = (0usize, 0usize);
    for file in &files {
        let Ok(text) = String::from_utf8(std::fs::read(file).expect("a corpus file")) else {
            continue;
        };
        let Ok(Some(expr)) = Expression::new(&text) else {
            continue;
        };
        match tracer::filter::ebpf::translate(expr.program())
            .and_then(|body| tracer::filter::ebpf::fill(&body, 4000))
        {
            Ok(_) => {}
            // Refused in so many words before loading (a loop, or too large), never loaded.
            Err(
                TranslateError::BackwardJump(_)
                | TranslateError::TooLarge { .. }
                | TranslateError::Metadata(_),
            ) => {
                refused += 1;
                continue;
            }
            Err(e) => panic!("{text:?}: {e}"),
        }
        drop(load(&expr));
        loaded += 1;
    }
    eprintln!("{loaded} fuzzer expressions loaded, {refused} refused before loading");
    assert!(
        loaded >= 100,
        "only {loaded} of {} inputs loaded",
        files.len()
    );
}

#[test]
fn a_bad_expression_is_one_line_with_its_column_and_exit_2() {
    for (args, column) in [
        (
            ["--netns", "nonexistent-ns", "tcp", "prt", "80"],
            "column 5",
        ),
        (
            ["--netns", "nonexistent-ns", "port", "99999", "and"],
            "column",
        ),
        (["--netns", "nonexistent-ns", "(tcp", "or", "udp"], "column"),
    ] {
        let out = pathtrace(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(
            err.contains(column) && err.contains("filter expression"),
            "{args:?}: {err}"
        );
    }
}

/// A scratch path of this test process.
fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pathtrace-expr-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    dir.join(name)
}

/// (`ip:port` of the container's end, of the other end) -> (packets out, packets back).
type Conversations = BTreeMap<(String, String), (u64, u64)>;

/// tcpdump on the lab container's interface, writing what `expr` keeps to a file until stopped.
struct Tcpdump {
    child: Child,
    file: PathBuf,
}

impl Tcpdump {
    fn start(lab: &Lab, expr: &str, file: PathBuf) -> Self {
        let mut child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &lab.ctr_netns,
                "tcpdump",
                "-i",
                &lab.ctr_ifname,
            ])
            .args(["-nn", "-U", "-w", file.to_str().unwrap(), expr])
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("run tcpdump");
        // It says so on stderr once its socket is open.
        let mut err = BufReader::new(child.stderr.take().expect("tcpdump's stderr"));
        let mut line = String::new();
        while !line.contains("listening on") {
            line.clear();
            if err.read_line(&mut line).expect("tcpdump's stderr") == 0 {
                panic!("tcpdump ended before it listened");
            }
        }
        Self { child, file }
    }

    /// Stops it; what it kept, per conversation: (`ip:port` of the container's end, of the
    /// other end) -> (packets from the container, packets to it).
    fn stop(mut self, ctr: &str) -> Conversations {
        std::thread::sleep(Duration::from_millis(300));
        sh("kill", &["-INT", &self.child.id().to_string()]);
        self.child.wait().expect("tcpdump");
        let text = sh("tcpdump", &["-r", self.file.to_str().unwrap(), "-nn"]);
        let mut flows = BTreeMap::new();
        for line in text.lines() {
            // `12:00:00.000000 IP 10.200.1.2.40000 > 10.200.2.2.7: UDP, length 5`
            let words: Vec<&str> = line.split_whitespace().collect();
            assert!(words.len() > 4 && words[1] == "IP", "tcpdump line: {line}");
            let (src, dst) = (endpoint(words[2]), endpoint(words[4].trim_end_matches(':')));
            let from_ctr = src.starts_with(&format!("{ctr}:"));
            let key = if from_ctr { (src, dst) } else { (dst, src) };
            let counts: &mut (u64, u64) = flows.entry(key).or_default();
            if from_ctr {
                counts.0 += 1;
            } else {
                counts.1 += 1;
            }
        }
        flows
    }
}

impl Drop for Tcpdump {
    fn drop(&mut self) {
        // Already stopped when the test got that far: nothing to report then.
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

/// tcpdump's `10.200.1.2.40000` as `10.200.1.2:40000`.
fn endpoint(word: &str) -> String {
    match word.rsplit_once('.') {
        Some((addr, port)) if addr.matches('.').count() == 3 => format!("{addr}:{port}"),
        _ => word.to_string(),
    }
}

/// Traces the lab container with `expr` (JSON) while `traffic` runs, and tcpdump with
/// `reference` on the container's interface at the same time; the final flows, the summary,
/// and what tcpdump kept.
fn trace_beside_tcpdump(
    lab: &Lab,
    expr: &str,
    reference: &str,
    traffic: impl FnOnce(),
) -> (Vec<Value>, Value, Conversations) {
    let dump = Tcpdump::start(lab, reference, tmp("reference.pcap"));
    let wan = lab.wan_addr.to_string();
    let child = Command::new(BIN)
        .args([
            "--netns",
            &lab.ctr_netns,
            "--to",
            &wan,
            "--json",
            "--duration",
            "4",
            expr,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run pathtrace");
    assert!(
        wait_attached(child.id(), 8, Duration::from_secs(15)),
        "pathtrace did not attach its 8 hooks"
    );
    traffic();
    let out = child.wait_with_output().expect("pathtrace");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = json_lines(&out.stdout);
    let summary = lines
        .iter()
        .find(|l| l["type"] == "summary")
        .cloned()
        .expect("a summary line");
    let flows = final_flows(&lines).into_values().collect();
    (flows, summary, dump.stop(&lab.ctr_addr.to_string()))
}

/// Each flow's (source, destination) -> (packets out, packets back).
fn counts(flows: &[Value]) -> Conversations {
    flows
        .iter()
        .map(|f| {
            let key = (
                f["src"].as_str().unwrap().into(),
                f["dst"].as_str().unwrap().into(),
            );
            let n = |k: &str| f[k].as_u64().expect("a count");
            (key, (n("packets_out"), n("packets_back")))
        })
        .collect()
}

#[test]
fn udp_and_not_port_53_traces_exactly_what_tcpdump_keeps() {
    let _serial = serial();
    if !privileged("udp_and_not_port_53_traces_exactly_what_tcpdump_keeps") {
        return;
    }
    let lab = TestLab::up("xu");
    let (ctr, wan) = (lab.0.ctr_ns().expect("ctr"), lab.0.wan_ns().expect("wan"));
    let echo = traffic::udp_echo_server(&wan, 0).expect("udp echo");
    let dns = traffic::udp_echo_server(&wan, 53).expect("udp echo on 53");
    let tcp = traffic::tcp_server(&wan, 0).expect("tcp server");
    let at = |port: u16| SocketAddr::new(lab.0.wan_addr.into(), port);
    let expr = "udp and not port 53";
    let (flows, summary, dumped) = trace_beside_tcpdump(&lab.0, expr, expr, || {
        for _ in 0..3 {
            traffic::udp_exchange(&ctr, at(echo.local_addr().port()), 2, b"kept").expect("udp");
        }
        for _ in 0..2 {
            traffic::udp_exchange(&ctr, at(53), 2, b"port 53").expect("udp to 53");
        }
        traffic::tcp_exchange(&ctr, at(tcp.local_addr().port()), 2, b"tcp").expect("tcp");
        traffic::icmp_echo(&ctr, lab.0.wan_addr.into(), 2, Duration::from_millis(100))
            .expect("ping");
    });
    // tcpdump's three conversations, each 2 out and 2 back: the trace's flows, exactly.
    assert_eq!(dumped.len(), 3, "tcpdump kept: {dumped:?}");
    assert!(dumped.values().all(|&c| c == (2, 2)), "{dumped:?}");
    assert_eq!(counts(&flows), dumped, "the trace's flows: {flows:#?}");
    for f in &flows {
        assert_eq!(f["proto"], "udp", "{f}");
        assert_eq!(f["hops"].as_array().map(Vec::len), Some(4), "{f}");
        assert_eq!(f["hops_back"].as_array().map(Vec::len), Some(4), "{f}");
        assert_eq!(f["nat"][0]["kind"], "snat", "{f}");
    }
    // What the kernel evaluated: `--to` joins its host to the expression.
    let joined = format!("(host {}) and ({expr})", lab.0.wan_addr);
    assert_eq!(summary["filter"], joined.as_str(), "{summary}");
    drop((echo, dns, tcp));
    assert_eq!(our_programs_settled(), Vec::<String>::new());
}

#[test]
fn a_flow_whose_first_packet_the_expression_keeps_is_followed_at_every_hop() {
    let _serial = serial();
    if !privileged("a_flow_whose_first_packet_the_expression_keeps_is_followed_at_every_hop") {
        return;
    }
    let lab = TestLab::up("xf");
    let (ctr, wan) = (lab.0.ctr_ns().expect("ctr"), lab.0.wan_ns().expect("wan"));
    let tcp = traffic::tcp_server(&wan, 0).expect("tcp server");
    let echo = traffic::udp_echo_server(&wan, 0).expect("udp echo");
    let at = |port: u16| SocketAddr::new(lab.0.wan_addr.into(), port);
    // Only a connection's first packet (a SYN without ACK) matches; the trace must follow the
    // rest of it, both ways, through the SNAT, at every hook: as much as tcpdump sees of it.
    let expr = "tcp[tcpflags] & (tcp-syn|tcp-ack) == tcp-syn";
    let (flows, summary, dumped) = trace_beside_tcpdump(&lab.0, expr, "tcp", || {
        traffic::tcp_exchange(&ctr, at(tcp.local_addr().port()), 3, b"follow").expect("tcp");
        traffic::udp_exchange(&ctr, at(echo.local_addr().port()), 2, b"no").expect("udp");
        traffic::icmp_echo(&ctr, lab.0.wan_addr.into(), 2, Duration::from_millis(100))
            .expect("ping");
    });
    assert_eq!(dumped.len(), 1, "tcpdump: {dumped:?}");
    let (out, back) = *dumped.values().next().unwrap();
    assert!(out >= 5 && back >= 4, "a whole connection: {dumped:?}");
    assert_eq!(counts(&flows), dumped, "the trace's flows: {flows:#?}");
    let f = &flows[0];
    let hooks = |k: &str| f[k].as_array().map(Vec::len);
    assert_eq!(
        (hooks("hops"), hooks("hops_back")),
        (Some(4), Some(4)),
        "{f}"
    );
    assert_eq!(f["nat"][0]["kind"], "snat", "{f}");
    assert_eq!(f["nat_back"].as_array().map(Vec::len), Some(1), "{f}");
    let joined = format!("(host {}) and ({expr})", lab.0.wan_addr);
    assert_eq!(summary["filter"], joined.as_str(), "{summary}");
    drop((tcp, echo));
    assert_eq!(our_programs_settled(), Vec::<String>::new());
}

/// Inserts an iptables rule for the guard's lifetime (deleted on drop, also on panic).
struct Rule(Vec<String>);

impl Rule {
    fn insert(chain: &str, spec: &[&str]) -> Self {
        let spec: Vec<String> = std::iter::once(chain)
            .chain(spec.iter().copied())
            .map(str::to_string)
            .collect();
        let args: Vec<&str> = std::iter::once("-I")
            .chain(spec.iter().map(String::as_str))
            .collect();
        sh("iptables", &args);
        Self(spec)
    }
}

impl Drop for Rule {
    fn drop(&mut self) {
        let args: Vec<&str> = std::iter::once("-D")
            .chain(self.0.iter().map(String::as_str))
            .collect();
        if let Err(e) = Command::new("iptables").args(&args).status() {
            eprintln!("deleting iptables rule {:?}: {e}", self.0);
        }
    }
}

#[test]
fn show_and_diff_take_an_expression() {
    let _serial = serial();
    if !privileged("show_and_diff_take_an_expression") {
        return;
    }
    let lab = TestLab::up("xd");
    let (ctr, wan) = (lab.0.ctr_ns().expect("ctr"), lab.0.wan_ns().expect("wan"));
    let echo = traffic::udp_echo_server(&wan, 0).expect("udp echo");
    let udp_to = SocketAddr::new(lab.0.wan_addr.into(), echo.local_addr().port());
    let capture = |file: &Path| {
        let child = Command::new(BIN)
            .args([
                "--netns",
                &lab.0.ctr_netns,
                "--to",
                &lab.0.wan_addr.to_string(),
            ])
            .args(["--duration", "3", "-w", file.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run pathtrace");
        assert!(wait_attached(child.id(), 8, Duration::from_secs(15)));
        traffic::icmp_echo(&ctr, lab.0.wan_addr.into(), 2, Duration::from_millis(100))
            .expect("ping");
        // Dropped in the second capture: its outcome does not matter here.
        drop(traffic::udp_exchange(&ctr, udp_to, 2, b"udp"));
        let out = child.wait_with_output().expect("pathtrace");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let (before, after) = (tmp("before.pcapng"), tmp("after.pcapng"));
    capture(&before);
    {
        let ctr_addr = lab.0.ctr_addr.to_string();
        let _drop_udp = Rule::insert("FORWARD", &["-s", &ctr_addr, "-p", "udp", "-j", "DROP"]);
        capture(&after);
    }
    let file = |p: &Path| p.to_str().unwrap().to_string();

    // show FILE EXPR: the flows one of whose packets the expression keeps, exactly as the
    // whole replay shows them (but for their ids, numbered in the order each replay met them).
    let show = |args: &[&str]| -> Vec<Value> {
        let out = pathtrace(&[&["show", &file(&before), "--json"], args].concat());
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut flows: Vec<Value> = final_flows(&json_lines(&out.stdout))
            .into_values()
            .collect();
        for f in &mut flows {
            f.as_object_mut().expect("a flow object").remove("id");
        }
        flows
    };
    let all = show(&[]);
    for proto in ["icmp", "udp"] {
        let some = show(&[proto]);
        let want: Vec<&Value> = all.iter().filter(|f| f["proto"] == proto).collect();
        assert!(!want.is_empty(), "no {proto} flow in {all:#?}");
        assert_eq!(some.iter().collect::<Vec<_>>(), want, "show FILE {proto}");
    }
    let out = pathtrace(&["show", &file(&before), "--json", "udp"]);
    let summary = json_lines(&out.stdout)
        .into_iter()
        .find(|l| l["type"] == "summary")
        .expect("summary");
    assert_eq!(summary["filter"], "udp", "{summary}");

    // diff A B EXPR: only the flows the expression keeps are compared.
    let diff =
        |expr: &[&str]| pathtrace(&[&["diff", &file(&before), &file(&after)], expr].concat());
    let (whole, icmp, udp) = (diff(&[]), diff(&["icmp"]), diff(&["udp"]));
    let text = |o: &std::process::Output| String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(whole.status.code(), Some(1), "{}", text(&whole));
    assert_eq!(icmp.status.code(), Some(0), "{}", text(&icmp));
    assert!(
        text(&icmp).starts_with("same: 1 flow(s) before, 1 after"),
        "{}",
        text(&icmp)
    );
    assert_eq!(udp.status.code(), Some(1), "{}", text(&udp));
    assert!(
        text(&udp).lines().all(|l| !l.starts_with("icmp ")) && text(&udp).contains("udp "),
        "{}",
        text(&udp)
    );
    drop(echo);
}
