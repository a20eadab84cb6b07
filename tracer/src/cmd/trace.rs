//! The default verb: trace a namespace (`--netns`) or a container (`--container`).

use std::{process::ExitCode, sync::Arc};

use anyhow::{bail, Context as _};
use tokio::sync::Notify;

use super::{
    filter::filter_config,
    session::{self, Observer, SessionSpec, StopReason},
};
use crate::{
    attach::LoadOptions,
    cli::TraceArgs,
    collect::Event,
    discover::{
        netns::Netns,
        path::{self, PathQuery},
    },
    model::{Hook, HookStats},
};

pub fn run(args: TraceArgs) -> anyhow::Result<ExitCode> {
    let filter = filter_config(&args)?;
    let Some(spec) = args.netns.as_deref() else {
        bail!("nothing to trace: give --netns NAME, --container NAME, or try `pathtrace lab demo`");
    };
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
    let session = SessionSpec {
        targets,
        load: LoadOptions {
            filter,
            ring_bytes: ring_bytes(args.ring_size)?,
            kernel_log: args.kernel_log,
        },
        mode: args.tc_mode,
        duration: args.duration,
        count: args.count,
        interest: Vec::new(),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let mut observer = RawObserver::default();
    rt.block_on(session::run(session, &mut observer, Arc::new(Notify::new())))?;
    Ok(ExitCode::SUCCESS)
}

/// `--ring-size` in KiB to bytes: a power of two of at least one page.
pub fn ring_bytes(kib: u32) -> anyhow::Result<u32> {
    let bytes = kib.checked_mul(1024).filter(|b| b.is_power_of_two() && *b >= 4096 && *b <= 1 << 30);
    bytes.with_context(|| format!("--ring-size {kib}: expected a power of two between 4 and 1048576 (KiB)"))
}

#[derive(Default)]
struct RawObserver {
    hooks: Vec<Hook>,
}

impl Observer for RawObserver {
    fn attached(&mut self, mode: &str, hooks: &[Hook]) {
        eprintln!("attached {} hooks ({mode})", hooks.len());
        self.hooks = hooks.to_vec();
    }
    fn events(&mut self, events: &[Event]) {
        for e in events {
            if let Event::Packet(p) = e {
                let label = self.hooks.iter().find(|h| h.slot == p.slot).map(|h| h.label()).unwrap_or_default();
                println!("{} {label} {} {} {} -> {} fp={:016x}", p.ktime_ns, p.direction, p.proto, p.src, p.dst, p.fingerprint);
            }
        }
    }
    fn tick(&mut self, _now_ns: u64, _stats: &[(Hook, HookStats)]) {}
    fn finished(&mut self, why: StopReason, stats: &[(Hook, HookStats)]) {
        eprintln!("stopped: {why}");
        for (h, s) in stats {
            eprintln!("{} {} seen={} filtered={} emitted={} lost={}", h.label(), h.direction, s.seen, s.filtered, s.emitted, s.lost);
        }
    }
}
