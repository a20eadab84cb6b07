//! A network namespace that plays the host, for topologies the real host must not get (policy
//! rules, extra uplinks, tunnels): `<tag>-host` holds the bridge `<tag>br` (10.77.1.1/24) with the
//! container namespace `<tag>-ctr` (10.77.1.2) on it, forwards, and masquerades the container's
//! traffic out of anything but the bridge. Uplink `i` is `<tag>u<i>` (10.77.<i+1>.1/24), a veth to
//! namespace `<tag>-w<i>` (10.77.<i+1>.2), where "remote" addresses sit on `lo`. pathtrace runs
//! inside the host namespace (`ip netns exec`), so its "host" is this one. Nothing here is joined
//! to the real host: no packet can leave these namespaces. Everything is removed on drop.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Output, Stdio},
    sync::mpsc,
    time::Duration,
};

use super::{lab::sh as run, BIN};

/// The host, container and remote namespaces of one test.
pub(crate) struct HostNs {
    pub tag: String,
    made: Vec<String>,
}

impl HostNs {
    /// The host and container namespaces, the bridge, forwarding and the MASQUERADE rule.
    pub(crate) fn new(prefix: &str) -> Self {
        let tag = format!("{prefix}{}", std::process::id() % 10_000);
        let mut ns = Self {
            tag,
            made: Vec::new(),
        };
        ns.netns("host");
        ns.netns("ctr");
        let t = ns.tag.clone();
        ns.ip(&format!(
            "link add {t}v0 type veth peer name eth0 netns {t}-ctr"
        ));
        ns.ip(&format!("link add {t}br type bridge"));
        ns.ip(&format!("link set {t}v0 master {t}br"));
        ns.ip(&format!("addr add 10.77.1.1/24 dev {t}br"));
        for dev in ["lo", &format!("{t}v0"), &format!("{t}br")] {
            ns.ip(&format!("link set {dev} up"));
        }
        ns.host(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        ns.host(&[
            "iptables",
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-s",
            "10.77.1.0/24",
            "!",
            "-o",
            &format!("{t}br"),
            "-j",
            "MASQUERADE",
        ]);
        let ctr = format!("{t}-ctr");
        for cmd in [
            "addr add 10.77.1.2/24 dev eth0",
            "link set eth0 up",
            "link set lo up",
            "route add default via 10.77.1.1",
        ] {
            run(
                "ip",
                &[&["-n", ctr.as_str()], split(cmd).as_slice()].concat(),
            );
        }
        ns
    }

    fn netns(&mut self, name: &str) {
        let full = format!("{}-{name}", self.tag);
        run("ip", &["netns", "add", &full]);
        self.made.push(full.clone());
        // No IPv6: its router solicitations and DAD would be traffic of their own.
        run(
            "ip",
            &[
                "netns",
                "exec",
                &full,
                "sysctl",
                "-qw",
                "net.ipv6.conf.all.disable_ipv6=1",
                "net.ipv6.conf.default.disable_ipv6=1",
            ],
        );
    }

    /// `ip -n <tag>-host ARGS`.
    pub(crate) fn ip(&self, args: &str) -> String {
        let host = self.host_ns();
        run(
            "ip",
            &[&["-n", host.as_str()], split(args).as_slice()].concat(),
        )
    }

    /// A command in the host namespace.
    pub(crate) fn host(&self, args: &[&str]) -> String {
        let host = self.host_ns();
        run("ip", &[&["netns", "exec", host.as_str()], args].concat())
    }

    pub(crate) fn host_ns(&self) -> String {
        format!("{}-host", self.tag)
    }

    pub(crate) fn ctr_ns(&self) -> String {
        format!("{}-ctr", self.tag)
    }

    /// Uplink `i` to namespace `<tag>-w<i>` with `remote` addresses on its `lo`; its name.
    pub(crate) fn uplink(&mut self, i: u8, remote: &[&str]) -> String {
        let t = self.tag.clone();
        let w = format!("w{i}");
        self.netns(&w);
        let (dev, wns, net) = (format!("{t}u{i}"), format!("{t}-{w}"), i + 1);
        self.ip(&format!(
            "link add {dev} type veth peer name eth0 netns {wns}"
        ));
        self.ip(&format!("addr add 10.77.{net}.1/24 dev {dev}"));
        self.ip(&format!("link set {dev} up"));
        let wip = |cmd: String| {
            run(
                "ip",
                &[&["-n", wns.as_str()], split(&cmd).as_slice()].concat(),
            )
        };
        wip(format!("addr add 10.77.{net}.2/24 dev eth0"));
        wip("link set eth0 up".into());
        wip("link set lo up".into());
        for r in remote {
            wip(format!("addr add {r}/32 dev lo"));
        }
        dev
    }

    /// A mangle rule in the host namespace that marks the container's UDP to `port`.
    pub(crate) fn mark_udp(&self, port: u16, mark: &str) {
        let (br, port) = (format!("{}br", self.tag), port.to_string());
        self.host(&[
            "iptables",
            "-t",
            "mangle",
            "-A",
            "PREROUTING",
            "-i",
            &br,
            "-p",
            "udp",
            "--dport",
            &port,
            "-j",
            "MARK",
            "--set-mark",
            mark,
        ]);
    }

    /// `pathtrace ARGS` in the host namespace.
    pub(crate) fn pathtrace(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.host_ns(), BIN])
            .args(args)
            .output()
            .expect("run pathtrace")
    }

    /// `pathtrace ARGS` in the host namespace, in the background.
    pub(crate) fn spawn_pathtrace(&self, args: &[&str]) -> Child {
        Command::new("ip")
            .args(["netns", "exec", &self.host_ns(), BIN])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn pathtrace")
    }

    /// `pathtrace --netns <ctr> --json --duration SECS ARGS` in the host namespace while
    /// `traffic` runs (once the programs are loaded and attached); its JSON lines.
    pub(crate) fn trace(
        &self,
        args: &[&str],
        secs: &str,
        traffic: impl FnOnce(),
    ) -> Vec<serde_json::Value> {
        use super::kernel::{pathtrace_programs, poll};
        let before = pathtrace_programs().len();
        let ctr = self.ctr_ns();
        let mut all = vec!["--netns", ctr.as_str(), "--json", "--duration", secs];
        all.extend(args);
        let child = self.spawn_pathtrace(&all);
        assert!(
            poll(Duration::from_secs(10), || pathtrace_programs().len()
                > before),
            "pathtrace {all:?} did not load its programs"
        );
        std::thread::sleep(Duration::from_millis(600));
        traffic();
        let out = child.wait_with_output().expect("pathtrace");
        assert!(
            out.status.success(),
            "pathtrace {all:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        super::lab::json_lines(&out.stdout)
    }

    /// A command in the container namespace; its success.
    pub(crate) fn in_ctr(&self, args: &[&str]) -> bool {
        Command::new("ip")
            .args(["netns", "exec", &self.ctr_ns()])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for HostNs {
    fn drop(&mut self) {
        for ns in self.made.iter().rev() {
            if let Err(e) = Command::new("ip").args(["netns", "delete", ns]).status() {
                eprintln!("removing netns {ns}: {e}");
            }
        }
    }
}

fn split(s: &str) -> Vec<&str> {
    s.split_whitespace().collect()
}

/// `tcpdump -n -l` on one interface of one namespace: the ground truth of what crossed it.
pub(crate) struct Tcpdump {
    child: Child,
    lines: Option<std::thread::JoinHandle<Vec<String>>>,
}

impl Tcpdump {
    /// Starts it (in namespace `ns`, or in this process's with `""`) and waits until it
    /// listens.
    pub(crate) fn start(ns: &str, iface: &str, filter: &str) -> Self {
        let mut cmd = Command::new(if ns.is_empty() { "tcpdump" } else { "ip" });
        if !ns.is_empty() {
            cmd.args(["netns", "exec", ns, "tcpdump"]);
        }
        let mut child = cmd
            .args(["-n", "-l", "-i", iface])
            .args(split(filter))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tcpdump");
        let stdout = child.stdout.take().expect("tcpdump stdout");
        let lines = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .collect::<Vec<_>>()
        });
        let (ready_tx, ready) = mpsc::channel();
        let stderr = child.stderr.take().expect("tcpdump stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("listening on") {
                    ready_tx.send(()).ok();
                }
            }
        });
        assert!(
            ready.recv_timeout(Duration::from_secs(10)).is_ok(),
            "tcpdump on {ns}:{iface} did not start"
        );
        Self {
            child,
            lines: Some(lines),
        }
    }

    /// Stops it (after what is on its way was printed) and returns every line it printed.
    pub(crate) fn stop(mut self) -> Vec<String> {
        std::thread::sleep(Duration::from_millis(300));
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::SIGINT,
        )
        .ok();
        self.child.wait().ok();
        self.lines
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Tcpdump {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}
