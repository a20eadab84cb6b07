//! `cargo xtask setup`: installs what building and testing pathtrace need, only what is missing,
//! so that a second run is a few quick checks. One line per step: "ok: present" or what it did.
//!
//! Steps: Debian packages (apt, root), rustup components, bpf-linker (cargo install, linked
//! against rustc's own libLLVM), a running dockerd (root). `bpffs` is not mounted: nothing pins.
use std::{
    env, fs,
    io::Write as _,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _, Result};

use crate::run::{self, is_root, probe, say};

/// What the tests and the lab use (see shared/PLATFORM.md).
const APT_PACKAGES: &[&str] = &[
    "iproute2",
    "iptables",
    "nftables",
    "conntrack",
    "tcpdump",
    "tshark",
    "iperf3",
    "iputils-ping",
    "busybox-static",
    "bpftool",
    "docker.io",
    "ethtool",
    "ipset",
    // `man -l` renders the generated man page in its test.
    "man-db",
    // The `--tui` test drives the terminal view in a tmux pane (send-keys, capture-pane).
    "tmux",
    // The report test renders `pathtrace report`'s page in headless Chromium (DOM, screenshots).
    "chromium",
    // Kubernetes pods through the CRI (a containerd of the tests' own, the CNI plugins; protoc
    // builds the CRI API) and rootful Podman (runc: crun cannot start containers on hybrid cgroups).
    "containerd",
    "containernetworking-plugins",
    "protobuf-compiler",
    "podman",
    // Podman's network backend: without it Podman 4.3 falls back to CNI (`cni-podman0`), and
    // the Podman fixture runs netavark's way (`podman0`, its iptables chains).
    "netavark",
    "runc",
    // The kernel matrix (`cargo xtask kernels`): guests under qemu, roots by debootstrap.
    "qemu-system-x86",
    "debootstrap",
    "cpio",
    "kmod",
];
/// Answers tshark's "may non-root users capture?" question so the install never waits on it.
const TSHARK_PRESEED: &str = "wireshark-common wireshark-common/install-setuid boolean false\n";

/// The toolchain the nested eBPF build runs with (`Toolchain::Custom("stable")` in tracer/build.rs).
const TOOLCHAIN: &str = "stable";
/// rust-src and llvm-tools for the eBPF build; clippy and rustfmt for `cargo xtask test`.
const COMPONENTS: &[&str] = &["rust-src", "llvm-tools", "clippy", "rustfmt"];

const BPF_LINKER_VERSION: &str = "0.13.0";

const DOCKER_PIDFILE: &str = "/var/run/docker.pid";
const DOCKERD_LOG: &str = "/var/log/pathtrace-dockerd.log";
const DOCKERD_WAIT: Duration = Duration::from_secs(60);

enum Outcome {
    Present(String),
    Did(String),
    /// Work is needed that only root may do; the text says what.
    NeedsRoot(String),
}

/// Every step, as `cargo xtask setup` runs it.
pub(crate) fn run() -> Result<()> {
    let root = is_root();
    let mut needs_root = Vec::new();
    report("apt packages", apt_packages(root), &mut needs_root)?;
    toolchain()?;
    report("dockerd", dockerd(root), &mut needs_root)?;
    if !needs_root.is_empty() {
        bail!(
            "setup needs root for: {}; run it as root (sudo -E cargo xtask setup)",
            needs_root.join("; ")
        );
    }
    Ok(())
}

/// The steps the eBPF build needs and that need no root: `cargo xtask build` runs only these.
pub(crate) fn toolchain() -> Result<()> {
    let mut needs_root = Vec::new();
    report("rust components", rust_components(), &mut needs_root)?;
    report("bpf-linker", bpf_linker(), &mut needs_root)?;
    Ok(())
}

fn report(step: &str, outcome: Result<Outcome>, needs_root: &mut Vec<String>) -> Result<()> {
    match outcome.with_context(|| format!("setup step `{step}`"))? {
        Outcome::Present(what) => say(format!("setup {step}: ok: present{what}")),
        Outcome::Did(what) => say(format!("setup {step}: {what}")),
        Outcome::NeedsRoot(what) => {
            say(format!("setup {step}: NEEDS ROOT: {what}"));
            needs_root.push(format!("{step} ({what})"));
        }
    }
    Ok(())
}

/// The re-check after an install: an error naming what is still missing.
fn none_left(still: &[&str], after: &str) -> Result<()> {
    if still.is_empty() {
        return Ok(());
    }
    bail!("still missing after {after}: {}", still.join(" "))
}

// ---- apt ----------------------------------------------------------------------------------------

fn apt_packages(root: bool) -> Result<Outcome> {
    let missing = missing_packages()?;
    if missing.is_empty() {
        return Ok(Outcome::Present(String::new()));
    }
    let list = missing.join(" ");
    if !root {
        return Ok(Outcome::NeedsRoot(format!("apt-get install {list}")));
    }
    if missing.contains(&"tshark") {
        preseed_tshark()?;
    }
    run::status(apt_get().args(["update", "-q"]))?;
    run::status(
        apt_get()
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing),
    )?;
    none_left(&missing_packages()?, "apt-get install")?;
    Ok(Outcome::Did(format!("installed {list}")))
}

