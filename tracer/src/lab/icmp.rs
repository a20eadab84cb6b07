//! ICMP echo ("ping") from inside a namespace, without the `ping` tool.
//!
//! A raw socket (`SOCK_RAW`, root or CAP_NET_RAW) is tried first; if that is refused, a ping socket
//! (`SOCK_DGRAM`, allowed by `net.ipv4.ping_group_range`). IPv4 raw sockets receive the IP header;
//! ICMPv6 raw sockets and ping sockets do not. The kernel fills the ICMPv6 checksum; IPv4 we do.

use std::{
    io,
    net::{IpAddr, SocketAddrV4, SocketAddrV6},
    os::fd::{AsRawFd as _, OwnedFd},
    sync::atomic::{AtomicU16, Ordering},
    time::{Duration, Instant},
};

use nix::{
    errno::Errno,
    sys::{
        socket::{
            recvfrom, sendto, setsockopt, socket, sockopt, AddressFamily, MsgFlags, SockFlag,
            SockProtocol, SockType, SockaddrIn, SockaddrIn6, SockaddrStorage,
        },
        time::TimeVal,
    },
};
use serde::Serialize;

use super::traffic::{TrafficError, MAX_MESSAGES};
use crate::discover::netns::Netns;

/// How long to wait for each echo reply.
pub(super) const REPLY_TIMEOUT: Duration = Duration::from_secs(1);
const PAYLOAD: &[u8; 16] = b"pathtrace-ping!!";

/// One reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PingReply {
    pub seq: u16,
    pub rtt: Duration,
}

/// What an [`icmp_echo`] run saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PingStats {
    pub dst: IpAddr,
    pub sent: u16,
    pub replies: Vec<PingReply>,
}

/// Distinguishes concurrent pings of this process (raw sockets see every echo reply).
static NEXT_ID: AtomicU16 = AtomicU16::new(0);

/// From inside `from`: sends `count` echo requests to `dst`, `interval` apart, waiting up to
/// [`REPLY_TIMEOUT`] for each reply. Missing replies are not errors: `replies.len() < sent` tells.
pub fn icmp_echo(
    from: &Netns,
    dst: IpAddr,
    count: u16,
    interval: Duration,
) -> Result<PingStats, TrafficError> {
    if usize::from(count) > MAX_MESSAGES {
        return Err(TrafficError::Limit {
            what: "the ping count",
            value: count.into(),
            limit: MAX_MESSAGES,
        });
    }
    from.run(|| {
        let pinger = Pinger::open(dst)?;
        let id = (std::process::id() as u16) ^ NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let mut stats = PingStats {
            dst,
            sent: 0,
            replies: Vec::new(),
        };
        for seq in 0..count {
            let start = Instant::now();
            pinger.send(id, seq).map_err(|source| TrafficError::Io {
                what: "ICMP echo request",
                dst: dst.to_string(),
                source,
            })?;
            stats.sent += 1;
            if pinger.wait_reply(id, seq, start + REPLY_TIMEOUT)? {
                stats.replies.push(PingReply {
                    seq,
                    rtt: start.elapsed(),
                });
            }
            if seq + 1 < count {
                std::thread::sleep(interval.saturating_sub(start.elapsed()));
            }
        }
        Ok(stats)
    })?
}

struct Pinger {
    fd: OwnedFd,
    dst: IpAddr,
    /// A raw IPv4 socket: received packets start with the IP header.
    has_ip_header: bool,
    /// A ping socket: the kernel sets the identifier, and only hands us our own replies.
    kernel_id: bool,
}

impl Pinger {
    fn open(dst: IpAddr) -> Result<Self, TrafficError> {
        let (family, proto) = match dst {
            IpAddr::V4(_) => (AddressFamily::Inet, SockProtocol::Icmp),
            IpAddr::V6(_) => (AddressFamily::Inet6, SockProtocol::IcmpV6),
        };
        let open = |ty| socket(family, ty, SockFlag::SOCK_CLOEXEC, proto);
        let (fd, raw) = match open(SockType::Raw) {
            Ok(fd) => (fd, true),
            Err(Errno::EPERM | Errno::EACCES) => (
                open(SockType::Datagram).map_err(|e| TrafficError::IcmpSocket(e.into()))?,
                false,
            ),
            Err(e) => return Err(TrafficError::IcmpSocket(e.into())),
        };
        Ok(Self {
            fd,
            dst,
            has_ip_header: raw && dst.is_ipv4(),
            kernel_id: !raw,
        })
    }

