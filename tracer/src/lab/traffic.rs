//! Test traffic inside network namespaces, without external tools: echo servers, TCP/UDP exchanges,
//! ICMP echo, and a loop of rounds that runs while a trace does.
//!
//! Sockets are opened inside the namespace with [`Netns::run`]; a socket stays in the namespace it
//! was made in, so servers serve from an ordinary thread afterwards. Everything is bounded: message
//! and ping counts are capped, every blocking call has a timeout, and traffic only goes to the
//! addresses passed in.

use std::{
    io::{self, Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc, Mutex, PoisonError,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use serde::Serialize;

use crate::discover::netns::{Netns, NetnsError};

pub use super::icmp::icmp_echo;

/// Timeout for a connect, and for each send or receive.
pub(crate) const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a UDP exchange waits for each echo.
pub(crate) const UDP_REPLY_TIMEOUT: Duration = Duration::from_secs(1);
/// Most messages (or pings) one call sends.
pub(crate) const MAX_MESSAGES: usize = 10_000;
/// Largest payload of one message (fits one UDP datagram).
pub(crate) const MAX_PAYLOAD: usize = 65_507;
/// Most distinct peers a server remembers.
const MAX_PEERS: usize = 64;
/// Most connections a TCP server serves at once; more are closed at once.
const MAX_CONNECTIONS: usize = 64;
/// How often server threads look at their stop flag.
const POLL: Duration = Duration::from_millis(20);

#[derive(Debug, thiserror::Error)]
pub enum TrafficError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("cannot bind {proto} port {port} in network namespace {netns}: {source} (is the port in use there?)")]
    Bind {
        proto: &'static str,
        port: u16,
        netns: String,
        source: io::Error,
    },
    #[error("cannot connect to {dst} from network namespace {netns}: {source} (is a server listening, and the path up?)")]
    Connect {
        dst: SocketAddr,
        netns: String,
        source: io::Error,
    },
    #[error("{what} with {dst} failed: {source}")]
    Io {
        what: &'static str,
        dst: String,
        source: io::Error,
    },
    #[error("the echo from {dst} of message {index} differs from what was sent: something else answers on that port")]
    Mismatch { dst: SocketAddr, index: usize },
    #[error("cannot open an ICMP socket: {0} (needs root or CAP_NET_RAW)")]
    IcmpSocket(io::Error),
    #[error("{what} is {value}, more than the limit {limit}")]
    Limit {
        what: &'static str,
        value: usize,
        limit: usize,
    },
}

/// Counters of one exchange.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExchangeStats {
    /// The local address the kernel chose (the source before any NAT).
    pub local: SocketAddr,
    pub peer: SocketAddr,
    pub sent: usize,
    /// Messages whose echo came back intact.
    pub received: usize,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub elapsed: Duration,
}

impl ExchangeStats {
    fn new(local: SocketAddr, peer: SocketAddr) -> Self {
        Self {
            local,
            peer,
            sent: 0,
            received: 0,
            bytes_sent: 0,
            bytes_received: 0,
            elapsed: Duration::ZERO,
        }
    }
}

/// Counters of a server.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ServerStats {
    /// TCP: connections accepted; UDP: datagrams received.
    pub accepted: u64,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    /// Distinct peer addresses, in order of first contact (the first 64): after MASQUERADE, the
    /// translated source.
    pub peers: Vec<SocketAddr>,
}

impl ServerStats {
    fn add_peer(&mut self, peer: SocketAddr) {
        if self.peers.len() < MAX_PEERS && !self.peers.contains(&peer) {
            self.peers.push(peer);
        }
    }
}

type SharedStats = Arc<Mutex<ServerStats>>;

fn with_stats(stats: &SharedStats, f: impl FnOnce(&mut ServerStats)) {
    // A panic while holding the lock cannot leave the counters inconsistent in a way that matters.
    f(&mut stats.lock().unwrap_or_else(PoisonError::into_inner));
}

