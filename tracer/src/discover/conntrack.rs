//! The kernel's conntrack table, read over ctnetlink: the NAT mapping of one connection, to confirm
//! a NAT step seen on the wire.
//!
//! A lookup runs in the calling thread's network namespace (wrap it in
//! [`super::netns::Netns::run`] for another one) and in conntrack zone 0. Needs CAP_NET_ADMIN.
//!
//! ICMP echo has no ports; as in the packet parser, an endpoint's port is the echo id. Every
//! endpoint of a [`CtEntry`] carries the id of its direction's tuple (NAT may change the id).

use std::{
    io,
    net::IpAddr,
    sync::atomic::{AtomicU32, Ordering},
};

use netlink_packet_core::{NLMSG_DONE, NLMSG_ERROR, NLM_F_ACK, NLM_F_REQUEST};
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};
use nix::sys::{
    socket::{setsockopt, sockopt::ReceiveTimeout},
    time::TimeVal,
};

use crate::model::{Endpoint, NatKind, NatStep, Proto};

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_NEW: u16 = 0;
const IPCTNL_MSG_CT_GET: u16 = 1;
const NFNETLINK_V0: u8 = 0;

const NLA_F_NESTED: u16 = 1 << 15;
const NLA_TYPE_MASK: u16 = !(NLA_F_NESTED | (1 << 14));

const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
const CTA_PROTO_ICMP_ID: u16 = 4;
const CTA_PROTO_ICMP_TYPE: u16 = 5;
const CTA_PROTO_ICMP_CODE: u16 = 6;
const CTA_PROTO_ICMPV6_ID: u16 = 7;
const CTA_PROTO_ICMPV6_TYPE: u16 = 8;
const CTA_PROTO_ICMPV6_CODE: u16 = 9;

const NLMSG_HDR_LEN: usize = 16;
/// One conntrack entry is a few hundred bytes; a datagram larger than this is refused.
const RECV_BUF_LEN: usize = 64 * 1024;
/// Datagrams read for one answer before giving up (the answer is an entry and an ack).
const MAX_DATAGRAMS: usize = 16;
const RECV_TIMEOUT_SECS: i64 = 2;

