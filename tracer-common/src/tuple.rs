//! The few header fields the in-kernel filter and the interest test look at, and a cheap way to
//! get them.
//!
//! Most packets a hook sees are rejected (another port, another host's traffic on a shared
//! hook), so the kernel programs decide on a [`Tuple`] first and run the full [`parse`] (helper
//! calls, the fingerprint, the 64-byte [`PacketMeta`]) only for packets they emit. [`peek`]
//! reads the tuple of the common frames (untagged Ethernet, IPv4 without options, IPv6 without
//! extension headers) with a handful of reads; for everything else it answers
//! [`Peek::Unsure`] and the caller decides after [`parse`]. Where it does answer, it agrees with
//! [`parse`] exactly (unit-tested below on every truncation of every frame kind).
//!
//! [`parse`]: crate::parse::parse

use crate::{
    config::{seen_slot_of, EndpointKey, FilterConfig, FILTER_ADDR, FILTER_PORT, FILTER_PROTO},
    event::PacketMeta,
    parse::{Frame, ETH_P_IP, ETH_P_IPV6, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP},
    words::ZeroWords,
};

/// Addresses, protocol and ports of an IP packet, as [`parse`](crate::parse::parse) reports them.
///
/// 8-byte aligned, so that [`ZeroWords::zero_in`] zeroes one in five word stores.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tuple {
    /// IPv4 uses the first four bytes.
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// TCP/UDP ports, else 0.
    pub sport: u16,
    pub dport: u16,
    /// 4 or 6.
    pub family: u8,
    pub proto: u8,
}

/// What [`peek`] learnt. (Fieldless, so that a kernel subprogram returns it in a register.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peek {
    /// Not an IP frame (`parse` gives `family == 0`).
    NotIp,
    /// An IP frame; its tuple was written.
    Ip,
    /// Not a frame shape `peek` handles, or the bytes it needs are not all in `frame`: parse it.
    Unsure,
}

const _: () = assert!(size_of::<Tuple>() == 40);

// SAFETY: `repr(C, align(8))`, 40 bytes of integers and byte arrays: all zero is valid.
unsafe impl ZeroWords for Tuple {}

impl Tuple {
    /// The tuple of a parsed packet (`meta.family != 0`).
    #[inline(always)]
    pub fn of(meta: &PacketMeta) -> Self {
        // `parse` puts the ICMP echo identifier in `sport`; no port for the filter or a key.
        let (sport, dport) = if ported(meta.proto) {
            (meta.sport, meta.dport)
        } else {
            (0, 0)
        };
        Self {
            family: meta.family,
            proto: meta.proto,
            saddr: meta.saddr,
            daddr: meta.daddr,
            sport,
            dport,
        }
    }

    /// The packet's far end as an `INTEREST` key: its destination when `towards_dst`, else its
    /// source. (0 as the port for every protocol without ports: ICMP echo ids are rewritten by
    /// NAT, and error messages carry none, so ICMP is keyed on the address.)
    #[inline(always)]
    pub fn end(&self, towards_dst: bool) -> EndpointKey {
        let (addr, port) = self.end_parts(towards_dst);
        EndpointKey {
            addr: *addr,
            port,
            proto: self.proto,
            family: self.family,
        }
    }

    /// `self.end(towards_dst).seen_slot()`, without building the key: read in place, the
    /// tuple's 8-byte alignment lets the kernel hash its address a word at a time.
    #[inline(always)]
    pub fn end_slot(&self, towards_dst: bool) -> u32 {
        let (addr, port) = self.end_parts(towards_dst);
        seen_slot_of(addr, port, self.proto, self.family)
    }

    #[inline(always)]
    fn end_parts(&self, towards_dst: bool) -> (&[u8; 16], u16) {
        if towards_dst {
            (&self.daddr, self.dport)
        } else {
            (&self.saddr, self.sport)
        }
    }
}

#[inline(always)]
pub fn ported(proto: u8) -> bool {
    proto == IPPROTO_TCP || proto == IPPROTO_UDP
}

/// An ICMP or ICMPv6 echo reply: its identifier is the request's, at the other end.
#[inline(always)]
pub fn is_echo_reply(proto: u8, icmp_type: u8) -> bool {
    (proto == IPPROTO_ICMP && icmp_type == 0) || (proto == IPPROTO_ICMPV6 && icmp_type == 129)
}