fn apt_get() -> Command {
    let mut cmd = Command::new("apt-get");
    cmd.env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null());
    cmd
}

/// The packages of `APT_PACKAGES` that dpkg does not list as "install ok installed".
fn missing_packages() -> Result<Vec<&'static str>> {
    // One call for all: dpkg-query prints the known ones and exits 1 when some are unknown,
    // so its exit status is not an error here.
    let out = Command::new("dpkg-query")
        .arg("-W")
        .arg("-f=${Package}\t${Status}\n")
        .args(APT_PACKAGES)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .context("running dpkg-query: setup installs packages with apt (Debian 12)")?;
    let listing = String::from_utf8_lossy(&out.stdout);
    let installed: Vec<&str> = listing
        .lines()
        .filter_map(|line| line.split_once('\t'))
        .filter(|(_, status)| *status == "install ok installed")
        .map(|(name, _)| name)
        .collect();
    Ok(APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| !installed.contains(p))
        .collect())
}

fn preseed_tshark() -> Result<()> {
    let mut child = Command::new("debconf-set-selections")
        .stdin(Stdio::piped())
        .spawn()
        .context("starting debconf-set-selections")?;
    child
        .stdin
        .take()
        .ok_or_else(|| anyhow!("debconf-set-selections has no stdin"))?
        .write_all(TSHARK_PRESEED.as_bytes())
        .context("writing to debconf-set-selections")?;
    let status = child.wait().context("waiting for debconf-set-selections")?;
    if !status.success() {
        bail!("debconf-set-selections failed ({status})");
    }
    Ok(())
}

// ---- rust ---------------------------------------------------------------------------------------

fn rustup() -> Command {
    let mut cmd = Command::new("rustup");
    cmd.stdin(Stdio::null());
    cmd
}

fn rust_components() -> Result<Outcome> {
    let missing = missing_components()?;
    if missing.is_empty() {
        return Ok(Outcome::Present(String::new()));
    }
    run::status(
        rustup()
            .args(["component", "add", "--toolchain", TOOLCHAIN])
            .args(&missing),
    )?;
    none_left(&missing_components()?, "rustup component add")?;
    Ok(Outcome::Did(format!(
        "added {} to {TOOLCHAIN}",
        missing.join(" ")
    )))
}

