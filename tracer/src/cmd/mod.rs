//! One module per CLI verb; `session` is the trace engine they share.

pub mod container;
pub mod filter;
pub mod inspect;
pub mod lab;
pub mod live;
pub mod output;
pub mod session;
pub mod trace;

use std::process::ExitCode;

use crate::cli::{Cli, Command};

/// Runs the verb the command line asked for.
pub fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        None => match cli.trace.container.clone() {
            Some(name) => container::run(cli.trace, &name),
            None => trace::run(cli.trace),
        },
        Some(Command::Lab { action }) => lab::run(action),
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
