//! Docker fixtures for integration tests, offline: a busybox image built by `docker import` (no
//! registry), containers and networks with unique names that are removed on drop (also when a
//! test panics). Everything made here carries the label `pathtrace-test=1`; after a killed run,
//! clean up by hand with `docker rm -f $(docker ps -aq -f label=pathtrace-test=1)` and
//! `docker network prune -f -f label=pathtrace-test=1`.

use std::{
    fs,
    os::unix::fs::{symlink, PermissionsExt as _},
    path::{Path, PathBuf},
    process::Command,
    sync::{
        atomic::{AtomicU32, Ordering},
        Mutex,
    },
};

use anyhow::{bail, ensure, Context, Result};

pub(crate) const BUSYBOX_IMAGE: &str = "pathtrace-test-busybox:latest";
const LABEL: &str = "pathtrace-test=1";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// `prefix-<pid>-<n>`: unique in this process, and across processes running at the same time.
pub(crate) fn unique_name(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{n}", std::process::id())
}

/// Runs the docker CLI; its trimmed stdout, or an error carrying its stderr.
pub(crate) fn docker(args: &[&str]) -> Result<String> {
    let out = Command::new("docker")
        .args(args)
        .output()
        .context("cannot run the docker CLI (apt-get install docker.io)")?;
    ensure!(
        out.status.success(),
        "docker {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The test image, built once (by `docker import`) if Docker does not have it yet.
pub(crate) fn ensure_busybox_image() -> Result<String> {
    static BUILT: Mutex<bool> = Mutex::new(false);
    // A test that panicked while holding the lock did not leave the flag half-set.
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    if !*built && docker(&["image", "inspect", "--format", "{{.Id}}", BUSYBOX_IMAGE]).is_err() {
        build_busybox_image().context("building the busybox test image")?;
    }
    *built = true;
    Ok(BUSYBOX_IMAGE.to_string())
}

fn build_busybox_image() -> Result<()> {
    let dir = TempDir::new("pathtrace-busybox")?;
    let tar = busybox_rootfs_tar(&dir.0)?;
    let tar = tar.to_str().context("temp path is not UTF-8")?;
    docker(&[
        "import",
        "--change",
        r#"CMD ["/bin/sh"]"#,
        tar,
        BUSYBOX_IMAGE,
    ])?;
    Ok(())
}

/// Writes the test image's root filesystem (the static /bin/busybox, its applets as symlinks,
/// /etc/passwd and /etc/group) to `<dir>/rootfs` and its tar (owned by root) to
/// `<dir>/rootfs.tar`, for `docker import` or `podman import`. The tar's path.
pub(crate) fn busybox_rootfs_tar(dir: &Path) -> Result<PathBuf> {
    let busybox = Path::new("/bin/busybox");
    ensure_static(busybox)?;
    let root = dir.join("rootfs");
    for d in ["bin", "etc", "tmp", "root", "proc", "sys", "dev"] {
        fs::create_dir_all(root.join(d))?;
    }
    fs::copy(busybox, root.join("bin/busybox"))?;
    fs::set_permissions(root.join("bin/busybox"), fs::Permissions::from_mode(0o755))?;
    let list = Command::new(busybox).arg("--list").output()?;
    ensure!(list.status.success(), "busybox --list failed");
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if !applet.is_empty() && applet != "busybox" && !applet.contains('/') {
            symlink("busybox", root.join("bin").join(applet))?;
        }
    }
    fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )?;
    fs::write(root.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n")?;
    let tar = dir.join("rootfs.tar");
    let status = Command::new("tar")
        .args(["--numeric-owner", "--owner=0", "--group=0", "-C"])
        .arg(&root)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()?;
    ensure!(status.success(), "tar of the rootfs failed");
    Ok(tar)
}

/// Fails unless `path` is an ELF64 with no program interpreter (Debian's busybox-static is).
fn ensure_static(path: &Path) -> Result<()> {
    let elf = fs::read(path)
        .with_context(|| format!("{} (apt-get install busybox-static)", path.display()))?;
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        elf.get(o..o + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    ensure!(
        elf.starts_with(b"\x7fELF\x02\x01"),
        "{} is not a little-endian ELF64",
        path.display()
    );
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        bail!("{}: truncated ELF header", path.display());
    };
    for i in 0..usize::from(phnum) {
        let off = usize::try_from(phoff)? + i * usize::from(phentsize);
        const PT_INTERP: u32 = 3;
        if u32_at(off) == Some(PT_INTERP) {
            bail!(
                "{} is dynamically linked; install busybox-static",
                path.display()
            );
        }
    }
    Ok(())
}

/// A temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(prefix: &str) -> Result<Self> {
        let path = std::env::temp_dir().join(unique_name(prefix));
        fs::create_dir_all(&path)?;
        Ok(Self(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.0) {
            eprintln!("cannot remove {}: {e}", self.0.display());
        }
    }
}

