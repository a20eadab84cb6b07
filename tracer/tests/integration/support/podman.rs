//! A rootful Podman (4.3, netavark) private to one test: its own containers.conf and
//! storage.conf (passed by `CONTAINERS_CONF` and `CONTAINERS_STORAGE_CONF` to every podman it
//! runs), storage, run, tmp and network-config directories, file locks, and its Docker-compatible
//! API (`podman system service`) on its own socket, all under `/run/pathtrace-test-podman-<pid>-<n>`;
//! the busybox test image is imported from a tar (no registry). On drop (also when a test panics)
//! it removes every container, stops the service, and removes what it made or made podman make
//! outside its directory: netavark's iptables chains and jumps, the `podman0` bridge, podman's
//! cgroups, the host-wide IPAM database, its mounts, its directory. What it cannot remove it
//! says on stderr.
//!
//! What rootful podman shares with the host whatever its configuration: the network namespace,
//! so netavark's iptables rules, the `podman0` bridge of the default network `podman`
//! (10.88.0.0/16) and its IPAM database (`/run/containers/networks/ipam.db`), and the cgroups
//! (`libpod_parent`). Hence one [`Podman`] at a time in a process (it holds a lock), and the
//! fixture removes those only when they did not exist before [`Podman::up`].
//!
//! netavark inserts its FORWARD jump (`-j NETAVARK_FORWARD`) at the top of FORWARD when it is
//! missing, above any guard a test put there; so the fixture makes that chain and jump itself,
//! below the `pathtrace-test-*-guard` rules at the top, before the first container runs. Under
//! Docker's FORWARD policy DROP a connection DNAT'ed to a container (a published port) also
//! needs an ACCEPT (`-o podman0 --ctstate DNAT`), which the fixture adds.
//!
//! After a killed run, clean up by hand: `pkill -f pathtrace-test-podman` (the service and
//! conmon), `umount -R /run/pathtrace-test-podman-*/*`, `rm -rf /run/pathtrace-test-podman-*`,
//! and the `NETAVARK` chains in `iptables -S` and `iptables -t nat -S`.

