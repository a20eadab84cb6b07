//! The userspace model every pipeline stage speaks: hooks (where we observe) and the kinds of hop
//! they sit at ([`place`]), decoded events (what we observed), and the topology snapshot (what
//! discovery found). Stages exchange these and nothing else, so each can be tested by feeding it
//! recorded values.

mod place;

pub use place::{Orientation, Place, Role};

use std::{fmt, net::IpAddr};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tracer_common::{
    config::{DIR_EGRESS, DIR_INGRESS},
    event::{EventHeader, PacketEvent, PacketMeta, CAPTURE_MAX, KIND_PACKET},
    parse::{IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Ingress => "ingress",
            Self::Egress => "egress",
        }
    }
    pub(crate) fn raw(self) -> u32 {
        match self {
            Self::Ingress => DIR_INGRESS,
            Self::Egress => DIR_EGRESS,
        }
    }

    /// The other direction.
    pub(crate) fn other(self) -> Self {
        match self {
            Self::Ingress => Self::Egress,
            Self::Egress => Self::Ingress,
        }
    }
}

impl TryFrom<u8> for Direction {
    type Error = u8;
    fn try_from(v: u8) -> Result<Self, u8> {
        match u32::from(v) {
            DIR_INGRESS => Ok(Self::Ingress),
            DIR_EGRESS => Ok(Self::Egress),
            _ => Err(v),
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One observation point: an interface in a namespace, one direction, one kernel program slot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hook {
    /// Kernel program slot (`pathtrace_h<slot>`); events carry it.
    pub slot: u8,
    /// Namespace label: the container / namespace name on the traced side, `host` on the host.
    pub ns_label: String,
    pub ifname: String,
    pub ifindex: u32,
    pub direction: Direction,
    pub place: Place,
    pub role: Role,
}

impl Hook {
    /// `<ns_label>:<ifname>`, e.g. `minio:eth0`, `host:docker0`.
    pub fn label(&self) -> String {
        format!("{}:{}", self.ns_label, self.ifname)
    }
}

/// IP protocol of a packet or flow, as the user names it. Written and read as its name (`tcp`,
/// `udp`, `icmp`, `icmpv6`, `sctp`, else `proto-<N>`): parsed in one place, [`Proto::from_str`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    Tcp,
    Udp,
    Icmp,
    Icmpv6,
    Other(u8),
}

/// IANA's number for SCTP, which Docker publishes ports of (`80/sctp`).
const IPPROTO_SCTP: u8 = 132;

impl From<u8> for Proto {
    fn from(p: u8) -> Self {
        match p {
            IPPROTO_TCP => Self::Tcp,
            IPPROTO_UDP => Self::Udp,
            IPPROTO_ICMP => Self::Icmp,
            IPPROTO_ICMPV6 => Self::Icmpv6,
            other => Self::Other(other),
        }
    }
}

impl Proto {
    pub(crate) fn number(self) -> u8 {
        match self {
            Self::Tcp => IPPROTO_TCP,
            Self::Udp => IPPROTO_UDP,
            Self::Icmp => IPPROTO_ICMP,
            Self::Icmpv6 => IPPROTO_ICMPV6,
            Self::Other(n) => n,
        }
    }

    pub(crate) fn has_ports(self) -> bool {
        matches!(self, Self::Tcp | Self::Udp)
    }

    /// ICMP of the address family of `addr` (echo requests to an IPv6 address are ICMPv6).
    pub(crate) fn icmp_for(addr: IpAddr) -> Self {
        match addr {
            IpAddr::V4(_) => Self::Icmp,
            IpAddr::V6(_) => Self::Icmpv6,
        }
    }
}

/// A protocol name [`Proto::from_str`] does not know.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown protocol {0:?}: expected tcp, udp, icmp or icmpv6")]
pub struct UnknownProto(pub String);

impl std::str::FromStr for Proto {
    type Err = UnknownProto;

    /// `tcp`, `udp`, `icmp`, `icmpv6` (or `icmp6`), `sctp`, in any case.
    fn from_str(s: &str) -> Result<Self, UnknownProto> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "tcp" => Self::Tcp,
            "udp" => Self::Udp,
            "icmp" => Self::Icmp,
            "icmpv6" | "icmp6" => Self::Icmpv6,
            "sctp" => Self::Other(IPPROTO_SCTP),
            _ => return Err(UnknownProto(s.to_string())),
        })
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp => f.write_str("tcp"),
            Self::Udp => f.write_str("udp"),
            Self::Icmp => f.write_str("icmp"),
            Self::Icmpv6 => f.write_str("icmpv6"),
            Self::Other(IPPROTO_SCTP) => f.write_str("sctp"),
            Self::Other(n) => write!(f, "proto-{n}"),
        }
    }
}

