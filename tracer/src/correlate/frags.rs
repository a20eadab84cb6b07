//! IP fragments. A datagram larger than the path's MTU crosses the hooks as fragments: the first
//! carries the transport header (ports), the later ones only the IP header (protocol, addresses,
//! identification). Where netfilter needs the whole datagram (conntrack, NAT; `br_netfilter` on a
//! bridge) the kernel reassembles it, and a hook there sees one large packet instead; on the way
//! out it may be fragmented again (same identification and pieces) or leave whole. Each form has
//! its own fingerprint, so without help one datagram would look like three packets: a first
//! fragment that skipped the bridge, a whole one lost after it, and fragments of a phantom
//! port-0 flow.
//!
//! Here the forms are put back together. Within one batch of settled packets ([`assemble`]), a
//! whole datagram is joined to its first fragment (same protocol, addresses, ports and IPv4
//! identification, seen right after it): one packet, seen whole at some hooks. Later fragments
//! never make flows of their own: they are counted, per hook, on the flow of their first
//! fragment, found by protocol, addresses and identification ([`Datagrams`], which also serves
//! forms settled in a later batch). A later fragment whose first fragment was never seen is
//! counted as an orphan, not shown as a flow.

use std::{collections::VecDeque, net::IpAddr};

use hashbrown::HashMap;
use smallvec::SmallVec;
use tracer_common::event::{FRAG_MORE, FRAG_OFFSET};

use crate::model::Proto;

use super::{
    packets::Instance,
    report::{FlowId, Leg},
    tuple::Tuple,
};

/// A packet's fragment fields: the IP identification and the more-fragments bit with the offset.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Frag {
    pub id: u32,
    pub bits: u16,
}

impl Frag {
    /// Whether the packet is a fragment at all.
    pub(crate) fn is_fragment(self) -> bool {
        self.bits & (FRAG_MORE | FRAG_OFFSET) != 0
    }

    /// The first fragment: the one with the transport header.
    pub(crate) fn is_first(self) -> bool {
        self.bits & FRAG_MORE != 0 && self.bits & FRAG_OFFSET == 0
    }

    /// A fragment after the first: no transport header.
    pub(crate) fn is_later(self) -> bool {
        self.bits & FRAG_OFFSET != 0
    }
}

/// How long after its first fragment a datagram's other forms are looked for.
const WINDOW_NS: u64 = 1_000_000_000;

/// Datagrams remembered at most across batches.
const MAX_DATAGRAMS: usize = 8192;

/// What ties the pieces of one datagram together at one hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Key {
    proto: Proto,
    src: IpAddr,
    dst: IpAddr,
    id: u32,
}

impl Key {
    fn of(t: &Tuple, id: u32) -> Self {
        Self {
            proto: t.proto,
            src: t.src.addr,
            dst: t.dst.addr,
            id,
        }
    }
}

/// Joins, within one batch, each whole datagram to its first fragment, and takes the later
/// fragments out: `(packets to add, later fragments)`. Order is kept.
pub(super) fn assemble(batch: Vec<Instance>) -> (Vec<Instance>, Vec<Instance>) {
    if !batch.iter().any(|i| i.frag.is_fragment()) {
        return (batch, Vec::new());
    }
    // First fragments by the key of every hook that saw them. An IPv6 datagram reassembled has
    // no fragment header, hence no identification: such wholes are looked up under id 0.
    let mut firsts: HashMap<Key, SmallVec<[usize; 1]>> = HashMap::new();
    for (i, inst) in batch.iter().enumerate() {
        if !inst.frag.is_first() {
            continue;
        }
        for s in &inst.sightings {
            firsts
                .entry(Key::of(&s.tuple, inst.frag.id))
                .or_default()
                .push(i);
            if s.tuple.src.addr.is_ipv6() {
                firsts.entry(Key::of(&s.tuple, 0)).or_default().push(i);
            }
        }
    }
    let mut joined_to: Vec<Option<usize>> = vec![None; batch.len()];
    let mut taken = vec![false; batch.len()];
    for (j, inst) in batch.iter().enumerate() {
        let Some(first_seen) = inst.first().filter(|_| !inst.frag.is_fragment()) else {
            continue;
        };
        let Some(candidates) = firsts.get(&Key::of(&first_seen.tuple, inst.frag.id)) else {
            continue;
        };
        // The latest first fragment before it, with the same ports, not joined yet.
        let start = inst.first_ns();
        let best = candidates
            .iter()
            .copied()
            .filter(|&i| !taken[i])
            .filter(|&i| {
                let f = &batch[i];
                f.first_ns() <= start
                    && start - f.first_ns() <= WINDOW_NS
                    && f.sightings.iter().any(|s| s.tuple == first_seen.tuple)
            })
            .max_by_key(|&i| batch[i].first_ns());
        if let Some(i) = best {
            taken[i] = true;
            joined_to[j] = Some(i);
        }
    }
    let mut slots: Vec<Option<Instance>> = batch.into_iter().map(Some).collect();
    for j in 0..slots.len() {
        let Some(i) = joined_to[j] else {
            continue;
        };
        let Some(whole) = slots[j].take() else {
            continue;
        };
        if let Some(first) = slots[i].as_mut() {
            join(first, whole);
        }
    }
    let (mut packets, mut later) = (Vec::new(), Vec::new());
    for inst in slots.into_iter().flatten() {
        if inst.frag.is_later() {
            later.push(inst);
        } else {
            packets.push(inst);
        }
    }
    (packets, later)
}

