//! What the bench starts and changes, each behind a guard that undoes it on every way out:
//! child processes (killed and reaped), the lab (taken down), kernel BPF run-time statistics
//! (switched off again). SIGINT/SIGTERM only set a flag, so that the bench unwinds through its
//! guards instead of dying with namespaces and tracers left behind.
use std::{
    fs,
    io::{BufRead as _, BufReader, Read},
    os::{
        fd::{FromRawFd as _, OwnedFd},
        unix::process::ExitStatusExt as _,
    },
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _, Result};
use nix::{
    libc,
    sys::signal::{self, SaFlags, SigAction, SigHandler, SigSet, Signal},
    unistd::Pid,
};

use crate::run;

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// SIGINT and SIGTERM set a flag that [`check_stop`] turns into an error.
pub(super) fn catch_signals() -> Result<()> {
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { signal::sigaction(sig, &action) }
            .with_context(|| format!("installing a {sig} handler"))?;
    }
    Ok(())
}

/// An error once SIGINT or SIGTERM arrived.
pub(super) fn check_stop() -> Result<()> {
    if STOP.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// Sleeps `d`, in steps, returning early with an error when interrupted.
pub(super) fn sleep(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    loop {
        check_stop()?;
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        thread::sleep(left.min(Duration::from_millis(50)));
    }
}

/// What a reader thread keeps of a child's stdout.
#[derive(Default)]
pub(super) struct Captured {
    /// The lines `keep` accepted.
    pub lines: Vec<String>,
    /// All lines read.
    pub count: u64,
}

/// How a child ended.
pub(super) struct Exit {
    pub status: ExitStatus,
    /// Its peak resident set size (`ru_maxrss` of wait4), in KiB.
    pub max_rss_kib: u64,
    pub stdout: Captured,
}

/// A child process that is killed and reaped when dropped, unless it ended already.
pub(super) struct Proc {
    name: String,
    child: Option<Child>,
    stdout: Option<JoinHandle<Captured>>,
    stderr: Option<JoinHandle<String>>,
}

impl Proc {
    /// Starts `cmd` with stdout read by a thread that keeps the lines `keep` accepts and sends
    /// the time of the first line to the returned receiver. Stderr is kept (its tail) for errors.
    pub(super) fn spawn(
        name: &str,
        cmd: &mut Command,
        keep: fn(&str) -> bool,
    ) -> Result<(Self, mpsc::Receiver<Instant>)> {
        let line = run::shown(cmd);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("could not start `{line}`"))?;
        let (first_tx, first_rx) = mpsc::channel();
        let out = child.stdout.take().map(|out| {
            thread::spawn(move || {
                let mut captured = Captured::default();
                for l in BufReader::new(out).lines() {
                    let Ok(l) = l else { break };
                    if captured.count == 0 {
                        // The receiver may be gone (nobody waits for the first line): fine.
                        first_tx.send(Instant::now()).ok();
                    }
                    captured.count += 1;
                    if keep(&l) {
                        captured.lines.push(l);
                    }
                }
                captured
            })
        });
        let err = child.stderr.take().map(|e| thread::spawn(move || tail(e)));
        Ok((
            Self {
                name: name.to_string(),
                child: Some(child),
                stdout: out,
                stderr: err,
            },
            first_rx,
        ))
    }

    pub(super) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends `sig` to the child, if it still runs.
    pub(super) fn signal(&self, sig: Signal) -> Result<()> {
        if let Some(pid) = self.pid() {
            signal::kill(Pid::from_raw(pid as i32), sig)
                .with_context(|| format!("sending {sig} to {}", self.name))?;
        }
        Ok(())
    }

    /// Waits up to `limit` for the child to end and reaps it with its resource usage; after
    /// `limit` the child is killed and this is an error.
    pub(super) fn wait(mut self, limit: Duration) -> Result<Exit> {
        let pid = self.pid().ok_or_else(|| anyhow!("no child"))? as libc::pid_t;
        let end = Instant::now() + limit;
        let (status, max_rss_kib) = loop {
            let mut status: libc::c_int = 0;
            // SAFETY: zeroed rusage is a valid value for wait4 to fill in.
            let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
            // SAFETY: `pid` is our own unreaped child; both pointers are valid.
            let got = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
            if got == pid {
                // Reaped: the pid is no longer ours to signal.
                self.child = None;
                break (
                    ExitStatus::from_raw(status),
                    u64::try_from(usage.ru_maxrss).unwrap_or(0),
                );
            }
            if got < 0 {
                return Err(std::io::Error::last_os_error())
                    .with_context(|| format!("waiting for {}", self.name));
            }
            if Instant::now() >= end {
                let tail = self.stderr_tail();
                bail!(
                    "{} did not end within {limit:?}; killed. stderr: {tail}",
                    self.name
                );
            }
            thread::sleep(Duration::from_millis(10));
        };
        let stdout = self
            .stdout
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default();
        Ok(Exit {
            status,
            max_rss_kib,
            stdout,
        })
    }

    /// Waits like [`Proc::wait`] and fails unless the child exited 0.
    pub(super) fn wait_ok(mut self, limit: Duration) -> Result<Exit> {
        let name = self.name.clone();
        let err = self.stderr.take();
        let exit = self.wait(limit)?;
        if !exit.status.success() {
            let tail = err.and_then(|t| t.join().ok()).unwrap_or_default();
            bail!("{name} failed ({}): {}", exit.status, tail.trim());
        }
        Ok(exit)
    }

    /// Whether the child has ended (without reaping it).
    pub(super) fn ended(&self) -> bool {
        let Some(pid) = self.pid() else {
            return true;
        };
        // SAFETY: a zeroed siginfo is valid for waitid to fill in.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: WNOWAIT leaves the child unreaped; `info` is a valid pointer.
        let rc = unsafe {
            libc::waitid(
                libc::P_PID,
                pid,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            )
        };
        // SAFETY: si_pid is set (non-zero) by waitid when a child changed state.
        rc == 0 && unsafe { info.si_pid() } != 0
    }

    /// The last lines of the child's stderr (waits for it to close: call after the child ended
    /// or was killed).
    fn stderr_tail(&mut self) -> String {
        self.kill();
        self.stderr
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
            .trim()
            .to_string()
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // It may have ended already (then kill fails with ESRCH-like errors): wait reaps it.
            child.kill().ok();
            if let Err(e) = child.wait() {
                eprintln!("[bench] reaping {}: {e}", self.name);
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The last 2 KiB of a stream.
fn tail(mut r: impl Read) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while let Ok(n) = r.read(&mut chunk) {
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > 8192 {
            buf.drain(..buf.len() - 2048);
        }
    }
    let start = buf.len().saturating_sub(2048);
    String::from_utf8_lossy(&buf[start..]).into_owned()
}

/// Runs `cmd` to its end within `limit` and returns its stdout; an error if it fails.
pub(super) fn output(name: &str, cmd: &mut Command, limit: Duration) -> Result<String> {
    let (p, _) = Proc::spawn(name, cmd, |_| true)?;
    let exit = p.wait_ok(limit)?;
    Ok(exit.stdout.lines.join("\n"))
}

/// `ip netns exec NS PROGRAM ARGS...`.
pub(super) fn in_ns(ns: &str, program: &str) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, program]);
    cmd
}

