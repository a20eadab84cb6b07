//! Correlation: events → packets → hops → flows → NAT steps.
//!
//! Events are buffered by fingerprint (`packets`) until no more sightings of the packet can be
//! on their way (`settle_ns`), then split into packet instances: one packet crosses each hook at
//! most once, so a repeated hook, a long gap or a tuple changed on both sides starts a new
//! instance (retransmissions and chance collisions share a tag). Each instance joins a flow
//! (`flows`) keyed by the tuple the traced side uses; packets seen only beyond NAT find their
//! flow through the NAT mappings earlier packets showed. A flow reports its hop chain per
//! direction, the NAT rewrites between hops (`nat`), and the packets that stopped short.
//!
//! Pure logic: feed it [`PacketRecord`]s and [`DropRecord`]s, recorded or live.

mod flows;
mod frags;
mod intern;
mod losses;
mod nat;
mod packets;
mod report;
mod tuple;

#[cfg(test)]
pub(crate) mod tests;

use std::sync::Arc;

use crate::model::{
    CountRecord, DropRecord, Hook, HookStats, PacketRecord, RuleAttributor, Topology,
};

use flows::{Context, FlowTable, HookIdx, Unplaced};
use packets::{Instance, Pending, Sighting};

pub use nat::NatEntry;
pub use report::{FlowId, FlowReport, HopTiming, Leg, Stop, StopCause};

/// Tuning of the correlator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CorrelateConfig {
    /// How long to wait for more sightings of a packet before finalising it.
    pub settle_ns: u64,
    /// Sightings of one tag further apart than this belong to different packets.
    pub instance_gap_ns: u64,
    /// Flows kept at most; the least recently updated is evicted (and counted) beyond.
    pub max_flows: usize,
    /// Sightings buffered at most; the least recently seen packets are finalised early beyond.
    pub max_pending: usize,
    /// A UDP or ICMP packet on a flow's tuple after this long without one starts a flow of its
    /// own: conntrack's own timeout for UDP (`nf_conntrack_udp_timeout`), after which the
    /// kernel makes a new entry and MASQUERADE may map it anew.
    pub idle_restart_ns: u64,
}

impl Default for CorrelateConfig {
    fn default() -> Self {
        Self {
            settle_ns: 200_000_000,
            instance_gap_ns: 1_000_000_000,
            max_flows: 65_536,
            max_pending: 262_144,
            idle_restart_ns: 30_000_000_000,
        }
    }
}

/// Turns hook events into flow reports.
pub(crate) struct Correlator {
    topology: Arc<Topology>,
    attributor: Option<Arc<dyn RuleAttributor>>,
    cfg: CorrelateConfig,
    pending: Pending,
    table: FlowTable,
    /// When hooks lost events, from their counters.
    losses: losses::LossLog,
    /// Where recent datagrams' first fragments went.
    datagrams: frags::Datagrams,
    /// Flows updated since the last [`Correlator::advance`] (with repeats, see `note_changed`).
    changed: Vec<FlowId>,
    ignored_events: u64,
    /// Aggregate mode: kernel counts (and drops found by tuple) waiting for a flow with their
    /// tuple, each with the hook it was counted at.
    counts: Vec<(HookIdx, CountRecord)>,
    drops_by_tuple: Vec<DropRecord>,
    /// Packets the kernel counted whose tuple no flow ever had (or whose flow was evicted).
    unattributed: u64,
    /// The time of the last [`Correlator::advance`]: counts last updated `settle_ns` before it
    /// are final for the report.
    now_ns: u64,
}

/// How long a count or a drop waits for a flow with its tuple: longer than a packet's events
/// take to settle and the kernel's counts to be drained (a tick).
const COUNT_WAIT_NS: u64 = 3_000_000_000;

impl Correlator {
    /// A correlator for the hooks of `topology`; `attributor`, when given, names the rule of each
    /// NAT step.
    pub(crate) fn new(
        topology: Arc<Topology>,
        attributor: Option<Arc<dyn RuleAttributor>>,
        cfg: CorrelateConfig,
    ) -> Self {
        Self {
            topology,
            attributor,
            cfg,
            pending: Pending::default(),
            table: FlowTable::new(cfg.max_flows, cfg.idle_restart_ns),
            losses: losses::LossLog::default(),
            datagrams: frags::Datagrams::default(),
            changed: Vec::new(),
            ignored_events: 0,
            counts: Vec::new(),
            drops_by_tuple: Vec::new(),
            unattributed: 0,
            now_ns: 0,
        }
    }

