//! Running commands and reporting steps, shared by every subcommand.
use std::{
    env,
    ffi::OsString,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{bail, Context as _, Result};

/// Set for every build of `tracer` that should embed the real kernel programs
/// (read by `tracer/build.rs`).
pub(crate) const BUILD_EBPF: (&str, &str) = ("PATHTRACE_BUILD_EBPF", "1");
/// Lets stable rustc take `-Z build-std=core` for the nested eBPF build; aya-build adds that flag
/// only when it sees this in the environment. Harmless for the host crates.
pub(crate) const RUSTC_BOOTSTRAP: (&str, &str) = ("RUSTC_BOOTSTRAP", "1");

/// Prints one status line of xtask's own, set apart from the tools' output.
pub(crate) fn say(line: impl AsRef<str>) {
    println!("[xtask] {}", line.as_ref());
}

/// The workspace root (the folder holding the top `Cargo.toml`).
pub(crate) fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits one level below the workspace root")
        .to_path_buf()
}

/// `cargo`, the same one that runs xtask (cargo sets `CARGO` for `cargo run`), in the workspace.
pub(crate) fn cargo() -> Command {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace_root());
    cmd
}

pub(crate) fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The command as a user would type it, for messages.
pub(crate) fn shown(cmd: &Command) -> String {
    let mut parts: Vec<String> = cmd
        .get_envs()
        .filter_map(|(k, v)| Some(format!("{}={}", k.to_string_lossy(), v?.to_string_lossy())))
        .collect();
    parts.push(cmd.get_program().to_string_lossy().into_owned());
    parts.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    parts.join(" ")
}

/// Runs `cmd` with inherited output; an error if it cannot start or exits non-zero.
pub(crate) fn status(cmd: &mut Command) -> Result<()> {
    let line = shown(cmd);
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

/// Runs `cmd` quietly and returns its stdout when it succeeds, `None` when it cannot start
/// (not installed) or exits non-zero. For probes such as `bpf-linker --version`.
pub(crate) fn probe(cmd: &mut Command) -> Option<String> {
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Times a named step and prints its start and end.
pub(crate) struct Step {
    name: &'static str,
    start: Instant,
}

impl Step {
    pub(crate) fn start(name: &'static str, cmd: &Command) -> Self {
        say(format!("==> {name}: {}", shown(cmd)));
        Self {
            name,
            start: Instant::now(),
        }
    }

    /// Prints how the step ended and returns the elapsed seconds.
    pub(crate) fn finish<T>(self, result: &Result<T>) -> f64 {
        let secs = self.start.elapsed().as_secs_f64();
        match result {
            Ok(_) => say(format!("<== {}: ok ({secs:.1} s)", self.name)),
            Err(err) => say(format!("<== {}: FAILED ({secs:.1} s): {err:#}", self.name)),
        }
        secs
    }
}
