//! Running the built `pathtrace` on the lab, the way a user does, and reading what it reports:
//! the JSON summary's per-hook counters, its peak RSS, and its programs' kernel run time.
use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use nix::sys::signal::Signal;

use super::proc::{self, bpf_fds, Lab, Proc, ProgStats};

/// Hooks on the lab's path: eth0, host veth, bridge, uplink, each ingress and egress.
pub(super) const HOOKS: usize = 8;

/// One hook's line of the summary.
#[derive(Clone, Debug, Default)]
pub(super) struct HookCounts {
    pub hook: String,
    pub dir: String,
    pub seen: u64,
    pub filtered: u64,
    pub emitted: u64,
    pub lost: u64,
    /// Aggregate mode: counted in the kernel's flow map, sent as no event.
    pub aggregated: u64,
}

impl HookCounts {
    /// The kernel counts every packet once as filtered, emitted, lost or aggregated.
    pub(super) fn adds_up(&self) -> bool {
        self.seen == self.filtered + self.emitted + self.lost + self.aggregated
    }
}

/// `{"type":"summary",...}`: the last line of `pathtrace --json`.
#[derive(Clone, Debug, Default)]
pub(super) struct Summary {
    pub flows: u64,
    pub evicted: u64,
    pub hooks: Vec<HookCounts>,
    /// `aggregate` or `every_packet`.
    pub mode: String,
    /// Packets the kernel counted that matched no flow.
    pub unattributed: u64,
}

impl Summary {
    fn parse(line: &str) -> Result<Self> {
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("parsing summary {line}"))?;
        let n = |v: &serde_json::Value, k: &str| v[k].as_u64().unwrap_or(0);
        let hooks = v["hooks"]
            .as_array()
            .with_context(|| format!("summary without hooks: {line}"))?
            .iter()
            .map(|h| HookCounts {
                hook: h["hook"].as_str().unwrap_or("?").to_string(),
                dir: h["dir"].as_str().unwrap_or("?").to_string(),
                seen: n(h, "seen"),
                filtered: n(h, "filtered"),
                emitted: n(h, "emitted"),
                lost: n(h, "lost"),
                aggregated: n(h, "aggregated"),
            })
            .collect();
        Ok(Self {
            flows: n(&v, "flows"),
            evicted: n(&v, "evicted"),
            hooks,
            mode: v["mode"].as_str().unwrap_or("?").to_string(),
            unattributed: n(&v, "unattributed_packets"),
        })
    }

    /// Packets the kernel saw and did not filter out, per hook: what the flows' per-hop
    /// packet counts must add up to.
    pub(super) fn admitted(&self, hook: &str, dir: &str) -> u64 {
        self.hooks
            .iter()
            .filter(|h| h.hook == hook && h.dir == dir)
            .map(|h| h.seen - h.filtered)
            .sum()
    }

    pub(super) fn emitted(&self) -> u64 {
        self.hooks.iter().map(|h| h.emitted).sum()
    }

    pub(super) fn lost(&self) -> u64 {
        self.hooks.iter().map(|h| h.lost).sum()
    }

    /// The smallest share of packets seen that were emitted or lost (i.e. not filtered), over
    /// the hooks that saw any.
    pub(super) fn min_unfiltered_share(&self) -> f64 {
        self.hooks
            .iter()
            .filter(|h| h.seen > 0)
            .map(|h| (h.emitted + h.lost) as f64 / h.seen as f64)
            .fold(1.0, f64::min)
    }

    /// Events sent (emitted or lost) per packet the hooks admitted.
    pub(super) fn events_per_admitted(&self) -> f64 {
        let admitted: u64 = self.hooks.iter().map(|h| h.seen - h.filtered).sum();
        (self.emitted() + self.lost()) as f64 / admitted.max(1) as f64
    }

    /// Packets seen at the container's eth0 on the way out: the rate offered to the path.
    pub(super) fn ctr_egress_seen(&self) -> u64 {
        self.hooks
            .iter()
            .find(|h| h.dir == "egress" && h.hook.contains("eth0"))
            .map_or(0, |h| h.seen)
    }
}

/// The per-hop packet counts of a trace's flows in their final state, summed per hook:
/// `(hook, dir) -> packets`.
#[derive(Clone, Debug, Default)]
pub(super) struct HopTotals {
    pub per_hook: std::collections::BTreeMap<(String, String), u64>,
}

impl HopTotals {
    /// From the JSON flow lines: the last line of each flow id is its final state.
    fn of(lines: &[String]) -> Self {
        let mut last: std::collections::BTreeMap<u64, serde_json::Value> = Default::default();
        for l in lines.iter().filter(|l| l.starts_with(FLOW_LINE)) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(l) {
                last.insert(v["id"].as_u64().unwrap_or(0), v);
            }
        }
        let mut per_hook = std::collections::BTreeMap::new();
        for v in last.values() {
            for hop in ["hops", "hops_back"]
                .iter()
                .filter_map(|k| v[*k].as_array())
                .flatten()
            {
                let key = (
                    hop["hook"].as_str().unwrap_or("?").to_string(),
                    hop["dir"].as_str().unwrap_or("?").to_string(),
                );
                *per_hook.entry(key).or_default() += hop["packets"].as_u64().unwrap_or(0);
            }
        }
        Self { per_hook }
    }
}

const FLOW_LINE: &str = r#"{"type":"flow""#;
const SUMMARY_LINE: &str = r#"{"type":"summary""#;

/// What a finished trace reported.
pub(super) struct Traced {
    pub summary: Summary,
    /// The flows' per-hop totals, when they were kept ([`Trace::start_keeping_flows`]).
    pub hops: HopTotals,
    pub max_rss_kib: u64,
    pub output_lines: u64,
}