/// A container of the test image, removed (`docker rm -f`) on drop.
#[derive(Debug)]
pub(crate) struct TestContainer {
    pub name: String,
    pub id: String,
}

impl TestContainer {
    /// `docker run -d --name <unique> <args> <image> <cmd>`.
    pub(crate) fn run(name_prefix: &str, args: &[&str], cmd: &[&str]) -> Result<Self> {
        Self::make(&["run", "-d"], name_prefix, args, cmd)
    }

    /// `docker create` (never started: state "created").
    pub(crate) fn create(name_prefix: &str, args: &[&str], cmd: &[&str]) -> Result<Self> {
        Self::make(&["create"], name_prefix, args, cmd)
    }

    fn make(verb: &[&str], name_prefix: &str, args: &[&str], cmd: &[&str]) -> Result<Self> {
        let image = ensure_busybox_image()?;
        // Made before the container, so a run whose start fails still removes what it created.
        let mut c = Self {
            name: unique_name(name_prefix),
            id: String::new(),
        };
        let mut argv: Vec<&str> = verb.to_vec();
        argv.extend(["--name", &c.name, "--label", LABEL]);
        argv.extend(args);
        argv.push(&image);
        argv.extend(cmd);
        c.id = docker(&argv)?;
        Ok(c)
    }

    /// Main pid as the docker CLI reports it (0 when not running).
    pub(crate) fn pid(&self) -> Result<u32> {
        Ok(docker(&["inspect", "--format", "{{.State.Pid}}", &self.name])?.parse()?)
    }

    pub(crate) fn inspect(&self, format: &str) -> Result<String> {
        docker(&["inspect", "--format", format, &self.name])
    }
}

impl Drop for TestContainer {
    fn drop(&mut self) {
        match docker(&["rm", "-f", "-v", &self.name]) {
            Ok(_) => {}
            Err(e) if e.to_string().contains("No such container") => {}
            Err(e) => eprintln!("cleanup: {e:#}"),
        }
    }
}

/// A user-defined bridge network with its own /24 under 10.213.0.0/16, removed on drop. Declare
/// it before the containers on it, so they are dropped (removed) first.
#[derive(Debug)]
pub(crate) struct TestNetwork {
    pub name: String,
    pub id: String,
    pub subnet: String,
}

impl TestNetwork {
    pub(crate) fn create(name_prefix: &str) -> Result<Self> {
        let name = unique_name(name_prefix);
        let routes = Command::new("ip").args(["-4", "route", "show"]).output()?;
        let routes = String::from_utf8_lossy(&routes.stdout).to_string();
        let seed = std::process::id() + COUNTER.fetch_add(1, Ordering::Relaxed) * 7;
        for attempt in 0..64 {
            let octet = (seed + attempt * 13) % 200 + 20;
            let prefix = format!("10.213.{octet}.");
            if routes.contains(&prefix) {
                continue;
            }
            let subnet = format!("{prefix}0/24");
            let args = [
                "network", "create", "--driver", "bridge", "--subnet", &subnet,
            ];
            match docker(&[&args[..], &["--label", LABEL, &name]].concat()) {
                Ok(id) => return Ok(Self { name, id, subnet }),
                // Another network (maybe a parallel test's) holds it: try the next one.
                Err(e) if e.to_string().contains("overlap") => continue,
                Err(e) => return Err(e),
            }
        }
        bail!("no free /24 in 10.213.0.0/16 for a test network")
    }

