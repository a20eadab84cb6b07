//! The measurements, one function per table section. Each makes and removes what it needs
//! (tracers, tcpdumps, sockets); the lab and the iperf3 server are the caller's.
use std::{net::Ipv4Addr, path::Path, time::Duration};

use anyhow::{Context as _, Result};

use super::{
    floor::EmptyProgram,
    flows::{self, Sinks},
    proc::{self, BpfStats, Lab},
    trace::{self, Summary, Trace},
    traffic::{self, IperfResult, Load, Tcpdumps},
};

/// How long a tracer may take to attach, and to print its report after SIGINT.
const ATTACH_LIMIT: Duration = Duration::from_secs(20);
const REPORT_LIMIT: Duration = Duration::from_secs(60);

/// What runs beside the load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Watcher {
    Untraced,
    /// pathtrace on all 8 hooks with a filter no packet matches (`--filter-port 1`): what the
    /// hooks cost when they do almost nothing.
    Floor,
    /// pathtrace on all 8 hooks in its default mode: counted in the kernel, events sampled.
    Traced,
    /// pathtrace on all 8 hooks with `--every-packet`: an event per packet per hook.
    EveryPacket,
    /// tcpdump on the lab's 4 interfaces.
    Tcpdump,
}

impl Watcher {
    /// pathtrace's flags for this watcher (`None`: no pathtrace).
    fn flags(self) -> Option<&'static [&'static str]> {
        match self {
            Self::Floor => Some(&["--filter-port", "1"]),
            Self::Traced => Some(&[]),
            Self::EveryPacket => Some(&["--every-packet"]),
            Self::Untraced | Self::Tcpdump => None,
        }
    }
}

/// One load run with a watcher beside it.
pub(super) struct Run {
    pub iperf: IperfResult,
    /// The tracer's summary, for the pathtrace watchers.
    pub summary: Option<Summary>,
    /// The tracer's CPU time (user + system) while the load ran, for the pathtrace watchers.
    pub cpu_secs: f64,
}

/// Runs `load` for `secs` with `watcher` beside it.
pub(super) fn run_with(
    pathtrace: &Path,
    lab: &Lab,
    watcher: Watcher,
    load: Load,
    secs: u64,
) -> Result<Run> {
    match watcher {
        Watcher::Untraced => Ok(Run {
            iperf: traffic::iperf(lab, load, secs)?,
            summary: None,
            cpu_secs: 0.0,
        }),
        Watcher::Tcpdump => {
            let _dumps = Tcpdumps::start(lab)?;
            Ok(Run {
                iperf: traffic::iperf(lab, load, secs)?,
                summary: None,
                cpu_secs: 0.0,
            })
        }
        Watcher::Floor | Watcher::Traced | Watcher::EveryPacket => {
            let flags = watcher.flags().unwrap_or_default();
            let tracer = Trace::start(pathtrace, lab, flags, ATTACH_LIMIT)?;
            // The CPU it takes while the load runs: not what loading and verifying the programs
            // took before (hundreds of ms of system time, charged to the process).
            let before = tracer.cpu_secs_now()?;
            let iperf = traffic::iperf(lab, load, secs)?;
            let during = tracer.cpu_secs_now()? - before;
            let traced = tracer.stop(REPORT_LIMIT)?;
            Ok(Run {
                iperf,
                summary: Some(traced.summary),
                cpu_secs: during,
            })
        }
    }
}

/// Alternating rounds: each round runs every watcher once, in an order rotated by the round,
/// so that a slow spell on the machine does not always hit the same one.
pub(super) fn rounds(
    pathtrace: &Path,
    lab: &Lab,
    watchers: &[Watcher],
    load: Load,
    rounds: usize,
    secs: u64,
) -> Result<Vec<(Watcher, Run)>> {
    let mut runs = Vec::new();
    for round in 0..rounds {
        for i in 0..watchers.len() {
            proc::check_stop()?;
            let watcher = watchers[(i + round) % watchers.len()];
            let run = run_with(pathtrace, lab, watcher, load, secs)
                .with_context(|| format!("{load:?} with {watcher:?}, round {}", round + 1))?;
            eprintln!(
                "[bench]   round {} {watcher:?}: {:.2} Gbit/s, {:.0} pps{}",
                round + 1,
                run.iperf.bits_per_second / 1e9,
                run.iperf.packets_per_second,
                run.summary.as_ref().map_or(String::new(), |s| format!(
                    ", events emitted {} lost {}",
                    s.emitted(),
                    s.lost()
                ))
            );
            runs.push((watcher, run));
        }
    }
    Ok(runs)
}

/// One offered rate of the event-rate ladder.
pub(super) struct RateStep {
    pub offered_pps: u64,
    pub seconds: f64,
    pub summary: Summary,
    /// The flows' per-hop packet counts, summed per hook.
    pub hops: trace::HopTotals,
    pub max_rss_kib: u64,
}

impl RateStep {
    /// Events the programs handed to the ring buffer, per second of load.
    pub(super) fn emitted_per_sec(&self) -> f64 {
        self.summary.emitted() as f64 / self.seconds
    }