use std::{
    collections::BTreeSet,
    fs,
    io::{Read as _, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};

use super::{
    docker::{busybox_rootfs_tar, unique_name},
    wan::run as host,
};

/// The test image, imported into each fixture's private storage.
pub(crate) const PODMAN_IMAGE: &str = "localhost/pathtrace-test-busybox:latest";
/// The bridge of podman's default network `podman`.
pub(crate) const BRIDGE: &str = "podman0";
/// The comment netavark gives its FORWARD jump; the fixture's own jump carries it too, so
/// netavark finds it (`iptables -C`) and does not insert another at the top.
const NETAVARK_JUMP_COMMENT: &str = "netavark firewall plugin rules";
const NETAVARK_FORWARD: &str = "NETAVARK_FORWARD";
/// The NOFILE and NPROC limits podman sets for itself before it starts anything (it lowers
/// NPROC to 32768 and tries NOFILE 1048576): a container's limits must not be higher.
const PODMAN_NOFILE: u64 = 1_048_576;
const PODMAN_NPROC: u64 = 32_768;
/// The host-wide files and directories podman may create whatever its configuration (netavark's
/// run dir with its IPAM database; the image library's blob-info cache), in the order to remove
/// them: each is removed on drop when it did not exist before [`Podman::up`] (a directory only
/// when empty: someone else may use it by then).
const HOST_PATHS: &[&str] = &[
    "/run/containers/networks/ipam.db",
    "/run/containers/networks",
    "/run/containers",
    "/var/lib/containers/cache/blob-info-cache-v1.boltdb",
    "/var/lib/containers/cache",
    "/var/lib/containers",
];

/// What every podman the fixture runs gets: the private configuration, by environment.
#[derive(Debug)]
struct Env {
    containers_conf: PathBuf,
    storage_conf: PathBuf,
    /// Set once the fixture is gone: a container dropped later has nothing left to remove.
    gone: AtomicBool,
}

impl Env {
    fn podman(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("podman")
            .args(args)
            .env("CONTAINERS_CONF", &self.containers_conf)
            .env("CONTAINERS_STORAGE_CONF", &self.storage_conf)
            .stdin(Stdio::null())
            .output()
            .context("cannot run podman (apt-get install podman runc)")?;
        ensure!(
            out.status.success(),
            "podman {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

/// The host state the fixture compares with when it cleans up: what existed before it.
#[derive(Debug, Default)]
struct Before {
    filter_chains: BTreeSet<String>,
    nat_chains: BTreeSet<String>,
    bridge: bool,
    cgroups: Vec<PathBuf>,
    host_paths: Vec<&'static Path>,
    netns: BTreeSet<String>,
}

/// A private rootful Podman with its Docker-compatible API; everything is removed on drop.
pub(crate) struct Podman {
    /// `unix:///run/pathtrace-test-podman-<pid>-<n>/podman.sock` (for `docker -H`, bollard).
    pub endpoint: String,
    /// The default network's bridge, `podman0`.
    pub bridge: String,
    /// The fixture's directory (configuration, storage, socket); removed on drop.
    pub dir: PathBuf,
    /// The image every [`Podman::run`] starts (`localhost/pathtrace-test-busybox:latest`).
    pub image: String,
    env: Arc<Env>,
    service: Option<Child>,
    before: Before,
    /// The FORWARD rules the fixture inserted (arguments after the chain), to delete on drop.
    forward_rules: Vec<Vec<String>>,
    /// One fixture at a time: they would share netavark's chains and the bridge. Released
    /// after the drop has cleaned up (fields drop after `Drop::drop`).
    _one: MutexGuard<'static, ()>,
}

/// A container of the fixture's image, removed (`podman rm -f`) on drop, or with the fixture.
#[derive(Debug)]
pub(crate) struct PodmanContainer {
    pub name: String,
    pub id: String,
    /// Its address on its first network ("" with `--network none` or `host`).
    pub ip: String,
    /// Its main process, as podman reports it.
    pub pid: u32,
    env: Arc<Env>,
}

impl Podman {
    /// Private configuration and storage, the API service started and answering `/_ping`,
    /// netavark's FORWARD jump and the DNAT accept in place, the test image imported.
    pub(crate) fn up() -> Result<Self> {
        static ONE: Mutex<()> = Mutex::new(());
        let one = ONE.lock().unwrap_or_else(|p| p.into_inner());
        let name = unique_name("pathtrace-test-podman");
        let dir = Path::new("/run").join(&name);
        let before = Before::now()?;
        fs::create_dir_all(&dir)?;
        // Made before the rest, so a failure below still removes what was made.
        let mut podman = Self {
            endpoint: format!("unix://{}", dir.join("podman.sock").display()),
            bridge: BRIDGE.to_string(),
            image: PODMAN_IMAGE.to_string(),
            env: Arc::new(Env {
                containers_conf: dir.join("containers.conf"),
                storage_conf: dir.join("storage.conf"),
                gone: AtomicBool::new(false),
            }),
            dir,
            service: None,
            before,
            forward_rules: Vec::new(),
            _one: one,
        };
        podman.configure()?;
        podman.prepare_forward(&name)?;
        podman.start_service()?;
        let tar = busybox_rootfs_tar(&podman.dir)?;
        let tar = tar.to_str().context("the fixture's path is not UTF-8")?;
        podman.podman(&[
            "import",
            "--quiet",
            "--change",
            r#"CMD ["/bin/sh"]"#,
            tar,
            PODMAN_IMAGE,
        ])?;
        fs::remove_dir_all(podman.dir.join("rootfs"))?;
        fs::remove_file(podman.dir.join("rootfs.tar"))?;
        Ok(podman)
    }

    /// Runs the podman CLI with the fixture's private configuration; its trimmed stdout, or an
    /// error carrying its stderr.
    pub(crate) fn podman(&self, args: &[&str]) -> Result<String> {
        self.env.podman(args)
    }

    /// `podman run -d --name <unique> <args> <image> <cmd>`.
    pub(crate) fn run(
        &self,
        name_prefix: &str,
        args: &[&str],
        cmd: &[&str],
    ) -> Result<PodmanContainer> {
        // Made before the container, so a run whose start fails still removes what it created.
        let mut c = PodmanContainer {
            name: unique_name(name_prefix),
            id: String::new(),
            ip: String::new(),
            pid: 0,
            env: self.env.clone(),
        };
        let mut argv = vec!["run", "-d", "--name", &c.name];
        argv.extend(args);
        argv.push(&self.image);
        argv.extend(cmd);
        c.id = self.podman(&argv)?;
        let ips = c.inspect("{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}")?;
        c.ip = ips
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string();
        c.pid = c.inspect("{{.State.Pid}}")?.parse()?;
        Ok(c)
    }

    /// The pid of the API service (`podman system service`).
    pub(crate) fn service_pid(&self) -> Option<u32> {
        self.service.as_ref().map(Child::id)
    }

    /// The two configuration files, in the fixture's directory.
    fn configure(&self) -> Result<()> {
        let d = self.dir.display();
        let (nofile, nproc) = (limits("Max open files")?, limits("Max processes")?);
        let ulimit = |name: &str, (soft, hard): (u64, u64), cap: u64| {
            format!("\"{name}={}:{}\"", soft.min(cap), hard.min(cap))
        };
        let containers_conf = format!(
            "# pathtrace's integration tests: a Podman private to one test.\n\
             [containers]\n\
             default_ulimits = [{}, {}]\n\
             \n\
             [engine]\n\
             runtime = \"runc\"\n\
             cgroup_manager = \"cgroupfs\"\n\
             events_logger = \"file\"\n\
             lock_type = \"file\"\n\
             tmp_dir = \"{d}/tmp\"\n\
             volume_path = \"{d}/volumes\"\n\
             static_dir = \"{d}/static\"\n\
             \n\
             [network]\n\
             network_config_dir = \"{d}/networks\"\n",
            ulimit("nofile", nofile, PODMAN_NOFILE),
            ulimit("nproc", nproc, PODMAN_NPROC),
        );
        let storage_conf = format!(
            "[storage]\n\
             driver = \"overlay\"\n\
             graphroot = \"{d}/graph\"\n\
             runroot = \"{d}/run\"\n"
        );
        fs::write(&self.env.containers_conf, containers_conf)?;
        fs::write(&self.env.storage_conf, storage_conf)?;
        Ok(())
    }

    /// netavark's FORWARD chain and jump below the guards at the top of FORWARD (unless they
    /// exist), and the ACCEPT of connections DNAT'ed to the bridge.
    fn prepare_forward(&mut self, name: &str) -> Result<()> {
        let forward = host("iptables", &["-w", "-S", "FORWARD"])?;
        let guards = forward
            .lines()
            .filter(|l| l.starts_with("-A FORWARD"))
            .take_while(|l| l.contains("pathtrace-test-") && l.contains("-guard"))
            .count();
        let at = (guards + 1).to_string();
        // Removed on drop with the other NETAVARK chains that did not exist before.
        if !self.before.filter_chains.contains(NETAVARK_FORWARD) {
            host("iptables", &["-w", "-N", NETAVARK_FORWARD])?;
        }
        let jump = strings(&[
            "-m",
            "comment",
            "--comment",
            NETAVARK_JUMP_COMMENT,
            "-j",
            NETAVARK_FORWARD,
        ]);
        let accept = strings(&[
            "-o",
            BRIDGE,
            "-m",
            "conntrack",
            "--ctstate",
            "DNAT",
            "-m",
            "comment",
            "--comment",
            name,
            "-j",
            "ACCEPT",
        ]);
        for rule in [jump, accept] {
            let exists = iptables_rule("-C", "FORWARD", &rule).is_ok();
            if !exists {
                let mut args = vec!["-w", "-I", "FORWARD", &at];
                args.extend(rule.iter().map(String::as_str));
                host("iptables", &args)?;
                self.forward_rules.push(rule);
            }
        }
        Ok(())
    }

    /// `podman system service --time=0 unix://<dir>/podman.sock`, until it answers `/_ping`.
    fn start_service(&mut self) -> Result<()> {
        let log = fs::File::create(self.dir.join("service.log"))?;
        let child = Command::new("podman")
            .args(["system", "service", "--time=0", &self.endpoint])
            .env("CONTAINERS_CONF", &self.env.containers_conf)
            .env("CONTAINERS_STORAGE_CONF", &self.env.storage_conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot run podman (apt-get install podman runc)")?;
        self.service = Some(child);
        let sock = self.dir.join("podman.sock");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match ping(&sock) {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() > deadline => {
                    let log = fs::read_to_string(self.dir.join("service.log")).unwrap_or_default();
                    bail!("podman system service does not answer /_ping ({e:#}); its log: {log}");
                }
                Err(_) => {}
            }
            if let Some(status) = self
                .service
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                let log = fs::read_to_string(self.dir.join("service.log")).unwrap_or_default();
                bail!("podman system service exited ({status}): {log}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM to the service, then SIGKILL if it has not exited within 5 s.
    fn stop_service(&mut self) -> Result<()> {
        let Some(mut child) = self.service.take() else {
            return Ok(());
        };
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id())?);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).ok();
        let deadline = Instant::now() + Duration::from_secs(5);
        while child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                eprintln!("cleanup: podman system service ignored SIGTERM; killing it");
                child.kill()?;
                child.wait()?;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Every container and pod of the private storage, and every network but the default (each
    /// step tried whatever the one before did).
    fn remove_containers(&self) {
        for args in [
            &["pod", "rm", "--all", "--force", "--time", "0"][..],
            &["rm", "--all", "--force", "--volumes", "--time", "0"],
            &["network", "prune", "--force"],
        ] {
            if let Err(e) = self.podman(args) {
                eprintln!("cleanup: {e:#}");
            }
        }
    }

    /// The FORWARD rules the fixture inserted, and every NETAVARK chain that did not exist
    /// before [`Podman::up`] with the rules that jump to it; says which of them netavark
    /// should have removed itself (its per-network chains).
    fn remove_iptables(&mut self) -> Result<()> {
        for rule in std::mem::take(&mut self.forward_rules) {
            if let Err(e) = iptables_rule("-D", "FORWARD", &rule) {
                eprintln!("cleanup: {e:#}");
            }
        }
        let mut left = Vec::new();
        for (table, before) in [
            ("filter", &self.before.filter_chains),
            ("nat", &self.before.nat_chains),
        ] {
            let new: Vec<String> = netavark_chains(table)?
                .into_iter()
                .filter(|c| !before.contains(c))
                .collect();
            if new.is_empty() {
                continue;
            }
            // The jumps to them from chains that stay (PREROUTING, OUTPUT, POSTROUTING).
            for line in host("iptables", &["-w", "-t", table, "-S"])?.lines() {
                let words = split_rule(line);
                let (Some(chain), Some(target)) = (
                    words.get(1),
                    words
                        .iter()
                        .position(|w| w == "-j")
                        .and_then(|i| words.get(i + 1)),
                ) else {
                    continue;
                };
                if words[0] == "-A" && !new.contains(chain) && new.contains(target) {
                    let mut args = vec!["-w", "-t", table, "-D"];
                    args.extend(words[1..].iter().map(String::as_str));
                    host("iptables", &args)?;
                }
            }
            for chain in &new {
                host("iptables", &["-w", "-t", table, "-F", chain])?;
            }
            for chain in &new {
                host("iptables", &["-w", "-t", table, "-X", chain])?;
                // Netavark's shared chains stay when its last container goes; the per-network
                // ones (NETAVARK-<hash>, NETAVARK-DN-<hash>) should not.
                let shared = chain == NETAVARK_FORWARD || chain.starts_with("NETAVARK-HOSTPORT-");
                if !shared {
                    left.push(format!("{table}/{chain}"));
                }
            }
        }
        if !left.is_empty() {
            eprintln!(
                "cleanup: netavark left its per-network chains, removed now: {}",
                left.join(", ")
            );
        }
        Ok(())
    }

    /// The bridge, cgroups, network namespaces and host directories podman made (that did not
    /// exist before [`Podman::up`]).
    fn remove_host_state(&self) {
        if !self.before.bridge && Path::new("/sys/class/net").join(BRIDGE).exists() {
            eprintln!("cleanup: netavark left {BRIDGE}; deleting it");
            if let Err(e) = host("ip", &["link", "del", BRIDGE]) {
                eprintln!("cleanup: {e:#}");
            }
        }
        for netns in netns_names().difference(&self.before.netns) {
            eprintln!("cleanup: podman left the network namespace {netns}; deleting it");
            if let Err(e) = host("ip", &["netns", "del", netns]) {
                eprintln!("cleanup: {e:#}");
            }
        }
        for cg in libpod_cgroups() {
            if !self.before.cgroups.contains(&cg) {
                if let Err(e) = remove_cgroup(&cg) {
                    eprintln!("cleanup: {}: {e:#}", cg.display());
                }
            }
        }
        for path in HOST_PATHS.iter().map(Path::new) {
            if self.before.host_paths.contains(&path) || !path.exists() {
                continue;
            }
            let removed = if path.is_dir() {
                fs::remove_dir(path)
            } else {
                fs::remove_file(path)
            };
            if let Err(e) = removed {
                eprintln!("cleanup: {} stays: {e}", path.display());
            }
        }
    }

    /// Unmounts what is still mounted under the fixture's directory, then removes it.
    fn remove_dir(&self) -> Result<()> {
        let mut mounts = mounts_under(&self.dir)?;
        if !mounts.is_empty() {
            eprintln!("cleanup: still mounted, unmounting: {}", mounts.join(", "));
            // Deepest first; `-R` takes what is below each.
            mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
            for m in &mounts {
                if Path::new(m).exists() {
                    if let Err(e) = host("umount", &["-R", m]) {
                        eprintln!("cleanup: {e:#}");
                    }
                }
            }
        }
        let mounts = mounts_under(&self.dir)?;
        ensure!(
            mounts.is_empty(),
            "{} stays: still mounted: {}",
            self.dir.display(),
            mounts.join(", ")
        );
        fs::remove_dir_all(&self.dir).with_context(|| format!("removing {}", self.dir.display()))
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        self.remove_containers();
        self.env.gone.store(true, Ordering::Relaxed);
        if let Err(e) = self.stop_service() {
            eprintln!("cleanup: podman system service: {e:#}");
        }
        if let Err(e) = self.remove_iptables() {
            eprintln!("cleanup: iptables: {e:#}");
        }
        self.remove_host_state();
        if let Err(e) = self.remove_dir() {
            eprintln!("cleanup: {e:#}");
        }
    }
}

impl PodmanContainer {
    /// `podman inspect --format <format> <name>`.
    pub(crate) fn inspect(&self, format: &str) -> Result<String> {
        self.env
            .podman(&["inspect", "--format", format, &self.name])
    }
}

impl Drop for PodmanContainer {
    fn drop(&mut self) {
        if self.env.gone.load(Ordering::Relaxed) {
            return;
        }
        match self
            .env
            .podman(&["rm", "--force", "--volumes", "--time", "0", &self.name])
        {
            Ok(_) => {}
            Err(e) if e.to_string().contains("no such container") => {}
            Err(e) => eprintln!("cleanup: {e:#}"),
        }
    }
}

impl Before {
    fn now() -> Result<Self> {
        Ok(Self {
            filter_chains: netavark_chains("filter")?,
            nat_chains: netavark_chains("nat")?,
            bridge: Path::new("/sys/class/net").join(BRIDGE).exists(),
            cgroups: libpod_cgroups(),
            host_paths: HOST_PATHS
                .iter()
                .map(Path::new)
                .filter(|p| p.exists())
                .collect(),
            netns: netns_names(),
        })
    }
}

/// The chains of `table` whose name starts with NETAVARK.
fn netavark_chains(table: &str) -> Result<BTreeSet<String>> {
    Ok(host("iptables", &["-w", "-t", table, "-S"])?
        .lines()
        .filter_map(|l| l.strip_prefix("-N "))
        .filter(|c| c.starts_with("NETAVARK"))
        .map(String::from)
        .collect())
}

/// `iptables -w <op> <chain> <rule>` in the filter table.
fn iptables_rule(op: &str, chain: &str, rule: &[String]) -> Result<String> {
    let mut args = vec!["-w", op, chain];
    args.extend(rule.iter().map(String::as_str));
    host("iptables", &args)
}

/// A line of `iptables -S` as arguments: words, with "double-quoted" ones (comments) whole.
fn split_rule(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let (mut quoted, mut any) = (false, false);
    for ch in line.chars() {
        match ch {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            ' ' if !quoted => {
                if any {
                    words.push(std::mem::take(&mut word));
                }
                any = false;
            }
            _ => {
                word.push(ch);
                any = true;
            }
        }
    }
    if any {
        words.push(word);
    }
    words
}

fn strings(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| (*w).to_string()).collect()
}

/// The (soft, hard) limit named `what` in /proc/self/limits ("unlimited" is `u64::MAX`).
fn limits(what: &str) -> Result<(u64, u64)> {
    let text = fs::read_to_string("/proc/self/limits")?;
    let line = text
        .lines()
        .find(|l| l.starts_with(what))
        .with_context(|| format!("no {what:?} in /proc/self/limits"))?;
    let mut values = line[what.len()..].split_whitespace().map(|v| match v {
        "unlimited" => Ok(u64::MAX),
        v => v.parse::<u64>(),
    });
    match (values.next(), values.next()) {
        (Some(soft), Some(hard)) => Ok((soft?, hard?)),
        _ => bail!("cannot read {line:?}"),
    }
}

/// `GET /_ping` on the API socket answers `OK`.
fn ping(sock: &Path) -> Result<()> {
    let mut s = UnixStream::connect(sock)?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(b"GET /_ping HTTP/1.0\r\nHost: podman\r\n\r\n")?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    ensure!(
        answer.starts_with("HTTP/1.") && answer.contains(" 200 ") && answer.ends_with("OK"),
        "/_ping: {answer:?}"
    );
    Ok(())
}

/// Podman's parent cgroup (`libpod_parent`) in every hierarchy where it exists.
fn libpod_cgroups() -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    let mut out: Vec<PathBuf> = fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("libpod_parent"))
        .collect();
    out.push(root.join("libpod_parent"));
    out.retain(|p| p.is_dir());
    out.sort();
    out
}

/// Removes a cgroup and the cgroups below it (they must have no processes left).
fn remove_cgroup(cg: &Path) -> Result<()> {
    for entry in fs::read_dir(cg)? {
        let path = entry?.path();
        if path.is_dir() {
            remove_cgroup(&path)?;
        }
    }
    fs::remove_dir(cg).with_context(|| format!("rmdir {}", cg.display()))
}

/// The named network namespaces podman makes (`/run/netns/netns-<uuid>`).
fn netns_names() -> BTreeSet<String> {
    fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("netns-"))
        .collect()
}

/// The mount points at or under `dir`, from /proc/self/mountinfo.
pub(crate) fn mounts_under(dir: &Path) -> Result<Vec<String>> {
    let dir = dir.to_str().context("path is not UTF-8")?;
    Ok(fs::read_to_string("/proc/self/mountinfo")?
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .filter(|m| *m == dir || m.starts_with(&format!("{dir}/")))
        .map(String::from)
        .collect())
}
