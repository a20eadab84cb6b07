//! `cargo xtask kernels`: the kernel matrix. Boots Debian's own kernels (5.10 of bullseye, 6.1 of
//! bookworm, 6.12 of bookworm-backports) under qemu, software emulation (KVM hangs on these
//! machines), each with a bookworm root filesystem as its initramfs that holds the release
//! binary, and runs the smoke checks of `kernels/guest.sh` inside. The kernels and the root
//! filesystem are downloaded once and cached by package name in `/var/cache/pathtrace-kernels`;
//! the host's own kernel is untouched (packages are unpacked, never installed).
//!
//! Each check's verdict is one `PT-CHECK` line on the guest's console; the results go to
//! `target/kernels/results.json` and a table. Any failed check, or a guest that did not finish,
//! fails the run.

use std::{
    fs,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};

use crate::run::{self, say};

const CACHE: &str = "/var/cache/pathtrace-kernels";
const MIRROR: &str = "http://deb.debian.org/debian";
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
const GUEST_INIT: &str = include_str!("kernels/guest.sh");
/// What the guest's root holds besides the minimal base.
const ROOT_PACKAGES: &str = "iproute2,iptables,kmod,conntrack,procps,iputils-ping,libpcap0.8";
/// A guest that has not powered off by then is stopped and fails.
const GUEST_TIMEOUT: Duration = Duration::from_secs(420);

/// One kernel of the matrix: the Debian suite that has it and its package name's pattern.
struct Kernel {
    name: &'static str,
    suite: &'static str,
    /// `apt-cache search --names-only` regex.
    package: &'static str,
}

const KERNELS: [Kernel; 3] = [
    Kernel {
        name: "5.10",
        suite: "bullseye",
        package: r"^linux-image-5\.10\.0-[0-9]+-cloud-amd64$",
    },
    Kernel {
        name: "6.1",
        suite: "bookworm",
        package: r"^linux-image-6\.1\.0-[0-9]+-cloud-amd64$",
    },
    Kernel {
        name: "6.12",
        suite: "bookworm-backports",
        // Pinned: 6.12.95 (and other later ones) takes double faults in exc_page_fault under
        // this machine's qemu 7.2 software emulation, in every CPU model and machine tried;
        // 6.12.43 runs every check.
        package: r"^linux-image-6\.12\.43\+deb12-cloud-amd64$",
    },
];

/// (check, pass/fail/skip, why) as the guest printed them.
type Checks = Vec<(String, String, String)>;

/// The verdict of one check in one guest.
#[derive(Debug)]
struct CheckResult {
    kernel: String,
    check: String,
    result: String,
    why: String,
}

