//! From packets to flows: each finalised packet instance joins the conversation its traced-side
//! tuple names (or, seen only beyond NAT, the one whose NAT mapping produced its tuple).
//!
//! The table holds up to `--max-flows` flows (100k and more), so a flow is one fixed-size record
//! in a slab: hooks as indices, strings (rule texts, drop reasons) interned once per table, and
//! the few hops, NAT steps and aliases of a flow inline. The indices hold 4-byte slot numbers;
//! the tuples they stand for live only in the flow records.

use hashbrown::{DefaultHashBuilder, HashTable};
use smallvec::SmallVec;
use std::hash::BuildHasher;

use crate::model::{
    CountRecord, Direction, Hook, NatKind, Orientation, Place, Proto, RuleAttributor, Topology,
};

use super::{
    intern::{CEndpoint, CTuple, Pool, StrId},
    losses::{Gap, LossLog},
    nat,
    packets::Instance,
    report::{FlowId, Leg},
    tuple::Tuple,
};

/// What the table needs to know about the world to place packets.
pub(super) struct Context<'a> {
    pub topology: &'a Topology,
    pub attributor: Option<&'a dyn RuleAttributor>,
    /// When hooks lost events.
    pub losses: &'a LossLog,
}

/// Index of a hook in `Topology::hooks`.
pub(super) type HookIdx = u16;

/// Running totals of one hop of one leg: 16 bytes, the packet count in 40 bits (saturating
/// after 10^12 packets) so that it fits beside the hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Hop {
    /// Sum over packets of the time since the packet's first sighting.
    pub sum_ns: u64,
    /// Aggregate mode: packets and bytes the kernel counted here (every packet, sampled or not).
    pub counted: u64,
    pub counted_bytes: u64,
    packets_lo: u32,
    pub hook: HookIdx,
    pub leg: Leg,
    packets_hi: u8,
}

impl Hop {
    const MAX_PACKETS: u64 = (1 << 40) - 1;

    fn new(hook: HookIdx, leg: Leg, sum_ns: u64) -> Self {
        let mut hop = Self::counted_only(hook, leg);
        hop.sum_ns = sum_ns;
        hop.set_packets(1);
        hop
    }

    /// A hop the kernel counted packets at before any event of them was placed.
    fn counted_only(hook: HookIdx, leg: Leg) -> Self {
        Self {
            sum_ns: 0,
            counted: 0,
            counted_bytes: 0,
            packets_lo: 0,
            hook,
            leg,
            packets_hi: 0,
        }
    }

    /// Packets whose events were placed here: all of them in every-packet mode, the samples
    /// (and first packets) in aggregate mode.
    pub(crate) fn packets(&self) -> u64 {
        u64::from(self.packets_hi) << 32 | u64::from(self.packets_lo)
    }

    fn set_packets(&mut self, n: u64) {
        let n = n.min(Self::MAX_PACKETS);
        self.packets_lo = n as u32;
        self.packets_hi = (n >> 32) as u8;
    }

    fn add(&mut self, since_ns: u64) {
        self.sum_ns += since_ns;
        self.set_packets(self.packets() + 1);
    }
}

/// Packets of a leg by the hook of their last sighting and their drop reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct End {
    pub hook: HookIdx,
    pub leg: Leg,
    pub reason: Option<StrId>,
    /// 1 + the index of a hook further on that was losing events when these packets would have
    /// crossed it (so their end may be the ring buffer's, not theirs); 0: none. One byte, in
    /// what was padding, with [`UNSEEN_NOT_ATTACHED`] set when that hook was not attached then
    /// (otherwise its ring buffer was full).
    pub unseen_at: u8,
    pub count: u64,
}

/// [`End::unseen_at`]: the hook was not attached (hooks are far fewer than 127).
const UNSEEN_NOT_ATTACHED: u8 = 0x80;
const _: () = assert!(tracer_common::MAX_HOOKS < 127);

impl End {
    /// The hook that could not see where these packets were headed, and why, if one could not.
    pub(crate) fn unseen_at(&self) -> Option<(HookIdx, Gap)> {
        let at = (self.unseen_at & !UNSEEN_NOT_ATTACHED).checked_sub(1)?;
        let gap = match self.unseen_at & UNSEEN_NOT_ATTACHED {
            0 => Gap::RingFull,
            _ => Gap::NotAttached,
        };
        Some((HookIdx::from(at), gap))
    }
}

/// A NAT step of a flow: [`crate::model::NatStep`] with hooks and rule by index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct NatRec {
    pub leg: Leg,
    pub kind: NatKind,
    /// Set by the view once the kernel's conntrack table was asked (see `Correlator::confirm`).
    pub conntrack: Option<bool>,
    pub between: (HookIdx, HookIdx),
    /// What the ruleset said about it (see [`crate::model::Attribution`]).
    pub rule: Option<super::intern::Id>,
    pub before: CEndpoint,
    pub after: CEndpoint,
    pub packets: u64,
}

