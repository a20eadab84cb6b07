//! `cargo xtask demo`: setup, build --release, then `pathtrace lab demo`, the built-in lab that
//! shows a container's packets crossing the host and being NATed. Everything here needs root; a
//! user who is not root is taken through `sudo -E` once, for the whole task.
use std::{env, os::unix::process::CommandExt as _, path::Path, process::Command};

use anyhow::{bail, Context as _, Result};

use crate::{
    build,
    run::{self, is_root, say, Step},
    setup,
};

pub(crate) fn run() -> Result<()> {
    if !is_root() {
        return reexec_as_root();
    }
    setup::run()?;
    let built = build::build(true)?;
    let mut cmd = Command::new(&built.pathtrace);
    cmd.args(["lab", "demo"]).current_dir(run::workspace_root());
    let step = Step::start("demo", &cmd);
    let result = run::status(&mut cmd);
    step.finish(&result);
    result
}

/// Runs this same task again as root through `sudo -E`, keeping PATH (sudo would reset it to
/// its secure_path, where cargo and bpf-linker are not).
fn reexec_as_root() -> Result<()> {
    let Some(sudo) = ["/usr/bin/sudo", "/bin/sudo"]
        .into_iter()
        .find(|p| Path::new(p).exists())
    else {
        bail!("the demo loads eBPF programs and builds network namespaces: run it as root (no sudo here)");
    };
    let me = env::current_exe().context("finding the xtask binary")?;
    let path = env::var_os("PATH").unwrap_or_default();
    say("demo needs root: running it again through sudo -E");
    let err = Command::new(sudo)
        .arg("-E")
        .arg("env")
        .arg(format!("PATH={}", path.to_string_lossy()))
        .arg(me)
        .arg("demo")
        .exec();
    Err(err).with_context(|| format!("running {sudo}"))
}
