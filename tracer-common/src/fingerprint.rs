//! The packet fingerprint: one 64-bit tag that is the same for a packet at every hook it crosses.
//!
//! # Fields
//! Only fields that forwarding and NAT leave alone go in:
//! - all IP: the protocol number, and the IPv4 total length / IPv6 payload length;
//! - IPv4: the identification field (kept by veth, bridge, routing and netfilter NAT);
//! - TCP: sequence and acknowledgement numbers, data offset + flags, window;
//! - UDP: the UDP length and the first 8 payload bytes;
//! - ICMP / ICMPv6 echo: type, code, sequence number and the first 8 payload bytes (ping puts
//!   its send timestamp there); other ICMP: type and code.
//!
//! Left out on purpose: addresses and ports (SNAT, MASQUERADE and DNAT rewrite them), the ICMP echo
//! identifier (NAT rewrites it like a port), every checksum (rewritten with the fields they
//! cover), TTL / hop limit (decremented by each routing step) and the DSCP/ECN byte.
//!
//! # Collisions
//! Two different packets can share a tag: a TCP retransmission repeats seq/ack and may repeat the
//! IP id (DF packets often carry id 0), and unrelated packets can collide by chance (2^-64 per pair).
//! The tag alone is therefore never an identity: userspace splits a tag's events into packet
//! instances by time order and by the rule that one packet crosses each hook once (a second sighting
//! at a hook starts a new instance), and it checks that the tuples of consecutive hops agree up to
//! NAT of one side.

/// Incremental 64-bit hash over 32-bit words: FNV-1a style absorption with a multiply-xorshift
/// finaliser. No loops, no tables: it inlines into the kernel programs unchanged.
#[derive(Clone, Copy, Debug)]
pub struct Fingerprint(u64);

const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const PRIME: u64 = 0x0000_0100_0000_01b3;

impl Default for Fingerprint {
    fn default() -> Self {
        Self::new()
    }
}

impl Fingerprint {
    #[inline(always)]
    pub const fn new() -> Self {
        Self(OFFSET)
    }

    #[inline(always)]
    #[must_use]
    pub const fn word(self, w: u32) -> Self {
        Self((self.0 ^ w as u64).wrapping_mul(PRIME))
    }

    #[inline(always)]
    #[must_use]
    pub const fn bytes8(self, b: [u8; 8]) -> Self {
        self.word(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            .word(u32::from_be_bytes([b[4], b[5], b[6], b[7]]))
    }

    /// Finalises (splitmix64 mixer) so that nearby inputs give unrelated tags. Never returns 0,
    /// which means "no fingerprint" (non-IP frame).
    #[inline(always)]
    pub const fn finish(self) -> u64 {
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        if z == 0 {
            1
        } else {
            z
        }
    }
}