/// Totals of one direction of a flow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct LegTotals {
    pub packets: u64,
    pub bytes: u64,
    /// The earliest hook (in path order) any packet of this leg was first seen at.
    pub entry: Option<(u32, Place, Direction)>,
}

/// Tuples seen beyond NAT a flow keeps at most (a MASQUERADE gives one; more is unusual).
const MAX_ALIASES: usize = 8;

/// A conversation: both directions of one traced-side tuple.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FlowState {
    pub id: FlowId,
    /// The traced-side tuple of the direction that opened the flow.
    pub key: CTuple,
    /// Which way the opening packet went.
    pub origin: Orientation,
    pub first_ns: u64,
    pub last_ns: u64,
    /// What the view last printed of this flow (a hash); kept here so it goes with the flow.
    pub mark: u64,
    /// Aggregate mode: the kernel monotonic time of the last packet the kernel counted (0: no
    /// counts, every-packet mode).
    pub counts_last_ns: u64,
    /// The flow that had this tuple before (a new connection reused it), for counts that
    /// belong to that one.
    earlier: Option<FlowId>,
    /// Some of the kernel's counts of this tuple held packets of this flow and of the one
    /// before it together: its counts are not exact, and the report says so.
    pub counts_mixed: bool,
    legs: [LegTotals; 2],
    /// The sequence number of the SYN that opened the connection (TCP), if one was seen: a
    /// SYN with another one on the same tuple is a new connection.
    syn_seq: u32,
    /// Whether `syn_seq` was seen (apart: an `Option<u32>` would not fit in the padding).
    has_syn: bool,
    pub hops: SmallVec<[Hop; 4]>,
    pub ends: SmallVec<[End; 1]>,
    pub nat: SmallVec<[NatRec; 1]>,
    /// Tuples seen beyond NAT, with the leg of the packet that had them; in the tuple index.
    aliases: SmallVec<[(CTuple, Leg); 1]>,
    /// Neighbours in the table's least-recently-updated list.
    prev: u32,
    next: u32,
}

impl FlowState {
    /// The totals of one leg and the way its packets travel.
    pub(crate) fn leg(&self, leg: Leg) -> (&LegTotals, Orientation) {
        match leg {
            Leg::Out => (&self.legs[0], self.origin),
            Leg::Back => (&self.legs[1], self.origin.reversed()),
        }
    }

    fn orientation(&self, leg: Leg) -> Orientation {
        self.leg(leg).1
    }

    /// `attribute`: ask for the rule of NAT steps. Only the opening leg: netfilter picks a NAT
    /// rule for a connection's first packet; replies are translated back by conntrack, and a rule
    /// that merely matches a reply's tuple did not do it.
    fn add(&mut self, inst: &Instance, leg: Leg, ctx: &Context<'_>, pool: &mut Pool) {
        let (Some(first), Some(last)) = (inst.sightings.first(), inst.sightings.last()) else {
            return;
        };
        let orientation = self.orientation(leg);
        let totals = &mut self.legs[leg as usize];
        totals.packets += 1;
        totals.bytes += u64::from(first.pkt_len);
        let entry = (
            orientation.rank(first.place, first.direction),
            first.place,
            first.direction,
        );
        if totals.entry.is_none_or(|e| entry.0 < e.0) {
            totals.entry = Some(entry);
        }
        self.add_path(inst, leg, first.ktime_ns, ctx, pool);
        let reason = inst
            .drop_reason
            .as_deref()
            .and_then(|r| pool.strings.intern(r));
        let unseen_at = match reason {
            Some(_) => 0,
            None => unseen_at(ctx, orientation, last, &self.hops, leg),
        };
        let end = self.ends.iter_mut().find(|e| {
            e.hook == last.hook && e.leg == leg && e.reason == reason && e.unseen_at == unseen_at
        });
        match end {
            Some(e) => e.count += 1,
            None => self.ends.push(End {
                hook: last.hook,
                leg,
                reason,
                unseen_at,
                count: 1,
            }),
        }
    }
}

impl FlowState {
    /// Each sighting's time since `from_ns` into its hop's timing, and the NAT steps between
    /// them. `attribute`: ask for the rule of NAT steps, on the opening leg only: netfilter
    /// picks a NAT rule for a connection's first packet; replies are translated back by
    /// conntrack, and a rule that merely matches a reply's tuple did not do it.
    fn add_path(
        &mut self,
        inst: &Instance,
        leg: Leg,
        from_ns: u64,
        ctx: &Context<'_>,
        pool: &mut Pool,
    ) {
        let orientation = self.orientation(leg);
        let attributor = ctx.attributor.filter(|_| leg == Leg::Out);
        nat::record(
            inst,
            leg,
            orientation,
            ctx.topology,
            attributor,
            pool,
            &mut self.nat,
        );
        for s in &inst.sightings {
            let since = s.ktime_ns.saturating_sub(from_ns);
            match self
                .hops
                .iter_mut()
                .find(|h| h.hook == s.hook && h.leg == leg)
            {
                Some(h) => h.add(since),
                None => self.hops.push(Hop::new(s.hook, leg, since)),
            }
        }
    }