/// A running echo server; [`ServerHandle::stop`] (or dropping it) stops it and joins its threads.
#[derive(Debug)]
pub struct ServerHandle {
    local_addr: SocketAddr,
    stop: Arc<AtomicBool>,
    stats: SharedStats,
    thread: Option<JoinHandle<()>>,
}

impl ServerHandle {
    /// Runs `serve` on a thread; it must return soon after the stop flag is set.
    fn spawn(
        local_addr: SocketAddr,
        serve: impl FnOnce(Arc<AtomicBool>, SharedStats) + Send + 'static,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stats = SharedStats::default();
        let thread = {
            let (stop, stats) = (stop.clone(), stats.clone());
            std::thread::spawn(move || serve(stop, stats))
        };
        Self {
            local_addr,
            stop,
            stats,
            thread: Some(thread),
        }
    }

    /// The bound address (with the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Counters so far.
    pub(crate) fn stats(&self) -> ServerStats {
        self.stats
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Stops the server and returns its final counters.
    pub fn stop(mut self) -> ServerStats {
        self.shutdown();
        self.stats()
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::warn!(addr = %self.local_addr, "echo server thread panicked");
            }
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn netns_name(netns: &Netns) -> String {
    netns.path().display().to_string()
}

/// A TCP echo server on 0.0.0.0:`port` inside `netns` (port 0: any free port). Each connection is
/// echoed back until the peer closes it or the server stops.
pub fn tcp_server(netns: &Netns, port: u16) -> Result<ServerHandle, TrafficError> {
    let bind = bind_error("TCP", port, netns);
    let listener = netns
        .run(|| TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)))?
        .map_err(bind)?;
    let local_addr = listener.local_addr().map_err(bind)?;
    listener.set_nonblocking(true).map_err(bind)?;
    Ok(ServerHandle::spawn(local_addr, move |stop, stats| {
        accept_loop(&listener, &stop, &stats)
    }))
}

fn bind_error<'a>(
    proto: &'static str,
    port: u16,
    netns: &'a Netns,
) -> impl Fn(io::Error) -> TrafficError + Copy + 'a {
    move |source| TrafficError::Bind {
        proto,
        port,
        netns: netns_name(netns),
        source,
    }
}

fn accept_loop(listener: &TcpListener, stop: &Arc<AtomicBool>, stats: &SharedStats) {
    let mut conns: Vec<JoinHandle<()>> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, peer)) => {
                conns.retain(|c| !c.is_finished());
                with_stats(stats, |s| {
                    s.accepted += 1;
                    s.add_peer(peer);
                });
                if conns.len() >= MAX_CONNECTIONS {
                    tracing::warn!(%peer, "echo server busy, closing the connection");
                    continue;
                }
                let (stop, stats) = (stop.clone(), stats.clone());
                conns.push(std::thread::spawn(move || {
                    if let Err(e) = echo_connection(stream, &stop, &stats) {
                        tracing::debug!(%peer, "echo connection ended: {e}");
                    }
                }));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(POLL),
            Err(e) => {
                tracing::debug!("accept failed: {e}");
                std::thread::sleep(POLL);
            }
        }
    }
    for conn in conns {
        if conn.join().is_err() {
            tracing::warn!("echo connection thread panicked");
        }
    }
}

