//! The packet parser, shared by the kernel programs and userspace.
//!
//! It is written against the [`Frame`] trait so that the very code the classifier runs is also
//! unit-tested on crafted byte slices, and replayed on captured bytes. Every read is bounds-checked
//! by the implementation (`bpf_skb_load_bytes` in the kernel, slice bounds here); a read that does
//! not fit ends parsing with what was learnt so far. The parser never writes.

use crate::words::ZeroWords;
use crate::{
    event::{PacketMeta, FRAG_MORE, FRAG_OFFSET},
    fingerprint::Fingerprint,
};

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;

const IPV6_HOPOPTS: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_AH: u8 = 51;
const IPV6_DSTOPTS: u8 = 60;
/// Extension headers walked at most before giving up on finding the transport header.
const IPV6_MAX_EXT: usize = 6;

/// Read access to a frame, starting at its Ethernet header.
pub trait Frame {
    /// Copies `N` bytes at `offset`, or `None` when they are not all inside the frame.
    fn read<const N: usize>(&self, offset: usize) -> Option<[u8; N]>;

    /// [`read`](Frame::read) into `out`; false (and `out` unspecified) where that gives `None`.
    /// A kernel frame copies straight into `out`, so a caller's buffer needs no second copy on
    /// the BPF stack.
    #[inline(always)]
    fn read_into<const N: usize>(&self, offset: usize, out: &mut [u8; N]) -> bool {
        match self.read::<N>(offset) {
            Some(bytes) => {
                *out = bytes;
                true
            }
            None => false,
        }
    }
}

impl Frame for [u8] {
    fn read<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        let end = offset.checked_add(N)?;
        let bytes = self.get(offset..end)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Some(out)
    }
}

#[inline(always)]
fn be16(b: &[u8], i: usize) -> u16 {
    u16::from_be_bytes([b[i], b[i + 1]])
}

#[inline(always)]
fn be32(b: &[u8], i: usize) -> u32 {
    u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

/// Parses an Ethernet frame (one optional 802.1Q/802.1ad tag) carrying IPv4 or IPv6.
/// `meta.family == 0` means it is not an IP packet (or its IP header is unreadable / bogus).
#[inline(always)]
pub fn parse<F: Frame + ?Sized>(frame: &F) -> PacketMeta {
    let Some(eth) = frame.read::<14>(0) else {
        return PacketMeta::default();
    };
    let mut ethertype = be16(&eth, 12);
    let mut l3 = 14usize;
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        let Some(tag) = frame.read::<4>(14) else {
            return PacketMeta::default();
        };
        ethertype = be16(&tag, 2);
        l3 = 18;
    }
    parse_l3(frame, ethertype, l3)
}

/// [`parse`] into `meta`, which must be all zero (as [`ZeroWords::zero_in`] leaves it): for the
/// kernel programs, whose stack has no room for another copy of the metadata.
#[inline(always)]
pub fn parse_into<F: Frame + ?Sized>(frame: &F, meta: &mut PacketMeta) {
    let Some(eth) = frame.read::<14>(0) else {
        return;
    };
    let mut ethertype = be16(&eth, 12);
    let mut l3 = 14usize;
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        let Some(tag) = frame.read::<4>(14) else {
            return;
        };
        ethertype = be16(&tag, 2);
        l3 = 18;
    }
    meta.fingerprint = match ethertype {
        ETH_P_IP => parse_ipv4(frame, l3, meta),
        ETH_P_IPV6 => parse_ipv6(frame, l3, meta),
        _ => 0,
    };
}

/// [`parse`] of an untagged Ethernet frame carrying IPv4, read from a `frame` that holds only
/// its first `have` bytes (a socket buffer's linear part, read in place: no helper calls), or
/// `None` when that could give another answer than [`parse`] of the whole frame: not such a
/// frame, or `have` short of what the parser reads (the IP header and 16 bytes after it) while
/// the frame is longer (`whole` false). Where it answers, it is [`parse`]'s answer exactly
/// (unit-tested below on every truncation of every frame kind).
#[inline(always)]
pub fn parse_ipv4_prefix<F: Frame + ?Sized>(
    frame: &F,
    have: usize,
    whole: bool,
) -> Option<PacketMeta> {
    let mut slot = core::mem::MaybeUninit::uninit();
    let meta = PacketMeta::zero_in(&mut slot);
    parse_ipv4_prefix_into(frame, have, whole, meta).then_some(*meta)
}

