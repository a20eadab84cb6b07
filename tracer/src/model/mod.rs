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
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ingress => "ingress",
            Self::Egress => "egress",
        }
    }
    pub fn raw(self) -> u32 {
        match self {
            Self::Ingress => DIR_INGRESS,
            Self::Egress => DIR_EGRESS,
        }
    }

    /// The other direction.
    pub fn other(self) -> Self {
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

/// IP protocol of a packet or flow, as the user names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
    Icmp,
    Icmpv6,
    Other(u8),
}

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
    pub fn number(self) -> u8 {
        match self {
            Self::Tcp => IPPROTO_TCP,
            Self::Udp => IPPROTO_UDP,
            Self::Icmp => IPPROTO_ICMP,
            Self::Icmpv6 => IPPROTO_ICMPV6,
            Self::Other(n) => n,
        }
    }
    pub fn has_ports(self) -> bool {
        matches!(self, Self::Tcp | Self::Udp)
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp => f.write_str("tcp"),
            Self::Udp => f.write_str("udp"),
            Self::Icmp => f.write_str("icmp"),
            Self::Icmpv6 => f.write_str("icmpv6"),
            Self::Other(n) => write!(f, "proto-{n}"),
        }
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
    pub pkt_len: u32,
    /// The first bytes of the frame as captured in the kernel.
    pub data: Bytes,
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
    /// Decodes one ring-buffer record, captured bytes included. Never panics on arbitrary input.
    pub fn decode(raw: &[u8]) -> Result<Self, DecodeError> {
        Self::decode_with(raw, true)
    }

    /// Decodes one ring-buffer record; the captured bytes are copied into [`PacketRecord::data`]
    /// only when `frame` is set (a capture is being written), else `data` is empty: the kernel
    /// already sent the parsed metadata, and nothing else reads the bytes.
    pub fn decode_with(raw: &[u8], frame: bool) -> Result<Self, DecodeError> {
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

    /// Rebuilds a record from captured bytes (replay): the same parser the kernel ran.
    pub fn from_frame(
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
        m: &tracer_common::event::PacketMeta,
        slot: u8,
        direction: Direction,
        ifindex: u32,
        ktime_ns: u64,
        pkt_len: u32,
        data: Bytes,
    ) -> Option<Self> {
        let (src, dst) = match m.family {
            4 => {
                let s: [u8; 4] = m.saddr[..4].try_into().ok()?;
                let d: [u8; 4] = m.daddr[..4].try_into().ok()?;
                (IpAddr::from(s), IpAddr::from(d))
            }
            6 => (IpAddr::from(m.saddr), IpAddr::from(m.daddr)),
            _ => return None,
        };
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
            pkt_len,
            data,
        })
    }
}

/// A packet freed by the kernel with a reason (issue: drops).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DropRecord {
    pub ktime_ns: u64,
    pub fingerprint: u64,
    pub reason: u32,
    /// Symbolic reason from the kernel's BTF (`NETFILTER_DROP`), when known.
    pub reason_name: Option<String>,
}

impl DropRecord {
    /// Decodes a [`tracer_common::event::DropEvent`] record (the reason name is resolved later).
    pub fn decode(raw: &[u8]) -> Result<Self, DecodeError> {
        use tracer_common::event::{DropEvent, KIND_DROP};
        let ev: DropEvent = read_event(raw, KIND_DROP)?;
        Ok(Self {
            ktime_ns: ev.header.ktime_ns,
            fingerprint: ev.fingerprint,
            reason: ev.reason,
            reason_name: None,
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
    /// `Some(true)` when the kernel's conntrack entry shows the same mapping, `Some(false)` when it
    /// shows another, `None` when no entry was found or it was not asked.
    pub conntrack: Option<bool>,
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
    /// The rule's own text, as the ruleset in use prints it.
    fn attribute(&self, query: &NatQuery<'_>) -> Option<String>;
}