impl Serialize for Proto {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Proto {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        if let Some(n) = name
            .strip_prefix("proto-")
            .and_then(|n| n.parse::<u8>().ok())
        {
            return Ok(Self::from(n));
        }
        name.parse().map_err(serde::de::Error::custom)
    }
}

/// An address prefix, `ADDR/LEN` (a host when `len` is the address's width).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Prefix {
    pub addr: IpAddr,
    pub len: u8,
}

/// An `ADDR` or `ADDR/LEN` that does not parse, or a length beyond the address's width.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("bad prefix {0:?}: expected an address or ADDR/LEN, e.g. 10.0.0.0/24")]
pub struct BadPrefix(pub String);

impl Prefix {
    /// The prefix of one address.
    pub(crate) fn host(addr: IpAddr) -> Self {
        Self {
            addr,
            len: width(addr),
        }
    }

    /// Whether `a` is in this prefix (never across address families).
    pub(crate) fn contains(&self, a: IpAddr) -> bool {
        self.overlaps(&Self::host(a))
    }

    /// Whether two prefixes share any address (never across address families).
    pub(crate) fn overlaps(&self, other: &Self) -> bool {
        let ((v6a, a), (v6b, b)) = (addr_bits(self.addr), addr_bits(other.addr));
        let mask = prefix_mask(
            u32::from(self.len.min(other.len)),
            u32::from(width(self.addr)),
        );
        v6a == v6b && a & mask == b & mask
    }
}

impl std::str::FromStr for Prefix {
    type Err = BadPrefix;

    fn from_str(s: &str) -> Result<Self, BadPrefix> {
        let bad = || BadPrefix(s.to_string());
        let (a, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l.parse::<u8>().map_err(|_| bad())?)),
            None => (s, None),
        };
        let addr: IpAddr = a.parse().map_err(|_| bad())?;
        let len = len.unwrap_or(width(addr));
        if len > width(addr) {
            return Err(bad());
        }
        Ok(Self { addr, len })
    }
}

/// 32 or 128.
fn width(addr: IpAddr) -> u8 {
    if addr.is_ipv4() {
        32
    } else {
        128
    }
}

/// An address as the kernel side's structs hold it: family 4 or 6, and 16 bytes (IPv4 in the
/// first four).
pub(crate) fn family_and_bytes(addr: IpAddr) -> (u8, [u8; 16]) {
    let mut bytes = [0u8; 16];
    match addr {
        IpAddr::V4(a) => {
            bytes[..4].copy_from_slice(&a.octets());
            (4, bytes)
        }
        IpAddr::V6(a) => (6, a.octets()),
    }
}

/// Whether the address is IPv6, and its bits (an IPv4 address in the low 32).
pub(crate) fn addr_bits(addr: IpAddr) -> (bool, u128) {
    match addr {
        IpAddr::V4(a) => (false, u128::from(u32::from(a))),
        IpAddr::V6(a) => (true, u128::from(a)),
    }
}

/// The mask of a `/n` prefix in an address of `width` bits (32 or 128), in [`addr_bits`]' form.
pub(crate) fn prefix_mask(n: u32, width: u32) -> u128 {
    if n == 0 {
        0
    } else {
        (u128::MAX << (128 - n.min(width))) >> (128 - width)
    }
}

/// An address and port (port 0 where the protocol has none; the echo id for ICMP echo).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Endpoint {
    pub addr: IpAddr,
    pub port: u16,
}