fn echo_connection(
    mut stream: TcpStream,
    stop: &AtomicBool,
    stats: &SharedStats,
) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(POLL))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut buf = vec![0u8; 16 * 1024];
    while !stop.load(Ordering::Relaxed) {
        match stream.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => {
                stream.write_all(&buf[..n])?;
                with_stats(stats, |s| {
                    s.bytes_received += n as u64;
                    s.bytes_sent += n as u64;
                });
            }
            Err(e) if is_timeout(&e) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// A UDP echo server on 0.0.0.0:`port` inside `netns` (port 0: any free port).
pub fn udp_echo_server(netns: &Netns, port: u16) -> Result<ServerHandle, TrafficError> {
    let bind = bind_error("UDP", port, netns);
    let socket = netns
        .run(|| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)))?
        .map_err(bind)?;
    let local_addr = socket.local_addr().map_err(bind)?;
    socket.set_read_timeout(Some(POLL)).map_err(bind)?;
    socket.set_write_timeout(Some(IO_TIMEOUT)).map_err(bind)?;
    Ok(ServerHandle::spawn(local_addr, move |stop, stats| {
        let mut buf = vec![0u8; MAX_PAYLOAD];
        while !stop.load(Ordering::Relaxed) {
            match socket.recv_from(&mut buf) {
                Ok((n, peer)) => {
                    let sent = socket.send_to(&buf[..n], peer);
                    with_stats(&stats, |s| {
                        s.accepted += 1;
                        s.add_peer(peer);
                        s.bytes_received += n as u64;
                        s.bytes_sent += sent.as_ref().map_or(0, |&m| m as u64);
                    });
                }
                Err(e) if is_timeout(&e) => {}
                Err(e) => tracing::debug!("udp echo receive failed: {e}"),
            }
        }
    }))
}

fn io_error(what: &'static str, dst: SocketAddr) -> impl Fn(io::Error) -> TrafficError + Copy {
    move |source| TrafficError::Io {
        what,
        dst: dst.to_string(),
        source,
    }
}

fn check_bounds(n_messages: usize, payload: &[u8]) -> Result<(), TrafficError> {
    if n_messages > MAX_MESSAGES {
        return Err(TrafficError::Limit {
            what: "the message count",
            value: n_messages,
            limit: MAX_MESSAGES,
        });
    }
    if payload.len() > MAX_PAYLOAD {
        return Err(TrafficError::Limit {
            what: "the payload size",
            value: payload.len(),
            limit: MAX_PAYLOAD,
        });
    }
    Ok(())
}

/// From inside `from`: connects to `dst`, sends `payload` `n_messages` times, reading each echo back
/// before the next, then closes. Fails on the first error or wrong echo.
pub fn tcp_exchange(
    from: &Netns,
    dst: SocketAddr,
    n_messages: usize,
    payload: &[u8],
) -> Result<ExchangeStats, TrafficError> {
    check_bounds(n_messages, payload)?;
    let netns = netns_name(from);
    from.run(|| {
        let start = Instant::now();
        let mut stream = TcpStream::connect_timeout(&dst, IO_TIMEOUT)
            .map_err(|source| TrafficError::Connect { dst, netns, source })?;
        let io = |what| io_error(what, dst);
        stream
            .set_read_timeout(Some(IO_TIMEOUT))
            .map_err(io("TCP setup"))?;
        stream
            .set_write_timeout(Some(IO_TIMEOUT))
            .map_err(io("TCP setup"))?;
        stream.set_nodelay(true).map_err(io("TCP setup"))?;
        let local = stream.local_addr().map_err(io("TCP setup"))?;
        let mut echo = vec![0u8; payload.len()];
        let mut stats = ExchangeStats::new(local, dst);
        for index in 0..n_messages {
            stream.write_all(payload).map_err(io("TCP send"))?;
            stats.sent += 1;
            stats.bytes_sent += payload.len() as u64;
            stream.read_exact(&mut echo).map_err(io("TCP receive"))?;
            stats.bytes_received += echo.len() as u64;
            if echo != payload {
                return Err(TrafficError::Mismatch { dst, index });
            }
            stats.received += 1;
        }
        stream
            .shutdown(std::net::Shutdown::Write)
            .map_err(io("TCP close"))?;
        stats.elapsed = start.elapsed();
        Ok(stats)
    })?
}

