//! The kinds of hop a traced packet can cross, and everything the rest of the tree needs to know
//! about each: where it sits on a path in either direction, which of its hooks belong to the
//! traced side, and in which order its two hooks are attached. One table ([`Place::ranks`])
//! holds the positions; adding a kind of hop is one variant here (the compiler then asks for its
//! rows) plus its discovery in `discover::path`.

use serde::{Deserialize, Serialize};
use tracer_common::config::{ROLE_ALL, ROLE_SHARED, ROLE_SOURCE_IN, ROLE_SOURCE_OUT};

use super::Direction;

/// Where along the path a hook sits. Its order is the outbound path order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Place {
    /// The interface inside the traced (container) namespace.
    Container,
    /// The host end of the container's veth pair.
    Veth,
    /// The bridge the veth is a port of.
    Bridge,
    /// The interface the route toward the destination leaves by.
    Uplink,
    /// Another container's host veth (container-to-container on one bridge).
    PeerVeth,
    /// Another container's own interface.
    PeerContainer,
}

/// Ranks up to this one are on the path of the orientation asked for; hooks a packet of that
/// orientation does not cross rank above every hook it does.
const ON_PATH_MAX: u32 = 6;

impl Place {
    /// `(outbound, inbound)`: the position of this place's hook in `direction` on the path of a
    /// packet leaving the traced side, and of one coming toward it. Inbound packets do not simply
    /// cross the outbound hooks in reverse (a routed reply meets the bridge's egress hook, never
    /// its ingress one), so each orientation has its own column. Ranks above [`ON_PATH_MAX`]
    /// belong to hooks that orientation does not cross; they keep the other orientation's order.
    const fn ranks(self, direction: Direction) -> (u32, u32) {
        use Direction::{Egress, Ingress};
        match (self, direction) {
            (Self::Container, Egress) => (0, 10),
            (Self::Veth, Ingress) => (1, 11),
            (Self::Bridge, Ingress) => (2, 3),
            (Self::Bridge, Egress) => (3, 4),
            (Self::PeerVeth, Egress) => (4, 12),
            (Self::PeerContainer, Ingress) => (5, 13),
            (Self::Uplink, Egress) => (6, 14),
            (Self::Uplink, Ingress) => (10, 0),
            (Self::PeerContainer, Egress) => (11, 1),
            (Self::PeerVeth, Ingress) => (12, 2),
            (Self::Veth, Egress) => (13, 5),
            (Self::Container, Ingress) => (14, 6),
        }
    }

    /// Whether the place is on the traced side (the container's interface or the host end of its
    /// veth), where a packet carries the tuple the container itself uses and the hook's program
    /// sees only the traced side's packets.
    pub(crate) const fn is_source(self) -> bool {
        matches!(self, Self::Container | Self::Veth)
    }

    /// Whether no other hook of a trace can see a packet before this place's hook in
    /// `direction` does: the traced container's egress, the uplink's ingress, a peer's own
    /// egress. Aggregate mode picks a flow's first packets there.
    pub(crate) const fn is_entry(self, direction: Direction) -> bool {
        matches!(
            (self, direction),
            (Self::Container, Direction::Egress)
                | (Self::Uplink, Direction::Ingress)
                | (Self::PeerContainer, Direction::Egress)
        )
    }

    /// Whether the place is on the traced side's own way out (not another container's).
    pub(crate) const fn on_main_path(self) -> bool {
        !matches!(self, Self::PeerVeth | Self::PeerContainer)
    }

    /// How the kernel program of this place's hook in `direction` decides what to emit: a source
    /// hook sees only the traced side's packets (in the way it is crossed first); a shared one
    /// (bridge, uplink, a peer) emits only packets to or from endpoints of interest.
    pub(crate) fn role(self, direction: Direction) -> Role {
        if !self.is_source() {
            return Role::Shared;
        }
        match Orientation::of_hook(self, direction) {
            Some(Orientation::Inbound) => Role::SourceIn,
            _ => Role::SourceOut,
        }
    }

    /// The place's two hooks in the order they are attached: the one an outbound packet meets
    /// first comes first, so that a reply is never traced at a hop before its request can be at
    /// the hops upstream of it.
    pub(crate) fn directions(self) -> [Direction; 2] {
        let (i, e) = (Direction::Ingress, Direction::Egress);
        if self.ranks(i).0 <= self.ranks(e).0 {
            [i, e]
        } else {
            [e, i]
        }
    }
}

/// How the kernel program decides which packets of a hook to emit (see `tracer_common::config`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    SourceOut,
    SourceIn,
    Shared,
    All,
}