/// Writes the tuple of an untagged Ethernet frame carrying IPv4 without options or IPv6 without
/// extension headers into `t` (which must start as `Tuple::default()`) and says [`Peek::Ip`];
/// [`Peek::Unsure`] for anything else.
#[inline(always)]
pub fn peek<F: Frame + ?Sized>(frame: &F, t: &mut Tuple) -> Peek {
    let Some(ethertype) = frame.read::<2>(12) else {
        return Peek::Unsure;
    };
    match u16::from_be_bytes(ethertype) {
        ETH_P_IP => peek_ipv4(frame, t),
        ETH_P_IPV6 => peek_ipv6(frame, t),
        // VLAN tags: rare on the hooks we attach to; `parse` knows them.
        crate::parse::ETH_P_8021Q | crate::parse::ETH_P_8021AD => Peek::Unsure,
        _ => Peek::NotIp,
    }
}

// Not inlined, like the parser's steps: in the kernel each is its own BPF subprogram, so their
// stack frames do not add up in the classifier.
#[inline(never)]
fn peek_ipv4<F: Frame + ?Sized>(frame: &F, t: &mut Tuple) -> Peek {
    const L3: usize = 14;
    let Some(ip) = frame.read::<20>(L3) else {
        return Peek::Unsure;
    };
    if ip[0] >> 4 != 4 || ip[0] & 0x0f < 5 {
        return Peek::NotIp;
    }
    if ip[0] & 0x0f != 5 {
        // Options: the transport header is further on.
        return Peek::Unsure;
    }
    t.family = 4;
    t.proto = ip[9];
    t.saddr[..4].copy_from_slice(&ip[12..16]);
    t.daddr[..4].copy_from_slice(&ip[16..20]);
    let first_fragment = u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff == 0;
    if !first_fragment {
        // No transport header, no ports.
        return Peek::Ip;
    }
    with_ports(frame, L3 + 20, t)
}

#[inline(never)]
fn peek_ipv6<F: Frame + ?Sized>(frame: &F, t: &mut Tuple) -> Peek {
    const L3: usize = 14;
    let Some(ip) = frame.read::<40>(L3) else {
        return Peek::Unsure;
    };
    if ip[0] >> 4 != 6 {
        return Peek::NotIp;
    }
    let proto = ip[6];
    if !ported(proto) && proto != IPPROTO_ICMPV6 && proto != IPPROTO_ICMP {
        // Possibly an extension header.
        return Peek::Unsure;
    }
    t.family = 6;
    t.proto = proto;
    t.saddr.copy_from_slice(&ip[8..24]);
    t.daddr.copy_from_slice(&ip[24..40]);
    with_ports(frame, L3 + 40, t)
}

/// Adds the ports at `l4`. `parse` takes the ports only when it can read the whole header it
/// wants (16 bytes of TCP, 8 of UDP); so do we, else we are unsure.
#[inline(always)]
fn with_ports<F: Frame + ?Sized>(frame: &F, l4: usize, t: &mut Tuple) -> Peek {
    let ports = match t.proto {
        IPPROTO_TCP => frame.read::<16>(l4).map(|h| [h[0], h[1], h[2], h[3]]),
        IPPROTO_UDP => frame.read::<8>(l4).map(|h| [h[0], h[1], h[2], h[3]]),
        _ => return Peek::Ip,
    };
    let Some(p) = ports else {
        return Peek::Unsure;
    };
    t.sport = u16::from_be_bytes([p[0], p[1]]);
    t.dport = u16::from_be_bytes([p[2], p[3]]);
    Peek::Ip
}

impl FilterConfig {
    /// Whether a packet with this tuple passes the filter.
    #[inline(always)]
    pub fn admits(&self, t: &Tuple) -> bool {
        if self.flags & FILTER_PROTO != 0 && t.proto != self.proto {
            return false;
        }
        if self.flags & FILTER_PORT != 0
            && (!ported(t.proto) || (t.sport != self.port && t.dport != self.port))
        {
            return false;
        }
        if self.flags & FILTER_ADDR != 0 {
            if t.family != self.family {
                return false;
            }
            let bits = u32::from(self.prefix_len);
            if !prefix_match(&t.saddr, &self.addr, bits)
                && !prefix_match(&t.daddr, &self.addr, bits)
            {
                return false;
            }
        }
        true
    }
}