impl Endpoint {
    pub fn new(addr: IpAddr, port: u16) -> Self {
        Self { addr, port }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.addr {
            IpAddr::V4(a) => write!(f, "{a}:{}", self.port),
            IpAddr::V6(a) => write!(f, "[{a}]:{}", self.port),
        }
    }
}

/// One packet seen at one hook, decoded from a [`PacketEvent`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PacketRecord {
    pub slot: u8,
    pub direction: Direction,
    pub ifindex: u32,
    pub ktime_ns: u64,
    pub fingerprint: u64,
    pub proto: Proto,
    pub src: Endpoint,
    pub dst: Endpoint,
    pub tcp_flags: u8,
    pub icmp_type: u8,
    pub icmp_code: u8,
    /// TCP sequence number or ICMP echo sequence.
    pub seq: u32,
    /// IP identification (IPv4, or an IPv6 fragment header's; 0 otherwise).
    pub ip_id: u32,
    /// Fragment bits: more-fragments and offset (see [`tracer_common::event::PacketMeta::frag`]).
    pub frag: u16,
    pub pkt_len: u32,
    /// The first bytes of the frame as captured in the kernel.
    pub data: Bytes,
    /// Why the kernel sent it (`tracer_common::event::WHY_*`): `WHY_EVERY` in every-packet
    /// mode and in captures.
    pub why: u32,
}

/// How the kernel programs reported a trace.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "mode")]
pub enum Reporting {
    /// One event per packet per hook (`--every-packet`, `-w`, `verify`, a replayed capture).
    #[default]
    EveryPacket,
    /// Counted per flow per hook in the kernel; events for a flow's first packets, TCP
    /// SYN/FIN/RST and a sample of 1 in `sample`.
    Aggregate { sample: u32 },
}

impl fmt::Display for Reporting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::EveryPacket => f.write_str("every packet (one event per packet per hook)"),
            Self::Aggregate { sample } => write!(
                f,
                "aggregate (every packet counted in the kernel per flow per hook; latency from a 1/{sample} sample)"
            ),
        }
    }
}

/// Aggregate mode: what one hook counted of one flow tuple during one drain interval (or one
/// packet the kernel's flow map had no room for, counted from its event).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CountRecord {
    pub slot: u8,
    pub proto: Proto,
    /// The tuple as the hook saw it (ports 0 for protocols without).
    pub src: Endpoint,
    pub dst: Endpoint,
    pub packets: u64,
    pub bytes: u64,
    pub first_ns: u64,
    pub last_ns: u64,
}

impl CountRecord {
    /// A drained `FLOW_STATS` entry; `None` for an address family the kernel never writes.
    pub(crate) fn of_key(
        key: &tracer_common::config::FlowKey,
        counts: &tracer_common::config::FlowCounts,
    ) -> Option<Self> {
        let (src, dst) = addrs(key.family, &key.saddr, &key.daddr)?;
        Some(Self {
            slot: key.slot,
            proto: Proto::from(key.proto),
            src: Endpoint::new(src, key.sport),
            dst: Endpoint::new(dst, key.dport),
            packets: counts.packets,
            bytes: counts.bytes,
            first_ns: counts.first_ns,
            last_ns: counts.last_ns,
        })
    }

    /// One packet sent as an event because the kernel could not count it.
    pub(crate) fn of_packet(p: &PacketRecord) -> Self {
        let (src, dst) = normalised(p.proto.number(), p.icmp_type, p.src, p.dst);
        Self {
            slot: p.slot,
            proto: p.proto,
            src,
            dst,
            packets: 1,
            bytes: u64::from(p.pkt_len),
            first_ns: p.ktime_ns,
            last_ns: p.ktime_ns,
        }
    }
}

/// A packet's ends as the flow table keys them: an ICMP echo reply's identifier (which the
/// parser puts in the source port) moved to the destination, so that a reply's tuple is its
/// request's reversed; the kernel's `FLOW_STATS` keys do the same.
pub(crate) fn normalised(
    proto: u8,
    icmp_type: u8,
    mut src: Endpoint,
    mut dst: Endpoint,
) -> (Endpoint, Endpoint) {
    if tracer_common::tuple::is_echo_reply(proto, icmp_type) {
        dst.port = src.port;
        src.port = 0;
    }
    (src, dst)
}