    /// Updates the topology after hooks were re-attached (a restarted container). Changed hooks
    /// are appended, never replaced: packets already recorded keep pointing at the hook (and
    /// label) they were seen at, and new events of a reused slot go to its newest hook.
    pub(crate) fn update_topology(
        &mut self,
        hooks: &[Hook],
        target_addrs: Option<&[std::net::IpAddr]>,
    ) {
        let mut topo = (*self.topology).clone();
        for h in hooks {
            let current = topo.hooks.iter().rev().find(|old| old.slot == h.slot);
            if current != Some(h) {
                topo.hooks.push(h.clone());
            }
        }
        if let Some(addrs) = target_addrs {
            for a in addrs {
                if !topo.target_addrs.contains(a) {
                    topo.target_addrs.push(*a);
                }
            }
        }
        self.topology = Arc::new(topo);
    }

    /// Buffers one packet event. Events may arrive out of time order (per-CPU buffers) by up to
    /// `settle_ns`. Events of unknown hooks or without a fingerprint (not IP) are counted and
    /// ignored.
    pub(crate) fn push(&mut self, rec: &PacketRecord) {
        // The newest hook of the slot (slots are reused when a container restarts).
        let mut hooks = self.topology.hooks.iter().enumerate().rev();
        let found = hooks.find(|(_, h)| h.slot == rec.slot);
        let Some((Ok(idx), h)) = found.map(|(i, h)| (HookIdx::try_from(i), h)) else {
            self.ignored_events += 1;
            return;
        };
        if rec.fingerprint == 0 {
            self.ignored_events += 1;
            return;
        }
        let sighting = Sighting {
            hook: idx,
            place: h.place,
            direction: h.direction,
            ktime_ns: rec.ktime_ns,
            tuple: tuple::Tuple::of(rec),
            pkt_len: rec.pkt_len,
            tcp_flags: rec.tcp_flags,
            seq: rec.seq,
        };
        let frag = frags::Frag {
            id: rec.ip_id,
            bits: rec.frag,
        };
        self.pending.push(rec.fingerprint, sighting, frag);
        if self.pending.len() > self.cfg.max_pending {
            let keep = self.cfg.max_pending / 4 * 3;
            let early = self.pending.take_oldest(keep, self.cfg.instance_gap_ns);
            self.ingest(early);
        }
    }

    /// Reads the hooks' cumulative counters, taken at `now_ns`: where they lost events, a
    /// packet's end is no evidence that it stopped there. Call it before [`Correlator::advance`]
    /// with the same tick's counters, and with the final counters before [`Correlator::finish`].
    pub(crate) fn note_counters(&mut self, now_ns: u64, stats: &[(Hook, HookStats)]) {
        self.losses.note(now_ns, stats);
    }

    /// Buffers a kernel drop; it names the reason of the packet instance with its fingerprint
    /// that started last before it. A drop of a packet no event was sent for (aggregate mode)
    /// finds its flow by its tuple instead.
    pub(crate) fn push_drop(&mut self, drop: DropRecord) {
        if drop.tuple.is_some() && !drop.traced {
            self.drops_by_tuple.push(drop);
            if self.drops_by_tuple.len() > self.cfg.max_pending {
                let extra = self.drops_by_tuple.len() - self.cfg.max_pending;
                self.drops_by_tuple.drain(..extra);
                self.pending.count_unmatched(extra as u64);
            }
            return;
        }
        self.pending.push_drop(drop);
    }

