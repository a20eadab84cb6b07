//! `pathtrace verify`: after a firewall change, does the traffic still leave the right way?
//!
//! Sends one probe from inside the traced namespace, traces it on the whole path, and compares
//! what happened with the expectations (see `analyze::verify`). Exit 0 pass, 1 fail, 2 error.

use std::{
    net::IpAddr,
    process::ExitCode,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::Notify;

use crate::{
    analyze::verify::{evaluate, pick_flow, Check, Prober, Verdict},
    attach::{AttachTarget, PendingTracer},
    cli::VerifyArgs,
    config::{TargetSpec, VerifyConfig, VerifyTarget},
    discover::{
        netns::Netns,
        path::{self, PathError, PathQuery},
    },
    pipeline::{
        annotate::{ConntrackConfirm, RuleCounters},
        engine::Engine,
        exits::UntracedExits,
        plan::{self, Plan},
        session::{self, SessionSpec},
    },
    render::Collect,
    runtime::{self, ContainerRuntime as _},
};

/// How long the probe's trace may take at most.
const TRACE_AT_MOST: Duration = Duration::from_secs(8);

pub(super) fn run(args: &VerifyArgs) -> anyhow::Result<ExitCode> {
    super::require_privileges()?;
    let cfg = VerifyConfig::from_args(args)?;
    let rt = super::runtime()?;
    // The kernel object loads while the path is discovered.
    let mut tracer = PendingTracer::spawn(cfg.load.clone(), cfg.tc_mode, rt.handle());
    let (netns, plan) = match discover(&cfg, &rt, |targets| tracer.attach(targets)) {
        Ok(found) => found,
        // No route is an answer, not an error: the probe has no way out.
        Err(e) => match unroutable(&e) {
            Some(to) => return no_route(&cfg, to),
            None => return Err(e),
        },
    };
    let mut flows = Collect::default();
    let mut engine = Engine::new(
        plan.topology.clone(),
        Some(plan.attributor()),
        4096,
        vec![
            Box::new(ConntrackConfirm),
            Box::new(UntracedExits::new(plan.topology.clone())),
            Box::new(RuleCounters::new(plan.rules.clone())),
        ],
        &mut flows,
    );
    let stop = Arc::new(Notify::new());
    let outcome = Arc::new(Mutex::new(String::new()));
    let spec = SessionSpec {
        tracer,
        duration: Some(TRACE_AT_MOST),
        count: None,
        interest: Vec::new(),
        control: None,
    };
    let mut prober = Prober {
        inner: &mut engine,
        netns,
        probe: cfg.probe,
        stop: stop.clone(),
        outcome: outcome.clone(),
    };
    rt.block_on(session::run(spec, &mut prober, stop))?;
    engine.finish();
    drop(engine);
    let flow = pick_flow(&flows.flows, &cfg.probe);
    let checks = evaluate(&cfg.expect, flow);
    let verdict = Verdict {
        pass: checks.iter().all(|c| c.ok),
        probe: cfg.probe,
        to: &cfg.to,
        outcome: outcome.lock().map(|g| g.clone()).unwrap_or_default(),
        checks,
        flow,
    };
    super::print(&cfg.format.printer().verify(&verdict)?)?;
    Ok(if verdict.pass {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The destination the host has no route to, when that is why discovery failed.
fn unroutable(e: &anyhow::Error) -> Option<IpAddr> {
    e.chain()
        .find_map(|cause| match cause.downcast_ref::<PathError>() {
            Some(PathError::Unroutable(to)) => Some(*to),
            _ => None,
        })
}

/// FAIL: the host has no route to the probe's destination.
fn no_route(cfg: &VerifyConfig, to: IpAddr) -> anyhow::Result<ExitCode> {
    let checks = vec![Check {
        name: "route",
        expected: format!("a route from the host to {to}"),
        observed: format!("no route (`ip route get {to}` fails)"),
        ok: false,
    }];
    let verdict = Verdict {
        pass: false,
        probe: cfg.probe,
        to: &cfg.to,
        outcome: "not sent: the host has no route to it".into(),
        checks,
        flow: None,
    };
    super::print(&cfg.format.printer().verify(&verdict)?)?;
    Ok(ExitCode::from(1))
}

/// The probe's namespace and the plan of its path; `attach` gets the hooks as soon as they are
/// known, before the NAT rules are read.
fn discover(
    cfg: &VerifyConfig,
    rt: &tokio::runtime::Runtime,
    attach: impl FnOnce(Vec<AttachTarget>),
) -> anyhow::Result<(Arc<Netns>, Plan)> {
    let to = Some(cfg.probe.dst);
    match &cfg.target {
        VerifyTarget::Container(wanted) => {
            let runtime = rt.block_on(runtime::connect(&cfg.endpoints))?;
            let target = rt.block_on(runtime.resolve(wanted))?;
            let paths = target.paths(to, &cfg.uplinks)?;
            let targets = plan::container_hooks(&paths)?;
            attach(targets.clone());
            let plan = Plan::for_container(&target, &paths, targets)?;
            Ok((Arc::new(target.open_netns()?), plan))
        }
        VerifyTarget::Netns(spec) => {
            let netns = Arc::new(Netns::by_name_or_path(spec)?);
            let label = TargetSpec::netns_label(spec);
            let q = PathQuery {
                iface: None,
                to,
                uplinks: cfg.uplinks.clone(),
            };
            let found = path::discover(&label, netns.clone(), &q)?;
            let targets = found.hooks(0);
            attach(targets.clone());
            Ok((netns, Plan::for_path(&found, targets)?))
        }
    }
}
