//! More fixtures for privileged end-to-end tests that run the real `pathtrace` binary on the
//! built-in lab: a snapshot of the kernel state pathtrace could leave behind (programs, links, tc
//! qdiscs/filters, qdisc records), a spawned binary that has announced it is tracing, another
//! tool's tc program ([`Foreign`]), and a checked bulk transfer ([`send`], [`receive`]).
//!
//! The machine is shared: other people may load `pathtrace_*` programs at the same time, so
//! comparisons of the global program and link lists leave out what another live process holds
//! (see [`KernelState::diff`]).

use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader, Read, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    sync::Arc,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use super::BIN;
use tracer::{
    attach::{AttachTarget, LoadOptions, TcMode, Tracer},
    discover::netns::Netns,
    lab::Lab,
    model::{Direction, Hook, Place, Role},
};
use tracer_common::config::FilterConfig;

/// `tc` output for the lab's four traced interfaces (qdiscs, ingress and egress filters).
pub(crate) fn tc_state(lab: &Lab) -> String {
    let mut all = String::new();
    for (ns, dev) in lab_interfaces(lab) {
        for args in [
            vec!["qdisc", "show", "dev", dev],
            vec!["filter", "show", "dev", dev, "ingress"],
            vec!["filter", "show", "dev", dev, "egress"],
        ] {
            let mut cmd = Command::new("tc");
            if let Some(ns) = ns {
                cmd.args(["-n", ns]);
            }
            let out = cmd.args(&args).output().expect("run tc");
            all.push_str(&format!("[{} {}]\n", ns.unwrap_or("host"), args.join(" ")));
            all.push_str(&String::from_utf8_lossy(&out.stdout));
        }
    }
    all
}

fn lab_interfaces(lab: &Lab) -> [(Option<&str>, &str); 4] {
    [
        (None, lab.host_veth.as_str()),
        (None, lab.bridge.as_str()),
        (None, lab.uplink.as_str()),
        (Some(lab.ctr_netns.as_str()), lab.ctr_ifname.as_str()),
    ]
}

/// What pathtrace can leave in the kernel and in /run: loaded `pathtrace_*` programs, BPF links
/// to them, the lab's tc state, and clsact records (`/run/pathtrace/qdiscs`) for lab interfaces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct KernelState {
    pub programs: BTreeSet<(u32, String)>,
    /// (link id, program id)
    pub links: BTreeSet<(u32, u32)>,
    pub tc: String,
    pub markers: BTreeSet<String>,
}

impl KernelState {
    pub(crate) fn take(lab: &Lab) -> Self {
        let programs = pathtrace_programs();
        let ids: BTreeSet<u32> = programs.iter().map(|(id, _)| *id).collect();
        let links = aya::programs::loaded_links()
            .filter_map(Result::ok)
            .filter(|l| ids.contains(&l.program_id()))
            .map(|l| (l.id(), l.program_id()))
            .collect();
        // The lab's interfaces as (namespace inode, name): other namespaces have an eth0 too.
        let host = Netns::current().expect("host netns").inode();
        let ctr = lab.ctr_ns().expect("ctr netns").inode();
        let ours: Vec<(u64, &str)> = lab_interfaces(lab)
            .iter()
            .map(|(ns, d)| (if ns.is_some() { ctr } else { host }, *d))
            .collect();
        let markers = tracer::attach::markers::list()
            .into_iter()
            .filter(|m| ours.contains(&(m.netns_inode, m.ifname.as_str())))
            .map(|m| format!("{}-{} {} pid {}", m.netns_inode, m.ifindex, m.ifname, m.pid))
            .collect();
        Self {
            programs,
            links,
            tc: tc_state(lab),
            markers,
        }
    }

    /// Waits up to 3 s (cls_bpf releases a program after an RCU grace period) until the state is
    /// back to `self` as [`diff`](Self::diff) sees it, else fails naming the differences.
    pub(crate) fn assert_restored(&self, lab: &Lab, what: &str) {
        let (mut diff, mut notes) = (Vec::new(), Vec::new());
        poll(Duration::from_secs(3), || {
            (diff, notes) = KernelState::take(lab).diff(self);
            diff.is_empty()
        });
        for n in notes {
            eprintln!("note: {what}: {n}: not ours");
        }
        assert!(diff.is_empty(), "{what}:\n{}", diff.join("\n"));
    }