    /// Events the path offered (emitted or lost), per second of load.
    pub(super) fn offered_events_per_sec(&self) -> f64 {
        (self.summary.emitted() + self.summary.lost()) as f64 / self.seconds
    }

    /// Packets per second the container actually sent through the path.
    pub(super) fn path_pps(&self) -> f64 {
        self.summary.ctr_egress_seen() as f64 / self.seconds
    }

    /// Hooks where the flows' per-hop packet counts add up to exactly what the kernel admitted
    /// there (seen − filtered): `(equal, hooks)`.
    pub(super) fn exact_hooks(&self) -> (usize, usize) {
        let hooks = self.summary.hooks.iter().filter(|h| h.seen > h.filtered);
        hooks.fold((0, 0), |(ok, n), h| {
            let key = (h.hook.clone(), h.dir.clone());
            let flows = self.hops.per_hook.get(&key).copied().unwrap_or(0);
            let admitted = self.summary.admitted(&h.hook, &h.dir);
            if flows != admitted {
                eprintln!(
                    "[bench]     {} {}: flows' hops count {flows}, the kernel admitted {admitted}",
                    h.hook, h.dir
                );
            }
            (ok + usize::from(flows == admitted), n + 1)
        })
    }
}

/// Paced 64-byte UDP at each rate in `pps`, traced, for `secs` each.
pub(super) fn rate_ladder(
    pathtrace: &Path,
    lab: &Lab,
    pps: &[u64],
    secs: u64,
) -> Result<Vec<RateStep>> {
    let mut steps = Vec::new();
    for &rate in pps {
        proc::check_stop()?;
        let tracer = Trace::start_keeping_flows(pathtrace, lab, &[], ATTACH_LIMIT)?;
        let iperf = traffic::iperf(lab, Load::UdpPaced(rate), secs)
            .with_context(|| format!("UDP at {rate} pps, traced"))?;
        let traced = tracer.stop(REPORT_LIMIT)?;
        let step = RateStep {
            offered_pps: rate,
            seconds: iperf.seconds,
            summary: traced.summary,
            hops: traced.hops,
            max_rss_kib: traced.max_rss_kib,
        };
        eprintln!(
            "[bench]   {rate} pps offered: path {:.0} pps, {:.0} events/s emitted, {} lost",
            step.path_pps(),
            step.emitted_per_sec(),
            step.summary.lost()
        );
        steps.push(step);
    }
    Ok(steps)
}

/// The filter expression of the cost rows (issue #14's): the bench's UDP packets fail it.
pub(super) const COST_EXPRESSION: &str = "tcp port 443 and host 10.0.0.5";

/// Kernel run time of the hook programs per run, for one tracer configuration.
#[derive(Clone, Debug, Default)]
pub(super) struct Cost {
    pub runs: u64,
    pub ns_per_run: f64,
    /// The hook whose program took longest per run: its name and ns per run.
    pub slowest: (String, f64),
}

/// Per-packet program cost from the kernel's BPF statistics: once with every packet traced,
/// once with `--filter-port 1`, which no packet matches (every packet is filtered in-kernel).
pub(super) fn program_cost(pathtrace: &Path, lab: &Lab, pps: u64, secs: u64) -> Result<Costs> {
    let stats = BpfStats::enable()?;
    let traced = cost_of(pathtrace, lab, &[], pps, secs).context("traced")?;
    let every = cost_of(pathtrace, lab, &["--every-packet"], pps, secs).context("every packet")?;
    // The empty program runs on the host veth's ingress beside pathtrace's, on the same packets.
    let empty = EmptyProgram::attach(&lab.host_veth)?;
    let before = empty.stats()?;
    let filtered =
        cost_of(pathtrace, lab, &["--filter-port", "1"], pps, secs).context("filtered")?;
    // Issue #14's pair: the same packets filtered out by one port, and by an expression.
    let port = cost_of(pathtrace, lab, &["--filter-port", "443"], pps, secs).context("port")?;
    let expression =
        cost_of(pathtrace, lab, &[COST_EXPRESSION], pps, secs).context("expression")?;
    let after = empty.stats()?;
    drop(empty);
    drop(stats);
    let runs = after.run_cnt - before.run_cnt;
    anyhow::ensure!(runs > 0, "the empty program never ran");
    let floor = (after.run_time_ns - before.run_time_ns) as f64 / runs as f64;
    eprintln!("[bench]   empty program: {runs} runs, {floor:.1} ns/run");
    Ok(Costs {
        traced,
        every,
        filtered,
        port,
        expression,
        floor,
    })
}

/// [`program_cost`]'s figures.
pub(super) struct Costs {
    pub traced: Cost,
    pub every: Cost,
    pub filtered: Cost,
    /// `--filter-port 443` and [`COST_EXPRESSION`], neither of which the bench's packets match.
    pub port: Cost,
    pub expression: Cost,
    /// The empty program's ns per run.
    pub floor: f64,
}