impl Role {
    pub(crate) fn raw(self) -> u32 {
        match self {
            Self::SourceOut => ROLE_SOURCE_OUT,
            Self::SourceIn => ROLE_SOURCE_IN,
            Self::Shared => ROLE_SHARED,
            Self::All => ROLE_ALL,
        }
    }
}

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
    /// The orientation a hook implies on its own: the one whose path crosses it. `None` for a hook
    /// both cross (the bridge).
    pub(crate) fn of_hook(place: Place, direction: Direction) -> Option<Self> {
        let (out, back) = place.ranks(direction);
        match (out <= ON_PATH_MAX, back <= ON_PATH_MAX) {
            (true, true) => None,
            (true, false) => Some(Self::Outbound),
            (false, _) => Some(Self::Inbound),
        }
    }

    /// The opposite orientation (that of replies).
    pub(crate) fn reversed(self) -> Self {
        match self {
            Self::Outbound => Self::Inbound,
            Self::Inbound => Self::Outbound,
        }
    }

    /// Position of a hook on a path of this orientation; hooks crossed the other way only sort
    /// after every hook of this orientation.
    pub(crate) fn rank(self, place: Place, direction: Direction) -> u32 {
        let (out, back) = place.ranks(direction);
        match self {
            Self::Outbound => out,
            Self::Inbound => back,
        }
    }

    /// Whether a packet of this orientation crosses the hook at all.
    pub(crate) fn crosses(self, place: Place, direction: Direction) -> bool {
        self.rank(place, direction) <= ON_PATH_MAX
    }

    /// Rank of the hook a packet of this orientation meets where a packet of the other
    /// orientation met `(place, direction)`: the same interface, the other direction.
    pub(crate) fn mirror_rank(self, place: Place, direction: Direction) -> u32 {
        self.rank(place, direction.other())
    }

    /// Rank of the last hook of the traced side's own path (container, veth, bridge, uplink: not a
    /// peer's) among `hooks`, in this orientation: where a packet routed by the host is expected
    /// to end up.
    pub(crate) fn main_path_end<'h>(
        self,
        hooks: impl IntoIterator<Item = (Place, Direction)> + 'h,
    ) -> Option<u32> {
        hooks
            .into_iter()
            .filter(|(place, _)| place.on_main_path())
            .map(|(place, direction)| self.rank(place, direction))
            .filter(|&r| r <= ON_PATH_MAX)
            .max()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLACES: [Place; 6] = [
        Place::Container,
        Place::Veth,
        Place::Bridge,
        Place::Uplink,
        Place::PeerVeth,
        Place::PeerContainer,
    ];

    /// Every hook, in the order a packet of `o` crosses the ones on its path.
    fn path(o: Orientation) -> Vec<(Place, Direction)> {
        let mut hooks: Vec<(Place, Direction)> = PLACES
            .iter()
            .flat_map(|p| p.directions().map(|d| (*p, d)))
            .filter(|(p, d)| o.rank(*p, *d) <= ON_PATH_MAX)
            .collect();
        hooks.sort_by_key(|(p, d)| o.rank(*p, *d));
        hooks
    }

    #[test]
    fn each_orientation_crosses_seven_hooks_in_order() {
        use Direction::{Egress as E, Ingress as I};
        use Place::*;
        assert_eq!(
            path(Orientation::Outbound),
            [
                (Container, E),
                (Veth, I),
                (Bridge, I),
                (Bridge, E),
                (PeerVeth, E),
                (PeerContainer, I),
                (Uplink, E)
            ]
        );
        assert_eq!(
            path(Orientation::Inbound),
            [
                (Uplink, I),
                (PeerContainer, E),
                (PeerVeth, I),
                (Bridge, I),
                (Bridge, E),
                (Veth, E),
                (Container, I)
            ]
        );
    }

    #[test]
    fn ranks_are_distinct_per_orientation() {
        for o in [Orientation::Outbound, Orientation::Inbound] {
            let mut ranks: Vec<u32> = PLACES
                .iter()
                .flat_map(|p| p.directions().map(|d| o.rank(*p, d)))
                .collect();
            ranks.sort_unstable();
            ranks.dedup();
            assert_eq!(ranks.len(), 12, "{o:?}");
        }
    }

    #[test]
    fn roles_and_attach_order() {
        use Direction::{Egress as E, Ingress as I};
        assert_eq!(Place::Container.directions(), [E, I]);
        assert_eq!(Place::Veth.directions(), [I, E]);
        assert_eq!(Place::Bridge.directions(), [I, E]);
        assert_eq!(Place::Uplink.directions(), [E, I]);
        assert_eq!(Place::PeerVeth.directions(), [E, I]);
        assert_eq!(Place::PeerContainer.directions(), [I, E]);
        assert_eq!(Place::Container.role(E), Role::SourceOut);
        assert_eq!(Place::Container.role(I), Role::SourceIn);
        assert_eq!(Place::Veth.role(I), Role::SourceOut);
        assert_eq!(Place::Veth.role(E), Role::SourceIn);
        assert_eq!(Place::Bridge.role(I), Role::Shared);
        assert_eq!(Place::PeerContainer.role(I), Role::Shared);
        assert_eq!(Orientation::of_hook(Place::Bridge, E), None);
        assert_eq!(
            Orientation::of_hook(Place::Uplink, I),
            Some(Orientation::Inbound)
        );
    }
}