    /// Differences from `before` that are ours to answer for: new programs and links, except those
    /// a live process other than this one holds (another user's pathtrace on this shared machine),
    /// which come back as notes. No differences: nothing was left behind.
    pub(crate) fn diff(&self, before: &KernelState) -> (Vec<String>, Vec<String>) {
        let held = held_by_others();
        let (mut out, mut notes) = (Vec::new(), Vec::new());
        for p in self.programs.difference(&before.programs) {
            if held.programs.contains(&p.0) {
                notes.push(format!(
                    "program {p:?} is new, but another process holds it"
                ));
            } else {
                out.push(format!("program left loaded: id {} {}", p.0, p.1));
            }
        }
        for l in self.links.difference(&before.links) {
            if held.links.contains(&l.0) {
                notes.push(format!("link {l:?} is new, but another process holds it"));
            } else {
                out.push(format!("link left: id {} (program {})", l.0, l.1));
            }
        }
        if self.tc != before.tc {
            out.push(format!(
                "tc state differs:\n--- before\n{}--- after\n{}",
                before.tc, self.tc
            ));
        }
        if self.markers != before.markers {
            out.push(format!(
                "qdisc records differ: before {:?}, after {:?}",
                before.markers, self.markers
            ));
        }
        (out, notes)
    }
}

/// Loaded programs named `pathtrace_*` (hooks `pathtrace_h<N>`, the drop tracer), with their ids.
pub(crate) fn pathtrace_programs() -> BTreeSet<(u32, String)> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter_map(|p| Some((p.id(), p.name_as_str()?.to_string())))
        .filter(|(_, n)| n.starts_with("pathtrace_"))
        .collect()
}

/// BPF program and link ids a process holds through file descriptors (from /proc/PID/fdinfo).
#[derive(Debug, Default)]
pub(crate) struct HeldIds {
    pub programs: BTreeSet<u32>,
    pub links: BTreeSet<u32>,
}

/// Waits (up to `limit`) until the pathtrace process `pid` holds at least `links` BPF links
/// (TCX: one per attached hook) and has made no new one for 300 ms (links are made one after
/// another as the programs verify, some ms apart): its hooks are attached. False when it never
/// got there.
pub(crate) fn wait_attached(pid: u32, links: usize, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    let (mut seen, mut since) = (0, Instant::now());
    while Instant::now() < deadline {
        let now = held_by(pid).links.len();
        if now != seen {
            (seen, since) = (now, Instant::now());
        } else if seen >= links && since.elapsed() >= Duration::from_millis(300) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

pub(crate) fn held_by(pid: u32) -> HeldIds {
    let mut held = HeldIds::default();
    add_held(pid, &mut held);
    held
}

fn add_held(pid: u32, held: &mut HeldIds) {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return;
    };
    for e in dir.filter_map(Result::ok) {
        let Ok(info) = std::fs::read_to_string(e.path()) else {
            continue;
        };
        let field = |key: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().parse::<u32>().ok())
        };
        if let Some(link) = field("link_id:") {
            held.links.insert(link);
        }
        if let Some(prog) = field("prog_id:") {
            held.programs.insert(prog);
        }
    }
}

/// Ids held by every live process except this one.
fn held_by_others() -> HeldIds {
    let mut held = HeldIds::default();
    for pid in pids().into_iter().filter(|p| *p != std::process::id()) {
        add_held(pid, &mut held);
    }
    held
}

fn pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Pids of running `pathtrace` processes other than `except`.
pub(crate) fn other_pathtraces(except: &[u32]) -> Vec<u32> {
    pids()
        .into_iter()
        .filter(|p| !except.contains(p))
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm"))
                .is_ok_and(|c| c.trim() == "pathtrace")
        })
        .collect()
}