/// Puts the whole datagram's sightings into its first fragment's, in time order.
fn join(first: &mut Instance, whole: Instance) {
    first
        .whole_at
        .extend(whole.sightings.iter().map(|s| s.hook));
    first.sightings.extend(whole.sightings);
    first.sightings.sort_by_key(|s| s.ktime_ns);
    // Where the whole was freed is where the datagram ended.
    if whole.drop_reason.is_some() {
        first.drop_reason = whole.drop_reason;
    }
}

/// A datagram's flow, as its first fragment found it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Seen {
    pub flow: FlowId,
    pub leg: Leg,
    /// When the first fragment was first seen.
    pub first_ns: u64,
    /// The first fragment's tuple at this hook (with ports: what a whole must match).
    tuple: Tuple,
}

/// The flows of recent datagrams, for pieces that settle apart from their first fragment.
#[derive(Debug, Default)]
pub(super) struct Datagrams {
    by_key: HashMap<Key, Seen>,
    order: VecDeque<(u64, Key)>,
    /// Later fragments whose first fragment was never seen.
    pub orphans: u64,
}

impl Datagrams {
    /// Remembers where a first fragment went.
    pub(super) fn note_first(&mut self, inst: &Instance, flow: FlowId, leg: Leg) {
        let first_ns = inst.first_ns();
        for s in inst
            .sightings
            .iter()
            .filter(|s| !inst.whole_at.contains(&s.hook))
        {
            let key = Key::of(&s.tuple, inst.frag.id);
            let seen = Seen {
                flow,
                leg,
                first_ns,
                tuple: s.tuple,
            };
            if self.by_key.insert(key, seen).is_none() {
                self.order.push_back((first_ns, key));
            }
        }
        // Bounded, and only as long as other forms of a datagram can still come.
        while let Some(&(ns, key)) = self.order.front() {
            if self.order.len() <= MAX_DATAGRAMS && ns.saturating_add(2 * WINDOW_NS) >= first_ns {
                break;
            }
            self.order.pop_front();
            if self.by_key.get(&key).is_some_and(|s| s.first_ns == ns) {
                self.by_key.remove(&key);
            }
        }
    }

    /// The flow of a later fragment, by its first hook's addresses.
    pub(super) fn of_later(&self, inst: &Instance) -> Option<Seen> {
        let first = inst.first()?;
        let seen = self.by_key.get(&Key::of(&first.tuple, inst.frag.id))?;
        let within = inst.first_ns().saturating_sub(seen.first_ns) <= WINDOW_NS;
        within.then_some(*seen)
    }

    /// The flow of a whole datagram whose first fragment settled in an earlier batch (IPv4:
    /// the identification is needed).
    pub(super) fn of_whole(&self, inst: &Instance) -> Option<Seen> {
        let first = inst.first()?;
        if inst.frag.is_fragment() || first.tuple.src.addr.is_ipv6() {
            return None;
        }
        let seen = self.by_key.get(&Key::of(&first.tuple, inst.frag.id))?;
        let after = inst.first_ns().checked_sub(seen.first_ns)?;
        (after <= WINDOW_NS && seen.tuple == first.tuple).then_some(*seen)
    }
}