fn cost_of(pathtrace: &Path, lab: &Lab, extra: &[&str], pps: u64, secs: u64) -> Result<Cost> {
    let tracer = Trace::start(pathtrace, lab, extra, ATTACH_LIMIT)?;
    let start = tracer.prog_stats()?;
    traffic::iperf(lab, Load::UdpPaced(pps), secs)?;
    let end = tracer.prog_stats()?;
    // Names while the programs are still loaded.
    let names: Vec<String> = end
        .iter()
        .map(|p| proc::prog_name(p.id).unwrap_or_else(|| format!("id {}", p.id)))
        .collect();
    let traced = tracer.stop(REPORT_LIMIT)?;
    let mut cost = Cost::default();
    let mut ns = 0u64;
    for (p, name) in end.iter().zip(&names) {
        let s = start.iter().find(|s| s.id == p.id);
        let d_ns = p.run_time_ns - s.map_or(0, |s| s.run_time_ns);
        let d_runs = p.run_cnt - s.map_or(0, |s| s.run_cnt);
        ns += d_ns;
        cost.runs += d_runs;
        // Only the hooks the load crosses (the others run for a stray ARP or two).
        if d_runs >= 1000 {
            let per = d_ns as f64 / d_runs as f64;
            let hook = hook_of(name, &traced.summary);
            eprintln!("[bench]     {name} ({hook}): {d_runs} runs, {per:.1} ns/run");
            if per > cost.slowest.1 {
                cost.slowest = (hook, per);
            }
        }
    }
    cost.ns_per_run = if cost.runs == 0 {
        0.0
    } else {
        ns as f64 / cost.runs as f64
    };
    eprintln!(
        "[bench]   {} programs, {} runs, {:.1} ns/run; emitted {}, filtered {}",
        end.len(),
        cost.runs,
        cost.ns_per_run,
        traced.summary.emitted(),
        traced.summary.hooks.iter().map(|h| h.filtered).sum::<u64>()
    );
    Ok(cost)
}

/// The hook a program named `pathtrace_h<slot>` watches: pathtrace gives slots in path order,
/// the order of its summary.
fn hook_of(prog: &str, summary: &Summary) -> String {
    prog.strip_prefix("pathtrace_h")
        .and_then(|n| n.parse::<usize>().ok())
        .and_then(|slot| summary.hooks.get(slot))
        .map_or_else(|| "?".into(), |h| format!("{} {}", h.hook, h.dir))
}

/// Time to "tracing 8 hooks" with `--tc-mode MODE`, `n` times.
pub(super) fn attach_times(
    pathtrace: &Path,
    lab: &Lab,
    mode: &str,
    n: usize,
) -> Result<Vec<Duration>> {
    let mut times = Vec::new();
    for i in 0..n {
        proc::check_stop()?;
        let t = trace::time_to_attach(pathtrace, lab, mode)
            .with_context(|| format!("{mode} run {}", i + 1))?;
        eprintln!("[bench]   run {}: {:.1} ms", i + 1, t.as_secs_f64() * 1e3);
        times.push(t);
    }
    Ok(times)
}

/// The many-flows run.
pub(super) struct FlowRun {
    pub sent: flows::Sent,
    pub max_flows: u64,
    pub summary: Summary,
    pub max_rss_kib: u64,
    /// Resident set size just before the tracer was stopped (before its final report).
    pub live_rss_kib: u64,
    pub output_lines: u64,
}

/// Sends one datagram per (source port, sink port) pair, 3 × `ports.len()` flows, through a
/// tracer holding at most `max_flows`, and reads the tracer's peak RSS.
pub(super) fn many_flows(
    pathtrace: &Path,
    lab: &Lab,
    ports: std::ops::Range<u16>,
    max_flows: u64,
    pps: u64,
) -> Result<FlowRun> {
    let wan: Ipv4Addr = lab.wan_addr.parse().context("wan address")?;
    let _sinks = Sinks::open(&lab.wan_netns, wan)?;
    // One datagram first, so that the container's ARP entry for its gateway is fresh and no
    // datagram of the run waits in the neighbour queue.
    flows::send(
        &lab.ctr_netns,
        wan,
        9999..10000,
        1000,
        Duration::from_secs(5),
    )?;
    let max = max_flows.to_string();
    let tracer = Trace::start(pathtrace, lab, &["--max-flows", &max], ATTACH_LIMIT)?;
    let sent = flows::send(&lab.ctr_netns, wan, ports, pps, Duration::from_secs(60))?;
    eprintln!(
        "[bench]   sent {} flows in {:.1} s ({} skipped)",
        sent.flows,
        sent.elapsed.as_secs_f64(),
        sent.skipped_ports
    );
    // Let the last packets settle (pathtrace finalises a packet 200 ms after its last sighting).
    proc::sleep(Duration::from_secs(1))?;
    let live_rss_kib = tracer.rss_kib()?;
    let traced = tracer.stop(Duration::from_secs(120))?;
    Ok(FlowRun {
        sent,
        max_flows,
        summary: traced.summary,
        max_rss_kib: traced.max_rss_kib,
        live_rss_kib,
        output_lines: traced.output_lines,
    })
}