fn missing_components() -> Result<Vec<&'static str>> {
    let out = rustup()
        .args(["component", "list", "--installed", "--toolchain", TOOLCHAIN])
        .output()
        .context("running rustup: pathtrace builds with a rustup-managed stable toolchain")?;
    if !out.status.success() {
        bail!(
            "`rustup component list --installed --toolchain {TOOLCHAIN}` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let listing = String::from_utf8_lossy(&out.stdout);
    // Installed components are listed with their target: `llvm-tools-x86_64-unknown-linux-gnu`.
    let installed = |c: &str| {
        listing
            .lines()
            .any(|l| l == c || l.strip_prefix(c).is_some_and(|rest| rest.starts_with('-')))
    };
    Ok(COMPONENTS
        .iter()
        .copied()
        .filter(|c| !installed(c))
        .collect())
}

fn bpf_linker() -> Result<Outcome> {
    let wanted = format!("bpf-linker {BPF_LINKER_VERSION}");
    let found = probe(Command::new("bpf-linker").arg("--version")).map(|v| v.trim().to_owned());
    if found.as_deref() == Some(wanted.as_str()) {
        return Ok(Outcome::Present(format!(" ({wanted})")));
    }
    let was = found.unwrap_or_else(|| "none that runs".to_owned());
    install_bpf_linker()?;
    match probe(Command::new("bpf-linker").arg("--version")) {
        Some(v) if v.trim() == wanted => {
            Ok(Outcome::Did(format!("installed {wanted} (was: {was})")))
        }
        Some(v) => bail!(
            "installed {wanted}, but the `bpf-linker` first on PATH says `{}`",
            v.trim()
        ),
        None => bail!(
            "installed {wanted} into {}, which is not on PATH",
            cargo_home()?.join("bin").display()
        ),
    }
}

/// `cargo install bpf-linker` against rustc's own libLLVM: no system LLVM of the same major
/// version exists. The linker finds the library at run time through its rpath.
fn install_bpf_linker() -> Result<()> {
    let sysroot = probe(rustup().args(["run", TOOLCHAIN, "rustc", "--print", "sysroot"]))
        .map(|s| PathBuf::from(s.trim()))
        .ok_or_else(|| anyhow!("`rustup run {TOOLCHAIN} rustc --print sysroot` failed"))?;
    let (libllvm, major) = find_libllvm(&sysroot.join("lib"))?;
    let link_dir = cargo_home()?.join("pathtrace-llvm");
    fs::create_dir_all(&link_dir).with_context(|| format!("creating {}", link_dir.display()))?;
    let link = link_dir.join("libLLVM.so");
    if fs::read_link(&link).ok().as_deref() != Some(libllvm.as_path()) {
        match fs::remove_file(&link) {
            Ok(()) => {}
            // No old link to replace.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", link.display())),
        }
        symlink(&libllvm, &link).with_context(|| format!("linking {}", link.display()))?;
    }
    say(format!(
        "setup bpf-linker: building {BPF_LINKER_VERSION} against {} (about 2 min)",
        libllvm.display()
    ));
    let mut cmd = run::cargo();
    cmd.args(["install", "bpf-linker", "--locked", "--force"])
        .args(["--version", BPF_LINKER_VERSION])
        .args([
            "--no-default-features",
            "--features",
            &format!("llvm-{major}"),
        ])
        .env("LLVM_PREFIX", &sysroot)
        .env("RUSTFLAGS", format!("-L {}", link_dir.display()))
        .stdin(Stdio::null());
    run::status(&mut cmd)
}

/// rustc's shared LLVM in `lib` (`libLLVM.so.22.1-rust-1.95.0-stable`) and its major version.
fn find_libllvm(lib: &Path) -> Result<(PathBuf, u32)> {
    let entries = fs::read_dir(lib).with_context(|| format!("reading {}", lib.display()))?;
    for entry in entries {
        let name = entry?.file_name();
        let Some(version) = name.to_str().and_then(|n| n.strip_prefix("libLLVM.so.")) else {
            continue;
        };
        let major = version.split(['.', '-']).next().unwrap_or_default();
        if let Ok(major) = major.parse() {
            return Ok((lib.join(name), major));
        }
    }
    bail!(
        "no libLLVM.so.<version> in {}: this rustc does not ship its LLVM as a shared library",
        lib.display()
    )
}

fn cargo_home() -> Result<PathBuf> {
    if let Some(home) = env::var_os("CARGO_HOME") {
        return Ok(PathBuf::from(home));
    }
    let home = env::var_os("HOME").ok_or_else(|| anyhow!("neither CARGO_HOME nor HOME is set"))?;
    Ok(PathBuf::from(home).join(".cargo"))
}

// ---- docker -------------------------------------------------------------------------------------

/// dockerd's version if it answers. Under `timeout`: a wedged dockerd must not hang setup.
fn docker_answers() -> Option<String> {
    probe(Command::new("timeout").args([
        "10",
        "docker",
        "version",
        "--format",
        "{{.Server.Version}}",
    ]))
    .map(|v| v.trim().to_owned())
}

fn dockerd(root: bool) -> Result<Outcome> {
    if let Some(version) = docker_answers() {
        return Ok(Outcome::Present(format!(" (dockerd {version})")));
    }
    let running = dockerd_pid();
    if !root {
        return Ok(Outcome::NeedsRoot(match running {
            Some(pid) => format!("dockerd (pid {pid}) runs but does not answer this user"),
            None => "start dockerd".to_owned(),
        }));
    }
    let did = match running {
        Some(pid) => format!("waited for the running dockerd (pid {pid})"),
        None => {
            start_dockerd()?;
            format!("started dockerd (log: {DOCKERD_LOG})")
        }
    };
    let deadline = Instant::now() + DOCKERD_WAIT;
    while Instant::now() < deadline {
        if let Some(version) = docker_answers() {
            return Ok(Outcome::Did(format!("{did}; dockerd {version} answers")));
        }
        thread::sleep(Duration::from_millis(500));
    }
    bail!(
        "dockerd did not answer within {} s; see {DOCKERD_LOG}",
        DOCKERD_WAIT.as_secs()
    )
}

/// The pid in docker's pidfile if that process is a live dockerd. A pidfile left by a dockerd
/// that died makes a new one refuse to start, so a stale one is removed (by root only).
fn dockerd_pid() -> Option<u32> {
    let pid: u32 = fs::read_to_string(DOCKER_PIDFILE)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if comm.trim() == "dockerd" {
        return Some(pid);
    }
    if is_root() {
        match fs::remove_file(DOCKER_PIDFILE) {
            Ok(()) => say(format!(
                "setup dockerd: removed stale {DOCKER_PIDFILE} (pid {pid})"
            )),
            Err(e) => say(format!(
                "setup dockerd: could not remove stale {DOCKER_PIDFILE}: {e}"
            )),
        }
    }
    None
}

/// Starts dockerd in its own session (`setsid --fork`), so it outlives xtask and CI's step, with
/// its output in `DOCKERD_LOG`. There is no systemd on these machines.
fn start_dockerd() -> Result<()> {
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(DOCKERD_LOG)
        .with_context(|| format!("opening {DOCKERD_LOG}"))?;
    let log_err = log
        .try_clone()
        .context("duplicating the dockerd log handle")?;
    let status = Command::new("setsid")
        .args(["--fork", "dockerd"])
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .status()
        .context("starting `setsid --fork dockerd`")?;
    if !status.success() {
        bail!("`setsid --fork dockerd` failed ({status})");
    }
    Ok(())
}