#[derive(Debug, thiserror::Error)]
pub enum ConntrackError {
    #[error("cannot open a ctnetlink socket: {0}")]
    Socket(#[source] io::Error),
    #[error("cannot send the conntrack query: {0}")]
    Send(#[source] io::Error),
    #[error("no answer to the conntrack query: {0}")]
    Recv(#[source] io::Error),
    #[error("the kernel refused the conntrack query: {0} (needs CAP_NET_ADMIN: run as root)")]
    Kernel(#[source] io::Error),
    #[error("malformed ctnetlink answer: {0}")]
    Malformed(&'static str),
    #[error("{src} and {dst} are not of one address family")]
    MixedFamilies { src: IpAddr, dst: IpAddr },
}

/// One conntrack entry: the original direction's tuple and the reply direction's. With NAT they
/// differ: after MASQUERADE the reply goes to the masquerading address (`reply_dst`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtEntry {
    pub proto: Proto,
    pub orig_src: Endpoint,
    pub orig_dst: Endpoint,
    pub reply_src: Endpoint,
    pub reply_dst: Endpoint,
}

/// Which of an entry's two tuples a lookup gives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TupleDir {
    Orig,
    Reply,
}

/// The entry whose original tuple is `orig_src -> orig_dst` (ICMP: the id is `orig_src.port`).
pub fn lookup(
    proto: Proto,
    orig_src: Endpoint,
    orig_dst: Endpoint,
) -> Result<Option<CtEntry>, ConntrackError> {
    lookup_tuple(TupleDir::Orig, proto, orig_src, orig_dst)
}

/// The entry whose reply tuple is `reply_src -> reply_dst` (ICMP: the id is `reply_src.port`).
pub fn lookup_reply(
    proto: Proto,
    reply_src: Endpoint,
    reply_dst: Endpoint,
) -> Result<Option<CtEntry>, ConntrackError> {
    lookup_tuple(TupleDir::Reply, proto, reply_src, reply_dst)
}

/// Whether the conntrack entry of the step's connection shows the step's mapping: `Some(true)` when
/// it does, `Some(false)` when it shows another, `None` when there is no entry. `peer` is the
/// endpoint NAT did not touch (destination for SNAT, source for DNAT).
///
/// Handles both directions: an SNAT step is the original direction's source NAT (the reply tuple's
/// destination is `after`) or a reply's reverse DNAT (the original destination is `after`); a DNAT
/// step likewise.
pub fn confirms(
    step: &NatStep,
    peer: Endpoint,
    proto: Proto,
) -> Result<Option<bool>, ConntrackError> {
    judge(step, peer, proto, |dir, src, dst| {
        lookup_tuple(dir, proto, src, dst)
    })
}

/// [`confirms`] over any lookup function (the kernel's, or a table in a test).
fn judge(
    step: &NatStep,
    peer: Endpoint,
    proto: Proto,
    mut find: impl FnMut(TupleDir, Endpoint, Endpoint) -> Result<Option<CtEntry>, ConntrackError>,
) -> Result<Option<bool>, ConntrackError> {
    // The packet as it was before the rewrite.
    let (src, dst) = match step.kind {
        NatKind::Snat => (step.before, peer),
        NatKind::Dnat => (peer, step.before),
    };
    if let Some(e) = find(TupleDir::Orig, src, dst)? {
        // Original direction: the reply tuple shows where the rewritten side now is.
        let now = match step.kind {
            NatKind::Snat => e.reply_dst,
            NatKind::Dnat => e.reply_src,
        };
        return Ok(Some(same(proto, now, step.after)));
    }
    if let Some(e) = find(TupleDir::Reply, src, dst)? {
        // A reply being un-NATed: the original tuple shows what it is rewritten back to.
        let now = match step.kind {
            NatKind::Snat => e.orig_dst,
            NatKind::Dnat => e.orig_src,
        };
        return Ok(Some(same(proto, now, step.after)));
    }
    Ok(None)
}

/// Endpoint equality; for protocols without ports a 0 port (an ICMP destination) matches any id.
fn same(proto: Proto, ct: Endpoint, seen: Endpoint) -> bool {
    if proto.has_ports() {
        ct == seen
    } else {
        ct.addr == seen.addr && (seen.port == 0 || ct.port == seen.port)
    }
}

/// The entry with this tuple in direction `dir`. The kernel looks a tuple up in both directions at
/// once, so an entry that has it in the other direction is left out here.
fn lookup_tuple(
    dir: TupleDir,
    proto: Proto,
    src: Endpoint,
    dst: Endpoint,
) -> Result<Option<CtEntry>, ConntrackError> {
    Ok(kernel_get(dir, proto, src, dst)?.filter(|e| e.has_tuple(dir, src, dst)))
}

impl CtEntry {
    /// Whether `src -> dst` is this entry's tuple in direction `dir` (ICMP: the id is `src.port`).
    pub(crate) fn has_tuple(&self, dir: TupleDir, src: Endpoint, dst: Endpoint) -> bool {
        let (s, d) = match dir {
            TupleDir::Orig => (self.orig_src, self.orig_dst),
            TupleDir::Reply => (self.reply_src, self.reply_dst),
        };
        if self.proto.has_ports() {
            (s, d) == (src, dst)
        } else {
            s == src && d.addr == dst.addr
        }
    }
}

/// One ctnetlink `IPCTNL_MSG_CT_GET` for the tuple.
fn kernel_get(
    dir: TupleDir,
    proto: Proto,
    src: Endpoint,
    dst: Endpoint,
) -> Result<Option<CtEntry>, ConntrackError> {
    static SEQ: AtomicU32 = AtomicU32::new(1);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let request = build_request(seq, dir, proto, src, dst)?;

    let mut socket = Socket::new(NETLINK_NETFILTER).map_err(ConntrackError::Socket)?;
    socket.bind_auto().map_err(ConntrackError::Socket)?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .map_err(ConntrackError::Socket)?;
    setsockopt(&socket, ReceiveTimeout, &TimeVal::new(RECV_TIMEOUT_SECS, 0))
        .map_err(|e| ConntrackError::Socket(e.into()))?;
    socket.send(&request, 0).map_err(ConntrackError::Send)?;

    let mut entry = None;
    let mut buf: Vec<u8> = Vec::with_capacity(RECV_BUF_LEN);
    for _ in 0..MAX_DATAGRAMS {
        buf.clear();
        let n = socket
            .recv(&mut buf, libc::MSG_TRUNC)
            .map_err(ConntrackError::Recv)?;
        if n > buf.len() {
            return Err(ConntrackError::Malformed(
                "answer larger than the receive buffer",
            ));
        }
        match read_datagram(&buf, seq, &mut entry)? {
            Some(done) => return Ok(done.then_some(entry).flatten()),
            None => continue,
        }
    }
    Err(ConntrackError::Malformed("no acknowledgement"))
}

/// Reads one datagram of the answer to request `seq`, storing an entry it holds. Returns
/// `Some(true)` when the answer is complete, `Some(false)` when the kernel found no entry, `None`
/// when more is to come.
fn read_datagram(
    mut buf: &[u8],
    seq: u32,
    entry: &mut Option<CtEntry>,
) -> Result<Option<bool>, ConntrackError> {
    while buf.len() >= NLMSG_HDR_LEN {
        let len = u32_at(buf, 0) as usize;
        if len < NLMSG_HDR_LEN || len > buf.len() {
            return Err(ConntrackError::Malformed("bad message length"));
        }
        let (msg, rest) = buf.split_at(len);
        buf = rest.get(align4(len) - len..).unwrap_or(&[]);
        if u32_at(msg, 8) != seq {
            continue; // not ours (a stale answer)
        }
        let kind = u16_at(msg, 4);
        let payload = &msg[NLMSG_HDR_LEN..];
        match kind {
            NLMSG_ERROR => {
                let code = payload
                    .get(..4)
                    .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                    .ok_or(ConntrackError::Malformed("short error message"))?;
                return match -code {
                    0 => Ok(Some(true)),
                    libc::ENOENT => Ok(Some(false)),
                    errno => Err(ConntrackError::Kernel(io::Error::from_raw_os_error(errno))),
                };
            }
            NLMSG_DONE => return Ok(Some(true)),
            k if k == (NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_NEW) => {
                *entry = Some(parse_entry(payload)?);
            }
            _ => {}
        }
    }
    Ok(None)
}

fn build_request(
    seq: u32,
    dir: TupleDir,
    proto: Proto,
    src: Endpoint,
    dst: Endpoint,
) -> Result<Vec<u8>, ConntrackError> {
    let mut ip = Vec::new();
    let family = match (src.addr, dst.addr) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            put_attr(&mut ip, CTA_IP_V4_SRC, &s.octets());
            put_attr(&mut ip, CTA_IP_V4_DST, &d.octets());
            libc::AF_INET
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            put_attr(&mut ip, CTA_IP_V6_SRC, &s.octets());
            put_attr(&mut ip, CTA_IP_V6_DST, &d.octets());
            libc::AF_INET6
        }
        (s, d) => return Err(ConntrackError::MixedFamilies { src: s, dst: d }),
    };
    let mut l4 = Vec::new();
    put_attr(&mut l4, CTA_PROTO_NUM, &[proto.number()]);
    // Echo request in the original direction, echo reply in the reply direction.
    let echo = |request: u8, reply: u8| match dir {
        TupleDir::Orig => request,
        TupleDir::Reply => reply,
    };
    match proto {
        Proto::Icmp => {
            put_attr(&mut l4, CTA_PROTO_ICMP_ID, &src.port.to_be_bytes());
            put_attr(&mut l4, CTA_PROTO_ICMP_TYPE, &[echo(8, 0)]);
            put_attr(&mut l4, CTA_PROTO_ICMP_CODE, &[0]);
        }
        Proto::Icmpv6 => {
            put_attr(&mut l4, CTA_PROTO_ICMPV6_ID, &src.port.to_be_bytes());
            put_attr(&mut l4, CTA_PROTO_ICMPV6_TYPE, &[echo(128, 129)]);
            put_attr(&mut l4, CTA_PROTO_ICMPV6_CODE, &[0]);
        }
        _ => {
            put_attr(&mut l4, CTA_PROTO_SRC_PORT, &src.port.to_be_bytes());
            put_attr(&mut l4, CTA_PROTO_DST_PORT, &dst.port.to_be_bytes());
        }
    }
    let mut tuple = Vec::new();
    put_attr(&mut tuple, CTA_TUPLE_IP | NLA_F_NESTED, &ip);
    put_attr(&mut tuple, CTA_TUPLE_PROTO | NLA_F_NESTED, &l4);

    // nfgenmsg: family, version, resource id (big endian, 0).
    let mut payload = vec![family as u8, NFNETLINK_V0, 0, 0];
    let which = match dir {
        TupleDir::Orig => CTA_TUPLE_ORIG,
        TupleDir::Reply => CTA_TUPLE_REPLY,
    };
    put_attr(&mut payload, which | NLA_F_NESTED, &tuple);

    let len = u32::try_from(NLMSG_HDR_LEN + payload.len())
        .map_err(|_| ConntrackError::Malformed("request too long"))?;
    let mut msg = Vec::with_capacity(len as usize);
    msg.extend_from_slice(&len.to_ne_bytes());
    msg.extend_from_slice(&(NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_GET).to_ne_bytes());
    msg.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    msg.extend_from_slice(&seq.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
    msg.extend_from_slice(&payload);
    Ok(msg)
}

/// Appends one netlink attribute, padded to 4 bytes. Attributes here are a few dozen bytes.
fn put_attr(buf: &mut Vec<u8>, kind: u16, data: &[u8]) {
    let len = 4 + data.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(data);
    buf.resize(buf.len() + align4(len) - len, 0);
}

/// Parses an `IPCTNL_MSG_CT_NEW` payload (nfgenmsg + attributes).
fn parse_entry(payload: &[u8]) -> Result<CtEntry, ConntrackError> {
    let attrs = payload
        .get(4..)
        .ok_or(ConntrackError::Malformed("short conntrack message"))?;
    let mut orig = None;
    let mut reply = None;
    for (kind, data) in Attrs(attrs) {
        match kind {
            CTA_TUPLE_ORIG => orig = Some(parse_tuple(data)?),
            CTA_TUPLE_REPLY => reply = Some(parse_tuple(data)?),
            _ => {}
        }
    }
    let (proto, orig_src, orig_dst) = orig.ok_or(ConntrackError::Malformed("no original tuple"))?;
    let (_, reply_src, reply_dst) = reply.ok_or(ConntrackError::Malformed("no reply tuple"))?;
    Ok(CtEntry {
        proto,
        orig_src,
        orig_dst,
        reply_src,
        reply_dst,
    })
}

/// A tuple's protocol and its two endpoints (ICMP: both carry the echo id).
fn parse_tuple(data: &[u8]) -> Result<(Proto, Endpoint, Endpoint), ConntrackError> {
    let (mut src, mut dst, mut proto) = (None, None, None);
    let (mut sport, mut dport) = (0u16, 0u16);
    for (kind, data) in Attrs(data) {
        match kind {
            CTA_TUPLE_IP => {
                for (k, d) in Attrs(data) {
                    let addr = match (k, d.len()) {
                        (CTA_IP_V4_SRC | CTA_IP_V4_DST, 4) => {
                            IpAddr::from(<[u8; 4]>::try_from(d).map_err(|_| bad_addr())?)
                        }
                        (CTA_IP_V6_SRC | CTA_IP_V6_DST, 16) => {
                            IpAddr::from(<[u8; 16]>::try_from(d).map_err(|_| bad_addr())?)
                        }
                        _ => continue,
                    };
                    if matches!(k, CTA_IP_V4_SRC | CTA_IP_V6_SRC) {
                        src = Some(addr);
                    } else {
                        dst = Some(addr);
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for (k, d) in Attrs(data) {
                    match k {
                        CTA_PROTO_NUM => proto = d.first().map(|&n| Proto::from(n)),
                        CTA_PROTO_SRC_PORT => sport = be16(d)?,
                        CTA_PROTO_DST_PORT => dport = be16(d)?,
                        CTA_PROTO_ICMP_ID | CTA_PROTO_ICMPV6_ID => {
                            sport = be16(d)?;
                            dport = sport;
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    match (proto, src, dst) {
        (Some(p), Some(s), Some(d)) => Ok((p, Endpoint::new(s, sport), Endpoint::new(d, dport))),
        _ => Err(ConntrackError::Malformed("incomplete tuple")),
    }
}

fn bad_addr() -> ConntrackError {
    ConntrackError::Malformed("bad address length")
}

fn be16(d: &[u8]) -> Result<u16, ConntrackError> {
    match d {
        [a, b, ..] => Ok(u16::from_be_bytes([*a, *b])),
        _ => Err(ConntrackError::Malformed("short port")),
    }
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Iterates netlink attributes as (type without flags, payload); stops at the first malformed one.
struct Attrs<'a>(&'a [u8]);

impl<'a> Iterator for Attrs<'a> {
    type Item = (u16, &'a [u8]);
    fn next(&mut self) -> Option<Self::Item> {
        let buf = self.0;
        if buf.len() < 4 {
            return None;
        }
        let len = usize::from(u16_at(buf, 0));
        if len < 4 || len > buf.len() {
            self.0 = &[];
            return None;
        }
        let kind = u16_at(buf, 2) & NLA_TYPE_MASK;
        self.0 = buf.get(align4(len)..).unwrap_or(&[]);
        Some((kind, &buf[4..len]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(s: &str) -> Endpoint {
        let (a, p) = s.rsplit_once(':').expect("addr:port");
        let a = a.trim_matches(['[', ']']);
        Endpoint::new(a.parse().expect("addr"), p.parse().expect("port"))
    }

    /// A masqueraded TCP connection: 10.0.0.2:40000 -> 192.0.2.9:80 leaves as 198.51.100.1:40001.
    fn masqueraded() -> CtEntry {
        CtEntry {
            proto: Proto::Tcp,
            orig_src: ep("10.0.0.2:40000"),
            orig_dst: ep("192.0.2.9:80"),
            reply_src: ep("192.0.2.9:80"),
            reply_dst: ep("198.51.100.1:40001"),
        }
    }

    fn table(
        entries: Vec<CtEntry>,
    ) -> impl FnMut(TupleDir, Endpoint, Endpoint) -> Result<Option<CtEntry>, ConntrackError> {
        move |dir, src, dst| {
            Ok(entries.iter().copied().find(|e| match dir {
                TupleDir::Orig => e.orig_src == src && e.orig_dst == dst,
                TupleDir::Reply => e.reply_src == src && e.reply_dst == dst,
            }))
        }
    }

    fn step(kind: NatKind, before: &str, after: &str) -> NatStep {
        NatStep {
            kind,
            before: ep(before),
            after: ep(after),
            between: (String::new(), String::new()),
            rule: None,
            rule_confidence: None,
            candidates: Vec::new(),
            why: None,
            conntrack: None,
        }
    }

    #[test]
    fn judge_both_directions() {
        let peer = ep("192.0.2.9:80");
        // Outbound SNAT, as seen.
        let s = step(NatKind::Snat, "10.0.0.2:40000", "198.51.100.1:40001");
        assert_eq!(
            judge(&s, peer, Proto::Tcp, table(vec![masqueraded()])).ok(),
            Some(Some(true))
        );
        // The same step with another port than the kernel chose.
        let s = step(NatKind::Snat, "10.0.0.2:40000", "198.51.100.1:40000");
        assert_eq!(
            judge(&s, peer, Proto::Tcp, table(vec![masqueraded()])).ok(),
            Some(Some(false))
        );
        // The reply's de-NAT: 198.51.100.1:40001 -> 10.0.0.2:40000, from the peer.
        let d = step(NatKind::Dnat, "198.51.100.1:40001", "10.0.0.2:40000");
        assert_eq!(
            judge(&d, peer, Proto::Tcp, table(vec![masqueraded()])).ok(),
            Some(Some(true))
        );
        // No entry.
        let s = step(NatKind::Snat, "10.0.0.3:40000", "198.51.100.1:40001");
        assert_eq!(
            judge(&s, peer, Proto::Tcp, table(vec![masqueraded()])).ok(),
            Some(None)
        );
    }

    #[test]
    fn judge_published_port() {
        // 203.0.113.5:50000 -> 198.51.100.1:8080 DNATed to 172.17.0.2:80.
        let e = CtEntry {
            proto: Proto::Tcp,
            orig_src: ep("203.0.113.5:50000"),
            orig_dst: ep("198.51.100.1:8080"),
            reply_src: ep("172.17.0.2:80"),
            reply_dst: ep("203.0.113.5:50000"),
        };
        let client = ep("203.0.113.5:50000");
        let d = step(NatKind::Dnat, "198.51.100.1:8080", "172.17.0.2:80");
        assert_eq!(
            judge(&d, client, Proto::Tcp, table(vec![e])).ok(),
            Some(Some(true))
        );
        // The reply's source rewritten back.
        let s = step(NatKind::Snat, "172.17.0.2:80", "198.51.100.1:8080");
        assert_eq!(
            judge(&s, client, Proto::Tcp, table(vec![e])).ok(),
            Some(Some(true))
        );
    }

    #[test]
    fn judge_icmp_echo() {
        // Echo id 7 masqueraded to id 9; a request's destination port is 0.
        let e = CtEntry {
            proto: Proto::Icmp,
            orig_src: ep("10.0.0.2:7"),
            orig_dst: ep("192.0.2.9:7"),
            reply_src: ep("192.0.2.9:9"),
            reply_dst: ep("198.51.100.1:9"),
        };
        let mut find = |dir, src: Endpoint, dst: Endpoint| -> Result<_, ConntrackError> {
            // The kernel matches ICMP tuples on addresses and the id (the source's port here).
            Ok(Some(e).filter(|e| match dir {
                TupleDir::Orig => e.orig_src == src && e.orig_dst.addr == dst.addr,
                TupleDir::Reply => e.reply_src == src && e.reply_dst.addr == dst.addr,
            }))
        };
        let s = step(NatKind::Snat, "10.0.0.2:7", "198.51.100.1:9");
        assert_eq!(
            judge(&s, ep("192.0.2.9:0"), Proto::Icmp, &mut find).ok(),
            Some(Some(true))
        );
        let d = step(NatKind::Dnat, "198.51.100.1:0", "10.0.0.2:0");
        assert_eq!(
            judge(&d, ep("192.0.2.9:9"), Proto::Icmp, &mut find).ok(),
            Some(Some(true))
        );
        let s = step(NatKind::Snat, "10.0.0.2:7", "198.51.100.2:9");
        assert_eq!(
            judge(&s, ep("192.0.2.9:0"), Proto::Icmp, &mut find).ok(),
            Some(Some(false))
        );
    }

    /// The kernel's answer to a get: the entry (as ctnetlink encodes it) and then the ack.
    fn answer(seq: u32, e: &CtEntry) -> Vec<u8> {
        let tuple = |src: Endpoint, dst: Endpoint| {
            let mut ip = Vec::new();
            if let (IpAddr::V4(s), IpAddr::V4(d)) = (src.addr, dst.addr) {
                put_attr(&mut ip, CTA_IP_V4_SRC, &s.octets());
                put_attr(&mut ip, CTA_IP_V4_DST, &d.octets());
            }
            let mut l4 = Vec::new();
            put_attr(&mut l4, CTA_PROTO_NUM, &[e.proto.number()]);
            put_attr(&mut l4, CTA_PROTO_SRC_PORT, &src.port.to_be_bytes());
            put_attr(&mut l4, CTA_PROTO_DST_PORT, &dst.port.to_be_bytes());
            let mut t = Vec::new();
            put_attr(&mut t, CTA_TUPLE_IP | NLA_F_NESTED, &ip);
            put_attr(&mut t, CTA_TUPLE_PROTO | NLA_F_NESTED, &l4);
            t
        };
        let mut payload = vec![2, 0, 0, 0];
        put_attr(
            &mut payload,
            CTA_TUPLE_ORIG | NLA_F_NESTED,
            &tuple(e.orig_src, e.orig_dst),
        );
        put_attr(
            &mut payload,
            CTA_TUPLE_REPLY | NLA_F_NESTED,
            &tuple(e.reply_src, e.reply_dst),
        );
        put_attr(
            &mut payload,
            3, /* CTA_STATUS */
            &0x1a0u32.to_be_bytes(),
        );
        let mut out = message(
            seq,
            NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_NEW,
            &payload,
        );
        out.extend(message(seq, NLMSG_ERROR, &[0u8; 20]));
        out
    }

    fn message(seq: u32, kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&((16 + payload.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&0u16.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(payload);
        m
    }

    #[test]
    fn answers_decode() {
        let e = masqueraded();
        let mut got = None;
        assert_eq!(
            read_datagram(&answer(5, &e), 5, &mut got).ok(),
            Some(Some(true))
        );
        assert_eq!(got, Some(e));
        // Another request's answer is ignored.
        let mut got = None;
        assert_eq!(read_datagram(&answer(4, &e), 5, &mut got).ok(), Some(None));
        assert_eq!(got, None);
        // ENOENT: no entry; EPERM: an error.
        let enoent = message(5, NLMSG_ERROR, &(-libc::ENOENT).to_ne_bytes());
        assert_eq!(read_datagram(&enoent, 5, &mut None).ok(), Some(Some(false)));
        let eperm = message(5, NLMSG_ERROR, &(-libc::EPERM).to_ne_bytes());
        assert!(matches!(
            read_datagram(&eperm, 5, &mut None),
            Err(ConntrackError::Kernel(_))
        ));
    }

    #[test]
    fn requests_encode() {
        let req = build_request(
            9,
            TupleDir::Orig,
            Proto::Udp,
            ep("10.0.0.2:5353"),
            ep("192.0.2.9:53"),
        )
        .expect("request");
        assert_eq!(u32_at(&req, 0) as usize, req.len());
        assert_eq!(u16_at(&req, 4), 0x0101);
        assert_eq!(req[16], libc::AF_INET as u8);
        let mixed = build_request(
            1,
            TupleDir::Orig,
            Proto::Tcp,
            ep("10.0.0.2:1"),
            ep("[::1]:2"),
        );
        assert!(matches!(mixed, Err(ConntrackError::MixedFamilies { .. })));
    }

    #[test]
    fn garbage_answers_never_panic() {
        let good = answer(1, &masqueraded());
        let mut x: u32 = 0x2545_f491;
        for i in 0..5000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let mut buf = good.clone();
            let at = x as usize % buf.len();
            buf[at] = (x >> 8) as u8;
            buf.truncate(buf.len() - (i % 7));
            // Only "does not panic" is asserted here.
            drop(read_datagram(&buf, 1, &mut None));
            drop(parse_entry(&buf[16..]));
        }
    }
}