/// Waits (up to `limit`) until no other pathtrace runs; returns whether that happened.
pub(crate) fn wait_until_alone(limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        let others = other_pathtraces(&[]);
        if others.is_empty() {
            return true;
        }
        if Instant::now() >= deadline {
            eprintln!("other pathtrace processes still running: {others:?}");
            return false;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Polls `cond` every 50 ms until it holds or `limit` passes; returns its last value.
pub(crate) fn poll(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A spawned `pathtrace` (text mode) that printed its "tracing N hooks" line; the rest of its
/// stdout and its stderr are collected on threads.
pub(crate) struct Running {
    pub child: Child,
    pub first_line: String,
    stdout: Option<JoinHandle<String>>,
    stderr: Option<JoinHandle<String>>,
}

/// What a finished pathtrace printed.
#[derive(Debug)]
pub(crate) struct Finished {
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Running {
    /// Starts `pathtrace ARGS` and waits (up to 20 s) for its first line, which must say it traces.
    pub(crate) fn start(args: &[&str]) -> Self {
        let mut child = Command::new(BIN)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn pathtrace");
        let mut stderr_pipe = child.stderr.take().expect("stderr");
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            // A read error only shortens the text used in failure messages.
            stderr_pipe.read_to_string(&mut s).ok();
            s
        });
        let (tx, rx) = std::sync::mpsc::channel();
        let stdout_pipe = child.stdout.take().expect("stdout");
        let stdout = std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout_pipe);
            let mut first = String::new();
            reader.read_line(&mut first).ok();
            // The receiver may have given up waiting; then nobody needs the line.
            tx.send(first.trim_end().to_string()).ok();
            let mut rest = String::new();
            reader.read_to_string(&mut rest).ok();
            rest
        });
        let first_line = rx.recv_timeout(Duration::from_secs(20)).unwrap_or_default();
        let mut running = Self {
            child,
            first_line,
            stdout: Some(stdout),
            stderr: Some(stderr),
        };
        if !running.first_line.starts_with("tracing ") {
            running.signal(nix::sys::signal::SIGKILL);
            let f = running.wait();
            panic!(
                "pathtrace {args:?} did not start tracing: first line {:?}, stderr {}",
                f.stdout, f.stderr
            );
        }
        running
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid() as i32), sig).expect("kill");
    }

    /// Waits for the exit and returns what it printed after the first line.
    pub(crate) fn wait(&mut self) -> Finished {
        let status = self.child.wait().expect("wait for pathtrace");
        let stdout = self
            .stdout
            .take()
            .map(|t| t.join().unwrap_or_default())
            .unwrap_or_default();
        let stderr = self
            .stderr
            .take()
            .map(|t| t.join().unwrap_or_default())
            .unwrap_or_default();
        Finished {
            status,
            stdout,
            stderr,
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.signal(nix::sys::signal::SIGINT);
            if !poll(Duration::from_secs(5), || {
                !matches!(self.child.try_wait(), Ok(None))
            }) {
                self.signal(nix::sys::signal::SIGKILL);
            }
            self.child.wait().ok();
        }
    }
}

/// The hook table of a text summary: (label, dir, seen, filtered, emitted, lost) per row.
pub(crate) fn summary_rows(text: &str) -> Vec<(String, String, [u64; 4])> {
    text.lines()
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            // Aggregate mode adds a `counted` column: packets only counted in the kernel, taken
            // in like the emitted ones (seen = filtered + emitted + lost + counted).
            if cols.len() != 6 && cols.len() != 7 {
                return None;
            }
            let mut n = [0u64; 5];
            for (slot, c) in n.iter_mut().zip(&cols[2..]) {
                *slot = c.parse().ok()?;
            }
            let [seen, filtered, emitted, lost, counted] = n;
            Some((
                cols[0].to_string(),
                cols[1].to_string(),
                [seen, filtered, emitted + counted, lost],
            ))
        })
        .collect()
}

/// FNV-1a, 64 bit.
#[derive(Clone, Copy)]
pub(crate) struct Fnv(pub u64);

impl Fnv {
    pub(crate) fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
    pub(crate) fn update(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// A reproducible pseudo-random byte stream (xorshift64*), so the receiver can check every byte.
pub(crate) struct Stream {
    state: u64,
    word: [u8; 8],
    used: usize,
}

impl Stream {
    pub(crate) fn new() -> Self {
        Self {
            state: 0x9e37_79b9_7f4a_7c15,
            word: [0; 8],
            used: 8,
        }
    }
    pub(crate) fn byte(&mut self) -> u8 {
        if self.used == 8 {
            self.state ^= self.state << 13;
            self.state ^= self.state >> 7;
            self.state ^= self.state << 17;
            self.word = self.state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            self.used = 0;
        }
        self.used += 1;
        self.word[self.used - 1]
    }
    pub(crate) fn fill(&mut self, buf: &mut [u8]) {
        buf.iter_mut().for_each(|b| *b = self.byte());
    }
}

/// Removes a route this test added, also when the test fails.
pub(crate) struct RouteGuard(pub &'static str);

impl Drop for RouteGuard {
    fn drop(&mut self) {
        let ok = Command::new("ip")
            .args(["route", "del", "unreachable", self.0])
            .status();
        if !ok.is_ok_and(|s| s.success()) {
            eprintln!("could not remove the test route unreachable {}", self.0);
        }
    }
}

/// A process that is killed on drop.
pub(crate) struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        self.0.kill().ok();
        self.0.wait().ok();
    }
}

pub(crate) fn in_ns(ns: &str, args: &[&str]) -> Proc {
    Proc(
        Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("ip netns exec"),
    )
}

/// What `iperf3 -u ... -J` says it did: datagrams sent, and of them the receiver lost.
#[derive(Clone, Copy, Debug)]
pub(crate) struct UdpTotals {
    pub sent: u64,
    pub lost: u64,
}

/// `iperf3 -c server -p port` in `ns`, UDP of 64-byte datagrams at `rate` (iperf3's `-b`; "0":
/// as fast as it can) for `secs`, against an `iperf3 -s` the test started.
pub(crate) fn iperf_udp(ns: &str, server: &str, port: &str, rate: &str, secs: &str) -> UdpTotals {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "iperf3", "-c", server, "-p", port])
        .args(["-u", "-b", rate, "-l", "64", "-t", secs, "-J"])
        .stderr(Stdio::inherit())
        .output()
        .expect("run iperf3");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("iperf3 -J: {e}: {}", String::from_utf8_lossy(&out.stdout)));
    let sum = &v["end"]["sum"];
    match (sum["packets"].as_u64(), sum["lost_packets"].as_u64()) {
        (Some(sent), Some(lost)) => UdpTotals { sent, lost },
        _ => panic!("iperf3 gave no UDP totals: {v}"),
    }
}

