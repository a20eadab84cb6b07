//! `pathtrace verify`: after a firewall change, does the traffic still leave the right way?
//!
//! Sends one probe from inside the traced namespace (a socket opened there after `setns`: nothing
//! is installed in the container), traces it on the whole path, and compares what happened with
//! the expectations. Exit 0 pass, 1 fail, 2 error.

use std::{
    net::{IpAddr, SocketAddr, TcpStream, UdpSocket},
    process::ExitCode,
    sync::Arc,
    time::Duration,
};

use anyhow::{bail, Context as _};
use serde::Serialize;
use tokio::sync::Notify;

use super::{
    container,
    filter::filter_config,
    live::{LiveView, ViewOptions},
    output::Output,
    session::{self, Observer, SessionSpec, StopReason},
    trace::{ring_bytes, runtime, Plan},
};
use crate::{
    attach::{AttachTarget, LoadOptions, PendingTracer},
    cli::{TraceArgs, VerifyArgs},
    collect::Event,
    correlate::FlowReport,
    discover::{
        docker::Docker,
        nat_rules,
        netns::Netns,
        path::{self, PathQuery},
    },
    lab::traffic,
    model::{Hook, HookStats, NatKind, Proto, RuleAttributor, Topology},
    render::{self, Format},
};

/// The probe's destination and protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Probe {
    pub dst: IpAddr,
    pub port: Option<u16>,
    pub proto: Proto,
}

impl Probe {
    pub fn parse(to: &str, proto: Option<&str>) -> anyhow::Result<Self> {
        let (dst, port) = match to.parse::<SocketAddr>() {
            Ok(sa) => (sa.ip(), Some(sa.port())),
            Err(_) => (
                to.parse::<IpAddr>().with_context(|| {
                    format!("--to {to:?}: expected HOST or HOST:PORT, e.g. 10.0.0.5:443")
                })?,
                None,
            ),
        };
        let proto = match proto.map(|p| (p, p.parse::<Proto>())) {
            Some((_, Ok(p @ (Proto::Tcp | Proto::Udp)))) => p,
            Some((_, Ok(Proto::Icmp))) => Proto::icmp_for(dst),
            Some((other, _)) => bail!("--proto {other:?}: expected tcp, udp or icmp"),
            None if port.is_some() => Proto::Tcp,
            None => Proto::icmp_for(dst),
        };
        if proto.has_ports() && port.is_none() {
            bail!("--proto {proto} needs a port: --to HOST:PORT");
        }
        Ok(Self { dst, port, proto })
    }

    /// Sends the probe from the current thread's namespace; never fails the run: an unanswered
    /// probe is an observation, not an error.
    fn send(&self, netns: &Netns) -> String {
        let timeout = Duration::from_secs(2);
        match self.proto {
            Proto::Tcp => {
                let sa = SocketAddr::new(self.dst, self.port.unwrap_or(0));
                match netns.run(|| TcpStream::connect_timeout(&sa, timeout)) {
                    Ok(Ok(_)) => "connected".into(),
                    Ok(Err(e)) => format!("connect: {e}"),
                    Err(e) => format!("{e}"),
                }
            }
            Proto::Udp => {
                let sa = SocketAddr::new(self.dst, self.port.unwrap_or(0));
                let sent = netns.run(|| -> std::io::Result<String> {
                    let bind: SocketAddr = if sa.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }
                        .parse()
                        .map_err(std::io::Error::other)?;
                    let sock = UdpSocket::bind(bind)?;
                    sock.set_read_timeout(Some(Duration::from_secs(1)))?;
                    sock.send_to(b"pathtrace-verify", sa)?;
                    let mut buf = [0u8; 64];
                    Ok(match sock.recv_from(&mut buf) {
                        Ok(_) => "answered".into(),
                        Err(_) => "sent, no answer".into(),
                    })
                });
                match sent {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => format!("send: {e}"),
                    Err(e) => format!("{e}"),
                }
            }
            _ => match traffic::icmp_echo(netns, self.dst, 1, Duration::from_millis(100)) {
                Ok(stats) if !stats.replies.is_empty() => "echo reply".into(),
                Ok(_) => "no echo reply".into(),
                Err(e) => format!("ping: {e}"),
            },
        }
    }
}

/// One expectation and what was observed.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub expected: String,
    pub observed: String,
    pub ok: bool,
}