/// Compares the first `bits` bits of two addresses, four bytes at a time (bounded, no loop state
/// the verifier has to track beyond four iterations).
#[inline(always)]
fn prefix_match(a: &[u8; 16], b: &[u8; 16], bits: u32) -> bool {
    let mut i = 0usize;
    while i < 4 {
        let start = (i as u32) * 32;
        if bits <= start {
            return true;
        }
        let wa = u32::from_be_bytes([a[i * 4], a[i * 4 + 1], a[i * 4 + 2], a[i * 4 + 3]]);
        let wb = u32::from_be_bytes([b[i * 4], b[i * 4 + 1], b[i * 4 + 2], b[i * 4 + 3]]);
        let take = bits - start;
        let mask = if take >= 32 {
            u32::MAX
        } else {
            !(u32::MAX >> take)
        };
        if (wa ^ wb) & mask != 0 {
            return false;
        }
        i += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::{vec, vec::Vec};

    use super::*;
    use crate::parse::{parse, ETH_P_8021Q};

    fn eth(ethertype: u16) -> Vec<u8> {
        let mut f = vec![0u8; 14];
        f[12..14].copy_from_slice(&ethertype.to_be_bytes());
        f
    }

    fn ipv4(proto: u8, ihl: u8, frag: u16, l4: &[u8]) -> Vec<u8> {
        let mut f = eth(ETH_P_IP);
        let mut ip = vec![0u8; usize::from(ihl.max(5)) * 4];
        ip[0] = 0x40 | ihl;
        let tot_len = (ip.len() + l4.len()) as u16;
        ip[2..4].copy_from_slice(&tot_len.to_be_bytes());
        ip[4..6].copy_from_slice(&0x4242u16.to_be_bytes());
        ip[6..8].copy_from_slice(&frag.to_be_bytes());
        ip[9] = proto;
        ip[12..16].copy_from_slice(&[10, 0, 0, 1]);
        ip[16..20].copy_from_slice(&[192, 168, 7, 9]);
        f.extend_from_slice(&ip);
        f.extend_from_slice(l4);
        f
    }

    fn ipv6(next: u8, rest: &[u8]) -> Vec<u8> {
        let mut f = eth(ETH_P_IPV6);
        let mut ip = vec![0u8; 40];
        ip[0] = 0x60;
        ip[4..6].copy_from_slice(&(rest.len() as u16).to_be_bytes());
        ip[6] = next;
        ip[8..24].copy_from_slice(&[0xfd, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 1]);
        ip[24..40].copy_from_slice(&[0xfd, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 2]);
        f.extend_from_slice(&ip);
        f.extend_from_slice(rest);
        f
    }

    fn l4(sport: u16, dport: u16) -> Vec<u8> {
        let mut h = vec![0u8; 28];
        h[0..2].copy_from_slice(&sport.to_be_bytes());
        h[2..4].copy_from_slice(&dport.to_be_bytes());
        h[4..8].copy_from_slice(&[1, 2, 3, 4]);
        h[12] = 0x50;
        h
    }

    fn frames() -> Vec<Vec<u8>> {
        let ext = {
            let mut e = vec![0u8; 8];
            e[0] = IPPROTO_UDP;
            e.extend_from_slice(&l4(53, 5353));
            e
        };
        let mut vlan = eth(ETH_P_8021Q);
        vlan.extend_from_slice(&[0, 7]);
        vlan.extend_from_slice(&ETH_P_IP.to_be_bytes());
        vlan.extend_from_slice(&ipv4(IPPROTO_UDP, 5, 0, &l4(1, 2))[14..]);
        let mut bad_version = ipv4(IPPROTO_TCP, 5, 0, &l4(1, 2));
        bad_version[14] = 0x65;
        vec![
            ipv4(IPPROTO_TCP, 5, 0, &l4(40000, 443)),
            ipv4(IPPROTO_UDP, 5, 0x4000, &l4(5000, 53)),
            ipv4(IPPROTO_UDP, 5, 0x2000, &l4(5000, 53)),
            ipv4(IPPROTO_UDP, 5, 0x0010, &l4(5000, 53)),
            ipv4(IPPROTO_TCP, 7, 0, &l4(40000, 443)),
            ipv4(IPPROTO_TCP, 4, 0, &l4(40000, 443)),
            ipv4(
                IPPROTO_ICMP,
                5,
                0,
                &[8, 0, 0, 0, 0, 9, 0, 1, 1, 2, 3, 4, 5, 6, 7, 8],
            ),
            ipv4(47, 5, 0, &l4(1, 2)),
            ipv6(IPPROTO_TCP, &l4(40000, 443)),
            ipv6(IPPROTO_UDP, &l4(5000, 53)),
            ipv6(
                IPPROTO_ICMPV6,
                &[128, 0, 0, 0, 0, 9, 0, 1, 1, 2, 3, 4, 5, 6, 7, 8],
            ),
            ipv6(0, &ext),
            bad_version,
            vlan,
            eth(0x0806),
        ]
    }

    #[test]
    fn peek_agrees_with_parse_on_every_truncation() {
        let mut sure = 0;
        for f in frames() {
            for len in 0..=f.len() {
                let frame = &f[..len];
                let meta = parse(frame);
                let mut t = Tuple::default();
                match peek(frame, &mut t) {
                    Peek::NotIp => assert_eq!(meta.family, 0, "{frame:?}"),
                    Peek::Ip => {
                        assert_ne!(meta.family, 0, "{frame:?}");
                        assert_eq!(t, Tuple::of(&meta), "{frame:?}");
                        sure += 1;
                    }
                    Peek::Unsure => {}
                }
            }
        }
        assert!(sure > 0);
    }

    #[test]
    fn an_ends_slot_is_its_keys_slot() {
        let mut t = Tuple {
            saddr: [10, 200, 1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            daddr: [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7],
            sport: 40000,
            dport: 443,
            family: 6,
            proto: IPPROTO_TCP,
        };
        for _ in 0..2 {
            for towards_dst in [true, false] {
                assert_eq!(t.end_slot(towards_dst), t.end(towards_dst).seen_slot());
            }
            (t.saddr, t.daddr, t.sport, t.dport) = (t.daddr, t.saddr, t.dport, t.sport);
        }
        assert_eq!(t.end(true).addr, t.daddr);
        assert_eq!(
            (t.end(false).port, t.end(false).proto),
            (t.sport, IPPROTO_TCP)
        );
        assert_ne!(t.end_slot(true), t.end_slot(false));
    }

    #[test]
    fn peek_is_sure_of_the_common_frames() {
        let tcp = ipv4(IPPROTO_TCP, 5, 0, &l4(40000, 443));
        let peek = |f: &[u8]| {
            let mut t = Tuple::default();
            (peek(f, &mut t), t)
        };
        let (sure, t) = peek(&tcp);
        assert_eq!(sure, Peek::Ip);
        assert_eq!((t.family, t.proto, t.sport, t.dport), (4, 6, 40000, 443));
        assert_eq!(peek(&ipv6(IPPROTO_UDP, &l4(1, 2))).0, Peek::Ip);
        assert_eq!(peek(&eth(0x0806)).0, Peek::NotIp);
        assert_eq!(peek(&ipv6(0, &l4(1, 2))).0, Peek::Unsure);
        assert_eq!(peek(&ipv4(IPPROTO_TCP, 6, 0, &l4(1, 2))).0, Peek::Unsure);
    }

    #[test]
    fn filter_on_ports_addresses_and_protocol() {
        let mut t = Tuple::default();
        assert_eq!(
            peek(&ipv4(IPPROTO_UDP, 5, 0, &l4(5000, 53))[..], &mut t),
            Peek::Ip
        );
        let none = FilterConfig::NONE;
        assert!(none.admits(&t));
        let port = |p| FilterConfig {
            flags: FILTER_PORT,
            port: p,
            ..none
        };
        assert!(port(53).admits(&t) && port(5000).admits(&t) && !port(1).admits(&t));
        let proto = |p| FilterConfig {
            flags: FILTER_PROTO,
            proto: p,
            ..none
        };
        assert!(proto(IPPROTO_UDP).admits(&t) && !proto(IPPROTO_TCP).admits(&t));
        let net = |a: [u8; 4], len| {
            let mut addr = [0u8; 16];
            addr[..4].copy_from_slice(&a);
            FilterConfig {
                flags: FILTER_ADDR,
                family: 4,
                prefix_len: len,
                addr,
                ..none
            }
        };
        assert!(net([192, 168, 0, 0], 16).admits(&t));
        assert!(net([10, 0, 0, 1], 32).admits(&t));
        assert!(!net([10, 0, 0, 2], 32).admits(&t));
        assert!(!net([172, 16, 0, 0], 12).admits(&t));
    }
}