/// [`parse_ipv4_prefix`] into `meta`, which must be all zero (as [`ZeroWords::zero_in`] leaves
/// it): false, and `meta` untouched, where that answers `None`. For the kernel programs, whose
/// stack has no room for another copy of the metadata.
#[inline(always)]
pub fn parse_ipv4_prefix_into<F: Frame + ?Sized>(
    frame: &F,
    have: usize,
    whole: bool,
    meta: &mut PacketMeta,
) -> bool {
    let Some(head) = frame.read::<15>(0) else {
        return false;
    };
    if be16(&head, 12) != ETH_P_IP || head[14] >> 4 != 4 {
        return false;
    }
    let ihl = usize::from(head[14] & 0x0f) * 4;
    if !whole && have < 14 + ihl + 16 {
        return false;
    }
    meta.fingerprint = parse_ipv4(frame, 14, meta);
    true
}

/// Parses from the IP header on, at `l3`, given the frame's ethertype (host byte order): what
/// [`parse`] does after the link layer, for callers that know where L3 starts (the drop program
/// reads `skb->protocol` and `skb->network_header`). Same fingerprint as [`parse`] gives.
#[inline(always)]
pub fn parse_l3<F: Frame + ?Sized>(frame: &F, ethertype: u16, l3: usize) -> PacketMeta {
    let mut slot = core::mem::MaybeUninit::uninit();
    let meta = PacketMeta::zero_in(&mut slot);
    meta.fingerprint = match ethertype {
        ETH_P_IP => parse_ipv4(frame, l3, meta),
        ETH_P_IPV6 => parse_ipv6(frame, l3, meta),
        _ => 0,
    };
    *meta
}