/// The two addresses of a kernel record of `family` (4: the first four bytes of each).
fn addrs(family: u8, s: &[u8; 16], d: &[u8; 16]) -> Option<(IpAddr, IpAddr)> {
    match family {
        4 => {
            let s: [u8; 4] = s[..4].try_into().ok()?;
            let d: [u8; 4] = d[..4].try_into().ok()?;
            Some((IpAddr::from(s), IpAddr::from(d)))
        }
        6 => Some((IpAddr::from(*s), IpAddr::from(*d))),
        _ => None,
    }
}

/// Why a raw event could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("event of {0} bytes is shorter than its header")]
    Short(usize),
    #[error("unknown event kind {0}")]
    UnknownKind(u16),
    #[error("bad direction {0}")]
    BadDirection(u8),
    #[error("bad address family {0}")]
    BadFamily(u8),
    #[error("capture length {0} exceeds the event")]
    BadCapLen(u32),
}

/// Reads a plain-old-data event of kind `kind` from the front of `raw`.
fn read_event<T: aya::Pod>(raw: &[u8], kind: u16) -> Result<T, DecodeError> {
    if raw.len() < size_of::<T>() {
        return Err(DecodeError::Short(raw.len()));
    }
    // SAFETY: length checked above; `T: Pod` (any bit pattern is valid) and `read_unaligned`
    // copes with any alignment of `raw`.
    let ev: T = unsafe { std::ptr::read_unaligned(raw.as_ptr().cast()) };
    let found = u16::from_ne_bytes([raw[0], raw[1]]);
    if found != kind {
        return Err(DecodeError::UnknownKind(found));
    }
    Ok(ev)
}

/// Reads a plain-old-data value at `offset` of `raw`.
fn read_at<T: aya::Pod>(raw: &[u8], offset: usize) -> Result<T, DecodeError> {
    let bytes = raw
        .get(offset..offset + size_of::<T>())
        .ok_or(DecodeError::Short(raw.len()))?;
    // SAFETY: `bytes` holds `size_of::<T>()` bytes; `T: Pod` (any bit pattern is valid) and
    // `read_unaligned` copes with any alignment.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) })
}

impl PacketRecord {
    /// Decodes one ring-buffer record; the captured bytes are copied into [`PacketRecord::data`]
    /// only when `frame` is set (a capture is being written), else `data` is empty: the kernel
    /// already sent the parsed metadata, and nothing else reads the bytes.
    pub(crate) fn decode_with(raw: &[u8], frame: bool) -> Result<Self, DecodeError> {
        use std::mem::offset_of;
        // Checks the whole event's length and kind, but copies only the header and metadata.
        if raw.len() < size_of::<PacketEvent>() {
            return Err(DecodeError::Short(raw.len()));
        }
        let header: EventHeader = read_event(raw, KIND_PACKET)?;
        let meta: PacketMeta = read_at(raw, offset_of!(PacketEvent, meta))?;
        let pkt_len: u32 = read_at(raw, offset_of!(PacketEvent, pkt_len))?;
        let cap_len: u32 = read_at(raw, offset_of!(PacketEvent, cap_len))?;
        let direction = Direction::try_from(header.direction).map_err(DecodeError::BadDirection)?;
        let cap = cap_len as usize;
        if cap > CAPTURE_MAX {
            return Err(DecodeError::BadCapLen(cap_len));
        }
        let data = if frame {
            let start = offset_of!(PacketEvent, data);
            Bytes::copy_from_slice(&raw[start..start + cap])
        } else {
            Bytes::new()
        };
        let h = &header;
        Self::from_meta(
            &meta, h.hook, direction, h.ifindex, h.ktime_ns, pkt_len, data,
        )
        .ok_or(DecodeError::BadFamily(meta.family))
    }

