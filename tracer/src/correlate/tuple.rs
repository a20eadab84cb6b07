//! A packet's tuple as one hook saw it, normalised so that NAT rewrites one side only.

use std::net::IpAddr;

use crate::model::{Endpoint, PacketRecord, Proto};

/// A packet's addresses as one hook saw them. ICMP echo replies are normalised so that the
/// echo identifier sits in the destination port, as a reply's port would: NAT then rewrites one
/// side only, and a reply's tuple is the request's reversed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Tuple {
    pub proto: Proto,
    pub src: Endpoint,
    pub dst: Endpoint,
}

impl Tuple {
    /// The record's tuple, normalised (see [`Tuple`]).
    pub(crate) fn of(rec: &PacketRecord) -> Self {
        let (mut src, mut dst) = (rec.src, rec.dst);
        if is_echo_reply(rec.proto, rec.icmp_type) {
            dst.port = src.port;
            src.port = 0;
        }
        Self {
            proto: rec.proto,
            src,
            dst,
        }
    }

    /// The tuple of a packet going the other way.
    pub(crate) fn reversed(self) -> Self {
        Self {
            proto: self.proto,
            src: self.dst,
            dst: self.src,
        }
    }

    /// Whether `src` is one of the traced side's own addresses.
    pub(crate) fn src_in(&self, addrs: &[IpAddr]) -> bool {
        addrs.contains(&self.src.addr)
    }
}

fn is_echo_reply(proto: Proto, icmp_type: u8) -> bool {
    matches!((proto, icmp_type), (Proto::Icmp, 0) | (Proto::Icmpv6, 129))
}