    /// Aggregate mode: what the kernel counted of one tuple at one hook. It joins the flow with
    /// that tuple once one has it (see [`Correlator::advance`]).
    pub(crate) fn push_counts(&mut self, rec: CountRecord) {
        let hooks = self.topology.hooks.iter().enumerate().rev();
        let found = hooks
            .filter(|(_, h)| h.slot == rec.slot)
            .find_map(|(i, _)| HookIdx::try_from(i).ok());
        let Some(idx) = found else {
            self.unattributed += rec.packets;
            return;
        };
        self.counts.push((idx, rec));
        if self.counts.len() > self.cfg.max_pending {
            let extra = self.counts.len() - self.cfg.max_pending;
            let dropped: u64 = self.counts.drain(..extra).map(|(_, c)| c.packets).sum();
            self.unattributed += dropped;
        }
    }

    /// Packets the kernel counted that no flow in the table had the tuple of.
    pub(crate) fn unattributed_packets(&self) -> u64 {
        self.unattributed
    }

    /// Counts and tuple-found drops to their flows; those whose flow is not there yet wait
    /// (up to [`COUNT_WAIT_NS`]).
    fn attribute_counts(&mut self, now_ns: u64) {
        let counts = std::mem::take(&mut self.counts);
        // Only counts whose packets' events have all settled: a connection that reused the
        // tuple meanwhile has its flow by then, and the count is not given to the one before.
        let settled = now_ns.saturating_sub(self.cfg.settle_ns);
        for (hook, rec) in counts {
            if rec.last_ns > settled {
                self.counts.push((hook, rec));
                continue;
            }
            match self.table.add_counts(&rec, hook) {
                Ok(id) => self.changed.push(id),
                Err(Unplaced::Mixed) => self.unattributed += rec.packets,
                Err(Unplaced::NoFlow) if now_ns.saturating_sub(rec.last_ns) < COUNT_WAIT_NS => {
                    self.counts.push((hook, rec));
                }
                Err(Unplaced::NoFlow) => self.unattributed += rec.packets,
            }
        }
        let drops = std::mem::take(&mut self.drops_by_tuple);
        for d in drops {
            let Some((proto, src, dst)) = d.tuple else {
                continue;
            };
            let t = tuple::Tuple { proto, src, dst };
            match self.table.add_drop(&t, d.reason_name.as_deref()) {
                Some(id) => self.changed.push(id),
                None if now_ns.saturating_sub(d.ktime_ns) < COUNT_WAIT_NS => {
                    self.drops_by_tuple.push(d);
                }
                None => self.pending.count_unmatched(1),
            }
        }
    }

    /// Finalises the packets whose last sighting is `settle_ns` older than `now_ns` (kernel
    /// monotonic time) and returns the flows updated since the last call, in id order.
    pub(crate) fn advance(&mut self, now_ns: u64) -> Vec<FlowId> {
        let cutoff = now_ns.saturating_sub(self.cfg.settle_ns);
        let settled = self.pending.take_settled(cutoff, self.cfg.instance_gap_ns);
        self.ingest(settled);
        self.now_ns = self.now_ns.max(now_ns);
        self.attribute_counts(now_ns);
        self.take_changed()
    }

    /// Finalises every buffered packet (end of trace) and returns the flows updated since the
    /// last [`Correlator::advance`].
    pub(crate) fn finish(&mut self) -> Vec<FlowId> {
        self.advance(u64::MAX)
    }

    /// Every flow in the table, in the order first seen. For many flows prefer
    /// [`Correlator::flow_ids`] and [`Correlator::flow`]: one report at a time.
    #[cfg(test)]
    pub(crate) fn flows(&self) -> Vec<FlowReport> {
        let ids = self.flow_ids();
        ids.into_iter().filter_map(|id| self.flow(id)).collect()
    }

    /// Flows in the table.
    pub(crate) fn flow_count(&self) -> usize {
        self.table.len()
    }

    /// The ids of the flows in the table, in the order first seen.
    pub(crate) fn flow_ids(&self) -> Vec<FlowId> {
        self.table.ids()
    }