    /// Decodes a [`tracer_common::event::PacketHeadEvent`] (no packet bytes).
    pub(crate) fn decode_head(raw: &[u8]) -> Result<Self, DecodeError> {
        use std::mem::offset_of;
        use tracer_common::event::{PacketHeadEvent, KIND_PACKET_HEAD};
        if raw.len() < size_of::<PacketHeadEvent>() {
            return Err(DecodeError::Short(raw.len()));
        }
        let header: EventHeader = read_event(raw, KIND_PACKET_HEAD)?;
        let meta: PacketMeta = read_at(raw, offset_of!(PacketHeadEvent, meta))?;
        let pkt_len: u32 = read_at(raw, offset_of!(PacketHeadEvent, pkt_len))?;
        let why: u32 = read_at(raw, offset_of!(PacketHeadEvent, why))?;
        let direction = Direction::try_from(header.direction).map_err(DecodeError::BadDirection)?;
        let h = &header;
        let mut rec = Self::from_meta(
            &meta,
            h.hook,
            direction,
            h.ifindex,
            h.ktime_ns,
            pkt_len,
            Bytes::new(),
        )
        .ok_or(DecodeError::BadFamily(meta.family))?;
        rec.why = why;
        Ok(rec)
    }

    /// Rebuilds a record from captured bytes (replay): the same parser the kernel ran.
    pub(crate) fn from_frame(
        slot: u8,
        direction: Direction,
        ifindex: u32,
        ktime_ns: u64,
        pkt_len: u32,
        data: Bytes,
    ) -> Option<Self> {
        let m = tracer_common::parse::parse(&data[..]);
        Self::from_meta(&m, slot, direction, ifindex, ktime_ns, pkt_len, data)
    }

    /// A record from what the parser found (in the kernel or here); `None` when not IP.
    fn from_meta(
        m: &PacketMeta,
        slot: u8,
        direction: Direction,
        ifindex: u32,
        ktime_ns: u64,
        pkt_len: u32,
        data: Bytes,
    ) -> Option<Self> {
        let (src, dst) = addrs(m.family, &m.saddr, &m.daddr)?;
        Some(Self {
            slot,
            direction,
            ifindex,
            ktime_ns,
            fingerprint: m.fingerprint,
            proto: Proto::from(m.proto),
            src: Endpoint::new(src, m.sport),
            dst: Endpoint::new(dst, m.dport),
            tcp_flags: m.tcp_flags,
            icmp_type: m.icmp_type,
            icmp_code: m.icmp_code,
            seq: m.seq,
            // IPv6 without a fragment header: the parser's id is no identification.
            ip_id: if m.family == 6 && m.frag == 0 {
                0
            } else {
                m.ip_id
            },
            frag: m.frag,
            pkt_len,
            data,
            why: tracer_common::event::WHY_EVERY,
        })
    }
}

/// A packet freed by the kernel with a reason (issue: drops). Serialized as it is kept in a
/// capture (see [`crate::capture`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DropRecord {
    pub ktime_ns: u64,
    pub fingerprint: u64,
    pub reason: u32,
    /// Symbolic reason from the kernel's BTF (`NETFILTER_DROP`), when known.
    pub reason_name: Option<String>,
    /// The packet's protocol and ends where it was freed, when the kernel sent them: how an
    /// aggregate-mode drop of a packet no event was sent for finds its flow.
    pub tuple: Option<(Proto, Endpoint, Endpoint)>,
    /// Whether an event of the packet itself was sent (its fingerprint was in `TRACED`).
    pub traced: bool,
}

impl DropRecord {
    /// Decodes a [`tracer_common::event::DropEvent`] record (the reason name is resolved later).
    pub(crate) fn decode(raw: &[u8]) -> Result<Self, DecodeError> {
        use tracer_common::event::{DropEvent, KIND_DROP};
        let ev: DropEvent = read_event(raw, KIND_DROP)?;
        let tuple = addrs(ev.family, &ev.saddr, &ev.daddr).map(|(s, d)| {
            let (src, dst) = normalised(
                ev.proto,
                ev.icmp_type,
                Endpoint::new(s, ev.sport),
                Endpoint::new(d, ev.dport),
            );
            (Proto::from(ev.proto), src, dst)
        });
        Ok(Self {
            ktime_ns: ev.header.ktime_ns,
            fingerprint: ev.fingerprint,
            reason: ev.reason,
            reason_name: None,
            tuple,
            traced: ev.traced != 0,
        })
    }
}