    /// What the kernel counted of this flow at one hook.
    fn add_counts(&mut self, hook: HookIdx, leg: Leg, rec: &CountRecord) {
        let hop = match self
            .hops
            .iter_mut()
            .position(|h| h.hook == hook && h.leg == leg)
        {
            Some(i) => &mut self.hops[i],
            None => {
                self.hops.push(Hop::counted_only(hook, leg));
                let last = self.hops.len() - 1;
                &mut self.hops[last]
            }
        };
        hop.counted += rec.packets;
        hop.counted_bytes += rec.bytes;
        // The first sighting stays the first event's: every flow starts with one, and the counts'
        // times may come from the kernel's coarse clock (a tick behind).
        self.counts_last_ns = self.counts_last_ns.max(rec.last_ns);
        self.last_ns = self.last_ns.max(rec.last_ns);
    }

    /// Whether the kernel counted this flow's packets (aggregate mode).
    pub(crate) fn is_counted(&self) -> bool {
        self.counts_last_ns != 0
    }

    /// A later fragment of one of this flow's datagrams: its bytes, not a packet of its own.
    fn add_fragment(&mut self, inst: &Instance, leg: Leg) {
        if let Some(first) = inst.first() {
            self.legs[leg as usize].bytes += u64::from(first.pkt_len);
        }
        self.last_ns = self.last_ns.max(inst.last_ns());
    }

    /// The whole form of a datagram already counted by its first fragment (first seen at
    /// `first_ns`): where it was seen and the rewrites it shows, not a packet of its own.
    fn add_whole(
        &mut self,
        inst: &Instance,
        leg: Leg,
        first_ns: u64,
        ctx: &Context<'_>,
        pool: &mut Pool,
    ) {
        self.add_path(inst, leg, first_ns, ctx, pool);
        self.last_ns = self.last_ns.max(inst.last_ns());
    }
}

/// Why kernel counts found no flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Unplaced {
    /// No flow has the tuple (yet).
    NoFlow,
    /// The counts hold packets of two connections on the tuple.
    Mixed,
}

/// Aggregate mode: kernel drops of one leg of a flow with one reason, found by tuple.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DropTally {
    pub leg: Leg,
    pub reason: Option<StrId>,
    pub count: u64,
}

/// Fragments one hook saw of a flow's datagrams (see [`super::frags`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FragHop {
    pub hook: HookIdx,
    pub leg: Leg,
    /// 0 where the hook saw the datagrams whole (reassembled).
    pub fragments: u64,
}

/// [`End::unseen_at`] of a packet last seen at `last`: the first hook further on its path that
/// was losing events when the packet would have got there. Hooks the flow's other packets of
/// this leg crossed (`hops`) come first: they are where it goes; other hooks it could cross
/// only after them (the bridge's egress hook is on the way to a peer, not to the uplink).
fn unseen_at(
    ctx: &Context<'_>,
    orientation: Orientation,
    last: &super::packets::Sighting,
    hops: &[Hop],
    leg: Leg,
) -> u8 {
    if !ctx.losses.covers(last.ktime_ns) {
        return 0;
    }
    let after = orientation.rank(last.place, last.direction);
    let known = |i: usize| {
        hops.iter()
            .any(|h| h.leg == leg && usize::from(h.hook) == i)
    };
    let mut ahead: SmallVec<[(bool, u32, usize); 8]> = ctx
        .topology
        .hooks
        .iter()
        .enumerate()
        .filter(|(_, h)| orientation.crosses(h.place, h.direction))
        .map(|(i, h)| (!known(i), orientation.rank(h.place, h.direction), i))
        .filter(|(_, rank, _)| *rank > after)
        .collect();
    ahead.sort_unstable();
    ahead
        .into_iter()
        .find_map(|(_, _, i)| {
            let h = &ctx.topology.hooks[i];
            let why = match ctx.losses.lossy(h.slot, h.direction, last.ktime_ns)? {
                Gap::RingFull => 0,
                Gap::NotAttached => UNSEEN_NOT_ATTACHED,
            };
            Some(u8::try_from(i + 1).unwrap_or(u8::MAX) | why)
        })
        .unwrap_or(0)
}

/// No neighbour in the LRU list.
const NIL: u32 = u32::MAX;

/// A tuple index entry: the flow's slot and which of its tuples the entry stands for.
/// Low bits: `KEY` or the alias number + 1, and `REVERSED` for the alias tuple reversed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Ref(u32);

const TAG_BITS: u32 = 5;
const REVERSED: u32 = 1 << 4;
const KEY: u32 = 0;

impl Ref {
    fn key(slot: u32) -> Self {
        Self(slot << TAG_BITS | KEY)
    }

    fn alias(slot: u32, n: usize, reversed: bool) -> Self {
        let rev = if reversed { REVERSED } else { 0 };
        Self(slot << TAG_BITS | (n as u32 + 1) | rev)
    }

    fn slot(self) -> u32 {
        self.0 >> TAG_BITS
    }

    fn is_key(self) -> bool {
        self.0 & (REVERSED - 1) == KEY
    }

