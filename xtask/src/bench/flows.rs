//! Many distinct UDP flows through the lab, quickly: one datagram per (source port, destination
//! port) pair, sent from inside the container's namespace to three sink sockets in the wan
//! namespace. Sockets are made on a thread that has joined the namespace with `setns`; a socket
//! stays in the namespace it was made in, whatever thread uses it later.
use std::{
    fs::File,
    io::ErrorKind,
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _, Result};
use nix::sched::{setns, CloneFlags};

use super::proc;

/// Runs `f` on a new thread inside network namespace `ns` (`/var/run/netns/<ns>`).
fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let path = format!("/var/run/netns/{ns}");
    let file = File::open(&path).with_context(|| format!("opening {path}"))?;
    thread::spawn(move || {
        setns(&file, CloneFlags::CLONE_NEWNET).with_context(|| format!("setns into {path}"))?;
        f()
    })
    .join()
    .map_err(|_| anyhow!("the thread in namespace {ns} panicked"))?
}

/// Sink sockets on the wan host, so the datagrams are received (no ICMP port-unreachable
/// replies, which would be traffic of their own). Closed when dropped.
pub(super) struct Sinks {
    _sockets: Vec<UdpSocket>,
}

pub(super) const SINK_PORTS: [u16; 3] = [9000, 9001, 9002];

impl Sinks {
    pub(super) fn open(wan_ns: &str, wan_addr: Ipv4Addr) -> Result<Self> {
        let sockets = in_netns(wan_ns, move || {
            SINK_PORTS
                .iter()
                .map(|&p| {
                    UdpSocket::bind(SocketAddrV4::new(wan_addr, p))
                        .with_context(|| format!("binding UDP {wan_addr}:{p} in the wan namespace"))
                })
                .collect::<Result<Vec<_>>>()
        })?;
        Ok(Self { _sockets: sockets })
    }
}

/// How a flow run went.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Sent {
    pub flows: u64,
    /// Source ports that could not be bound or sent from (already in use).
    pub skipped_ports: u64,
    pub elapsed: Duration,
}

/// Sends one datagram from each source port in `ports` to each [`SINK_PORTS`] at `dst`, paced at
/// about `per_second` datagrams per second; gives up after `limit`.
pub(super) fn send(
    ctr_ns: &str,
    dst: Ipv4Addr,
    ports: std::ops::Range<u16>,
    per_second: u64,
    limit: Duration,
) -> Result<Sent> {
    in_netns(ctr_ns, move || {
        let start = Instant::now();
        let mut sent = Sent::default();
        let payload = [0u8; 32];
        for (i, port) in ports.enumerate() {
            if i % 256 == 0 {
                proc::check_stop()?;
                if start.elapsed() > limit {
                    bail!("sending flows took more than {limit:?}");
                }
                // Pacing: wait until the datagrams so far are due.
                let due = Duration::from_secs_f64(sent.flows as f64 / per_second as f64);
                if let Some(wait) = due.checked_sub(start.elapsed()) {
                    thread::sleep(wait);
                }
            }
            let socket = match UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)) {
                Ok(s) => s,
                Err(e) if e.kind() == ErrorKind::AddrInUse => {
                    sent.skipped_ports += 1;
                    continue;
                }
                Err(e) => return Err(e).with_context(|| format!("binding UDP port {port}")),
            };
            for dport in SINK_PORTS {
                match socket.send_to(&payload, SocketAddrV4::new(dst, dport)) {
                    Ok(_) => sent.flows += 1,
                    // A full queue or a refused send loses this flow only; count it as skipped.
                    Err(_) => sent.skipped_ports += 1,
                }
            }
        }
        sent.elapsed = start.elapsed();
        Ok(sent)
    })
}
