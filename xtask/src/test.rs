//! `cargo xtask test`: setup, then every test, the kernel matrix, then the lints. Each step runs
//! even when an earlier one failed, so one run shows all that is wrong; the tests come first so
//! their failures are read first. Any failed step fails the run.
use std::process::Command;

use anyhow::{bail, Result};

use crate::{
    run::{self, say, Step, BUILD_EBPF, RUSTC_BOOTSTRAP},
    setup,
};

pub(crate) fn run() -> Result<()> {
    setup::run()?;
    let mut failed = Vec::new();
    let mut summary = Vec::new();
    for (name, mut cmd) in steps() {
        let step = Step::start(name, &cmd);
        let result = run::status(&mut cmd);
        let secs = step.finish(&result);
        let verdict = if result.is_ok() { "ok" } else { "FAILED" };
        summary.push(format!("{name} {verdict} ({secs:.1} s)"));
        if result.is_err() {
            failed.push(name);
        }
    }
    say(format!("test summary: {}", summary.join(", ")));
    if !failed.is_empty() {
        bail!("failed step(s): {}", failed.join(", "));
    }
    Ok(())
}

fn steps() -> [(&'static str, Command); 4] {
    // Unit tests and the privileged integration tests, with the real kernel programs. The
    // integration tests check for root themselves. One test thread: privileged tests build
    // network namespaces, veths and containers and must not race each other.
    let mut tests = run::cargo();
    tests
        .args(["test", "--workspace", "--release", "--no-fail-fast"])
        .args(["--", "--test-threads=1"])
        .env(BUILD_EBPF.0, BUILD_EBPF.1)
        .env(RUSTC_BOOTSTRAP.0, RUSTC_BOOTSTRAP.1);

    // The lints see the stub object (tracer/build.rs writes it without PATHTRACE_BUILD_EBPF),
    // which keeps this debug build free of the nested eBPF build.
    let mut clippy = run::cargo();
    clippy
        .args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ])
        .env_remove(BUILD_EBPF.0);

    let mut fmt = run::cargo();
    fmt.args(["fmt", "--all", "--", "--check"]);

    // The kernel matrix: the smoke checks inside Debian's 5.10, 6.1 and 6.12 under qemu.
    let mut kernels = Command::new(std::env::current_exe().unwrap_or_else(|_| "xtask".into()));
    kernels.arg("kernels");

    [
        ("tests", tests),
        ("kernels", kernels),
        ("clippy", clippy),
        ("rustfmt", fmt),
    ]
}