/// Per-hook counters summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookStats {
    pub seen: u64,
    pub filtered: u64,
    pub emitted: u64,
    pub lost: u64,
    /// Aggregate mode: packets only counted (in the kernel's flow map), sent as no event.
    #[serde(default)]
    pub aggregated: u64,
    /// Aggregate mode: packets the kernel's flow map had no room for (sent as events instead,
    /// or lost with them when the ring buffer was full too).
    #[serde(default)]
    pub overflow: u64,
    /// When the hook was attached (kernel monotonic time, taken just after): before it, a packet
    /// that would have crossed it was not seen there. 0: not known (a capture's summary).
    #[serde(skip)]
    pub attached_ns: u64,
    /// When detaching began (kernel monotonic time, taken just before); 0 while attached.
    #[serde(skip)]
    pub detached_ns: u64,
}

/// A NAT rule as the ruleset in use prints it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NatRule {
    /// `iptables-nft`, `iptables-legacy` or `nftables`.
    pub source: String,
    /// The rule's own text, e.g. `-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE`.
    pub text: String,
}

/// Everything discovery found: the hooks to attach and the context needed to explain what is seen.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topology {
    /// Label of the traced side (container name or namespace name).
    pub target: String,
    pub hooks: Vec<Hook>,
    /// Addresses of the traced side's interface(s) (pre-NAT source addresses).
    pub target_addrs: Vec<IpAddr>,
    /// Addresses of the uplink (what MASQUERADE picks).
    pub uplink_addrs: Vec<IpAddr>,
    /// The NAT rules in force (POSTROUTING / PREROUTING / OUTPUT of the nat table).
    pub nat_rules: Vec<NatRule>,
}

impl Topology {
    /// The hook of a slot.
    pub fn hook(&self, slot: u8) -> Option<&Hook> {
        self.hooks.iter().find(|h| h.slot == slot)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NatKind {
    /// Source rewritten (SNAT or MASQUERADE), or the reverse of a DNAT on a reply.
    Snat,
    /// Destination rewritten (DNAT), or the reverse of an SNAT on a reply (de-NAT).
    Dnat,
}

/// A rewrite of the packet's tuple between two consecutive hops of its path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NatStep {
    pub kind: NatKind,
    /// The rewritten endpoint before and after (source for SNAT, destination for DNAT).
    pub before: Endpoint,
    pub after: Endpoint,
    /// Labels of the two hooks the rewrite happened between (`host:pt-br0 ingress`-style labels
    /// without the direction: `<ns>:<ifname>`).
    pub between: (String, String),
    /// The rule's own text, when one was attributed.
    pub rule: Option<String>,
    /// How `rule` was decided, or that it could not be (`None`: no rule could make it).
    #[serde(default)]
    pub rule_confidence: Option<RuleConfidence>,
    /// With [`RuleConfidence::Candidates`] (and [`RuleConfidence::Counters`]: among which): every
    /// rule that may have made the rewrite, in the order netfilter tries them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub candidates: Vec<String>,
    /// Why the walk of the ruleset could not decide (a match on what the packet alone does not
    /// tell: a firewall mark, a connection mark, an unread set, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
    /// `Some(true)` when the kernel's conntrack entry shows the same mapping, `Some(false)` when it
    /// shows another, `None` when no entry was found or it was not asked.
    pub conntrack: Option<bool>,
}

/// How the rule of a NAT step was decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleConfidence {
    /// Walking the ruleset the way netfilter does for the connection's first packet: the first
    /// rule that surely matches it and makes this rewrite.
    Evaluated,
    /// Of the candidates, the only one whose packet counter moved during the trace.
    Counters,
    /// Several rules may have made it (see `candidates` and `why`); the walk cannot choose.
    Candidates,
}

/// What the ruleset says about a NAT step (see [`RuleAttributor`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Attribution {
    /// The rule, when decided.
    pub rule: Option<String>,
    pub confidence: RuleConfidence,
    /// See [`NatStep::candidates`].
    pub candidates: Vec<String>,
    /// See [`NatStep::why`].
    pub why: Option<String>,
}

impl Attribution {
    /// A rule the walk decided.
    pub fn evaluated(rule: impl Into<String>) -> Self {
        Self {
            rule: Some(rule.into()),
            confidence: RuleConfidence::Evaluated,
            candidates: Vec::new(),
            why: None,
        }
    }
}