/// The lab the bench made; taken down on drop.
pub(super) struct LabGuard {
    pathtrace: PathBuf,
    pub lab: Lab,
}

/// The parts of `pathtrace lab up --json` the bench uses.
#[derive(Clone, Debug, Default)]
pub(super) struct Lab {
    pub name: String,
    pub ctr_netns: String,
    pub wan_netns: String,
    pub ctr_addr: String,
    pub wan_addr: String,
    pub ctr_ifname: String,
    pub host_veth: String,
    pub bridge: String,
    pub uplink: String,
}

impl LabGuard {
    /// `pathtrace lab up --name NAME --json`.
    pub(super) fn up(pathtrace: &Path, name: &str) -> Result<Self> {
        let out = output(
            "pathtrace lab up",
            Command::new(pathtrace).args(["lab", "up", "--name", name, "--json"]),
            Duration::from_secs(60),
        )?;
        let v: serde_json::Value = serde_json::from_str(out.trim())
            .with_context(|| format!("parsing `pathtrace lab up --json`: {out}"))?;
        let field = |k: &str| -> Result<String> {
            v[k].as_str()
                .map(str::to_string)
                .ok_or_else(|| anyhow!("`lab up --json` has no {k:?}: {out}"))
        };
        // From here on the guard owns the lab, so a parse error below still takes it down.
        let mut guard = Self {
            pathtrace: pathtrace.to_path_buf(),
            lab: Lab {
                name: name.to_string(),
                ..Lab::default()
            },
        };
        guard.lab = Lab {
            name: field("name")?,
            ctr_netns: field("ctr_netns")?,
            wan_netns: field("wan_netns")?,
            ctr_addr: field("ctr_addr")?,
            wan_addr: field("wan_addr")?,
            ctr_ifname: field("ctr_ifname")?,
            host_veth: field("host_veth")?,
            bridge: field("bridge")?,
            uplink: field("uplink")?,
        };
        Ok(guard)
    }
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        // The lab's MASQUERADE left conntrack entries (100k of them after the flow run) in the
        // host's table; remove them rather than leave them to time out. `conntrack -D` exits 1
        // when nothing matched, which is fine.
        if !self.lab.ctr_addr.is_empty() {
            Command::new("conntrack")
                .args(["-D", "-s", &self.lab.ctr_addr])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .ok();
        }
        let mut cmd = Command::new(&self.pathtrace);
        cmd.args(["lab", "down", &self.lab.name]);
        match output("pathtrace lab down", &mut cmd, Duration::from_secs(60)) {
            Ok(_) => eprintln!("[bench] lab {} removed", self.lab.name),
            Err(e) => eprintln!(
                "[bench] removing lab {}: {e:#}; run `pathtrace lab down {}`",
                self.lab.name, self.lab.name
            ),
        }
    }
}

