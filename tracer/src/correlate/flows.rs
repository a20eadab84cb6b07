//! From packets to flows: each finalised packet instance joins the conversation its traced-side
//! tuple names (or, seen only beyond NAT, the one whose NAT mapping produced its tuple).

use std::collections::{BTreeMap, HashMap};

use crate::model::{Direction, Place, RuleAttributor, Topology};

use super::{
    nat::{self, NatEntry},
    packets::Instance,
    path::{Orientation, Tuple},
    report::{FlowId, Leg},
};

/// What the table needs to know about the world to place packets.
pub struct Context<'a> {
    pub topology: &'a Topology,
    pub attributor: Option<&'a dyn RuleAttributor>,
}

/// Running totals of one hop of one leg.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HopAcc {
    /// Sum over packets of the time since the packet's first sighting.
    pub sum_ns: u64,
    pub packets: u64,
}

/// One direction of a flow.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LegState {
    pub packets: u64,
    pub bytes: u64,
    /// By hook index in `Topology::hooks`.
    pub hops: BTreeMap<usize, HopAcc>,
    pub nat: Vec<NatEntry>,
    /// Packets by (hook index of their last sighting, drop reason).
    pub ends: BTreeMap<(usize, Option<String>), u64>,
    /// The earliest hook (in path order) any packet of this leg was first seen at.
    pub entry: Option<(u32, Place, Direction)>,
}

impl LegState {
    /// `attribute`: ask for the rule of NAT steps. Only the opening leg: netfilter picks a NAT
    /// rule for a connection's first packet; replies are translated back by conntrack, and a rule
    /// that merely matches a reply's tuple did not do it.
    fn add(
        &mut self,
        inst: &Instance,
        orientation: Orientation,
        ctx: &Context<'_>,
        attribute: bool,
    ) {
        let (Some(first), Some(last)) = (inst.sightings.first(), inst.sightings.last()) else {
            return;
        };
        self.packets += 1;
        self.bytes += u64::from(first.pkt_len);
        for s in &inst.sightings {
            let acc = self.hops.entry(s.hook).or_default();
            acc.sum_ns += s.ktime_ns.saturating_sub(first.ktime_ns);
            acc.packets += 1;
        }
        let attributor = if attribute { ctx.attributor } else { None };
        nat::record(inst, ctx.topology, attributor, &mut self.nat);
        *self
            .ends
            .entry((last.hook, inst.drop_reason.clone()))
            .or_default() += 1;
        let entry = (
            orientation.rank(first.place, first.direction),
            first.place,
            first.direction,
        );
        if self.entry.is_none_or(|e| entry.0 < e.0) {
            self.entry = Some(entry);
        }
    }
}

/// A conversation: both directions of one traced-side tuple.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowState {
    pub id: FlowId,
    /// The traced-side tuple of the direction that opened the flow.
    pub key: Tuple,
    /// Which way the opening packet went.
    pub origin: Orientation,
    pub first_ns: u64,
    pub last_ns: u64,
    pub out: LegState,
    pub back: LegState,
    /// Tuples seen beyond NAT, registered in the table's alias index.
    aliases: Vec<Tuple>,
    touched: u64,
}

impl FlowState {
    /// The state of one leg and the way its packets travel.
    pub fn leg(&self, leg: Leg) -> (&LegState, Orientation) {
        match leg {
            Leg::Out => (&self.out, self.origin),
            Leg::Back => (&self.back, self.origin.reversed()),
        }
    }
}

/// The bounded flow table.
#[derive(Debug)]
pub struct FlowTable {
    flows: BTreeMap<FlowId, FlowState>,
    by_key: HashMap<Tuple, FlowId>,
    /// Post-NAT tuples to the flow and leg they belong to; the latest mapping wins.
    aliases: HashMap<Tuple, (FlowId, Leg)>,
    /// Flows by last update, least recent first.
    lru: BTreeMap<u64, FlowId>,
    next_id: u64,
    clock: u64,
    evicted: u64,
    max_flows: usize,
}

impl FlowTable {
    pub fn new(max_flows: usize) -> Self {
        Self {
            flows: BTreeMap::new(),
            by_key: HashMap::new(),
            aliases: HashMap::new(),
            lru: BTreeMap::new(),
            next_id: 1,
            clock: 0,
            evicted: 0,
            max_flows: max_flows.max(1),
        }
    }