    fn send(&self, id: u16, seq: u16) -> io::Result<()> {
        let kind = if self.dst.is_ipv4() { 8 } else { 128 };
        let mut pkt = Vec::with_capacity(8 + PAYLOAD.len());
        pkt.extend_from_slice(&[kind, 0, 0, 0]);
        pkt.extend_from_slice(&id.to_be_bytes());
        pkt.extend_from_slice(&seq.to_be_bytes());
        pkt.extend_from_slice(PAYLOAD);
        if self.dst.is_ipv4() {
            let sum = checksum(&pkt);
            pkt[2..4].copy_from_slice(&sum.to_be_bytes());
        }
        let fd = self.fd.as_raw_fd();
        let sent = match self.dst {
            IpAddr::V4(ip) => sendto(
                fd,
                &pkt,
                &SockaddrIn::from(SocketAddrV4::new(ip, 0)),
                MsgFlags::empty(),
            ),
            IpAddr::V6(ip) => sendto(
                fd,
                &pkt,
                &SockaddrIn6::from(SocketAddrV6::new(ip, 0, 0, 0)),
                MsgFlags::empty(),
            ),
        };
        sent.map(drop).map_err(io::Error::from)
    }

    /// Waits until `deadline` for the reply to (`id`, `seq`) from the destination.
    fn wait_reply(&self, id: u16, seq: u16, deadline: Instant) -> Result<bool, TrafficError> {
        let io_err = |source: Errno| TrafficError::Io {
            what: "ICMP echo reply",
            dst: self.dst.to_string(),
            source: source.into(),
        };
        let mut buf = [0u8; 1500];
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            if left.is_zero() {
                break;
            }
            let timeout = TimeVal::new(left.as_secs() as _, left.subsec_micros().max(1) as _);
            setsockopt(&self.fd, sockopt::ReceiveTimeout, &timeout).map_err(io_err)?;
            let (n, from) = match recvfrom::<SockaddrStorage>(self.fd.as_raw_fd(), &mut buf) {
                Ok(got) => got,
                Err(Errno::EAGAIN | Errno::EINTR) => continue,
                Err(e) => return Err(io_err(e)),
            };
            if from.as_ref().and_then(source_ip) == Some(self.dst)
                && self.is_reply_to(&buf[..n], id, seq)
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn is_reply_to(&self, packet: &[u8], id: u16, seq: u16) -> bool {
        let icmp = if self.has_ip_header {
            let ihl = usize::from(packet.first().map_or(0, |b| b & 0x0f)) * 4;
            packet.get(ihl..).unwrap_or_default()
        } else {
            packet
        };
        let reply_kind = if self.dst.is_ipv4() { 0 } else { 129 };
        icmp.len() >= 8
            && icmp[0] == reply_kind
            && (self.kernel_id || icmp[4..6] == id.to_be_bytes())
            && icmp[6..8] == seq.to_be_bytes()
    }
}

fn source_ip(addr: &SockaddrStorage) -> Option<IpAddr> {
    if let Some(v4) = addr.as_sockaddr_in() {
        Some(IpAddr::V4(v4.ip()))
    } else {
        addr.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
    }
}

/// The Internet checksum (RFC 1071) of `data`.
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_matches_rfc1071_example() {
        // RFC 1071 section 3: the sum of these bytes is 0xddf2, the checksum its complement.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(checksum(&data), !0xddf2);
        // A packet with its checksum filled in sums to zero.
        let mut pkt = vec![8, 0, 0, 0, 0x12, 0x34, 0, 1, 0xab];
        let sum = checksum(&pkt);
        pkt[2..4].copy_from_slice(&sum.to_be_bytes());
        assert_eq!(checksum(&pkt), 0);
    }

    #[test]
    fn ping_loopback_when_root() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED ping_loopback_when_root: needs root for a raw ICMP socket");
            return;
        }
        let ns = Netns::current().expect("own netns");
        let stats = icmp_echo(
            &ns,
            "127.0.0.1".parse().expect("ip"),
            2,
            Duration::from_millis(10),
        )
        .expect("ping");
        assert_eq!(stats.sent, 2);
        assert_eq!(stats.replies.len(), 2, "{stats:?}");
    }
}
