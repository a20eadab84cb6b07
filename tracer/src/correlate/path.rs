//! Which way a packet travels, and where each hook sits on its path.
//!
//! [`Hook::outbound_rank`] orders hooks for packets leaving the traced side; inbound packets do
//! not simply cross them in reverse (a routed reply meets the bridge's egress hook, never its
//! ingress one), so inbound order has its own table here.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::model::{Direction, Endpoint, Hook, PacketRecord, Place, Proto, Topology};

/// The way a packet travels relative to the traced side.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Orientation {
    /// Leaving the traced side (container egress first).
    Outbound,
    /// Coming toward the traced side (uplink or peer first).
    Inbound,
}

impl Orientation {
    /// The orientation a hook implies on its own; `None` for the bridge, which both ways cross.
    pub fn of_hook(place: Place, direction: Direction) -> Option<Self> {
        use Direction::{Egress, Ingress};
        match (place, direction) {
            (Place::Bridge, _) => None,
            (Place::Container, Egress)
            | (Place::Veth, Ingress)
            | (Place::PeerVeth, Egress)
            | (Place::PeerContainer, Ingress)
            | (Place::Uplink, Egress) => Some(Self::Outbound),
            _ => Some(Self::Inbound),
        }
    }

    /// The opposite orientation (that of replies).
    pub fn reversed(self) -> Self {
        match self {
            Self::Outbound => Self::Inbound,
            Self::Inbound => Self::Outbound,
        }
    }

    /// Position of a hook on a path of this orientation; hooks crossed the other way only sort
    /// after every hook of this orientation.
    pub fn rank(self, place: Place, direction: Direction) -> u32 {
        match self {
            Self::Outbound => Hook::outbound_rank(&probe(place, direction)),
            Self::Inbound => inbound_rank(place, direction),
        }
    }

    /// Rank of the hook a packet of this orientation meets where a packet of the other
    /// orientation met `(place, direction)`: the same interface, the other direction.
    pub fn mirror_rank(self, place: Place, direction: Direction) -> u32 {
        let other = match direction {
            Direction::Ingress => Direction::Egress,
            Direction::Egress => Direction::Ingress,
        };
        self.rank(place, other)
    }

    /// Rank of the last hook of the topology's main path (container, veth, bridge, uplink) in
    /// this orientation: where a packet routed by the host is expected to end up.
    pub fn main_path_end(self, topology: &Topology) -> Option<u32> {
        topology
            .hooks
            .iter()
            .filter(|h| !matches!(h.place, Place::PeerVeth | Place::PeerContainer))
            .map(|h| self.rank(h.place, h.direction))
            .filter(|&r| r <= LAST_ON_PATH)
            .max()
    }
}

/// Ranks above this belong to hooks a packet of the given orientation does not cross.
const LAST_ON_PATH: u32 = 6;

fn inbound_rank(place: Place, direction: Direction) -> u32 {
    use Direction::{Egress, Ingress};
    match (place, direction) {
        (Place::Uplink, Ingress) => 0,
        (Place::PeerContainer, Egress) => 1,
        (Place::PeerVeth, Ingress) => 2,
        (Place::Bridge, Ingress) => 3,
        (Place::Bridge, Egress) => 4,
        (Place::Veth, Egress) => 5,
        (Place::Container, Ingress) => 6,
        (Place::Container, Egress) => 10,
        (Place::Veth, Ingress) => 11,
        (Place::PeerVeth, Egress) => 12,
        (Place::PeerContainer, Ingress) => 13,
        (Place::Uplink, Egress) => 14,
    }
}

/// A throwaway hook to ask [`Hook::outbound_rank`] about a place and direction.
fn probe(place: Place, direction: Direction) -> Hook {
    Hook {
        slot: 0,
        ns_label: String::new(),
        ifname: String::new(),
        ifindex: 0,
        direction,
        place,
        role: crate::model::Role::All,
    }
}

/// Whether a hook sits on the traced side (the container or the host end of its veth), where
/// the tuple is the one the container itself uses.
pub fn is_traced_side(place: Place) -> bool {
    matches!(place, Place::Container | Place::Veth)
}

/// A packet's addresses as one hook saw them. ICMP echo replies are normalised so that the
/// echo identifier sits in the destination port, as a reply's port would: NAT then rewrites one
/// side only, and a reply's tuple is the request's reversed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tuple {
    pub proto: Proto,
    pub src: Endpoint,
    pub dst: Endpoint,
}

impl Tuple {
    /// The record's tuple, normalised (see [`Tuple`]).
    pub fn of(rec: &PacketRecord) -> Self {
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
    pub fn reversed(self) -> Self {
        Self {
            proto: self.proto,
            src: self.dst,
            dst: self.src,
        }
    }

    /// Whether `src` is one of the traced side's own addresses.
    pub fn src_in(&self, addrs: &[IpAddr]) -> bool {
        addrs.contains(&self.src.addr)
    }
}

fn is_echo_reply(proto: Proto, icmp_type: u8) -> bool {
    matches!((proto, icmp_type), (Proto::Icmp, 0) | (Proto::Icmpv6, 129))
}