    pub fn get(&self, id: FlowId) -> Option<&FlowState> {
        self.flows.get(&id)
    }

    /// Flows in the order they were first seen.
    pub fn iter(&self) -> impl Iterator<Item = &FlowState> {
        self.flows.values()
    }

    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Adds a finalised packet to its flow (creating it, evicting the least recently updated
    /// flow when full) and returns the flow's id.
    pub fn add(&mut self, inst: &Instance, ctx: &Context<'_>) -> Option<FlowId> {
        let orientation = inst.orientation(&ctx.topology.target_addrs);
        let (id, leg) = match self.locate(inst) {
            Some(found) => found,
            None => (self.create(inst, orientation)?, Leg::Out),
        };
        self.clock += 1;
        let clock = self.clock;
        let flow = self.flows.get_mut(&id)?;
        self.lru.remove(&flow.touched);
        self.lru.insert(clock, id);
        flow.touched = clock;
        flow.first_ns = flow.first_ns.min(inst.first_ns());
        flow.last_ns = flow.last_ns.max(inst.last_ns());
        let leg_orientation = match leg {
            Leg::Out => flow.origin,
            Leg::Back => flow.origin.reversed(),
        };
        match leg {
            Leg::Out => flow.out.add(inst, leg_orientation, ctx, true),
            Leg::Back => flow.back.add(inst, leg_orientation, ctx, false),
        }
        self.register_aliases(id, leg, inst);
        Some(id)
    }

    /// The flow and leg of a packet. A packet seen on the traced side is named by its tuple
    /// there; one seen only beyond NAT by any tuple a flow's packets have had.
    fn locate(&self, inst: &Instance) -> Option<(FlowId, Leg)> {
        if let Some(t) = inst.traced_tuple() {
            return self.by_key_either(t);
        }
        inst.sightings.iter().find_map(|s| {
            let t = s.tuple;
            self.by_key_either(t)
                .or_else(|| self.aliases.get(&t).copied())
        })
    }

    fn by_key_either(&self, t: Tuple) -> Option<(FlowId, Leg)> {
        let out = self.by_key.get(&t).map(|id| (*id, Leg::Out));
        out.or_else(|| self.by_key.get(&t.reversed()).map(|id| (*id, Leg::Back)))
    }

    fn create(&mut self, inst: &Instance, orientation: Orientation) -> Option<FlowId> {
        let key = inst
            .traced_tuple()
            .or_else(|| inst.nearest_tuple(orientation))?;
        while self.flows.len() >= self.max_flows {
            self.evict_oldest();
        }
        let id = FlowId(self.next_id);
        self.next_id += 1;
        self.by_key.insert(key, id);
        let flow = FlowState {
            id,
            key,
            origin: orientation,
            first_ns: inst.first_ns(),
            last_ns: inst.last_ns(),
            out: LegState::default(),
            back: LegState::default(),
            aliases: Vec::new(),
            touched: 0,
        };
        self.flows.insert(id, flow);
        Some(id)
    }

    fn evict_oldest(&mut self) {
        let Some((_, id)) = self.lru.pop_first() else {
            return;
        };
        let Some(flow) = self.flows.remove(&id) else {
            return;
        };
        self.evicted += 1;
        if self.by_key.get(&flow.key) == Some(&id) {
            self.by_key.remove(&flow.key);
        }
        for t in flow.aliases.iter().flat_map(|t| [*t, t.reversed()]) {
            if self.aliases.get(&t).is_some_and(|(owner, _)| *owner == id) {
                self.aliases.remove(&t);
            }
        }
    }

    /// Remembers the packet's post-NAT tuples so that packets seen only there find the flow.
    fn register_aliases(&mut self, id: FlowId, leg: Leg, inst: &Instance) {
        let Some(flow) = self.flows.get_mut(&id) else {
            return;
        };
        for s in &inst.sightings {
            let t = s.tuple;
            if t == flow.key || t == flow.key.reversed() {
                continue;
            }
            self.aliases.insert(t, (id, leg));
            self.aliases.insert(t.reversed(), (id, leg.other()));
            if !flow.aliases.contains(&t) && !flow.aliases.contains(&t.reversed()) {
                flow.aliases.push(t);
            }
        }
    }
}