/// Compares a traced probe flow with the expectations (pure: unit-tested).
pub fn evaluate(args: &VerifyArgs, flow: Option<&FlowReport>) -> Vec<Check> {
    let mut checks = Vec::new();
    let Some(f) = flow else {
        checks.push(Check {
            name: "seen",
            expected: "the probe on the path".into(),
            observed: "no packet of the probe was seen".into(),
            ok: false,
        });
        return checks;
    };
    let snat: Vec<String> = f
        .nat
        .iter()
        .filter(|n| n.step.kind == NatKind::Snat)
        .map(|n| n.step.after.addr.to_string())
        .collect();
    let path: Vec<String> = f
        .hops
        .iter()
        .map(|h| format!("{} {}", h.hook, h.dir))
        .collect();
    let dropped = !f.stops.is_empty();
    let stop_text = f
        .stops
        .iter()
        .map(crate::correlate::Stop::describe)
        .collect::<Vec<_>>()
        .join("; ");
    if let Some(addr) = args.expect_snat {
        let ok = snat.iter().any(|a| *a == addr.to_string());
        let observed = if snat.is_empty() {
            "no SNAT".to_string()
        } else {
            format!("SNAT to {}", snat.join(", "))
        };
        checks.push(Check {
            name: "snat",
            expected: format!("SNAT to {addr}"),
            observed,
            ok,
        });
    }
    if let Some(iface) = &args.expect_via {
        let last = f
            .hops
            .iter()
            .rev()
            .find(|h| h.dir == crate::model::Direction::Egress);
        let observed = last
            .map(|h| h.hook.clone())
            .unwrap_or_else(|| "no egress hop".into());
        let ok = last.is_some_and(|h| h.hook.rsplit(':').next() == Some(iface.as_str()));
        checks.push(Check {
            name: "via",
            expected: format!("leaves by {iface}"),
            observed: format!("leaves by {observed}"),
            ok,
        });
    }
    if let Some(want) = &args.expect_path {
        let want: Vec<String> = want
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        let matches = want.len() == path.len()
            && want
                .iter()
                .zip(&path)
                .all(|(w, p)| p == w || p.split(' ').next() == Some(w.as_str()));
        checks.push(Check {
            name: "path",
            expected: want.join(" -> "),
            observed: path.join(" -> "),
            ok: matches,
        });
    }
    if args.expect_drop {
        checks.push(Check {
            name: "drop",
            expected: "dropped".into(),
            observed: if dropped {
                stop_text
            } else {
                "not dropped".into()
            },
            ok: dropped,
        });
    } else {
        let answered = f.packets_back > 0;
        let observed = if dropped {
            stop_text
        } else if answered {
            "answered".into()
        } else {
            "no answer".into()
        };
        checks.push(Check {
            name: "delivered",
            expected: "delivered and answered".into(),
            observed,
            ok: !dropped && answered,
        });
    }
    checks
}

/// Passes events to the live view and fires the probe once everything is attached.
struct Prober<'a> {
    view: &'a mut LiveView,
    netns: Arc<Netns>,
    probe: Probe,
    stop: Arc<Notify>,
    outcome: Arc<std::sync::Mutex<String>>,
}

impl Observer for Prober<'_> {
    fn attached(&mut self, mode: &str, hooks: &[Hook]) {
        self.view.attached(mode, hooks);
        let (netns, probe, stop, outcome) = (
            self.netns.clone(),
            self.probe,
            self.stop.clone(),
            self.outcome.clone(),
        );
        std::thread::spawn(move || {
            let o = probe.send(&netns);
            if let Ok(mut g) = outcome.lock() {
                *g = o;
            }
            // Let the last packets of the exchange reach every hook and settle.
            std::thread::sleep(Duration::from_millis(400));
            stop.notify_one();
        });
    }
    fn events(&mut self, events: &[Event]) {
        self.view.events(events);
    }
    fn tick(&mut self, now_ns: u64, stats: &[(Hook, HookStats)]) {
        self.view.tick(now_ns, stats);
    }
    fn finished(&mut self, why: StopReason, stats: &[(Hook, HookStats)]) {
        self.view.finished(why, stats);
    }
}

