//! `cargo xtask`: the project's own tasks (`.cargo/config.toml` defines the alias).
//!
//! `main.rs` only parses and dispatches; each subcommand lives in its own file. Shared helpers
//! for running commands and printing steps are in `run.rs`.
#![expect(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "xtask's steps, tables and errors are its output"
)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
mod build;
mod demo;
mod kernels;
mod run;
mod setup;
mod test;

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
    /// Setup, then every test (unit and privileged integration tests), the kernel matrix
    /// (`kernels`), then clippy and rustfmt.
    Test,
    /// Setup, build --release, then run the built-in lab demo as root.
    Demo,
    /// Build --release, then measure pathtrace's overhead on a lab of its own (as root, a few
    /// minutes; not part of `test`).
    Bench(bench::Args),
    /// The kernel matrix: boot Debian's 5.10, 6.1 and 6.12 kernels under qemu and run the smoke
    /// checks in each (as root; downloads cached in /var/cache/pathtrace-kernels).
    Kernels {
        /// Only this kernel (5.10, 6.1 or 6.12).
        #[arg(long)]
        only: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Setup => setup::run(),
        Command::Build(args) => build::run(&args),
        Command::Test => test::run(),
        Command::Demo => demo::run(),
        Command::Bench(args) => bench::run(&args),
        Command::Kernels { only } => kernels::run(only.as_deref()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("[xtask] error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