/// From inside `from`: sends `payload` to `dst` `n_messages` times over UDP, waiting up to
/// [`UDP_REPLY_TIMEOUT`] for each echo. Lost or refused echoes are counted, not errors:
/// `received < sent` tells.
pub fn udp_exchange(
    from: &Netns,
    dst: SocketAddr,
    n_messages: usize,
    payload: &[u8],
) -> Result<ExchangeStats, TrafficError> {
    check_bounds(n_messages, payload)?;
    let netns = netns_name(from);
    from.run(|| {
        let start = Instant::now();
        let io = |what| io_error(what, dst);
        let any: SocketAddr = if dst.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let socket = UdpSocket::bind(any).map_err(|source| TrafficError::Bind {
            proto: "UDP",
            port: 0,
            netns,
            source,
        })?;
        // Connected: the kernel only hands us datagrams from `dst`.
        socket.connect(dst).map_err(io("UDP connect"))?;
        socket
            .set_write_timeout(Some(IO_TIMEOUT))
            .map_err(io("UDP setup"))?;
        let local = socket.local_addr().map_err(io("UDP setup"))?;
        let mut stats = ExchangeStats::new(local, dst);
        let mut buf = vec![0u8; MAX_PAYLOAD];
        for _ in 0..n_messages {
            match socket.send(payload) {
                Ok(n) => {
                    stats.sent += 1;
                    stats.bytes_sent += n as u64;
                }
                // An ICMP port unreachable for an earlier datagram surfaces here: count it as lost.
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => continue,
                Err(e) => return Err(io("UDP send")(e)),
            }
            let deadline = Instant::now() + UDP_REPLY_TIMEOUT;
            while let Some(left) = deadline.checked_duration_since(Instant::now()) {
                if left.is_zero() {
                    break;
                }
                socket
                    .set_read_timeout(Some(left))
                    .map_err(io("UDP setup"))?;
                match socket.recv(&mut buf) {
                    Ok(n) => {
                        stats.bytes_received += n as u64;
                        if buf[..n] == *payload {
                            stats.received += 1;
                            break;
                        }
                    }
                    Err(e) if is_timeout(&e) || e.kind() == io::ErrorKind::ConnectionRefused => {
                        break
                    }
                    Err(e) => return Err(io("UDP receive")(e)),
                }
            }
        }
        stats.elapsed = start.elapsed();
        Ok(stats)
    })?
}

/// Where a [`TrafficLoop`] sends; `None` skips that kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrafficTargets {
    pub icmp: Option<std::net::IpAddr>,
    pub tcp: Option<SocketAddr>,
    pub udp: Option<SocketAddr>,
}

/// Pacing and bounds of a [`TrafficLoop`]; it ends at whichever limit comes first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoopOptions {
    /// Pause between rounds.
    pub interval: Duration,
    /// Messages per TCP and per UDP exchange, pings per ICMP burst.
    pub messages_per_round: usize,
    pub payload: Vec<u8>,
    pub max_rounds: u64,
    pub max_duration: Duration,
}

impl Default for LoopOptions {
    fn default() -> Self {
        Self {
            interval: Duration::from_millis(500),
            messages_per_round: 2,
            payload: b"pathtrace-lab-traffic".to_vec(),
            max_rounds: 100_000,
            max_duration: Duration::from_secs(3600),
        }
    }
}

/// Counters of a [`TrafficLoop`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LoopStats {
    pub rounds: u64,
    pub icmp_sent: u64,
    pub icmp_replies: u64,
    pub tcp_exchanges_ok: u64,
    pub tcp_exchanges_failed: u64,
    pub udp_sent: u64,
    pub udp_received: u64,
    pub last_error: Option<String>,
}

/// ICMP, TCP and UDP rounds from a namespace, on a thread, until stopped or a bound is reached.
#[derive(Debug)]
pub struct TrafficLoop {
    stop: Option<mpsc::Sender<()>>,
    stats: Arc<Mutex<LoopStats>>,
    thread: Option<JoinHandle<()>>,
}

impl TrafficLoop {
    /// Starts the loop; errors only when the namespace cannot be opened again or the options are
    /// out of bounds.
    pub fn start(
        from: &Netns,
        targets: TrafficTargets,
        opts: LoopOptions,
    ) -> Result<Self, TrafficError> {
        check_bounds(opts.messages_per_round, &opts.payload)?;
        let netns = Netns::open(from.path())?;
        let (stop, stopped) = mpsc::channel::<()>();
        let stats = Arc::new(Mutex::new(LoopStats::default()));
        let thread = {
            let stats = stats.clone();
            std::thread::spawn(move || run_loop(&netns, &targets, &opts, &stopped, &stats))
        };
        Ok(Self {
            stop: Some(stop),
            stats,
            thread: Some(thread),
        })
    }

