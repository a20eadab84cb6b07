//! Events the kernel programs send through the `EVENTS` ring buffer.
//!
//! Every event starts with an [`EventHeader`] whose `kind` is a stable number from the `KIND_*`
//! constants: a reader dispatches on it before it looks at anything else, and a capture written
//! today stays readable when new kinds are added.

use crate::words::ZeroWords;

/// Bytes of packet data an event can carry at most (`--snaplen` is clamped to this).
pub const CAPTURE_MAX: usize = 256;
/// Bytes copied by default: enough for Ethernet + VLAN + IPv6 with extension headers + TCP options.
pub const CAPTURE_DEFAULT: u16 = 128;

/// A packet observed at a tc hook ([`PacketEvent`]).
pub const KIND_PACKET: u16 = 1;
/// A packet freed by the kernel with a drop reason ([`DropEvent`]).
pub const KIND_DROP: u16 = 2;

/// A packet observed at a tc hook, without packet bytes ([`PacketHeadEvent`]): what the hooks
/// send when no capture stores the bytes (88 bytes where [`PacketEvent`] takes 344).
pub const KIND_PACKET_HEAD: u16 = 3;

/// [`PacketHeadEvent::why`]: one event per packet per hook (`--every-packet`).
pub const WHY_EVERY: u32 = 1 << 0;
/// Picked by [`crate::sample::sampled`]: the same at every hook.
pub const WHY_SAMPLED: u32 = 1 << 1;
/// A TCP packet that opens, closes or resets a connection (SYN, FIN, RST): the same at every hook.
pub const WHY_FLAGS: u32 = 1 << 2;
/// One of a flow's first packets, picked at the entry hook and passed on through `SELECTED`.
pub const WHY_FIRST: u32 = 1 << 3;
/// Not counted in `FLOW_STATS` (it had no room): userspace counts this packet from its event.
pub const WHY_UNCOUNTED: u32 = 1 << 4;

/// Hook number used in the header of events that do not come from a tc hook.
pub const HOOK_NONE: u8 = 0xff;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventHeader {
    /// One of the `KIND_*` constants.
    pub kind: u16,
    /// Hook slot (`0..MAX_HOOKS`), or [`HOOK_NONE`].
    pub hook: u8,
    /// `DIR_INGRESS` / `DIR_EGRESS` from [`crate::config`].
    pub direction: u8,
    /// `skb->ifindex` when the event was made (meaningful in the hook's own namespace).
    pub ifindex: u32,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC).
    pub ktime_ns: u64,
}
const _: () = assert!(size_of::<EventHeader>() == 16);

/// What the parser learnt about one packet: the addresses as they are at this hook, and the
/// NAT-invariant fingerprint that ties the same packet together across hooks.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacketMeta {
    /// See [`crate::fingerprint`].
    pub fingerprint: u64,
    /// Source address; IPv4 uses the first four bytes.
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// TCP/UDP ports; for ICMP echo, `sport` holds the echo identifier and `dport` is 0.
    pub sport: u16,
    pub dport: u16,
    /// 4 or 6; 0 when the frame was not IP (then nothing else is set).
    pub family: u8,
    /// IP protocol number of the transport header that was found.
    pub proto: u8,
    /// TCP flags byte (FIN=1, SYN=2, RST=4, PSH=8, ACK=16, ...).
    pub tcp_flags: u8,
    /// ICMP / ICMPv6 type.
    pub icmp_type: u8,
    /// ICMP / ICMPv6 code.
    pub icmp_code: u8,
    /// Set (1) when the transport header could not be read (truncated, or a non-first fragment).
    pub l4_missing: u8,
    /// IP fragment bits as IPv4 holds them, for IPv6 too: [`FRAG_MORE`] and the offset in 8-byte
    /// units ([`FRAG_OFFSET`]); 0 for a packet that is not a fragment.
    pub frag: u16,
    /// TCP sequence number, or ICMP echo sequence (used to tell retransmissions apart).
    pub seq: u32,
    /// Offset of the IP header in the frame.
    pub l3_offset: u16,
    /// Offset of the transport header in the frame.
    pub l4_offset: u16,
    /// IPv4 identification, or the IPv6 fragment header's identification: with the addresses and
    /// protocol, what ties the fragments of one datagram together. For IPv6 without a fragment
    /// header it holds the flow label, which means nothing here: read it only where `frag` is not
    /// 0 (`tracer`'s packet record sets it to 0 there).
    pub ip_id: u32,
}

