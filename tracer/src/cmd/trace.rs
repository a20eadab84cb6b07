//! The default verb: trace a network namespace (`--netns`) or a container (`--container`, every
//! one of its interfaces, followed across restarts by its runtime's events).

use std::{process::ExitCode, sync::Arc};

use tokio::sync::mpsc;

use crate::{
    attach::PendingTracer,
    capture::{record, CaptureWriter},
    cli::TraceArgs,
    config::{TargetSpec, TraceConfig},
    discover::{
        netns::Netns,
        path::{self, PathQuery},
        sockets::SocketWatch,
    },
    model::{Place, Topology},
    pipeline::{
        self,
        annotate::{Annotator, ConntrackConfirm, EveryFlowNote, RuleCounters, RuntimeNotes},
        engine::Engine,
        exits::UntracedExits,
        follow::{follow, Follow},
        plan::{self, Plan},
        session::{Control, SessionSpec},
    },
    render::{tui::Tui, Output, Renderer},
    runtime::{self, ContainerRuntime as _},
};

pub(super) fn run(args: &TraceArgs) -> anyhow::Result<ExitCode> {
    let cfg = TraceConfig::from_args(args)?;
    let rt = super::runtime()?;
    // The kernel object loads while the path is discovered.
    let tracer = PendingTracer::spawn(cfg.load.clone(), cfg.tc_mode, rt.handle());
    match &cfg.target {
        TargetSpec::Netns { spec, iface } => netns(&cfg, &rt, tracer, spec, iface.clone()),
        TargetSpec::Container {
            wanted,
            exit_on_stop,
        } => container(&cfg, &rt, tracer, wanted, *exit_on_stop),
    }
}

fn netns(
    cfg: &TraceConfig,
    rt: &tokio::runtime::Runtime,
    mut tracer: PendingTracer,
    spec: &str,
    iface: Option<String>,
) -> anyhow::Result<ExitCode> {
    let netns = Arc::new(Netns::by_name_or_path(spec)?);
    let label = TargetSpec::netns_label(spec);
    let q = PathQuery {
        iface,
        to: cfg.to,
        uplinks: cfg.uplinks.clone(),
    };
    let found = path::discover(&label, netns, &q)?;
    let targets = found.hooks(0);
    // Attaching starts as soon as the object is loaded; the NAT rules are read meanwhile.
    tracer.attach(targets.clone());
    let plan = Plan::for_path(&found, targets)?;
    let capture = open_capture(cfg, &plan.topology)?;
    let mut annotators: Vec<Box<dyn Annotator>> = vec![Box::new(ConntrackConfirm)];
    annotators.extend(super::tunnels(found.tunnels.clone()));
    live(
        cfg,
        rt,
        super::session(cfg, tracer, &plan, None),
        &plan,
        annotators,
        capture,
    )?;
    Ok(ExitCode::SUCCESS)
}

fn container(
    cfg: &TraceConfig,
    rt: &tokio::runtime::Runtime,
    mut tracer: PendingTracer,
    wanted: &runtime::Wanted,
    exit_on_stop: bool,
) -> anyhow::Result<ExitCode> {
    let runtime = rt.block_on(runtime::connect(&cfg.endpoints))?;
    let target = match rt.block_on(runtime.resolve(wanted)) {
        Ok(t) => t,
        Err(e) => match e.host_network() {
            Some(h) => return host_network(cfg, rt, tracer, h.clone()),
            None => return Err(e.into()),
        },
    };
    if let Some(note) = runtime.found_note(wanted, &target) {
        super::warn(&note);
    }
    let paths = target.paths(cfg.to, &cfg.uplinks)?;
    for p in paths.iter().filter(|p| p.path.hop(Place::Bridge).is_none()) {
        super::warn(format_args!(
            "{}:{} has no bridge: its host veth {} is routed (a ptp-style CNI), so its hops go from that veth to the uplink",
            target.name,
            p.iface.ifname,
            p.path.host_veth().name
        ));
    }
    let mut targets = plan::container_hooks(&paths)?;
    if let Some(to) = cfg.to {
        let peer = rt.block_on(plan::peer_hooks(&runtime, &target, &paths, to))?;
        plan::add_shared(&mut targets, peer)?;
    }
    // Attaching starts as soon as the object is loaded; the NAT rules are read meanwhile.
    tracer.attach(targets.clone());
    let plan = Plan::for_container(&target, &paths, targets)?;
    let mut annotators: Vec<Box<dyn Annotator>> = Vec::new();
    if let Some(notes) = runtime.flow_notes(&target, &paths) {
        annotators.push(Box::new(RuntimeNotes(notes)));
    }
    annotators.push(Box::new(ConntrackConfirm));
    annotators.extend(super::tunnels(tunnels_of(&paths)));
    let (tx, rx) = mpsc::channel(16);
    let follow_cfg = Follow {
        name: target.name.clone(),
        what: if wanted.pod { "pod" } else { "container" },
        runtime: target.runtime.clone(),
        to: cfg.to,
        uplinks: cfg.uplinks.clone(),
        exit_on_stop,
        pid: target.pid,
        rules: Some(plan.attributor()),
    };
    let follower = rt.spawn(follow(runtime.watch(&target), follow_cfg, tx));
    let capture = open_capture(cfg, &plan.topology)?;
    let session = super::session(cfg, tracer, &plan, Some(rx));
    let result = live(cfg, rt, session, &plan, annotators, capture);
    let removed = if follower.is_finished() {
        rt.block_on(follower).ok().flatten()
    } else {
        follower.abort();
        None
    };
    result?;
    match removed {
        Some(why) => anyhow::bail!(why),
        None => Ok(ExitCode::SUCCESS),
    }
}

