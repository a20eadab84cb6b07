//! Builds the kernel programs (`tracer-ebpf`) with aya-build and leaves the object in `OUT_DIR`,
//! where `src/attach/object.rs` embeds it.
//!
//! Building them needs bpf-linker and the rust-src component, so it happens only when asked:
//! `PATHTRACE_BUILD_EBPF=1` (set by `cargo xtask`, the README commands and CI). Otherwise an empty
//! stub object is written so that `cargo check`, `cargo clippy` and `cargo doc` work anywhere; a
//! binary built that way says so and exits when it is asked to trace.
use std::{env, fs, path::PathBuf};

use anyhow::{anyhow, Context as _};
use aya_build::{Package, Toolchain};

const BUILD_EBPF: &str = "PATHTRACE_BUILD_EBPF";

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed={BUILD_EBPF}");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or_else(|| anyhow!("OUT_DIR not set"))?);
    let wanted = env::var(BUILD_EBPF).is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if !wanted {
        fs::write(out_dir.join("tracer"), []).context("writing the stub eBPF object")?;
        return Ok(());
    }
    let manifest = PathBuf::from(
        env::var_os("CARGO_MANIFEST_DIR").ok_or_else(|| anyhow!("CARGO_MANIFEST_DIR not set"))?,
    );
    let root = manifest
        .parent()
        .ok_or_else(|| anyhow!("tracer has no parent directory"))?
        .join("tracer-ebpf");
    let root = root
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {}", root.display()))?;
    aya_build::build_ebpf(
        [Package {
            name: "tracer-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        Toolchain::Custom("stable"),
    )
}