pub fn run(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    super::require_privileges()?;
    let probe = Probe::parse(&args.to, args.proto.as_deref())?;
    let rt = runtime()?;
    let trace = TraceArgs {
        to: Some(probe.dst),
        filter_proto: Some(probe.proto.to_string()),
        snaplen: tracer_common::event::CAPTURE_DEFAULT,
        ..TraceArgs::default()
    };
    let load = LoadOptions {
        filter: filter_config(&trace)?,
        ring_bytes: ring_bytes(1024)?,
        kernel_log: false,
        drop_reasons: true,
    };
    // The kernel object loads while the path is discovered.
    let mut tracer = PendingTracer::spawn(load, args.tc_mode, rt.handle());
    let (netns, targets, topology) = discover(&args, &probe, &rt)?;
    // Attaching starts as soon as the object is loaded; the NAT rules are read meanwhile.
    tracer.attach(targets);
    let rules = Arc::new(nat_rules::snapshot().context("reading the NAT ruleset")?);
    let topology = Arc::new(Topology {
        nat_rules: rules.rules(),
        ..topology
    });
    let attributor: Arc<dyn RuleAttributor> = rules;
    let mut view = LiveView::new(
        topology,
        Some(attributor),
        ViewOptions {
            format: Format::Json,
            max_flows: 4096,
            confirm_conntrack: true,
            updates: false,
            keep_flows: true,
        },
        Output::to(Box::new(std::io::sink())),
    );
    let stop = Arc::new(Notify::new());
    let outcome = Arc::new(std::sync::Mutex::new(String::new()));
    let spec = SessionSpec {
        tracer,
        duration: Some(Duration::from_secs(8)),
        count: None,
        interest: Vec::new(),
        control: None,
    };
    let mut prober = Prober {
        view: &mut view,
        netns,
        probe,
        stop: stop.clone(),
        outcome: outcome.clone(),
    };
    rt.block_on(session::run(spec, &mut prober, stop))?;
    view.finish_output();
    let flow = pick_flow(&view.final_flows, &probe);
    let checks = evaluate(&args, flow);
    let pass = checks.iter().all(|c| c.ok);
    let probe_outcome = outcome.lock().map(|g| g.clone()).unwrap_or_default();
    print_result(&args, &probe, pass, &checks, flow, &probe_outcome)?;
    Ok(if pass {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The probe's flow: the outbound flow to its destination (and port) of its protocol.
fn pick_flow<'f>(flows: &'f [FlowReport], probe: &Probe) -> Option<&'f FlowReport> {
    flows
        .iter()
        .filter(|f| {
            f.proto == probe.proto
                && f.dst.addr == probe.dst
                && probe.port.is_none_or(|p| f.dst.port == p)
        })
        .max_by_key(|f| f.packets_out)
}

fn discover(
    args: &VerifyArgs,
    probe: &Probe,
    rt: &tokio::runtime::Runtime,
) -> anyhow::Result<(Arc<Netns>, Vec<AttachTarget>, Topology)> {
    match (&args.container, &args.netns) {
        (Some(name), None) => {
            let docker = rt.block_on(Docker::connect())?;
            let info = rt.block_on(docker.resolve(name))?;
            let paths = info.paths(Some(probe.dst))?;
            let targets = container::container_targets(&paths)?;
            let topology = container::topology(&info, &paths, &targets, Vec::new());
            Ok((Arc::new(info.netns()?), targets, topology))
        }
        (None, Some(spec)) => {
            let netns = Arc::new(Netns::by_name_or_path(spec)?);
            let label = spec.rsplit('/').next().unwrap_or(spec).to_string();
            let found = path::discover(
                &label,
                netns.clone(),
                &PathQuery {
                    iface: None,
                    to: Some(probe.dst),
                },
            )?;
            let plan = Plan::new(&found, found.hooks(0))?;
            Ok((netns, plan.targets, (*plan.topology).clone()))
        }
        _ => bail!("verify needs one of --container NAME or --netns NAME"),
    }
}

fn print_result(
    args: &VerifyArgs,
    probe: &Probe,
    pass: bool,
    checks: &[Check],
    flow: Option<&FlowReport>,
    outcome: &str,
) -> anyhow::Result<()> {
    if args.json {
        let line = serde_json::json!({
            "type": "verify",
            "result": if pass { "pass" } else { "fail" },
            "probe": { "proto": probe.proto, "to": args.to, "outcome": outcome },
            "checks": checks,
            "flow": flow,
        });
        println!("{}", serde_json::to_string(&line)?);
        return Ok(());
    }
    println!(
        "{} {} probe to {} ({outcome})",
        if pass { "PASS" } else { "FAIL" },
        probe.proto,
        args.to
    );
    for c in checks {
        println!(
            "  [{}] {}: expected {}, observed {}",
            if c.ok { "ok" } else { "FAIL" },
            c.name,
            c.expected,
            c.observed
        );
    }
    match flow {
        Some(f) => print!("observed:\n{}", render::flow_block(f)),
        None => println!("observed: nothing of the probe on the traced hooks"),
    }
    Ok(())
}