/// Another tool's tc program: an independent load of the kernel object through the library,
/// attached at the lab bridge's ingress. Its `seen` counter counts every packet it ran on.
pub(crate) struct Foreign {
    tracer: Tracer,
    pub slot: u8,
    prog_id: u32,
    pub mode: TcMode,
}

impl Foreign {
    pub(crate) fn attach(lab: &Lab, mode: TcMode, slot: u8) -> Self {
        let opts = LoadOptions {
            filter: FilterConfig::NONE,
            ring_bytes: 1 << 16,
            kernel_log: false,
            drop_reasons: false,
            mode: tracer_common::config::ModeConfig::EVERY_PACKET,
            expression: None,
        };
        let mut tracer = Tracer::load(&opts, mode).expect("load the foreign program");
        let ifindex = std::fs::read_to_string(format!("/sys/class/net/{}/ifindex", lab.bridge))
            .expect("bridge ifindex")
            .trim()
            .parse()
            .expect("ifindex");
        tracer
            .attach(AttachTarget {
                hook: Hook {
                    slot,
                    ns_label: "host".into(),
                    ifname: lab.bridge.clone(),
                    ifindex,
                    direction: Direction::Ingress,
                    place: Place::Bridge,
                    // Shared with nothing of interest: every packet is counted and filtered.
                    role: Role::Shared,
                },
                netns: Arc::new(Netns::current().expect("host netns")),
            })
            .expect("attach the foreign program");
        let name = format!("pathtrace_h{slot}");
        let prog: &aya::programs::SchedClassifier = tracer
            .ebpf_mut()
            .program(&name)
            .expect("program")
            .try_into()
            .expect("classifier");
        let prog_id = prog.info().expect("program info").id();
        Self {
            tracer,
            slot,
            prog_id,
            mode,
        }
    }

    pub(crate) fn seen(&self) -> u64 {
        self.tracer.counters().expect("counters")[0].1.seen
    }

    /// Its link (TCX) or filter (netlink) is still in place.
    pub(crate) fn attached(&self, lab: &Lab) -> bool {
        match self.mode {
            TcMode::Netlink => {
                let out = Command::new("tc")
                    .args(["filter", "show", "dev", &lab.bridge, "ingress"])
                    .output()
                    .expect("tc");
                let text = String::from_utf8_lossy(&out.stdout);
                text.contains(&format!("pathtrace_h{} ", self.slot))
                    && text.contains(&format!(" id {} ", self.prog_id))
            }
            _ => aya::programs::loaded_links()
                .filter_map(Result::ok)
                .any(|l| l.program_id() == self.prog_id),
        }
    }
}

pub(crate) const TOTAL: usize = 2 << 20;

/// What the receiver saw: bytes, digest, and the offset of the first byte that differs from the
/// stream.
pub(crate) type Received = (usize, u64, Option<usize>);

pub(crate) fn receive(listener: TcpListener) -> std::io::Result<Received> {
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut conn = loop {
        match listener.accept() {
            Ok((c, _)) => break c,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(e),
        }
    };
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let (mut fnv, mut expect, mut total, mut bad) = (Fnv::new(), Stream::new(), 0, None);
    let mut buf = vec![0u8; 65536];
    loop {
        let n = conn.read(&mut buf)?;
        if n == 0 {
            return Ok((total, fnv.0, bad));
        }
        fnv.update(&buf[..n]);
        for (i, b) in buf[..n].iter().enumerate() {
            if *b != expect.byte() && bad.is_none() {
                bad = Some(total + i);
            }
        }
        total += n;
    }
}

pub(crate) fn send(ctr: &Netns, dst: SocketAddr) -> (usize, u64) {
    ctr.run(|| {
        let mut s = TcpStream::connect_timeout(&dst, Duration::from_secs(5)).expect("connect");
        s.set_write_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let (mut fnv, mut gen, mut buf) = (Fnv::new(), Stream::new(), vec![0u8; 65536]);
        for _ in 0..TOTAL / buf.len() {
            gen.fill(&mut buf);
            fnv.update(&buf);
            s.write_all(&buf).expect("send");
        }
        s.shutdown(std::net::Shutdown::Write).expect("shutdown");
        (TOTAL, fnv.0)
    })
    .expect("ctr netns")
}