/// What is known about a NAT step when asking which rule made it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NatQuery<'a> {
    pub kind: NatKind,
    pub proto: Proto,
    /// The rewritten endpoint before and after the rewrite.
    pub before: Endpoint,
    pub after: Endpoint,
    /// The endpoint on the other side of the packet (destination for SNAT, source for DNAT),
    /// which NAT did not touch.
    pub peer: Endpoint,
    /// Interface the packet came in by (for PREROUTING/DNAT rules with `-i`), if known.
    pub in_iface: Option<&'a str>,
    /// Interface the packet left by (for POSTROUTING rules with `-o`), if known.
    pub out_iface: Option<&'a str>,
}

/// Finds the rule that made a NAT step; implemented over a ruleset snapshot.
pub trait RuleAttributor: Send + Sync {
    /// The rule (its own text, as the ruleset in use prints it) or the candidates; `None` when no
    /// rule of the ruleset can make the rewrite.
    fn attribute(&self, query: &NatQuery<'_>) -> Option<Attribution>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_id_counts_only_with_a_fragment_header() {
        let mut m = PacketMeta {
            family: 6,
            proto: 17,
            ip_id: 0x000a_bcde,
            ..PacketMeta::default()
        };
        let record = |m: &PacketMeta| {
            PacketRecord::from_meta(m, 0, Direction::Egress, 1, 0, 100, Bytes::new())
                .map(|r| (r.ip_id, r.frag))
        };
        // No fragment header: what the parser left there (the flow label) is no identification.
        assert_eq!(record(&m), Some((0, 0)));
        m.frag = tracer_common::event::FRAG_MORE;
        assert_eq!(record(&m), Some((0x000a_bcde, m.frag)));
        // IPv4 keeps its identification on every packet.
        (m.family, m.frag) = (4, 0);
        assert_eq!(record(&m), Some((0x000a_bcde, 0)));
    }

    #[test]
    fn protocols_parse_once_and_print_their_names() {
        for (name, proto) in [
            ("tcp", Proto::Tcp),
            ("UDP", Proto::Udp),
            ("icmp", Proto::Icmp),
            ("icmp6", Proto::Icmpv6),
            ("sctp", Proto::Other(132)),
        ] {
            assert_eq!(name.parse::<Proto>(), Ok(proto));
        }
        assert!("gre".parse::<Proto>().is_err());
        assert_eq!(Proto::Other(47).to_string(), "proto-47");
        let json = serde_json::to_string(&[Proto::Tcp, Proto::Other(132), Proto::Other(47)]);
        assert_eq!(json.ok().as_deref(), Some(r#"["tcp","sctp","proto-47"]"#));
        let back: Result<Vec<Proto>, _> = serde_json::from_str(r#"["icmpv6","proto-47"]"#);
        assert_eq!(back.ok(), Some(vec![Proto::Icmpv6, Proto::Other(47)]));
    }

    #[test]
    fn prefixes() {
        let p: Prefix = "10.0.0.0/24"
            .parse()
            .unwrap_or(Prefix::host([0, 0, 0, 0].into()));
        assert!(p.contains("10.0.0.200".parse().unwrap_or(p.addr)));
        assert!(!p.contains("10.0.1.1".parse().unwrap_or(p.addr)));
        assert!(!p.contains("::1".parse().unwrap_or(p.addr)));
        let wide: Prefix = "10.0.0.0/8".parse().unwrap_or(p);
        assert!(wide.overlaps(&p) && p.overlaps(&wide));
        assert!("10.0.0.0/33".parse::<Prefix>().is_err());
        assert!("2001:db8::/32".parse::<Prefix>().is_ok());
        assert!("x/8".parse::<Prefix>().is_err());
        let all: Prefix = "0.0.0.0/0".parse().unwrap_or(p);
        assert!(all.contains("192.0.2.1".parse().unwrap_or(p.addr)));
        assert_eq!(prefix_mask(24, 32), 0xffff_ff00);
        assert_eq!(prefix_mask(0, 128), 0);
    }
}