    /// Counters so far.
    pub(crate) fn stats(&self) -> LoopStats {
        self.stats
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Whether the loop ended by itself (a bound was reached).
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Stops after the current round and returns the counters.
    pub fn stop(mut self) -> LoopStats {
        self.shutdown();
        self.stats()
    }

    fn shutdown(&mut self) {
        // Dropping the sender wakes the loop's `recv_timeout` at once.
        self.stop.take();
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::warn!("traffic loop thread panicked");
            }
        }
    }
}

impl Drop for TrafficLoop {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn run_loop(
    netns: &Netns,
    targets: &TrafficTargets,
    opts: &LoopOptions,
    stopped: &mpsc::Receiver<()>,
    stats: &Mutex<LoopStats>,
) {
    let start = Instant::now();
    let update = |f: &mut dyn FnMut(&mut LoopStats)| {
        f(&mut stats.lock().unwrap_or_else(PoisonError::into_inner))
    };
    let n = opts.messages_per_round;
    for _ in 0..opts.max_rounds {
        if start.elapsed() >= opts.max_duration {
            break;
        }
        if let Some(dst) = targets.icmp {
            // Pings in a burst are 10 ms apart: a round stays short.
            let count = u16::try_from(n).unwrap_or(u16::MAX);
            let r = icmp_echo(netns, dst, count, Duration::from_millis(10));
            update(&mut |s| match &r {
                Ok(p) => {
                    s.icmp_sent += p.sent as u64;
                    s.icmp_replies += p.replies.len() as u64;
                }
                Err(e) => s.last_error = Some(e.to_string()),
            });
        }
        if let Some(dst) = targets.tcp {
            let r = tcp_exchange(netns, dst, n, &opts.payload);
            update(&mut |s| match &r {
                Ok(_) => s.tcp_exchanges_ok += 1,
                Err(e) => {
                    s.tcp_exchanges_failed += 1;
                    s.last_error = Some(e.to_string());
                }
            });
        }
        if let Some(dst) = targets.udp {
            let r = udp_exchange(netns, dst, n, &opts.payload);
            update(&mut |s| match &r {
                Ok(u) => {
                    s.udp_sent += u.sent as u64;
                    s.udp_received += u.received as u64;
                }
                Err(e) => s.last_error = Some(e.to_string()),
            });
        }
        update(&mut |s| s.rounds += 1);
        match stopped.recv_timeout(opts.interval) {
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            // A message or a dropped sender both mean stop.
            Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_tcp_and_udp_echo_in_the_current_namespace() {
        let ns = Netns::current().expect("own netns");
        let tcp = tcp_server(&ns, 0).expect("tcp server");
        let udp = udp_echo_server(&ns, 0).expect("udp server");
        let lo = |port| SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let t = tcp_exchange(&ns, lo(tcp.local_addr().port()), 3, b"hello").expect("tcp");
        assert_eq!((t.sent, t.received, t.bytes_received), (3, 3, 15));
        let u = udp_exchange(&ns, lo(udp.local_addr().port()), 3, b"hi").expect("udp");
        assert_eq!((u.sent, u.received), (3, 3));
        let ts = tcp.stop();
        assert_eq!(ts.accepted, 1);
        assert_eq!(ts.peers, vec![t.local]);
        assert_eq!(udp.stop().peers, vec![u.local]);
    }

    #[test]
    fn limits_are_enforced() {
        let ns = Netns::current().expect("own netns");
        let dst = SocketAddr::from((Ipv4Addr::LOCALHOST, 9));
        assert!(matches!(
            tcp_exchange(&ns, dst, MAX_MESSAGES + 1, b"x"),
            Err(TrafficError::Limit { .. })
        ));
        assert!(matches!(
            udp_exchange(&ns, dst, 1, &vec![0; MAX_PAYLOAD + 1]),
            Err(TrafficError::Limit { .. })
        ));
    }
}