/// Kernel BPF run-time statistics (what `sysctl kernel.bpf_stats_enabled=1` switches on), on
/// while this lives.
///
/// Taken with `bpf(BPF_ENABLE_STATS)` rather than by writing the sysctl: both turn on the same
/// static key, but the kernel turns it off again when the fd closes, so the statistics cannot
/// stay on after the bench, even when it is killed. (The sysctl keeps reading 0: it shows only
/// what was written to it.)
pub(super) struct BpfStats(#[expect(dead_code, reason = "held for its Drop (close)")] OwnedFd);

impl BpfStats {
    pub(super) fn enable() -> Result<Self> {
        const BPF_ENABLE_STATS: libc::c_long = 32;
        const BPF_STATS_RUN_TIME: u32 = 0;
        // `union bpf_attr` for BPF_ENABLE_STATS is `{ __u32 type; }`; the kernel wants the rest
        // of what we pass to be zero.
        let attr = [BPF_STATS_RUN_TIME, 0, 0, 0];
        // SAFETY: the attr buffer is valid for its size, which we pass.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_ENABLE_STATS,
                attr.as_ptr(),
                size_of_val(&attr),
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error())
                .context("bpf(BPF_ENABLE_STATS): kernel BPF statistics unavailable");
        }
        let fd = i32::try_from(fd).context("bpf() returned an fd out of range")?;
        // SAFETY: the kernel just gave us this fd, nobody else owns it.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }
}

/// A program's name, from `bpftool -j prog show id ID`.
pub(super) fn prog_name(id: u32) -> Option<String> {
    let mut cmd = Command::new("bpftool");
    cmd.args(["-j", "prog", "show", "id", &id.to_string()]);
    let out = output("bpftool", &mut cmd, Duration::from_secs(5)).ok()?;
    let v: serde_json::Value = serde_json::from_str(&out).ok()?;
    v["name"].as_str().map(str::to_string)
}

/// A BPF program a process holds, from `/proc/PID/fdinfo`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct ProgStats {
    pub id: u32,
    pub run_time_ns: u64,
    pub run_cnt: u64,
}

/// What `/proc/PID/fdinfo` tells about a process's BPF objects.
#[derive(Debug, Default)]
pub(super) struct BpfFds {
    /// BPF links (TCX attachments).
    pub links: usize,
    /// Its tc (sched_cls) programs, each once.
    pub tc_progs: Vec<ProgStats>,
}

/// Reads `/proc/PID/fdinfo/*`. The kernel prints `link_type:` for link fds and `prog_type:`,
/// `prog_id:`, `run_time_ns:`, `run_cnt:` for program fds (the same counters bpftool shows).
pub(super) fn bpf_fds(pid: u32) -> Result<BpfFds> {
    const SCHED_CLS: u64 = 3;
    let dir = format!("/proc/{pid}/fdinfo");
    let mut found = BpfFds::default();
    for entry in fs::read_dir(&dir).with_context(|| format!("listing {dir}"))? {
        let Ok(entry) = entry else { continue };
        // An fd may close between listing and reading: skip it.
        let Ok(text) = fs::read_to_string(entry.path()) else {
            continue;
        };
        let field = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(k))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        if text.lines().any(|l| l.starts_with("link_type:")) {
            found.links += 1;
        } else if field("prog_type:") == Some(SCHED_CLS) {
            let (Some(id), Some(run_time_ns), Some(run_cnt)) =
                (field("prog_id:"), field("run_time_ns:"), field("run_cnt:"))
            else {
                continue;
            };
            let id = u32::try_from(id).unwrap_or(u32::MAX);
            if !found.tc_progs.iter().any(|p| p.id == id) {
                found.tc_progs.push(ProgStats {
                    id,
                    run_time_ns,
                    run_cnt,
                });
            }
        }
    }
    Ok(found)
}
