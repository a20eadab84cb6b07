//! `cargo xtask build [--release]`: builds `pathtrace` with the real kernel programs embedded,
//! then checks that the object `tracer/build.rs` left behind is an ELF file and not the stub.
use std::{
    fs::File,
    io::{BufRead as _, BufReader, Read as _},
    path::{Path, PathBuf},
    process::Stdio,
};

use anyhow::{anyhow, bail, Context as _, Result};

use crate::{
    run::{self, say, Step, BUILD_EBPF, RUSTC_BOOTSTRAP},
    setup,
};

#[derive(clap::Args)]
pub(crate) struct Args {
    /// Build with the release profile (target/release/pathtrace).
    #[arg(long)]
    pub release: bool,
}

/// What a build produced.
pub(crate) struct Built {
    pub pathtrace: PathBuf,
}

pub(crate) fn run(args: &Args) -> Result<()> {
    setup::toolchain()?;
    build(args.release).map(|_| ())
}

/// The build alone, for subcommands that ran the whole setup already.
pub(crate) fn build(release: bool) -> Result<Built> {
    let mut cmd = run::cargo();
    cmd.args(["build", "--package", "tracer", "--bins"]);
    if release {
        cmd.arg("--release");
    }
    // JSON on stdout tells where the binary and tracer's OUT_DIR are; diagnostics and progress
    // still go to stderr as usual.
    cmd.arg("--message-format=json-render-diagnostics")
        .env(BUILD_EBPF.0, BUILD_EBPF.1)
        .env(RUSTC_BOOTSTRAP.0, RUSTC_BOOTSTRAP.1)
        .stdout(Stdio::piped());

    let step = Step::start("build", &cmd);
    let result = build_with(&mut cmd);
    step.finish(&result);
    let (pathtrace, object) = result?;
    say(format!("built {}", pathtrace.display()));
    say(format!("eBPF object {}", object_summary(&object)?));
    Ok(Built { pathtrace })
}

fn build_with(cmd: &mut std::process::Command) -> Result<(PathBuf, PathBuf)> {
    let line = run::shown(cmd);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("could not start `{line}`"))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow!("no stdout from cargo"))?;
    let mut pathtrace = None;
    let mut out_dir = None;
    for msg in BufReader::new(stdout).lines() {
        let msg = msg.context("reading cargo's messages")?;
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(&msg) else {
            continue;
        };
        match msg["reason"].as_str() {
            Some("compiler-artifact") if msg["target"]["name"] == "pathtrace" => {
                pathtrace = msg["executable"].as_str().map(PathBuf::from);
            }
            Some("build-script-executed")
                if msg["package_id"].as_str().map(package_name) == Some("tracer") =>
            {
                out_dir = msg["out_dir"].as_str().map(PathBuf::from);
            }
            _ => {}
        }
    }
    let status = child.wait().context("waiting for cargo build")?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    let pathtrace = pathtrace.ok_or_else(|| anyhow!("cargo built no `pathtrace` binary"))?;
    let out_dir = out_dir.ok_or_else(|| anyhow!("cargo did not report tracer's build script"))?;
    Ok((pathtrace, out_dir.join("tracer")))
}

/// The package name in a cargo package id: `path+file:///w/tracer#0.1.0` (the folder's name) or
/// `registry+https://…#aya@0.14.0`.
fn package_name(id: &str) -> &str {
    let last = id.rsplit('/').next().unwrap_or(id);
    match last.split_once('#') {
        Some((_, version)) if version.contains('@') => version.split('@').next().unwrap_or(""),
        Some((folder, _)) => folder,
        None => last,
    }
}

/// "path (N bytes, ELF)", or an error if the build wrote the stub: then PATHTRACE_BUILD_EBPF did
/// not reach tracer/build.rs.
fn object_summary(object: &Path) -> Result<String> {
    let mut magic = [0u8; 4];
    let mut file = File::open(object).with_context(|| format!("opening {}", object.display()))?;
    let len = file.metadata()?.len();
    if len == 0 {
        bail!(
            "{} is the empty stub, not the kernel programs",
            object.display()
        );
    }
    file.read_exact(&mut magic)
        .with_context(|| format!("reading {}", object.display()))?;
    if magic != *b"\x7fELF" {
        bail!("{} is not an ELF object", object.display());
    }
    Ok(format!("{} ({len} bytes, ELF)", object.display()))
}

#[cfg(test)]
mod tests {
    use super::package_name;

    #[test]
    fn package_names() {
        assert_eq!(
            package_name("path+file:///work/main/tracer#0.1.0"),
            "tracer"
        );
        assert_eq!(
            package_name("path+file:///work/main/tracer-ebpf#0.1.0"),
            "tracer-ebpf"
        );
        assert_eq!(package_name("path+file:///w/dir#tracer@0.1.0"), "tracer");
        assert_eq!(
            package_name("registry+https://github.com/rust-lang/crates.io-index#aya@0.14.0"),
            "aya"
        );
    }
}