    /// Whether `ip` is inside this network's subnet.
    pub(crate) fn contains(&self, ip: std::net::IpAddr) -> bool {
        let prefix = self.subnet.trim_end_matches("0/24");
        ip.to_string().starts_with(prefix)
    }
}

impl Drop for TestNetwork {
    fn drop(&mut self) {
        if let Err(e) = docker(&["network", "rm", &self.name]) {
            eprintln!("cleanup: {e:#}");
        }
    }
}

/// A TCP port nobody listens on right now (to publish a container port on).
pub(crate) fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// What `ethtool -S <veth>` says the peer's ifindex is: the by-hand check of a veth pair.
pub(crate) fn ethtool_peer_ifindex(veth: &str) -> Result<u32> {
    let out = Command::new("ethtool")
        .args(["-S", veth])
        .output()
        .context("running ethtool")?;
    ensure!(out.status.success(), "ethtool -S {veth} failed");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("peer_ifindex"))
        .context("no peer_ifindex")?;
    Ok(line.rsplit(':').next().unwrap_or_default().trim().parse()?)
}

/// The host interfaces whose `ethtool -S` peer_ifindex is `ifindex`.
pub(crate) fn host_veths_peering(ifindex: u32) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for entry in fs::read_dir("/sys/class/net")? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.starts_with("veth") && ethtool_peer_ifindex(&name).ok() == Some(ifindex) {
            out.push(name);
        }
    }
    Ok(out)
}

/// `ifindex` and `iflink` of eth0 in the named network namespace, by `ip -o link`
/// (`2: eth0@if7: ...`); not /sys/class/net, which shows the namespace sysfs was mounted in.
pub(crate) fn eth0_in(netns: &str) -> Result<(u32, u32)> {
    let line = crate::support::wan::run("ip", &["-n", netns, "-o", "link", "show", "eth0"])?;
    let (index, rest) = line.split_once(':').context("ip -o link")?;
    let link = rest
        .split(':')
        .next()
        .and_then(|n| n.trim().strip_prefix("eth0@if"))
        .context("no @if")?;
    Ok((index.trim().parse()?, link.parse()?))
}

/// [`eth0_in`] of a process's network namespace (named for the call, then unnamed).
pub(crate) fn eth0_of_pid(pid: u32) -> Result<(u32, u32)> {
    let name = format!("pt-eth0-{pid}");
    crate::support::wan::run("ip", &["netns", "attach", &name, &pid.to_string()])?;
    let got = eth0_in(&name);
    crate::support::wan::run("ip", &["netns", "delete", &name])?;
    got
}

/// The host veth of that eth0: the host interface whose ifindex is its `iflink`, checked by
/// hand the way `ethtool -S` does (its `peer_ifindex` is the eth0's ifindex).
pub(crate) fn host_veth_of((ifindex, iflink): (u32, u32)) -> Result<String> {
    for entry in fs::read_dir("/sys/class/net")? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        let index = fs::read_to_string(format!("/sys/class/net/{name}/ifindex"))?;
        if index.trim().parse::<u32>().ok() == Some(iflink) {
            let peer = ethtool_peer_ifindex(&name)?;
            ensure!(
                peer == ifindex,
                "ethtool -S {name}: peer_ifindex {peer}, eth0 is {ifindex}"
            );
            return Ok(name);
        }
    }
    bail!("no host interface with ifindex {iflink}")
}