pub(crate) fn run(only: Option<&str>) -> Result<()> {
    ensure!(
        run::is_root(),
        "the kernel matrix needs root (debootstrap, dpkg-deb, depmod)"
    );
    let binary = build_release()?;
    let cache = Path::new(CACHE);
    fs::create_dir_all(cache)?;
    let root_tar = root_filesystem(cache)?;
    let out_dir = run::workspace_root().join("target/kernels");
    fs::create_dir_all(&out_dir)?;
    let mut results = Vec::new();
    let mut failed = Vec::new();
    for k in KERNELS.iter().filter(|k| only.is_none_or(|o| o == k.name)) {
        let started = Instant::now();
        let outcome = fetch_kernel(cache, k).and_then(|(vmlinuz, modules, kv)| {
            let initrd = guest_image(&out_dir, &root_tar, &binary, &modules, &kv)?;
            boot(
                &vmlinuz,
                &initrd,
                &out_dir.join(format!("console-{}.log", k.name)),
            )
        });
        match outcome {
            Ok((kv, checks, done)) => {
                let fails: Vec<&str> = checks
                    .iter()
                    .filter(|(_, r, _)| r == "fail")
                    .map(|(c, _, _)| c.as_str())
                    .collect();
                say(format!(
                    "kernel {} ({kv}): {} checks, {} failed{} ({:.0} s)",
                    k.name,
                    checks.len(),
                    fails.len(),
                    if done {
                        ""
                    } else {
                        ", the guest did not finish"
                    },
                    started.elapsed().as_secs_f64()
                ));
                if !fails.is_empty() || !done {
                    failed.push(format!("{}: {}", k.name, fails.join(", ")));
                }
                results.extend(checks.into_iter().map(|(check, result, why)| CheckResult {
                    kernel: kv.clone(),
                    check,
                    result,
                    why,
                }));
            }
            Err(e) => {
                say(format!("kernel {}: {e:#}", k.name));
                failed.push(format!("{}: {e:#}", k.name));
            }
        }
    }
    let json: Vec<serde_json::Value> = results
        .iter()
        .map(|r| {
            serde_json::json!({"kernel": r.kernel, "check": r.check, "result": r.result, "why": r.why})
        })
        .collect();
    fs::write(
        out_dir.join("results.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    if !results.is_empty() {
        print_table(&results);
    }
    if !failed.is_empty() {
        bail!("kernel matrix: {}", failed.join("; "));
    }
    Ok(())
}

fn print_table(results: &[CheckResult]) {
    let mut kernels: Vec<&str> = results.iter().map(|r| r.kernel.as_str()).collect();
    kernels.dedup();
    let mut checks: Vec<&str> = results.iter().map(|r| r.check.as_str()).collect();
    checks.sort_unstable();
    checks.dedup();
    let mut table = format!(
        "| check | {} |\n|---|{}\n",
        kernels.join(" | "),
        "---|".repeat(kernels.len())
    );
    for c in checks {
        let cells: Vec<String> = kernels
            .iter()
            .map(|k| {
                results
                    .iter()
                    .find(|r| r.kernel == *k && r.check == c)
                    .map_or("-".to_string(), |r| match r.why.is_empty() {
                        true => r.result.clone(),
                        false => format!("{} ({})", r.result, r.why),
                    })
            })
            .collect();
        table.push_str(&format!("| {c} | {} |\n", cells.join(" | ")));
    }
    say(format!("kernel matrix:\n{table}"));
}

fn build_release() -> Result<PathBuf> {
    let mut cmd = run::cargo();
    cmd.args(["build", "--release", "-p", "tracer"])
        .env(run::BUILD_EBPF.0, run::BUILD_EBPF.1)
        .env(run::RUSTC_BOOTSTRAP.0, run::RUSTC_BOOTSTRAP.1);
    run::status(&mut cmd)?;
    Ok(run::workspace_root().join("target/release/pathtrace"))
}

/// Runs `cmd`; its stdout, or an error with its stderr.
fn output(cmd: &mut Command) -> Result<String> {
    let shown = run::shown(cmd);
    let out = cmd.output().with_context(|| format!("running {shown}"))?;
    ensure!(
        out.status.success(),
        "{shown}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// apt with a sources list of its own for `suite` (the machine's lists untouched).
fn apt(cache: &Path, suite: &str, tool: &str) -> Result<Command> {
    let dir = cache.join(format!("apt-{suite}"));
    fs::create_dir_all(dir.join("lists/partial"))?;
    let list = dir.join("sources.list");
    fs::write(
        &list,
        format!("deb [signed-by={KEYRING}] {MIRROR} {suite} main\n"),
    )?;
    let mut cmd = Command::new(tool);
    cmd.arg("-o")
        .arg(format!("Dir::Etc::sourcelist={}", list.display()))
        .args(["-o", "Dir::Etc::sourceparts=/nonexistent", "-o"])
        .arg(format!("Dir::State::Lists={}", dir.join("lists").display()));
    Ok(cmd)
}

/// The newest package of `k`, unpacked: (vmlinuz, /lib/modules/KV, KV). Cached by package name.
fn fetch_kernel(cache: &Path, k: &Kernel) -> Result<(PathBuf, PathBuf, String)> {
    let mut update = apt(cache, k.suite, "apt-get")?;
    // Offline with lists from before: the cache may still have the package.
    let updated = output(update.args(["-q", "update"]));
    let found =
        output(apt(cache, k.suite, "apt-cache")?.args(["search", "--names-only", k.package]))
            .unwrap_or_default();
    let mut names: Vec<&str> = found.lines().filter_map(|l| l.split(' ').next()).collect();
    names.sort_by_key(|n| version_key(n));
    let name = match names.last() {
        Some(n) => n.to_string(),
        None => {
            updated.context("updating the package lists")?;
            bail!("no package matches {} in {}", k.package, k.suite);
        }
    };
    let dir = cache.join(&name);
    let unpacked = dir.join("root");
    if !unpacked.join("boot").exists() {
        fs::create_dir_all(&dir)?;
        say(format!("kernels: downloading {name}"));
        output(
            apt(cache, k.suite, "apt-get")?
                .args(["-q", "download", &name])
                .current_dir(&dir),
        )?;
        let deb = fs::read_dir(&dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|x| x == "deb"))
            .context("apt-get download left no .deb")?;
        let tmp = dir.join("root.partial");
        fs::remove_dir_all(&tmp).ok();
        output(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tmp))?;
        fs::rename(&tmp, &unpacked)?;
        fs::remove_file(&deb)?;
    }
    let vmlinuz = fs::read_dir(unpacked.join("boot"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .context("no vmlinuz in the package")?;
    let kv =
        vmlinuz.file_name().unwrap_or_default().to_string_lossy()["vmlinuz-".len()..].to_string();
    Ok((vmlinuz, unpacked.join("lib/modules").join(&kv), kv))
}

/// Numbers in a package name compared as numbers: `-32-` after `-4-`.
fn version_key(name: &str) -> Vec<u64> {
    name.split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect()
}

/// A bookworm root (debootstrap, minbase), as a tarball: cached, made once.
fn root_filesystem(cache: &Path) -> Result<PathBuf> {
    let tar = cache.join(format!(
        "root-bookworm-{}.tar",
        ROOT_PACKAGES.replace(',', "+")
    ));
    if tar.exists() {
        return Ok(tar);
    }
    let dir = cache.join("root.partial");
    fs::remove_dir_all(&dir).ok();
    say("kernels: debootstrap of the guest root (bookworm, minbase)");
    output(
        Command::new("debootstrap")
            .args([
                "--variant=minbase",
                &format!("--include={ROOT_PACKAGES}"),
                "bookworm",
            ])
            .arg(&dir)
            .arg(MIRROR),
    )?;
    let partial = tar.with_extension("partial");
    output(
        Command::new("tar")
            .arg("-C")
            .arg(&dir)
            .arg("-cf")
            .arg(&partial)
            .arg("."),
    )?;
    fs::rename(&partial, &tar)?;
    fs::remove_dir_all(&dir)?;
    Ok(tar)
}

/// The guest's initramfs: the root, the kernel's network modules, the binary and `/init`.
fn guest_image(
    out: &Path,
    root_tar: &Path,
    binary: &Path,
    modules: &Path,
    kv: &str,
) -> Result<PathBuf> {
    let root = out.join(format!("root-{kv}"));
    fs::remove_dir_all(&root).ok();
    fs::create_dir_all(&root)?;
    output(
        Command::new("tar")
            .arg("-C")
            .arg(&root)
            .arg("-xf")
            .arg(root_tar),
    )?;
    // Less to pack and to unpack at boot: documentation, locales, apt's lists and caches.
    for unused in [
        "usr/share/doc",
        "usr/share/man",
        "usr/share/locale",
        "usr/share/info",
        "var/cache/apt",
        "var/lib/apt/lists",
    ] {
        fs::remove_dir_all(root.join(unused)).ok();
    }
    let dest = root.join("lib/modules").join(kv);
    fs::create_dir_all(dest.join("kernel/drivers/net"))?;
    for sub in ["kernel/net", "kernel/lib", "kernel/crypto"] {
        output(
            Command::new("cp")
                .arg("-a")
                .arg(modules.join(sub))
                .arg(dest.join(sub)),
        )?;
    }
    // veth.ko, or veth.ko.xz on newer kernels.
    let net = modules.join("kernel/drivers/net");
    let veth = fs::read_dir(&net)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("veth.ko"))
        })
        .with_context(|| format!("no veth module in {}", net.display()))?;
    output(
        Command::new("cp")
            .arg(&veth)
            .arg(dest.join("kernel/drivers/net/")),
    )?;
    for f in [
        "modules.order",
        "modules.builtin",
        "modules.builtin.modinfo",
    ] {
        if modules.join(f).exists() {
            fs::copy(modules.join(f), dest.join(f))?;
        }
    }
    output(Command::new("depmod").arg("-b").arg(&root).arg(kv))?;
    fs::copy(binary, root.join("usr/local/bin/pathtrace"))?;
    let init = root.join("init");
    fs::write(&init, GUEST_INIT)?;
    output(Command::new("chmod").arg("755").arg(&init))?;
    let image = out.join(format!("initrd-{kv}.cpio"));
    output(Command::new("sh").arg("-c").arg(format!(
        "cd '{}' && find . | cpio -o -H newc --quiet > '{}'",
        root.display(),
        image.display()
    )))?;
    fs::remove_dir_all(&root)?;
    Ok(image)
}