/// [`PacketMeta::frag`]: more fragments follow.
pub const FRAG_MORE: u16 = 0x2000;
/// [`PacketMeta::frag`]: the fragment's offset, in 8-byte units.
pub const FRAG_OFFSET: u16 = 0x1fff;
const _: () = assert!(size_of::<PacketMeta>() == 64);
const _: () = assert!(align_of::<PacketMeta>() == 8);

// SAFETY: `repr(C)`, 8-byte aligned (asserted above), 64 bytes of integers and byte arrays:
// all zero is valid.
unsafe impl ZeroWords for PacketMeta {}

/// Where [`PacketMeta::ipv6_header_mut`] puts an IPv6 header's fields: its addresses at 8 and 24.
const _: () = assert!(
    core::mem::offset_of!(PacketMeta, saddr) == 8 && core::mem::offset_of!(PacketMeta, daddr) == 24
);

impl PacketMeta {
    /// The first 40 bytes (`fingerprint`, `saddr`, `daddr`) as one buffer an IPv6 header fits
    /// in: read there, its source and destination addresses are in place, and its first 8 bytes
    /// are in `fingerprint`, to be replaced. The kernel programs parse this way because their
    /// stack has no room for the header's own copy.
    #[inline(always)]
    pub fn ipv6_header_mut(&mut self) -> &mut [u8; 40] {
        // SAFETY: `repr(C)` with `fingerprint` (8 bytes), `saddr` and `daddr` (16 each) first and
        // without padding (offsets asserted above): 40 initialised bytes, any value of which is
        // valid for those fields; the borrow of `self` covers them.
        unsafe { &mut *(self as *mut Self).cast::<[u8; 40]>() }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacketEvent {
    pub header: EventHeader,
    pub meta: PacketMeta,
    /// `skb->len`: the length of the whole frame.
    pub pkt_len: u32,
    /// Bytes of `data` that hold packet bytes (`min(pkt_len, snaplen)`).
    pub cap_len: u32,
    /// The first `cap_len` bytes of the frame, from the Ethernet header on.
    pub data: [u8; CAPTURE_MAX],
}
const _: () = assert!(size_of::<PacketEvent>() == 16 + 64 + 8 + CAPTURE_MAX);

/// [`PacketEvent`] without the packet bytes, and with the reason it was sent.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacketHeadEvent {
    pub header: EventHeader,
    pub meta: PacketMeta,
    /// `skb->len`: the length of the whole frame.
    pub pkt_len: u32,
    /// `WHY_*` bits.
    pub why: u32,
}
const _: () = assert!(size_of::<PacketHeadEvent>() == 16 + 64 + 8);

/// A packet freed by `kfree_skb` with a reason: one the tc programs emitted (its fingerprint is
/// in `TRACED`) or, in aggregate mode, one to or from an endpoint of interest.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropEvent {
    pub header: EventHeader,
    pub fingerprint: u64,
    /// `enum skb_drop_reason` value; the name comes from the kernel's BTF in userspace.
    pub reason: u32,
    pub _pad0: u32,
    /// Address of the function that freed the packet (`location` argument).
    pub location: u64,
    /// The packet's addresses and ports where it was freed (IPv4 in the first four bytes):
    /// what finds its flow when no event of the packet itself was sent.
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub family: u8,
    pub proto: u8,
    /// 1 when the fingerprint was in `TRACED` (an event of the packet was sent).
    pub traced: u8,
    /// ICMP / ICMPv6 type (an echo's identifier is in `sport`, as in [`PacketMeta`]).
    pub icmp_type: u8,
}
const _: () = assert!(size_of::<DropEvent>() == 80);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: `#[repr(C)]`, integers and byte arrays only, no implicit padding (sizes asserted).
    unsafe impl aya::Pod for super::EventHeader {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::PacketMeta {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::PacketEvent {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::DropEvent {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::PacketHeadEvent {}
}
