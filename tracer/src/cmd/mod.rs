//! One short module per CLI verb. Each turns its arguments into a configuration (`config`),
//! composes the stages it needs (`discover`, `runtime`, `pipeline`, `analyze`) and prints
//! through `render`; none holds logic another verb needs.

mod cleanup;
mod diff;
mod doctor;
mod inspect;
mod lab;
mod manual;
mod report;
mod show;
mod trace;
mod verify;

use std::{io::Write as _, process::ExitCode};

use anyhow::Context as _;

use tokio::sync::mpsc;

use crate::{
    attach::PendingTracer,
    cli::{Cli, Command},
    config::TraceConfig,
    pipeline::{
        plan::Plan,
        session::{Control, SessionSpec},
    },
};

/// Capabilities a tracing verb needs (bit numbers from linux/capability.h).
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_BPF: u32 = 39;

/// Fails with one line when the process lacks what loading and attaching programs needs.
pub(crate) fn require_privileges() -> anyhow::Result<()> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    let missing: Vec<&str> = [
        (CAP_BPF, "CAP_BPF"),
        (CAP_NET_ADMIN, "CAP_NET_ADMIN"),
        (CAP_SYS_ADMIN, "CAP_SYS_ADMIN"),
    ]
    .into_iter()
    .filter(|(bit, _)| eff & (1u64 << bit) == 0)
    .map(|(_, name)| name)
    .collect();
    if missing.is_empty() {
        return Ok(());
    }
    anyhow::bail!(
        "needs root to load and attach its kernel programs (missing {}); run it with sudo",
        missing.join(", ")
    )
}

/// Runs the verb the command line asked for.
pub fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        None => {
            // `-r FILE`: tcpdump's spelling of `show FILE`.
            if let Some(file) = &cli.trace.read {
                let t = &cli.trace;
                return show::run(file, t.json, &t.expression, t.write.as_deref(), None);
            }
            if cli.trace.netns.is_some()
                || cli.trace.container.is_some()
                || cli.trace.runtime.pod.is_some()
            {
                require_privileges()?;
            }
            trace::run(&cli.trace)
        }
        Some(Command::Lab { action }) => {
            require_privileges()?;
            lab::run(action)
        }
        Some(Command::Cleanup { force }) => cleanup::run(force),
        Some(Command::Doctor) => doctor::run(),
        Some(Command::Show {
            file,
            json,
            write,
            hook,
            expression,
        }) => show::run(&file, json, &expression, write.as_deref(), hook.as_deref()),
        Some(Command::Verify(a)) => verify::run(&a),
        Some(Command::Diff {
            before,
            after,
            json,
            expression,
        }) => diff::run(&before, &after, json, &expression),
        Some(Command::Inspect(a)) => inspect::run(&a),
        Some(Command::Completions { shell }) => manual::completions(shell),
        Some(Command::Man) => manual::man(),
        Some(Command::Report {
            file,
            out,
            expression,
        }) => report::run(&file, &expression, &out),
    }
}

/// `tracing` to stderr; `-v` raises the level, `RUST_LOG` overrides it.
pub fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("{level},netlink_packet_route=error"))
    });
    // Colours only for a terminal: a log redirected to a file or a pipe stays plain text.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        // A failed write to a closed stderr is reported by the library with `eprintln!`,
        // which panics on that same closed stderr: nothing to report to, so nothing reported.
        .log_internal_errors(false)
        .init();
}

/// The async runtime of a verb that talks to a runtime or reads the ring buffer.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// The session of a trace: its tracer, limits and endpoints of interest.
fn session(
    cfg: &TraceConfig,
    tracer: PendingTracer,
    plan: &Plan,
    control: Option<mpsc::Receiver<Control>>,
) -> SessionSpec {
    SessionSpec {
        tracer,
        duration: cfg.duration,
        count: cfg.count,
        interest: plan.interest.clone(),
        control,
    }
}

/// A warning of a verb, one line on stderr (`pathtrace: ...`), beside what it prints.
fn warn(message: impl std::fmt::Display) {
    crate::say(&format!("pathtrace: {message}"));
}

/// Says once which uplinks are tunnels (their encapsulated packets are not followed) and gives
/// the annotator that notes it on each flow crossing one; `None` without tunnels.
fn tunnels(
    tunnels: Vec<(String, String)>,
) -> Option<Box<dyn crate::pipeline::annotate::Annotator>> {
    use crate::pipeline::annotate::TunnelNotes;
    if tunnels.is_empty() {
        return None;
    }
    for (label, what) in &tunnels {
        warn(TunnelNotes::note(label, what));
    }
    Some(Box::new(TunnelNotes(tunnels)))
}

/// Writes a verb's rendered output to stdout; a closed stdout (`| head`) is one clear error.
fn print(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .context("writing to stdout (was it closed, as by `| head`?)")
}