    /// The tuple this entry stands for and the leg of a packet carrying it.
    fn resolve(self, flows: &[Option<FlowState>]) -> Option<(CTuple, Leg)> {
        let flow = flows.get(self.slot() as usize)?.as_ref()?;
        let n = (self.0 & (REVERSED - 1)) as usize;
        if n == 0 {
            return Some((flow.key, Leg::Out));
        }
        let (t, leg) = *flow.aliases.get(n - 1)?;
        Some(match self.0 & REVERSED {
            0 => (t, leg),
            _ => (t.reversed(), leg.other()),
        })
    }
}

/// Slots reserved up front (address space only: pages are touched as flows arrive), so that the
/// slab does not double, and briefly hold both copies, on its way to `--max-flows`.
const RESERVE_MAX: usize = 1 << 20;

/// Largest table the 27 bits of a [`Ref`]'s slot can address.
const MAX_FLOWS: usize = 1 << (32 - TAG_BITS);

/// The bounded flow table.
#[derive(Debug)]
pub(super) struct FlowTable {
    /// The flows by slot; `None` for a free slot.
    flows: Vec<Option<FlowState>>,
    free: Vec<u32>,
    /// Slots by flow id.
    by_id: HashTable<u32>,
    /// Per hook fragment counts of the flows that had fragments (few: kept apart, so that a
    /// flow without costs nothing).
    frag_hops: hashbrown::HashMap<FlowId, SmallVec<[FragHop; 4]>>,
    /// Aggregate mode: kernel drops of packets no event was sent for, found by their tuple, per
    /// flow (few flows have any: kept apart like `frag_hops`).
    drops: hashbrown::HashMap<FlowId, SmallVec<[DropTally; 1]>>,
    /// Slots by traced-side key and by post-NAT alias (the latest mapping of an alias wins).
    by_tuple: HashTable<Ref>,
    hasher: DefaultHashBuilder,
    /// Least recently updated flow (evicted first) and most recently updated one.
    lru_head: u32,
    lru_tail: u32,
    len: usize,
    next_id: u64,
    evicted: u64,
    max_flows: usize,
    /// See [`super::CorrelateConfig::idle_restart_ns`].
    idle_restart_ns: u64,
    pool: Pool,
    /// Bumped whenever the tuple index changes: what a lookup found stays true until then.
    generation: u64,
    /// The last traced-side tuple [`FlowTable::locate`] found, and the last alias confirmed as
    /// mapped (a busy flow's packets repeat both), each with the generation it was found in.
    recent_key: Option<(u64, Tuple, u32, Leg)>,
    recent_alias: Option<(u64, Tuple, u32, Leg)>,
}

impl FlowTable {
    pub(super) fn new(max_flows: usize, idle_restart_ns: u64) -> Self {
        let max_flows = max_flows.clamp(1, MAX_FLOWS);
        Self {
            flows: Vec::with_capacity(max_flows.min(RESERVE_MAX)),
            free: Vec::new(),
            by_id: HashTable::new(),
            frag_hops: hashbrown::HashMap::new(),
            drops: hashbrown::HashMap::new(),
            by_tuple: HashTable::new(),
            hasher: DefaultHashBuilder::default(),
            lru_head: NIL,
            lru_tail: NIL,
            len: 0,
            next_id: 1,
            evicted: 0,
            max_flows,
            idle_restart_ns,
            pool: Pool::default(),
            generation: 0,
            recent_key: None,
            recent_alias: None,
        }
    }

    pub(super) fn get(&self, id: FlowId) -> Option<&FlowState> {
        let slot = self.slot_of(id)?;
        self.flows[slot as usize].as_ref()
    }

    pub(super) fn get_mut(&mut self, id: FlowId) -> Option<&mut FlowState> {
        let slot = self.slot_of(id)?;
        self.flows[slot as usize].as_mut()
    }