/// A running `pathtrace --netns <ctr> --to <wan> --json`; killed if dropped.
pub(super) struct Trace {
    proc: Proc,
}

impl Trace {
    /// Starts pathtrace with `extra` flags and returns once all its hooks are attached (it then
    /// holds [`HOOKS`] BPF links), within `limit`.
    pub(super) fn start(
        pathtrace: &Path,
        lab: &Lab,
        extra: &[&str],
        limit: Duration,
    ) -> Result<Self> {
        Self::start_with(pathtrace, lab, extra, limit, false)
    }

    /// [`Trace::start`], keeping the flow lines too (for [`Traced::hops`]).
    pub(super) fn start_keeping_flows(
        pathtrace: &Path,
        lab: &Lab,
        extra: &[&str],
        limit: Duration,
    ) -> Result<Self> {
        Self::start_with(pathtrace, lab, extra, limit, true)
    }

    fn start_with(
        pathtrace: &Path,
        lab: &Lab,
        extra: &[&str],
        limit: Duration,
        flows: bool,
    ) -> Result<Self> {
        let mut cmd = command(pathtrace, lab);
        cmd.arg("--json").args(extra);
        let keep: fn(&str) -> bool = if flows {
            |l| l.starts_with(SUMMARY_LINE) || l.starts_with(FLOW_LINE)
        } else {
            |l| l.starts_with(SUMMARY_LINE)
        };
        let (proc, _) = Proc::spawn("pathtrace", &mut cmd, keep)?;
        let pid = proc.pid().context("pathtrace has no pid")?;
        let end = Instant::now() + limit;
        loop {
            proc::check_stop()?;
            // fdinfo can be unreadable for a moment while the process starts.
            if bpf_fds(pid).is_ok_and(|f| f.links >= HOOKS) {
                return Ok(Self { proc });
            }
            if proc.ended() {
                let exit = proc.wait_ok(Duration::from_secs(5))?;
                bail!("pathtrace ended before attaching ({})", exit.status);
            }
            if Instant::now() >= end {
                bail!("pathtrace did not attach {HOOKS} hooks within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Its tc programs' kernel run-time counters now.
    pub(super) fn prog_stats(&self) -> Result<Vec<ProgStats>> {
        let pid = self.proc.pid().context("pathtrace has ended")?;
        Ok(bpf_fds(pid)?.tc_progs)
    }

    /// The CPU time it has used so far, user and system, in seconds (`/proc/PID/stat`).
    pub(super) fn cpu_secs_now(&self) -> Result<f64> {
        let pid = self.proc.pid().context("pathtrace has ended")?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .context("reading pathtrace's /proc stat")?;
        // After the command name in parentheses: state is field 3, utime 14, stime 15.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
        let (user, system) = (ticks(11), ticks(12));
        // In USER_HZ ticks, which Linux keeps at 100 whatever the kernel's own HZ.
        const USER_HZ: f64 = 100.0;
        match (user, system) {
            (Some(u), Some(s)) => Ok((u + s) / USER_HZ),
            _ => bail!("no CPU times in /proc/{pid}/stat"),
        }
    }

    /// Its resident set size now (`VmRSS`), in KiB.
    pub(super) fn rss_kib(&self) -> Result<u64> {
        let pid = self.proc.pid().context("pathtrace has ended")?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .context("reading pathtrace's /proc status")?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .context("no VmRSS in /proc/PID/status")
    }

    /// SIGINT, then its summary and peak RSS once it has printed everything.
    pub(super) fn stop(self, limit: Duration) -> Result<Traced> {
        self.proc.signal(Signal::SIGINT)?;
        let exit = self.proc.wait_ok(limit)?;
        let line = exit
            .stdout
            .lines
            .last()
            .context("pathtrace printed no summary")?;
        Ok(Traced {
            summary: Summary::parse(line)?,
            hops: HopTotals::of(&exit.stdout.lines),
            max_rss_kib: exit.max_rss_kib,
            output_lines: exit.stdout.count,
        })
    }
}

/// `pathtrace --netns <ctr> --to <wan>`. `--to` is what makes pathtrace pick the lab's uplink
/// (by route lookup); without it, it would take the host's default route's interface. It also
/// sets an address filter, which every packet of the bench matches.
pub(super) fn command(pathtrace: &Path, lab: &Lab) -> Command {
    let mut cmd = Command::new(pathtrace);
    cmd.args(["--netns", &lab.ctr_netns, "--to", &lab.wan_addr]);
    cmd
}

/// Time from starting `pathtrace --tc-mode MODE` (text mode) until it prints "tracing 8
/// hooks": discovery, loading and verifying the programs, attaching them.
pub(super) fn time_to_attach(pathtrace: &Path, lab: &Lab, mode: &str) -> Result<Duration> {
    let mut cmd = command(pathtrace, lab);
    cmd.args(["--duration", "30s", "--tc-mode", mode]);
    let started = Instant::now();
    let (proc, first) = Proc::spawn("pathtrace", &mut cmd, |l| l.starts_with("tracing "))?;
    let at = first
        .recv_timeout(Duration::from_secs(15))
        .context("pathtrace printed nothing within 15 s")?;
    proc.signal(Signal::SIGINT)?;
    let exit = proc.wait_ok(Duration::from_secs(15))?;
    let line = exit.stdout.lines.first().cloned().unwrap_or_default();
    if !line.starts_with(&format!("tracing {HOOKS} hooks")) {
        bail!("pathtrace's first line is not \"tracing {HOOKS} hooks ...\": {line:?}");
    }
    Ok(at - started)
}
