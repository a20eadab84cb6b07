//! One module per CLI verb; `session` is the trace engine they share.

pub mod cleanup;
pub mod container;
pub mod diff;
pub mod filter;
pub mod inspect;
pub mod lab;
pub mod live;
pub mod output;
pub mod record;
pub mod session;
pub mod show;
pub mod trace;
pub mod verify;

use std::process::ExitCode;

use crate::cli::{Cli, Command};

/// Capabilities a tracing verb needs (bit numbers from linux/capability.h).
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_BPF: u32 = 39;

/// Fails with one line when the process lacks what loading and attaching programs needs.
pub fn require_privileges() -> anyhow::Result<()> {
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
    let traces = match &cli.command {
        None => cli.trace.netns.is_some() || cli.trace.container.is_some(),
        Some(Command::Lab { .. }) => true,
        #[allow(unreachable_patterns, reason = "verbs added by other modules")]
        _ => false,
    };
    if traces {
        require_privileges()?;
    }
    match cli.command {
        None => match cli.trace.container.clone() {
            Some(name) => container::run(cli.trace, &name),
            None => trace::run(cli.trace),
        },
        Some(Command::Lab { action }) => lab::run(action),
        Some(Command::Cleanup { force }) => cleanup::run(force),
        Some(Command::Show { file, json }) => show::run(&file, json),
        Some(Command::Verify(a)) => verify::run(a),
        Some(Command::Diff {
            before,
            after,
            json,
        }) => diff::run(&before, &after, json),
        Some(Command::Inspect(a)) => inspect::run(a),
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
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

/// An error chain as one line: "what failed: why".
pub fn one_line(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let s = cause.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
    }
    parts.join(": ")
}