// Not inlined: in the kernel each protocol parser is its own BPF subprogram, so their stack
// frames do not add up in the classifier. Each returns the fingerprint (0: none) rather than
// storing it: a BPF subprogram's R0 at exit must not hold a stack pointer, and a function without
// a return value leaves R0 to chance (the compiler may leave `meta`'s address there).
#[inline(never)]
fn parse_ipv4<F: Frame + ?Sized>(frame: &F, l3: usize, meta: &mut PacketMeta) -> u64 {
    let Some(ip) = frame.read::<20>(l3) else {
        return 0;
    };
    if ip[0] >> 4 != 4 {
        return 0;
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if ihl < 20 {
        return 0;
    }
    let tot_len = be16(&ip, 2);
    let id = be16(&ip, 4);
    let frag_field = be16(&ip, 6);
    let frag = frag_field & FRAG_OFFSET;
    let proto = ip[9];
    meta.family = 4;
    meta.ip_id = u32::from(id);
    meta.frag = frag_field & (FRAG_MORE | FRAG_OFFSET);
    meta.proto = proto;
    meta.saddr[..4].copy_from_slice(&ip[12..16]);
    meta.daddr[..4].copy_from_slice(&ip[16..20]);
    meta.l3_offset = l3 as u16;
    meta.l4_offset = (l3 + ihl) as u16;
    let fp = Fingerprint::new()
        .word(u32::from(proto))
        .word(u32::from(tot_len))
        .word(u32::from(id))
        .word(u32::from(frag));
    if frag != 0 {
        // A non-first fragment has no transport header.
        meta.l4_missing = 1;
        return fp.finish();
    }
    parse_l4(frame, l3 + ihl, proto, fp, meta)
}

// Not inlined: in the kernel each protocol parser is its own BPF subprogram, so their stack
// frames do not add up in the classifier.
#[inline(never)]
fn parse_ipv6<F: Frame + ?Sized>(frame: &F, l3: usize, meta: &mut PacketMeta) -> u64 {
    // Straight into the metadata: the addresses land where they belong, and the first 8 bytes
    // in the fingerprint, which the caller overwrites with what this returns.
    if !frame.read_into(l3, meta.ipv6_header_mut()) {
        return 0;
    }
    let head = meta.fingerprint.to_ne_bytes();
    if head[0] >> 4 != 6 {
        *meta.ipv6_header_mut() = [0; 40];
        return 0;
    }
    let payload_len = be16(&head, 4);
    let flow = be32(&head, 0) & 0x000f_ffff;
    meta.family = 6;
    meta.l3_offset = l3 as u16;
    let mut next = head[6];
    let mut off = l3 + 40;
    let mut fp = Fingerprint::new().word(u32::from(payload_len)).word(flow);
    // Without a fragment header `ip_id` means nothing (see [`PacketMeta::ip_id`]). It is set
    // here to a value the verifier cannot know, so that the fragment header's store below leaves
    // the stack as unknown as the other paths do: with the slot's zero from the start, the
    // verifier could prune none of the paths that stored into it (a quarter more verifier time
    // for every program, measured).
    meta.ip_id = flow;
    let mut i = 0;
    while i < IPV6_MAX_EXT {
        i += 1;
        match next {
            IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS => {
                let Some(h) = frame.read::<2>(off) else {
                    return finish_missing(meta, next, off, fp);
                };
                next = h[0];
                off += (usize::from(h[1]) + 1) * 8;
            }
            IPV6_AH => {
                let Some(h) = frame.read::<2>(off) else {
                    return finish_missing(meta, next, off, fp);
                };
                next = h[0];
                off += (usize::from(h[1]) + 2) * 4;
            }
            IPV6_FRAGMENT => {
                let Some(h) = frame.read::<8>(off) else {
                    return finish_missing(meta, next, off, fp);
                };
                let frag = be16(&h, 2) >> 3;
                meta.ip_id = be32(&h, 4);
                // Branch-free: a branch here doubles the verifier's states on each later pass.
                meta.frag = frag | ((be16(&h, 2) & 1) * FRAG_MORE);
                fp = fp.word(u32::from(frag)).word(be32(&h, 4));
                next = h[0];
                off += 8;
                if frag != 0 {
                    return finish_missing(meta, next, off, fp);
                }
            }
            _ => break,
        }
    }
    meta.proto = next;
    meta.l4_offset = off as u16;
    parse_l4(frame, off, next, fp.word(u32::from(next)), meta)
}

#[inline(always)]
fn finish_missing(meta: &mut PacketMeta, proto: u8, off: usize, fp: Fingerprint) -> u64 {
    meta.proto = proto;
    meta.l4_offset = off as u16;
    meta.l4_missing = 1;
    fp.word(u32::from(proto)).finish()
}

/// Reads the transport header at `l4`, fills ports/flags, and returns the finished fingerprint.
// Not inlined: in the kernel each protocol parser is its own BPF subprogram, so their stack
// frames do not add up in the classifier.
#[inline(never)]
fn parse_l4<F: Frame + ?Sized>(
    frame: &F,
    l4: usize,
    proto: u8,
    fp: Fingerprint,
    meta: &mut PacketMeta,
) -> u64 {
    match proto {
        IPPROTO_TCP => {
            let Some(t) = frame.read::<16>(l4) else {
                meta.l4_missing = 1;
                return fp.finish();
            };
            meta.sport = be16(&t, 0);
            meta.dport = be16(&t, 2);
            meta.seq = be32(&t, 4);
            meta.tcp_flags = t[13];
            fp.word(be32(&t, 4))
                .word(be32(&t, 8))
                .word(u32::from(be16(&t, 12)))
                .word(u32::from(be16(&t, 14)))
                .finish()
        }
        IPPROTO_UDP => {
            let Some(u) = frame.read::<8>(l4) else {
                meta.l4_missing = 1;
                return fp.finish();
            };
            meta.sport = be16(&u, 0);
            meta.dport = be16(&u, 2);
            let fp = fp.word(u32::from(be16(&u, 4)));
            match frame.read::<8>(l4 + 8) {
                Some(payload) => fp.bytes8(payload).finish(),
                None => fp.finish(),
            }
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            let Some(h) = frame.read::<8>(l4) else {
                meta.l4_missing = 1;
                return fp.finish();
            };
            meta.icmp_type = h[0];
            meta.icmp_code = h[1];
            let fp = fp.word(u32::from(be16(&h, 0)));
            if is_echo(proto, h[0]) {
                meta.sport = be16(&h, 4);
                meta.seq = u32::from(be16(&h, 6));
                let fp = fp.word(meta.seq);
                match frame.read::<8>(l4 + 8) {
                    Some(payload) => fp.bytes8(payload).finish(),
                    None => fp.finish(),
                }
            } else {
                fp.finish()
            }
        }
        _ => fp.finish(),
    }
}

/// Echo request or reply (ICMP 8/0, ICMPv6 128/129): the ones that carry an identifier NAT treats
/// like a port.
#[inline(always)]
pub fn is_echo(proto: u8, icmp_type: u8) -> bool {
    match proto {
        IPPROTO_ICMP => icmp_type == 8 || icmp_type == 0,
        IPPROTO_ICMPV6 => icmp_type == 128 || icmp_type == 129,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ethernet (optionally VLAN-tagged) + IPv4 + UDP with 12 payload bytes.
    fn udp4(vlan: bool) -> ([u8; 64], usize) {
        let mut f = [0u8; 64];
        let mut l3 = 14;
        if vlan {
            f[12..14].copy_from_slice(&ETH_P_8021Q.to_be_bytes());
            f[16..18].copy_from_slice(&ETH_P_IP.to_be_bytes());
            l3 = 18;
        } else {
            f[12..14].copy_from_slice(&ETH_P_IP.to_be_bytes());
        }
        let ip = &mut f[l3..l3 + 20];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&40u16.to_be_bytes());
        ip[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
        ip[9] = IPPROTO_UDP;
        ip[12..16].copy_from_slice(&[10, 0, 0, 1]);
        ip[16..20].copy_from_slice(&[10, 0, 0, 2]);
        let udp = &mut f[l3 + 20..l3 + 40];
        udp[0..2].copy_from_slice(&5000u16.to_be_bytes());
        udp[2..4].copy_from_slice(&53u16.to_be_bytes());
        udp[4..6].copy_from_slice(&20u16.to_be_bytes());
        udp[8..20].copy_from_slice(b"payload-1234");
        (f, l3 + 40)
    }

    #[test]
    fn parse_l3_from_the_ip_header_gives_the_same_fingerprint() {
        for vlan in [false, true] {
            let (f, len) = udp4(vlan);
            let whole = parse(&f[..len]);
            assert_eq!(whole.family, 4);
            let l3 = usize::from(whole.l3_offset);
            let from_l3 = parse_l3(&f[l3..len], ETH_P_IP, 0);
            assert_eq!(from_l3.fingerprint, whole.fingerprint);
            assert_eq!((from_l3.sport, from_l3.dport), (5000, 53));
            assert_eq!(parse_l3(&f[..len], ETH_P_IP, l3), whole);
        }
    }

    #[test]
    fn the_ipv4_prefix_parse_is_the_whole_parse_or_nothing() {
        extern crate std;
        use std::{vec, vec::Vec};
        let (udp, len) = udp4(false);
        let mut frames: Vec<Vec<u8>> = vec![udp[..len].to_vec(), udp4(true).0.to_vec()];
        frames.push(frag_tests::ipv4_fragment(FRAG_MORE).to_vec());
        frames.push(frag_tests::ipv4_fragment(185).to_vec());
        // TCP with an option in the IP header (ihl 6) and a payload.
        let mut tcp = udp[..len].to_vec();
        tcp[14] = 0x46;
        tcp[23] = IPPROTO_TCP;
        tcp.splice(34..34, [1, 1, 1, 1]);
        tcp.extend_from_slice(&[7u8; 40]);
        frames.push(tcp);
        let mut answered = 0;
        for frame in &frames {
            let whole = parse(&frame[..]);
            for have in 0..=frame.len() {
                let prefix = &frame[..have];
                if let Some(m) = parse_ipv4_prefix(prefix, have, have == frame.len()) {
                    assert_eq!(m, whole, "{have} of {} bytes", frame.len());
                    answered += 1;
                }
            }
        }
        assert!(answered > 50, "it answers where it can: {answered}");
        let v6 = frag6_tests::ipv6_fragment(0, false);
        assert_eq!(parse_ipv4_prefix(&v6[..], v6.len(), true), None);
    }

    #[test]
    fn parse_l3_ignores_other_ethertypes() {
        let (f, len) = udp4(false);
        assert_eq!(parse_l3(&f[14..len], 0x0806, 0).family, 0);
    }
}

#[cfg(test)]
mod frag_tests {
    use super::*;

    /// Ethernet + IPv4 with the fragment field `frag` and id 0x4242, UDP header when first.
    pub(super) fn ipv4_fragment(frag: u16) -> [u8; 64] {
        let mut f = [0u8; 64];
        f[12..14].copy_from_slice(&ETH_P_IP.to_be_bytes());
        let ip = &mut f[14..34];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&48u16.to_be_bytes());
        ip[4..6].copy_from_slice(&0x4242u16.to_be_bytes());
        ip[6..8].copy_from_slice(&frag.to_be_bytes());
        ip[9] = IPPROTO_UDP;
        ip[12..16].copy_from_slice(&[10, 0, 0, 1]);
        ip[16..20].copy_from_slice(&[10, 0, 0, 2]);
        f[34..36].copy_from_slice(&5000u16.to_be_bytes());
        f[36..38].copy_from_slice(&53u16.to_be_bytes());
        f
    }

    #[test]
    fn fragments_carry_their_id_offset_and_more_bit() {
        // DF set, not a fragment: no fragment bits.
        let whole = parse(&ipv4_fragment(0x4000)[..]);
        assert_eq!((whole.frag, whole.ip_id, whole.l4_missing), (0, 0x4242, 0));
        let first = parse(&ipv4_fragment(FRAG_MORE)[..]);
        assert_eq!(
            (first.frag, first.sport, first.l4_missing),
            (FRAG_MORE, 5000, 0)
        );
        let later = parse(&ipv4_fragment(FRAG_MORE | 185)[..]);
        assert_eq!(
            (later.frag & FRAG_OFFSET, later.sport, later.l4_missing),
            (185, 0, 1)
        );
        let last = parse(&ipv4_fragment(370)[..]);
        assert_eq!((last.frag, last.ip_id), (370, 0x4242));
    }
}

#[cfg(test)]
mod frag6_tests {
    extern crate std;
    use super::*;
    use std::{vec, vec::Vec};

    /// Ethernet + IPv6 + a fragment header (`frag_field` as the header holds it, id 0x0a0b0c0d),
    /// then, when `dstopts`, an 8-byte destination options header, then a UDP header.
    pub(super) fn ipv6_fragment(frag_field: u16, dstopts: bool) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 40];
        f[12..14].copy_from_slice(&ETH_P_IPV6.to_be_bytes());
        f[14] = 0x60;
        f[14 + 6] = IPV6_FRAGMENT;
        f[14 + 8 + 15] = 1;
        f[14 + 24 + 15] = 2;
        let mut frag = [0u8; 8];
        frag[0] = if dstopts { IPV6_DSTOPTS } else { IPPROTO_UDP };
        frag[2..4].copy_from_slice(&frag_field.to_be_bytes());
        frag[4..8].copy_from_slice(&0x0a0b_0c0du32.to_be_bytes());
        f.extend_from_slice(&frag);
        if dstopts {
            f.extend_from_slice(&[IPPROTO_UDP, 0, 1, 4, 0, 0, 0, 0]);
        }
        let mut udp = [0u8; 8];
        udp[0..2].copy_from_slice(&5000u16.to_be_bytes());
        udp[2..4].copy_from_slice(&53u16.to_be_bytes());
        f.extend_from_slice(&udp);
        let payload_len = (f.len() - 54) as u16;
        f[18..20].copy_from_slice(&payload_len.to_be_bytes());
        f
    }

    #[test]
    fn first_fragment_keeps_its_ports_and_says_more_follow() {
        for dstopts in [false, true] {
            let m = parse(&ipv6_fragment(1, dstopts)[..]);
            assert_eq!((m.family, m.proto), (6, IPPROTO_UDP), "dstopts {dstopts}");
            assert_eq!((m.frag, m.ip_id), (FRAG_MORE, 0x0a0b_0c0d));
            assert_eq!((m.sport, m.dport, m.l4_missing), (5000, 53, 0));
        }
    }

    #[test]
    fn later_fragment_has_its_offset_and_no_ports() {
        // Offset 185 (× 8 bytes), more to follow.
        let m = parse(&ipv6_fragment((185 << 3) | 1, false)[..]);
        assert_eq!((m.frag, m.ip_id), (FRAG_MORE | 185, 0x0a0b_0c0d));
        assert_eq!((m.sport, m.l4_missing), (0, 1));
        let last = parse(&ipv6_fragment(370 << 3, false)[..]);
        assert_eq!((last.frag, last.l4_missing), (370, 1));
        assert_ne!(last.fingerprint, m.fingerprint);
    }

    #[test]
    fn atomic_fragment_is_whole() {
        let m = parse(&ipv6_fragment(0, false)[..]);
        assert_eq!((m.frag, m.ip_id, m.sport), (0, 0x0a0b_0c0d, 5000));
    }

    #[test]
    fn no_fragment_header_no_fragment_bits() {
        let mut f = ipv6_fragment(1, false);
        // Drop the fragment header: IPv6 straight to UDP.
        f.drain(54..62);
        f[14 + 6] = IPPROTO_UDP;
        let m = parse(&f[..]);
        assert_eq!((m.frag, m.sport, m.proto), (0, 5000, IPPROTO_UDP));
    }
}