    /// Rule texts, drop reasons and addresses of the flows.
    pub(super) fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Flow ids in the order first seen.
    pub(super) fn ids(&self) -> Vec<FlowId> {
        let mut ids: Vec<FlowId> = self.flows.iter().flatten().map(|f| f.id).collect();
        ids.sort_unstable();
        ids
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Adds a finalised packet to its flow (creating it, evicting the least recently updated
    /// flow when full) and returns the flow's id and the packet's leg.
    pub(super) fn add(&mut self, inst: &Instance, ctx: &Context<'_>) -> Option<(FlowId, Leg)> {
        let (slot, leg) = match self.locate_cached(inst) {
            Some((slot, leg)) if self.starts_anew(slot, leg, inst) => {
                // The earlier connection is over: it keeps what it saw, the tuple (and the
                // mappings beyond NAT) go to the new one.
                self.retire(slot);
                let earlier = self.flows[slot as usize].as_ref().map(|f| f.id);
                let orientation = inst.orientation(&ctx.topology.target_addrs);
                let new = self.create(inst, orientation)?;
                if let Some(f) = self.flows[new as usize].as_mut() {
                    f.earlier = earlier;
                }
                (new, Leg::Out)
            }
            Some(found) => found,
            None => {
                let orientation = inst.orientation(&ctx.topology.target_addrs);
                // A TCP packet that answers (a SYN-ACK, or mid-connection the server's side of
                // it): the connection was opened the other way, and this is a reply.
                if inst.first().is_some_and(from_tcp_server) {
                    let opened = orientation.reversed();
                    (
                        self.create_from_reply(inst, orientation, opened)?,
                        Leg::Back,
                    )
                } else {
                    (self.create(inst, orientation)?, Leg::Out)
                }
            }
        };
        self.touch(slot);
        let flow = self.flows[slot as usize].as_mut()?;
        if let Some(first) = inst.first() {
            if leg == Leg::Out && !flow.has_syn && is_syn(first.tcp_flags) {
                (flow.syn_seq, flow.has_syn) = (first.seq, true);
            }
        }
        flow.first_ns = flow.first_ns.min(inst.first_ns());
        flow.last_ns = flow.last_ns.max(inst.last_ns());
        flow.add(inst, leg, ctx, &mut self.pool);
        let id = flow.id;
        self.register_aliases(slot, leg, inst);
        if inst.frag.is_fragment() {
            for s in &inst.sightings {
                let whole = inst.whole_at.contains(&s.hook);
                self.count_fragments(id, s.hook, leg, u64::from(!whole));
            }
        }
        Some((id, leg))
    }

    /// A later fragment of a datagram of flow `id`; false when the flow is gone.
    pub(super) fn add_later(&mut self, id: FlowId, leg: Leg, inst: &Instance) -> bool {
        let Some(slot) = self.slot_of(id) else {
            return false;
        };
        self.touch(slot);
        if let Some(flow) = self.flows[slot as usize].as_mut() {
            flow.add_fragment(inst, leg);
        }
        for s in &inst.sightings {
            self.count_fragments(id, s.hook, leg, 1);
        }
        true
    }

    /// The whole form of a datagram of flow `id` whose first fragment (first seen at
    /// `first_ns`) was added before; false when the flow is gone.
    pub(super) fn add_whole(
        &mut self,
        id: FlowId,
        leg: Leg,
        first_ns: u64,
        inst: &Instance,
        ctx: &Context<'_>,
    ) -> bool {
        let Some(slot) = self.slot_of(id) else {
            return false;
        };
        self.touch(slot);
        if let Some(flow) = self.flows[slot as usize].as_mut() {
            flow.add_whole(inst, leg, first_ns, ctx, &mut self.pool);
        }
        for s in &inst.sightings {
            self.count_fragments(id, s.hook, leg, 0);
        }
        true
    }

    fn count_fragments(&mut self, id: FlowId, hook: HookIdx, leg: Leg, n: u64) {
        let hops = self.frag_hops.entry(id).or_default();
        match hops.iter_mut().find(|h| h.hook == hook && h.leg == leg) {
            Some(h) => h.fragments += n,
            None => hops.push(FragHop {
                hook,
                leg,
                fragments: n,
            }),
        }
    }

    /// The fragment counts of flow `id`, if it had fragments.
    pub(super) fn frag_hops(&self, id: FlowId) -> Option<&[FragHop]> {
        self.frag_hops.get(&id).map(|h| h.as_slice())
    }

    /// Whether a packet found on flow `slot`'s tuple opens a new connection there: a TCP SYN
    /// that is not the flow's own (retransmitted) one, or a UDP/ICMP packet after a long idle
    /// gap.
    fn starts_anew(&self, slot: u32, leg: Leg, inst: &Instance) -> bool {
        let (Some(flow), Some(first)) = (self.flows[slot as usize].as_ref(), inst.first()) else {
            return false;
        };
        match first.tuple.proto {
            Proto::Tcp => {
                let own = flow.has_syn && flow.syn_seq == first.seq;
                leg == Leg::Out && is_syn(first.tcp_flags) && !own
            }
            _ => inst.first_ns().saturating_sub(flow.last_ns) > self.idle_restart_ns,
        }
    }

    /// Takes flow `slot` out of the tuple index: it stays in the table, found by id only.
    fn retire(&mut self, slot: u32) {
        let Some(flow) = self.flows[slot as usize].as_ref() else {
            return;
        };
        let (key, aliases) = (flow.key, flow.aliases.clone());
        self.unindex(Ref::key(slot), key);
        for (n, (t, _)) in aliases.iter().enumerate() {
            self.unindex(Ref::alias(slot, n, false), *t);
            self.unindex(Ref::alias(slot, n, true), t.reversed());
        }
    }

    fn hash(&self, t: &CTuple) -> u64 {
        self.hasher.hash_one(t)
    }

    fn slot_of(&self, id: FlowId) -> Option<u32> {
        let flows = &self.flows;
        let hash = self.hasher.hash_one(id);
        let found = self.by_id.find(hash, |&s| {
            flows[s as usize].as_ref().is_some_and(|f| f.id == id)
        });
        found.copied()
    }

    /// The flow and leg a tuple seen at some hook belongs to: a flow's own tuple (either way),
    /// or one its packets had beyond NAT.
    fn locate_tuple(&self, t: &Tuple) -> Option<(u32, Leg)> {
        let t = self.pool.find(t)?;
        self.by_key_either(t).or_else(|| self.alias(t))
    }

    /// Adds what the kernel counted of a tuple at `hook` to its flow.
    pub(super) fn add_counts(
        &mut self,
        rec: &CountRecord,
        hook: HookIdx,
    ) -> Result<FlowId, Unplaced> {
        match self.place_counts(rec, hook) {
            Some(Some(id)) => Ok(id),
            Some(None) => Err(Unplaced::Mixed),
            None => Err(Unplaced::NoFlow),
        }
    }

    /// [`FlowTable::add_counts`]: `None` while no flow has the tuple, `Some(None)` for counts
    /// of two connections together.
    fn place_counts(&mut self, rec: &CountRecord, hook: HookIdx) -> Option<Option<FlowId>> {
        let t = Tuple {
            proto: rec.proto,
            src: rec.src,
            dst: rec.dst,
        };
        let (slot, leg) = self.locate_tuple(&t)?;
        // Connections that reused the tuple follow one another (`earlier`): the count goes to
        // the one it began in, unless the next one began before it ended, when it holds
        // packets of both and neither gets it. (The kernel's times may be a clock tick behind
        // its events': a slack of two ticks.)
        const SLACK_NS: u64 = 10_000_000;
        let mut slot = slot;
        let mut next: Option<u32> = None;
        loop {
            let flow = self.flows[slot as usize].as_ref()?;
            let began_here = rec.first_ns + SLACK_NS >= flow.first_ns;
            match flow.earlier.and_then(|e| self.slot_of(e)) {
                Some(earlier) if !began_here => {
                    next = Some(slot);
                    slot = earlier;
                }
                _ => break,
            }
        }
        let next_start = next
            .and_then(|n| self.flows[n as usize].as_ref())
            .map(|f| f.first_ns);
        if let (Some(n), Some(start)) = (next, next_start) {
            if rec.last_ns + SLACK_NS >= start {
                for s in [slot, n] {
                    if let Some(f) = self.flows[s as usize].as_mut() {
                        f.counts_mixed = true;
                    }
                }
                return Some(None);
            }
        }
        let flow = self.flows[slot as usize].as_mut()?;
        flow.add_counts(hook, leg, rec);
        Some(Some(flow.id))
    }

    /// A kernel drop of a packet of this tuple; `None` while no flow has it.
    pub(super) fn add_drop(&mut self, t: &Tuple, reason: Option<&str>) -> Option<FlowId> {
        let (slot, leg) = self.locate_tuple(t)?;
        let id = self.flows[slot as usize].as_ref()?.id;
        let reason = reason.and_then(|r| self.pool.strings.intern(r));
        let tallies = self.drops.entry(id).or_default();
        match tallies
            .iter_mut()
            .find(|d| d.leg == leg && d.reason == reason)
        {
            Some(d) => d.count += 1,
            None => tallies.push(DropTally {
                leg,
                reason,
                count: 1,
            }),
        }
        Some(id)
    }

    /// The drops [`FlowTable::add_drop`] found for flow `id`.
    pub(super) fn drops_of(&self, id: FlowId) -> &[DropTally] {
        self.drops.get(&id).map_or(&[], |d| d.as_slice())
    }

    /// [`FlowTable::locate`], answered from the last lookup when the packet has the same
    /// traced-side tuple and the index did not change since.
    fn locate_cached(&mut self, inst: &Instance) -> Option<(u32, Leg)> {
        let traced = inst.traced_tuple();
        if let (Some(t), Some((g, rt, slot, leg))) = (traced, self.recent_key) {
            if g == self.generation && rt == t {
                return Some((slot, leg));
            }
        }
        let found = self.locate(inst);
        if let (Some(t), Some((slot, leg))) = (traced, found) {
            self.recent_key = Some((self.generation, t, slot, leg));
        }
        found
    }

    /// The flow and leg of a packet. A packet seen on the traced side is named by its tuple
    /// there; one seen only beyond NAT by any tuple a flow's packets have had.
    fn locate(&self, inst: &Instance) -> Option<(u32, Leg)> {
        if let Some(t) = inst.traced_tuple() {
            return self.by_key_either(self.pool.find(&t)?);
        }
        inst.sightings.iter().find_map(|s| {
            let t = self.pool.find(&s.tuple)?;
            self.by_key_either(t).or_else(|| self.alias(t))
        })
    }

    fn by_key_either(&self, t: CTuple) -> Option<(u32, Leg)> {
        let out = self.key_slot(t).map(|s| (s, Leg::Out));
        out.or_else(|| self.key_slot(t.reversed()).map(|s| (s, Leg::Back)))
    }

    fn key_slot(&self, t: CTuple) -> Option<u32> {
        let flows = &self.flows;
        let found = self.by_tuple.find(self.hash(&t), |r| {
            r.is_key() && r.resolve(flows).is_some_and(|(k, _)| k == t)
        });
        found.map(|r| r.slot())
    }

    fn alias(&self, t: CTuple) -> Option<(u32, Leg)> {
        let flows = &self.flows;
        let found = self.by_tuple.find(self.hash(&t), |r| {
            !r.is_key() && r.resolve(flows).is_some_and(|(a, _)| a == t)
        });
        let r = *found?;
        r.resolve(flows).map(|(_, leg)| (r.slot(), leg))
    }

    fn create(&mut self, inst: &Instance, orientation: Orientation) -> Option<u32> {
        let key = inst
            .traced_tuple()
            .or_else(|| inst.nearest_tuple(orientation))?;
        self.create_keyed(inst, key, orientation)
    }

    /// A flow whose first packet seen is a reply (it went `went`; the flow was opened
    /// `opened`): keyed by its tuple reversed.
    fn create_from_reply(
        &mut self,
        inst: &Instance,
        went: Orientation,
        opened: Orientation,
    ) -> Option<u32> {
        let key = inst
            .traced_tuple()
            .or_else(|| inst.nearest_tuple(went))?
            .reversed();
        self.create_keyed(inst, key, opened)
    }

    fn create_keyed(
        &mut self,
        inst: &Instance,
        key: Tuple,
        orientation: Orientation,
    ) -> Option<u32> {
        while self.len >= self.max_flows {
            self.evict_oldest();
        }
        let key = self.pool.acquire(&key);
        let id = FlowId(self.next_id);
        self.next_id += 1;
        let flow = FlowState {
            id,
            key,
            origin: orientation,
            first_ns: inst.first_ns(),
            last_ns: inst.last_ns(),
            mark: 0,
            counts_last_ns: 0,
            earlier: None,
            counts_mixed: false,
            legs: Default::default(),
            syn_seq: 0,
            has_syn: false,
            hops: SmallVec::new(),
            ends: SmallVec::new(),
            nat: SmallVec::new(),
            aliases: SmallVec::new(),
            prev: NIL,
            next: NIL,
        };
        let slot = match self.free.pop() {
            Some(s) => {
                self.flows[s as usize] = Some(flow);
                s
            }
            None => {
                self.flows.push(Some(flow));
                (self.flows.len() - 1) as u32
            }
        };
        self.len += 1;
        let (flows, hasher) = (&self.flows, &self.hasher);
        self.by_id
            .insert_unique(hasher.hash_one(id), slot, |&s| match &flows[s as usize] {
                Some(f) => hasher.hash_one(f.id),
                None => 0,
            });
        self.index(Ref::key(slot), key);
        Some(slot)
    }

    /// Adds an entry for `t` to the tuple index.
    fn index(&mut self, r: Ref, t: CTuple) {
        self.generation += 1;
        let (flows, hasher) = (&self.flows, &self.hasher);
        let hash = hasher.hash_one(t);
        self.by_tuple.insert_unique(hash, r, |r| {
            r.resolve(flows).map_or(0, |(t, _)| hasher.hash_one(t))
        });
    }

    /// Removes exactly the entry `r` for `t`, if the index has it.
    fn unindex(&mut self, r: Ref, t: CTuple) {
        self.generation += 1;
        let hash = self.hash(&t);
        if let Ok(e) = self.by_tuple.find_entry(hash, |x| *x == r) {
            e.remove();
        }
    }

    fn evict_oldest(&mut self) {
        let slot = self.lru_head;
        if slot == NIL {
            return;
        }
        self.unlink(slot);
        let Some(flow) = self.flows[slot as usize].take() else {
            return;
        };
        self.evicted += 1;
        self.len -= 1;
        self.free.push(slot);
        self.frag_hops.remove(&flow.id);
        self.drops.remove(&flow.id);
        if let Ok(e) = self
            .by_id
            .find_entry(self.hasher.hash_one(flow.id), |&s| s == slot)
        {
            e.remove();
        }
        self.unindex(Ref::key(slot), flow.key);
        self.pool.release(flow.key);
        for (n, (t, _)) in flow.aliases.iter().enumerate() {
            self.unindex(Ref::alias(slot, n, false), *t);
            self.unindex(Ref::alias(slot, n, true), t.reversed());
            self.pool.release(*t);
        }
        for rec in &flow.nat {
            self.pool.release_endpoint(rec.before);
            self.pool.release_endpoint(rec.after);
        }
    }

    /// Moves a flow to the most recently updated end of the LRU list.
    fn touch(&mut self, slot: u32) {
        if self.lru_tail == slot {
            return;
        }
        self.unlink(slot);
        let tail = self.lru_tail;
        if let Some(f) = self.flows[slot as usize].as_mut() {
            f.prev = tail;
            f.next = NIL;
        }
        match self.flows.get_mut(tail as usize).and_then(Option::as_mut) {
            Some(t) => t.next = slot,
            None => self.lru_head = slot,
        }
        self.lru_tail = slot;
    }

    fn unlink(&mut self, slot: u32) {
        let Some(f) = self.flows[slot as usize].as_mut() else {
            return;
        };
        let (prev, next) = (f.prev, f.next);
        (f.prev, f.next) = (NIL, NIL);
        match self.flows.get_mut(prev as usize).and_then(Option::as_mut) {
            Some(p) => p.next = next,
            None if self.lru_head == slot => self.lru_head = next,
            None => {}
        }
        match self.flows.get_mut(next as usize).and_then(Option::as_mut) {
            Some(n) => n.prev = prev,
            None if self.lru_tail == slot => self.lru_tail = prev,
            None => {}
        }
    }

    /// Remembers the packet's post-NAT tuples so that packets seen only there find the flow.
    fn register_aliases(&mut self, slot: u32, leg: Leg, inst: &Instance) {
        let mut done: SmallVec<[Tuple; 4]> = SmallVec::new();
        for s in &inst.sightings {
            let Some(flow) = self.flows[slot as usize].as_ref() else {
                return;
            };
            let key = self.pool.tuple(flow.key);
            // The key itself, or a tuple this packet already showed: nothing to do.
            if s.tuple == key || s.tuple == key.reversed() || done.contains(&s.tuple) {
                continue;
            }
            done.push(s.tuple);
            if self.recent_alias == Some((self.generation, s.tuple, slot, leg)) {
                continue;
            }
            // Already mapped to this flow and leg: nothing changes (the common case).
            let t = self.pool.find(&s.tuple);
            if t.is_some_and(|t| self.alias(t) == Some((slot, leg))) {
                self.recent_alias = Some((self.generation, s.tuple, slot, leg));
                continue;
            }
            self.claim_alias(slot, leg, &s.tuple);
        }
    }

    /// Points `t` (and its reverse) at this flow, taking it from whichever flow had it.
    fn claim_alias(&mut self, slot: u32, leg: Leg, t: &Tuple) {
        let t = self.pool.acquire(t);
        for u in [t, t.reversed()] {
            while let Some((owner, _)) = self.alias(u) {
                let r = self.alias_ref(owner, u);
                match r {
                    Some(r) => self.unindex(r, u),
                    None => break,
                }
            }
        }
        let Some(flow) = self.flows[slot as usize].as_mut() else {
            self.pool.release(t);
            return;
        };
        let known = flow
            .aliases
            .iter()
            .position(|(a, _)| *a == t || *a == t.reversed());
        let n = match known {
            Some(n) => {
                // Same addresses: the reference taken above is one too many.
                flow.aliases[n] = (t, leg);
                self.pool.release(t);
                n
            }
            // Beyond the bound, packets seen only at that tuple start a flow of their own.
            None if flow.aliases.len() >= MAX_ALIASES => {
                self.pool.release(t);
                return;
            }
            None => {
                flow.aliases.push((t, leg));
                flow.aliases.len() - 1
            }
        };
        self.index(Ref::alias(slot, n, false), t);
        self.index(Ref::alias(slot, n, true), t.reversed());
    }

    /// The index entry of flow `slot` standing for alias tuple `u`.
    fn alias_ref(&self, slot: u32, u: CTuple) -> Option<Ref> {
        let flows = &self.flows;
        let found = self.by_tuple.find(self.hash(&u), |r| {
            !r.is_key() && r.slot() == slot && r.resolve(flows).is_some_and(|(a, _)| a == u)
        });
        found.copied()
    }
}

/// Whether a TCP packet comes from the server of its connection: a SYN-ACK; or, seen mid-
/// connection (no SYN), the side whose port is the lower one and below the ephemeral range
/// (Linux starts it at 32768), what a server listens on.
fn from_tcp_server(s: &super::packets::Sighting) -> bool {
    const SYN: u8 = 0x02;
    const ACK: u8 = 0x10;
    if s.tuple.proto != Proto::Tcp {
        return false;
    }
    match (s.tcp_flags & SYN != 0, s.tcp_flags & ACK != 0) {
        (true, true) => true,
        (true, false) => false,
        (false, _) => s.tuple.src.port < s.tuple.dst.port && s.tuple.src.port < 32768,
    }
}

/// A SYN without ACK: what opens a TCP connection.
fn is_syn(flags: u8) -> bool {
    const SYN: u8 = 0x02;
    const ACK: u8 = 0x10;
    flags & (SYN | ACK) == SYN
}

/// Whether two hooks have the same label (`<ns>:<ifname>`), without building it.
pub(super) fn same_label(a: &Hook, b: &Hook) -> bool {
    a.ns_label == b.ns_label && a.ifname == b.ifname
}
#[cfg(test)]
#[test]
fn record_sizes() {
    // What 100k flows cost: keep an eye on these when adding fields.
    assert!(
        size_of::<Option<FlowState>>() <= 376,
        "{}",
        size_of::<Option<FlowState>>()
    );
    assert_eq!(size_of::<Hop>(), 32);
    // What every pending sighting costs.
    assert_eq!(size_of::<super::packets::Sighting>(), 64);
    assert_eq!(size_of::<End>(), 16);
    assert_eq!(size_of::<NatRec>(), 40);
}
