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
        let (src, dst) =
            crate::model::normalised(rec.proto.number(), rec.icmp_type, rec.src, rec.dst);
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
