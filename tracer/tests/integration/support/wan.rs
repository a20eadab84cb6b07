//! A test "wan" for privileged integration tests: a network namespace `<p>-wan` joined to the
//! host by a veth (`<p>-up0` 10.X.2.1/24 on the host, `eth0` 10.X.2.2/24 inside, X the first of
//! 230..=249 no address or route of the host uses), with TCP and UDP echo servers inside.
//! Everything is removed on drop, also when a test fails.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{ensure, Context, Result};
use tracer::discover::netns::Netns;

/// The port of the wan's TCP echo server.
pub(crate) const TCP_PORT: u16 = 8080;
/// The port of the wan's UDP echo server.
pub(crate) const UDP_PORT: u16 = 9999;

pub(crate) fn ip(args: &str) -> Result<String> {
    run("ip", &args.split_whitespace().collect::<Vec<_>>())
}

pub(crate) fn run(cmd: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .context(cmd.to_string())?;
    ensure!(
        out.status.success(),
        "{cmd} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The test's far end: netns `<p>-wan` behind the host's `<p>-up0`.
pub(crate) struct Wan {
    pub ns_name: String,
    /// The host end of the veth (`<p>-up0`).
    pub uplink: String,
    /// 10.X.2.1.
    pub host_ip: String,
    /// 10.X.2.2.
    pub wan_ip: String,
    pub ns: Netns,
    /// The FORWARD guard's arguments after the chain (removed with the wan), if the host has a
    /// default route to guard.
    guard: Option<Vec<String>>,
    stop: Arc<AtomicBool>,
    servers: Vec<JoinHandle<()>>,
}

impl Wan {
    pub(crate) fn up() -> Result<Self> {
        let p = format!("dt{}", std::process::id() % 100_000);
        let used = ip("-4 addr")? + &ip("-4 route")?;
        let x = (230..=249)
            .find(|x| !used.contains(&format!("10.{x}.")))
            .context("no free 10.X.0.0/16 with X in 230..=249")?;
        let (ns_name, uplink) = (format!("{p}-wan"), format!("{p}-up0"));
        ip(&format!("netns add {ns_name}"))?;
        // Made before the rest, so a failure below still removes what was made.
        let mut wan = Self {
            ns: Netns::by_name_or_path(&ns_name)?,
            ns_name,
            uplink,
            host_ip: format!("10.{x}.2.1"),
            wan_ip: format!("10.{x}.2.2"),
            guard: None,
            stop: Arc::new(AtomicBool::new(false)),
            servers: Vec::new(),
        };
        let (ns, up) = (&wan.ns_name, &wan.uplink);
        ip(&format!(
            "link add {up} type veth peer name eth0 netns {ns}"
        ))?;
        ip(&format!("addr add {}/24 dev {up}", wan.host_ip))?;
        ip(&format!("link set {up} up"))?;
        ip(&format!("-n {ns} addr add {}/24 dev eth0", wan.wan_ip))?;
        ip(&format!("-n {ns} link set eth0 up"))?;
        ip(&format!("-n {ns} link set lo up"))?;
        wan.guard_the_default_route(&p)?;
        wan.serve()?;
        Ok(wan)
    }

    /// While the wan is up, nothing the host forwards leaves by its default route's interface:
    /// the containers' traffic goes to the wan only, and a mistyped address is dropped (and
    /// counted) here instead of reaching a real network.
    fn guard_the_default_route(&mut self, p: &str) -> Result<()> {
        let default = ip("-4 route show default")?;
        let Some(dev) = default
            .split_whitespace()
            .skip_while(|w| *w != "dev")
            .nth(1)
        else {
            return Ok(());
        };
        let comment = format!("pathtrace-test-{p}-guard");
        let rule: Vec<String> = [
            "-o",
            dev,
            "-m",
            "comment",
            "--comment",
            &comment,
            "-j",
            "DROP",
        ]
        .into_iter()
        .map(String::from)
        .collect();
        let mut args = vec!["-w", "-I", "FORWARD"];
        args.extend(rule.iter().map(String::as_str));
        run("iptables", &args)?;
        self.guard = Some(rule);
        Ok(())
    }

    /// TCP and UDP echo servers on the wan address, sockets opened inside the namespace.
    fn serve(&mut self) -> Result<()> {
        let ip = self.wan_ip.clone();
        let (tcp, udp) = self.ns.run(move || -> std::io::Result<_> {
            let tcp = TcpListener::bind(format!("{ip}:{TCP_PORT}"))?;
            let udp = UdpSocket::bind(format!("{ip}:{UDP_PORT}"))?;
            tcp.set_nonblocking(true)?;
            udp.set_read_timeout(Some(Duration::from_millis(50)))?;
            Ok((tcp, udp))
        })??;
        let stop = self.stop.clone();
        self.servers.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match tcp.accept() {
                    Ok((s, _)) => echo_once(s).unwrap_or_else(|e| eprintln!("wan echo: {e}")),
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }));
        let stop = self.stop.clone();
        self.servers.push(std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((n, from)) = udp.recv_from(&mut buf) {
                    udp.send_to(&buf[..n], from).ok();
                }
            }
        }));
        Ok(())
    }

    /// [`exchange`] from inside the wan.
    pub(crate) fn exchange(&self, addr: SocketAddr) -> Result<()> {
        self.ns.run(move || exchange(addr))?
    }
}

/// Reads once and writes it back.
fn echo_once(mut s: TcpStream) -> std::io::Result<()> {
    let mut buf = [0u8; 512];
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let n = s.read(&mut buf)?;
    s.write_all(&buf[..n])
}

/// A TCP echo exchange with `addr` from the calling thread's namespace, retried for a while
/// (the server may be starting).
pub(crate) fn exchange(addr: SocketAddr) -> Result<()> {
    let once = || -> Result<()> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.write_all(b"hello\n")?;
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf)?;
        ensure!(&buf[..n] == b"hello\n", "echo: {:?}", &buf[..n]);
        Ok(())
    };
    let mut result = once();
    for _ in 0..20 {
        if result.is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        result = once();
    }
    result.with_context(|| format!("TCP exchange with {addr}"))
}

impl Drop for Wan {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.servers.drain(..) {
            t.join().ok();
        }
        if let Some(rule) = self.guard.take() {
            let mut args = vec!["-w", "-D", "FORWARD"];
            args.extend(rule.iter().map(String::as_str));
            if let Err(e) = run("iptables", &args) {
                eprintln!("cleanup: {e:#}");
            }
        }
        for cmd in [
            format!("link del {}", self.uplink),
            format!("netns del {}", self.ns_name),
        ] {
            if let Err(e) = ip(&cmd) {
                eprintln!("cleanup: {e:#}");
            }
        }
    }
}