/// Boots the guest and reads its console: (kernel release, checks, whether it finished).
fn boot(vmlinuz: &Path, initrd: &Path, log: &Path) -> Result<(String, Checks, bool)> {
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-machine", "q35", "-cpu", "max", "-m", "2G", "-smp", "2"])
        .args([
            "-nographic",
            "-serial",
            "stdio",
            "-monitor",
            "none",
            "-no-reboot",
            "-nic",
            "none",
        ])
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 rdinit=/init panic=-1 loglevel=4"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting qemu-system-x86_64")?;
    let stdout = child.stdout.take().context("qemu stdout")?;
    let deadline = Instant::now() + GUEST_TIMEOUT;
    let pid = child.id();
    let watchdog = std::thread::spawn(move || {
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(500));
            if !Path::new(&format!("/proc/{pid}")).exists() {
                return;
            }
        }
        let pid = nix::unistd::Pid::from_raw(pid as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).ok();
    });
    let mut console = String::new();
    let (mut kv, mut checks, mut done) = (String::new(), Vec::new(), false);
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        // The console interleaves escape sequences and kernel messages: the guest's lines are
        // found by their prefix wherever it starts.
        let line = line.trim_end_matches('\r').to_string();
        let ours = line.find("PT-").map_or("", |i| &line[i..]);
        console.push_str(&line);
        console.push('\n');
        if let Some(k) = ours.strip_prefix("PT-KERNEL ") {
            kv = k.trim().to_string();
        } else if let Some(c) = ours.strip_prefix("PT-CHECK ") {
            let mut w = c.splitn(3, ' ');
            let (name, result, why) = (w.next(), w.next(), w.next());
            checks.push((
                name.unwrap_or_default().to_string(),
                result.unwrap_or_default().to_string(),
                why.unwrap_or_default().to_string(),
            ));
        } else if ours.starts_with("PT-DONE") {
            done = true;
        }
    }
    child.wait().ok();
    watchdog.join().ok();
    fs::write(log, &console)?;
    ensure!(
        !kv.is_empty(),
        "the guest never ran /init (console: {})",
        log.display()
    );
    Ok((kv, checks, done))
}