    /// One flow, unless it was evicted.
    pub(crate) fn flow(&self, id: FlowId) -> Option<FlowReport> {
        let flow = self.table.get(id)?;
        let frags = self.table.frag_hops(id);
        let counts = (flow.is_counted() && !flow.counts_mixed).then(|| report::Counted {
            // Counts are taken in once their events settled; a flow whose last one is older
            // than a few of those steps gets no more (a packet between two hooks has arrived).
            settled: flow.counts_last_ns.saturating_add(3 * self.cfg.settle_ns) <= self.now_ns,
            drops: self.table.drops_of(id),
            losses: &self.losses,
        });
        let mut report = FlowReport::build(flow, &self.topology, self.table.pool(), frags, counts);
        report.before_path_complete = self.losses.attaching_at(report.first_ns);
        if flow.counts_mixed {
            report.notes.push(
                "a new connection reused this tuple within one count interval: the kernel counted packets of both together, so the counts shown are of the packets followed event by event (every packet of a short connection; for a longer one, fewer than it had)".to_string(),
            );
        }
        Some(report)
    }

    /// A renderer's note about a flow (e.g. a hash of what it printed; 0 until it writes one),
    /// kept for as long as the flow is in the table: the renderer needs no per-flow map of its
    /// own to bound. `None` once the flow was evicted.
    pub(crate) fn mark_mut(&mut self, id: FlowId) -> Option<&mut u64> {
        self.table.get_mut(id).map(|f| &mut f.mark)
    }

    /// Records the kernel conntrack table's verdict on the flow's `n`th NAT step of the
    /// opening direction (as in [`FlowReport::nat`]); reports show it from now on.
    pub(crate) fn confirm(&mut self, id: FlowId, n: usize, verdict: bool) {
        let Some(f) = self.table.get_mut(id) else {
            return;
        };
        if let Some(rec) = f.nat.iter_mut().filter(|r| r.leg == Leg::Out).nth(n) {
            rec.conntrack = Some(verdict);
        }
    }

    /// Flows dropped from the table to stay within `max_flows`.
    pub(crate) fn evicted_flows(&self) -> u64 {
        self.table.evicted()
    }

    /// Drop events that matched no packet.
    pub(crate) fn unmatched_drops(&self) -> u64 {
        self.pending.unmatched_drops()
    }

    /// IP fragments after the first whose first fragment was never seen: not in any flow.
    pub(crate) fn orphan_fragments(&self) -> u64 {
        self.datagrams.orphans
    }

    /// Events ignored: unknown hook slot, or no fingerprint.
    pub(crate) fn ignored_events(&self) -> u64 {
        self.ignored_events
    }

    /// Distinct addresses the flow table holds.
    #[cfg(test)]
    pub(crate) fn pooled_addrs(&self) -> usize {
        self.table.pool().addrs.len()
    }

    #[cfg(test)]
    /// Sightings still waiting to settle.
    pub(crate) fn pending_sightings(&self) -> usize {
        self.pending.len()
    }

    fn ingest(&mut self, instances: Vec<Instance>) {
        let ctx = Context {
            topology: &self.topology,
            attributor: self.attributor.as_deref(),
            losses: &self.losses,
        };
        let (packets, later) = frags::assemble(instances);
        let mut changed = |id: FlowId| {
            // A busy flow's packets come one after another: note it once per run of them.
            if self.changed.last() != Some(&id) {
                self.changed.push(id);
            }
        };
        for inst in &packets {
            // The whole form of a datagram whose first fragment settled before.
            if let Some(seen) = self.datagrams.of_whole(inst) {
                if self
                    .table
                    .add_whole(seen.flow, seen.leg, seen.first_ns, inst, &ctx)
                {
                    changed(seen.flow);
                    continue;
                }
            }
            if let Some((id, leg)) = self.table.add(inst, &ctx) {
                if inst.frag.is_first() {
                    self.datagrams.note_first(inst, id, leg);
                }
                changed(id);
            }
        }
        for inst in &later {
            match self.datagrams.of_later(inst) {
                Some(seen) if self.table.add_later(seen.flow, seen.leg, inst) => changed(seen.flow),
                _ => self.datagrams.orphans += 1,
            }
        }
        // Bounded between ticks even when one busy flow updates over and over.
        if self.changed.len() > 2 * self.table.len() + 1024 {
            self.changed.sort_unstable();
            self.changed.dedup();
        }
    }

    fn take_changed(&mut self) -> Vec<FlowId> {
        let mut changed = std::mem::take(&mut self.changed);
        changed.sort_unstable();
        changed.dedup();
        changed.retain(|id| self.table.get(*id).is_some());
        changed
    }
}
