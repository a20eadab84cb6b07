//! `cargo xtask`: the project's own tasks (`.cargo/config.toml` defines the alias).
//!
//! `main.rs` only parses and dispatches; each subcommand lives in its own file. Shared helpers
//! for running commands and printing steps are in `run.rs`.
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod build;
mod demo;
mod run;
mod setup;
mod test;
// `bench`: a later subcommand, written by the performance work. Add `mod bench;` here, a
// `Bench(bench::Args)` variant to `Command` and its arm in `main`, following `build`.

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "pathtrace's build, setup, test and demo tasks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what building and testing need, only what is missing (apt packages, rustup
    /// components, bpf-linker, a running dockerd). Apt and dockerd need root.
    Setup,
    /// Build `pathtrace` with the real eBPF object embedded (needs bpf-linker and rust-src).
    Build(build::Args),
    /// Setup, then every test (unit and privileged integration tests), then clippy and rustfmt.
    Test,
    /// Setup, build --release, then run the built-in lab demo as root.
    Demo,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Setup => setup::run(),
        Command::Build(args) => build::run(&args),
        Command::Test => test::run(),
        Command::Demo => demo::run(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("[xtask] error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
