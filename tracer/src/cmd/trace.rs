//! The default verb: trace a namespace (`--netns`) or a container (`--container`).

use std::{process::ExitCode, sync::Arc};

use anyhow::{bail, Context as _};
use tokio::sync::Notify;

use super::{
    filter::filter_config,
    live::{LiveView, ViewOptions},
    output::Output,
    record::{self, Recorder},
    session::{self, SessionSpec},
};
use crate::{
    attach::{AttachTarget, LoadOptions, PendingTracer},
    cli::TraceArgs,
    discover::{
        nat_rules::{self, NatRuleset},
        netns::Netns,
        path::{self, DiscoveredPath, PathQuery},
    },
    model::{RuleAttributor, Topology},
};

/// Starts loading the kernel programs for a trace with `args` (filter, ring size, tc mode) on a
/// thread of its own, so that the caller can discover what to attach meanwhile.
pub(super) fn load_in_background(
    args: &TraceArgs,
    rt: &tokio::runtime::Runtime,
) -> anyhow::Result<PendingTracer> {
    let mut filter = filter_config(args)?;
    // Packet bytes only go into a `-w` capture: without one the programs copy none.
    if args.write.is_none() {
        filter.snaplen = 0;
    }
    let load = LoadOptions {
        filter,
        ring_bytes: ring_bytes(args.ring_size)?,
        kernel_log: args.kernel_log,
        drop_reasons: true,
    };
    Ok(PendingTracer::spawn(load, args.tc_mode, rt.handle()))
}

pub fn run(args: TraceArgs) -> anyhow::Result<ExitCode> {
    let Some(spec) = args.netns.as_deref() else {
        bail!("nothing to trace: give --netns NAME, --container NAME, or try `pathtrace lab demo`");
    };
    let rt = runtime()?;
    // The kernel object loads while the path is discovered.
    let mut tracer = load_in_background(&args, &rt)?;
    let netns = Arc::new(Netns::by_name_or_path(spec)?);
    let label = spec.rsplit('/').next().unwrap_or(spec).to_string();
    let found = path::discover(
        &label,
        netns,
        &PathQuery {
            iface: args.iface.clone(),
            to: args.to,
        },
    )?;
    let targets = found.hooks(0);
    // Attaching starts as soon as the object is loaded; the NAT rules are read meanwhile.
    tracer.attach(targets.clone());
    let plan = Plan::new(&found, targets)?;
    let capture = open_capture(&args, &plan.topology)?;
    let view = plan.view(&args, Output::stdout());
    let extras = Extras {
        capture,
        ..Extras::default()
    };
    trace_with(&rt, tracer, &args, view, extras)?;
    Ok(ExitCode::SUCCESS)
}

/// Hooks, topology and NAT rules for one discovered path.
pub struct Plan {
    pub targets: Vec<AttachTarget>,
    pub topology: Arc<Topology>,
    pub rules: Arc<NatRuleset>,
}

impl Plan {
    /// `targets`: the path's hooks (`found.hooks(0)`).
    pub fn new(found: &DiscoveredPath, targets: Vec<AttachTarget>) -> anyhow::Result<Self> {
        let rules = nat_rules::snapshot().context("reading the NAT ruleset")?;
        let topology = Arc::new(found.topology(&targets, rules.rules()));
        Ok(Self {
            targets,
            topology,
            rules: Arc::new(rules),
        })
    }

    pub fn view(&self, args: &TraceArgs, out: Output) -> LiveView {
        let attributor: Arc<dyn RuleAttributor> = self.rules.clone();
        LiveView::new(
            self.topology.clone(),
            Some(attributor),
            ViewOptions::live(args),
            out,
        )
    }
}

/// What a session needs besides its hooks.
#[derive(Default)]
pub struct Extras {
    /// Remote endpoints of interest from the start (published ports).
    pub interest: Vec<tracer_common::config::EndpointKey>,
    /// Requests from outside the loop (Docker events).
    pub control: Option<tokio::sync::mpsc::Receiver<session::Control>>,
    /// `-w FILE`, opened before anything is attached.
    pub capture: Option<crate::capture::CaptureWriter>,
}

/// Runs a session on what `tracer` attaches into `view` and prints the final report.
pub fn trace_with(
    rt: &tokio::runtime::Runtime,
    tracer: PendingTracer,
    args: &TraceArgs,
    mut view: LiveView,
    extras: Extras,
) -> anyhow::Result<LiveView> {
    let session = SessionSpec {
        tracer,
        duration: args.duration,
        count: args.count,
        interest: extras.interest,
        control: extras.control,
    };
    let stop = Arc::new(Notify::new());
    let capture_error = match extras.capture {
        Some(writer) => {
            let mut recorder = Recorder::new(&mut view, writer, stop.clone());
            rt.block_on(session::run(session, &mut recorder, stop))?;
            recorder.error.take()
        }
        None => {
            rt.block_on(session::run(session, &mut view, stop))?;
            None
        }
    };
    view.finish_output();
    if let Some(e) = capture_error {
        return Err(e.into());
    }
    Ok(view)
}

/// Opens `-w FILE` for a topology, if asked.
pub fn open_capture(
    args: &TraceArgs,
    topology: &Topology,
) -> anyhow::Result<Option<crate::capture::CaptureWriter>> {
    let Some(path) = &args.write else {
        return Ok(None);
    };
    let opts = crate::capture::WriterOptions {
        max_size: args.max_size,
        max_files: args.max_files,
    };
    record::open(path, topology, args.snaplen, opts).map(Some)
}

pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// `--ring-size` in KiB to bytes: a power of two of at least one page.
pub fn ring_bytes(kib: u32) -> anyhow::Result<u32> {
    let bytes = kib
        .checked_mul(1024)
        .filter(|b| b.is_power_of_two() && *b >= 4096 && *b <= 1 << 30);
    bytes.with_context(|| {
        format!("--ring-size {kib}: expected a power of two between 4 and 1048576 (KiB)")
    })
}