/// How often a host-network container's sockets are looked for.
const SOCKETS_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// A container on the host's network: its packets on the host's uplinks, told apart by the local
/// endpoints of its sockets (looked for every [`SOCKETS_EVERY`]: see [`SocketWatch`]).
fn host_network(
    cfg: &TraceConfig,
    rt: &tokio::runtime::Runtime,
    mut tracer: PendingTracer,
    h: runtime::HostNetwork,
) -> anyhow::Result<ExitCode> {
    let q = PathQuery {
        iface: None,
        to: cfg.to,
        uplinks: cfg.uplinks.clone(),
    };
    let found = path::host_path(&h.name, &q)?;
    let targets = found.hooks(0);
    tracer.attach(targets.clone());
    let mut plan = Plan::for_path(&found, targets)?;
    let host_addrs = found.ctr_addrs.iter().map(|a| a.addr).collect();
    let mut watch = SocketWatch::new(&h.id, host_addrs);
    plan.interest = watch.scan();
    let how = format!(
        "container {} uses the host network: its packets on the host's uplinks are told apart by its sockets' local ports, looked for every {} ms; packets a connection sent before its socket was found are not shown (nor a connection made and closed in between), and loopback traffic is not traced",
        h.name,
        SOCKETS_EVERY.as_millis()
    );
    super::warn(&how);
    let (tx, rx) = mpsc::channel(16);
    let scanner = rt.spawn(async move {
        let mut tick = tokio::time::interval(SOCKETS_EVERY);
        loop {
            tick.tick().await;
            let Ok((w, keys)) = tokio::task::spawn_blocking(move || {
                let keys = watch.scan();
                (watch, keys)
            })
            .await
            else {
                return;
            };
            watch = w;
            if !keys.is_empty() && tx.send(Control::Interest(keys)).await.is_err() {
                return;
            }
        }
    });
    let capture = open_capture(cfg, &plan.topology)?;
    let mut annotators: Vec<Box<dyn Annotator>> =
        vec![Box::new(ConntrackConfirm), Box::new(EveryFlowNote(how))];
    annotators.extend(super::tunnels(found.tunnels.clone()));
    let session = super::session(cfg, tracer, &plan, Some(rx));
    let result = live(cfg, rt, session, &plan, annotators, capture);
    scanner.abort();
    result?;
    Ok(ExitCode::SUCCESS)
}

/// A live view of `plan` on stdout: updates while tracing, then the final report.
fn live(
    cfg: &TraceConfig,
    rt: &tokio::runtime::Runtime,
    session: SessionSpec,
    plan: &Plan,
    mut annotators: Vec<Box<dyn Annotator>>,
    capture: Option<CaptureWriter>,
) -> anyhow::Result<()> {
    annotators.push(Box::new(UntracedExits::new(plan.topology.clone())));
    annotators.push(Box::new(RuleCounters::new(plan.rules.clone())));
    let mut renderer: Box<dyn Renderer> = if cfg.tui {
        Box::new(Tui::new())
    } else {
        // With `-w -` stdout carries the capture: the flows go to stderr.
        let to_stdout = cfg
            .capture
            .as_ref()
            .is_some_and(|c| c.path.as_os_str() == "-");
        let out = if to_stdout {
            Output::with_status_line(Box::new(std::io::stderr()))
        } else {
            Output::with_status_line(Box::new(std::io::stdout()))
        };
        cfg.format.renderer(out, true)
    };
    let mut engine = Engine::new(
        plan.topology.clone(),
        Some(plan.attributor()),
        cfg.max_flows,
        annotators,
        renderer.as_mut(),
    );
    pipeline::trace(rt, session, &mut engine, capture)?;
    drop(engine);
    drop(renderer);
    if let (Some(html), Some(c)) = (&cfg.html, &cfg.capture) {
        let made = html_report(&c.path, &html.out);
        if html.temporary_capture {
            if let Err(e) = std::fs::remove_file(&c.path) {
                tracing::warn!("removing the report's capture {}: {e}", c.path.display());
            }
        }
        made?;
    }
    Ok(())
}

/// `--html`: the report of the trace's capture.
fn html_report(capture: &std::path::Path, out: &std::path::Path) -> anyhow::Result<()> {
    let cap = crate::capture::read_capture(capture)?;
    let page = crate::report::render(&cap, None, &capture.display().to_string())?;
    crate::report::write(&page, out)?;
    super::warn(format_args!("{}: the trace's report", out.display()));
    Ok(())
}

/// The tunnel uplinks of a container's paths, each once.
pub(super) fn tunnels_of(paths: &[runtime::TargetPath]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for t in paths.iter().flat_map(|p| &p.path.tunnels) {
        if !out.contains(t) {
            out.push(t.clone());
        }
    }
    out
}

/// Opens `-w FILE` for a topology, if asked.
fn open_capture(cfg: &TraceConfig, topology: &Topology) -> anyhow::Result<Option<CaptureWriter>> {
    let Some(c) = &cfg.capture else {
        return Ok(None);
    };
    record::open(&c.path, topology, c.snaplen, c.options).map(Some)
}
