//! The engine: a session's events in, [`Update`]s out. It correlates events into flows (see
//! `correlate`), has each changed flow annotated ([`super::annotate`], off the async loop), and
//! hands a [`Renderer`] the stream of updates: flows as they change (at most every tick), notes,
//! then every flow in its final state and the summary. Live traces and replays of a capture go
//! through the same engine, so they print the same.
//!
//! Every count it keeps reaches the summary: flows evicted, events it had no hook for, drop
//! reports that matched no packet, and what the session could not decode or send.

use std::{
    collections::{HashMap, VecDeque},
    net::IpAddr,
    sync::Arc,
};

use crate::{
    collect::Event,
    correlate::{CorrelateConfig, Correlator, FlowId, FlowReport},
    model::{CountRecord, Hook, HookStats, Reporting, RuleAttributor, Topology},
    render::{Progress, Renderer, Summary, Unused, Update},
};

use super::{
    annotate::{Annotation, Annotator},
    session::{Finished, Observer, StopReason},
};

/// Annotated reports of the final report kept in flight at once: enough to keep the annotation
/// thread busy, few enough that the final report of 100k flows costs no more memory than the
/// table.
const FINAL_WINDOW: usize = 64;

/// How a trace ended, for the verb.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Flows in the final report.
    pub flows: usize,
    /// Why the session stopped (`None` for a replay).
    pub stop: Option<StopReason>,
}

/// Correlates a session's events and renders what it finds; see the module doc.
pub struct Engine<'r> {
    correlator: Correlator,
    annotation: Option<Annotation>,
    renderer: &'r mut dyn Renderer,
    /// Changed flows waiting for room on the annotation thread, oldest first.
    backlog: VecDeque<FlowId>,
    /// At most as many as the table holds flows (twice: a flow may wait with an older change).
    backlog_max: usize,
    /// Lost count last warned about, per slot (warned again only when it doubles).
    hooks_lost: HashMap<u8, u64>,
    end: Option<(StopReason, Finished)>,
}

impl<'r> Engine<'r> {
    /// An engine for the hooks of `topology`, rendering into `renderer`. `attributor` names the
    /// rule of each NAT step; `annotators` run on every flow before it is rendered.
    pub fn new(
        topology: Arc<Topology>,
        attributor: Option<Arc<dyn RuleAttributor>>,
        max_flows: usize,
        annotators: Vec<Box<dyn Annotator>>,
        renderer: &'r mut dyn Renderer,
    ) -> Self {
        let cfg = CorrelateConfig {
            max_flows,
            ..CorrelateConfig::default()
        };
        Self {
            correlator: Correlator::new(topology, attributor, cfg),
            annotation: Annotation::spawn(annotators),
            renderer,
            backlog: VecDeque::new(),
            backlog_max: max_flows.saturating_mul(2),
            hooks_lost: HashMap::new(),
            end: None,
        }
    }

    /// Feeds events without a session (a replay).
    pub(crate) fn feed(&mut self, events: &[Event]) {
        self.events(events);
    }

    /// The final report: every flow, then the summary, written out before this returns. Flows
    /// are built, annotated and rendered a few at a time, so the report costs no more memory
    /// than the table.
    pub fn finish(&mut self) -> Outcome {
        self.correlator.finish();
        // Updates still being annotated were due before the end: they go out as updates. Those
        // still waiting for room are superseded by the final report.
        self.backlog.clear();
        while let Some(flow) = self.annotation.as_mut().and_then(Annotation::wait) {
            self.changed_annotated(flow);
        }
        self.renderer.update(Update::Final);
        let ids = self.correlator.flow_ids();
        let flows = ids.len();
        for id in ids {
            let Some(flow) = self.correlator.flow(id) else {
                continue;
            };
            let Some(annotation) = self.annotation.as_mut() else {
                self.renderer.update(Update::FlowFinal(&flow));
                continue;
            };
            if let Some(flow) = annotation.submit(flow) {
                self.renderer.update(Update::FlowFinal(&flow));
            }
            if annotation.in_flight() > FINAL_WINDOW {
                self.final_annotated();
            }
        }
        while self.annotation.as_ref().is_some_and(|a| a.in_flight() > 0) {
            self.final_annotated();
        }
        let (stop, stats, released, undecodable, drops_lost, reporting, filter) = match &self.end {
            Some((why, end)) => (
                Some(*why),
                end.stats.as_slice(),
                end.released.as_slice(),
                end.undecodable,
                end.drops.map_or(0, |d| d.lost),
                end.reporting,
                end.filter.as_deref(),
            ),
            None => (None, &[][..], &[][..], 0, 0, Reporting::EveryPacket, None),
        };
        let summary = Summary {
            flows,
            evicted: self.correlator.evicted_flows(),
            hooks: stats,
            released,
            unused: Unused {
                undecodable,
                ignored_events: self.correlator.ignored_events(),
                unmatched_drops: self.correlator.unmatched_drops(),
                orphan_fragments: self.correlator.orphan_fragments(),
                drops_lost,
                unattributed_packets: self.correlator.unattributed_packets(),
            },
            reporting,
            filter,
        };
        self.renderer.update(Update::Summary(&summary));
        self.renderer.close();
        Outcome { flows, stop }
    }

    /// The flows `advance` found changed: rendered at once, or with annotators queued for them
    /// (off this thread) and rendered when they are done.
    fn report_changed(&mut self, ids: Vec<FlowId>) {
        if !self.renderer.wants_changes() {
            return;
        }
        if self.annotation.is_some() {
            // Bounded by the table: a flow's id waits here at most once per change.
            self.backlog.extend(ids);
            self.backlog.truncate(self.backlog_max);
            self.feed_annotation();
            return;
        }
        for id in ids {
            if let Some(flow) = self.correlator.flow(id) {
                self.render_changed(&flow);
            }
        }
    }

    /// Hands the annotation thread the reports of waiting flows while it has room, built now (so
    /// they are as fresh as they can be).
    fn feed_annotation(&mut self) {
        while let Some(id) = self.backlog.pop_front() {
            let Some(flow) = self.correlator.flow(id) else {
                continue;
            };
            let Some(annotation) = self.annotation.as_mut() else {
                return;
            };
            if annotation.try_submit(flow).is_some() {
                self.backlog.push_front(id);
                return;
            }
        }
    }

    /// Takes back the updates the annotation thread is done with, and gives it more.
    fn collect_annotated(&mut self) {
        while let Some(flow) = self.annotation.as_mut().and_then(Annotation::ready) {
            self.changed_annotated(flow);
        }
        self.feed_annotation();
    }

    fn changed_annotated(&mut self, flow: FlowReport) {
        self.keep_verdicts(&flow);
        self.render_changed(&flow);
    }

    fn final_annotated(&mut self) {
        if let Some(flow) = self.annotation.as_mut().and_then(Annotation::wait) {
            self.keep_verdicts(&flow);
            self.renderer.update(Update::FlowFinal(&flow));
        }
    }

    /// A conntrack verdict, once the entry was found, is kept with the flow and not asked again.
    fn keep_verdicts(&mut self, flow: &FlowReport) {
        for (n, entry) in flow.nat.iter().enumerate() {
            if let Some(verdict) = entry.step.conntrack {
                self.correlator.confirm(flow.id, n, verdict);
            }
        }
    }

    fn render_changed(&mut self, flow: &FlowReport) {
        let mut evicted = 0;
        let printed = self.correlator.mark_mut(flow.id).unwrap_or(&mut evicted);
        self.renderer.update(Update::FlowChanged { flow, printed });
    }

    /// Warns (once per doubling) about hooks whose events the ring buffer had no room for.
    fn warn_lost(&mut self, stats: &[(Hook, HookStats)]) {
        for (h, s) in stats {
            let warned = self.hooks_lost.get(&h.slot).copied().unwrap_or(0);
            if s.lost > 0 && s.lost >= warned.saturating_mul(2).max(1) {
                self.hooks_lost.insert(h.slot, s.lost);
                tracing::warn!(
                    "{} events lost at {} {}: ring buffer full",
                    s.lost,
                    h.label(),
                    h.direction
                );
            }
        }
    }
}

impl Observer for Engine<'_> {
    fn attached(&mut self, mode: &str, hooks: &[Hook]) {
        self.renderer.update(Update::Started { mode, hooks });
    }

    fn events(&mut self, events: &[Event]) {
        for e in events {
            match e {
                Event::Packet(p) => {
                    self.correlator.push(p);
                    if p.why & tracer_common::event::WHY_UNCOUNTED != 0 {
                        // The kernel's flow map had no room: this event is the packet's count.
                        self.correlator.push_counts(CountRecord::of_packet(p));
                    }
                }
                Event::Drop(d) => self.correlator.push_drop(d.clone()),
                Event::Counts(c) => self.correlator.push_counts(*c),
            }
        }
        self.collect_annotated();
    }

    fn tick(&mut self, now_ns: u64, stats: &[(Hook, HookStats)]) {
        self.collect_annotated();
        // Before the packets that settle now are placed: where the ring buffer had no room, an
        // end is no evidence of a loss.
        self.correlator.note_counters(now_ns, stats);
        let ids = self.correlator.advance(now_ns);
        self.report_changed(ids);
        self.warn_lost(stats);
        let progress = Progress {
            sightings: stats.iter().map(|(_, s)| s.emitted + s.aggregated).sum(),
            flows: self.correlator.flow_count(),
            lost: stats.iter().map(|(_, s)| s.lost).sum(),
        };
        self.renderer.update(Update::Progress(&progress));
    }

    fn hooks_changed(&mut self, hooks: &[Hook], target_addrs: Option<&[IpAddr]>) {
        self.correlator.update_topology(hooks, target_addrs);
    }

    fn note(&mut self, msg: &str) {
        self.renderer.update(Update::Note(msg));
    }

    fn finished(&mut self, why: StopReason, end: &Finished) {
        self.correlator
            .note_counters(super::session::monotonic_ns(), &end.stats);
        self.end = Some((why, end.clone()));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{
        correlate::tests::{lab, masq_back, masq_out},
        model::{PacketRecord, RuleAttributor},
    };

    const SERVER: &str = "10.200.2.2:8080";

    /// What a renderer was told, in order.
    #[derive(Default)]
    struct Log {
        live: bool,
        seen: Vec<String>,
        finals: Vec<FlowReport>,
        unused: Option<Unused>,
    }

    impl Renderer for Log {
        fn wants_changes(&self) -> bool {
            self.live
        }
        fn update(&mut self, update: Update<'_>) {
            let line = match update {
                Update::Started { hooks, .. } => format!("started {}", hooks.len()),
                Update::FlowChanged { flow, printed } => {
                    *printed += 1;
                    format!("changed {} (printed {printed})", flow.id)
                }
                Update::Note(n) => format!("note {n}"),
                // Every tick: not what these tests follow.
                Update::Progress(_) => return,
                Update::Final => "final".into(),
                Update::FlowFinal(flow) => {
                    self.finals.push(flow.clone());
                    format!("flow {}", flow.id)
                }
                Update::Summary(s) => {
                    self.unused = Some(s.unused);
                    format!("summary {} flows", s.flows)
                }
            };
            self.seen.push(line);
        }
    }

    /// Notes every flow; panics on the flow with `panic_on`.
    struct Noting {
        panic_on: u64,
    }

    impl Annotator for Noting {
        fn annotate(&mut self, flow: &mut FlowReport) {
            assert_ne!(flow.id.0, self.panic_on, "an annotator's bug");
            flow.notes.push(format!("seen {}", flow.id));
        }
    }

    /// Three connections from three source ports, each a request and its reply.
    fn three_flows() -> Vec<Event> {
        let mut records: Vec<PacketRecord> = Vec::new();
        for (i, port) in [41000u16, 41001, 41002].into_iter().enumerate() {
            let (t, fp) = (1_000 * i as u64, 100 + 2 * i as u64);
            records.extend(masq_out(fp, t, port, port, SERVER));
            records.extend(masq_back(fp + 1, t + 100, port, port, SERVER));
        }
        records.into_iter().map(Event::Packet).collect()
    }

    fn engine<'r>(annotators: Vec<Box<dyn Annotator>>, log: &'r mut Log) -> Engine<'r> {
        let rules: Option<Arc<dyn RuleAttributor>> = None;
        Engine::new(Arc::new(lab()), rules, 1024, annotators, log)
    }

    #[test]
    fn every_flow_once_in_order_annotated_even_when_an_annotator_panics() {
        let mut log = Log::default();
        let mut e = engine(vec![Box::new(Noting { panic_on: 2 })], &mut log);
        e.feed(&three_flows());
        let outcome = e.finish();
        drop(e);
        assert_eq!(
            outcome,
            Outcome {
                flows: 3,
                stop: None
            }
        );
        let ids: Vec<u64> = log.finals.iter().map(|f| f.id.0).collect();
        assert_eq!(ids, [1, 2, 3]);
        let notes: Vec<&[String]> = log.finals.iter().map(|f| f.notes.as_slice()).collect();
        assert_eq!(notes[0], ["seen 1"]);
        assert!(
            notes[1].is_empty(),
            "the panicking annotator's flow is shown as traced"
        );
        assert_eq!(notes[2], ["seen 3"]);
        assert_eq!(log.seen.first().map(String::as_str), Some("final"));
        assert_eq!(log.seen.last().map(String::as_str), Some("summary 3 flows"));
    }

    #[test]
    fn changes_go_out_on_ticks_with_the_renderers_mark_kept_per_flow() {
        let mut log = Log {
            live: true,
            ..Log::default()
        };
        let mut e = engine(Vec::new(), &mut log);
        e.attached("tcx", &lab().hooks);
        e.feed(&three_flows());
        e.tick(u64::MAX, &[]);
        e.note("container restarted");
        // The same flows again, later: changed again, and the mark the renderer left is back.
        let later: Vec<Event> = masq_out(500, 10_000, 41000, 41000, SERVER)
            .into_iter()
            .map(Event::Packet)
            .collect();
        e.feed(&later);
        e.tick(u64::MAX, &[]);
        e.finish();
        drop(e);
        assert_eq!(
            log.seen[..7],
            [
                "started 8",
                "changed 1 (printed 1)",
                "changed 2 (printed 1)",
                "changed 3 (printed 1)",
                "note container restarted",
                "changed 1 (printed 2)",
                "final",
            ]
        );
    }

    #[test]
    fn more_changes_than_the_annotation_queue_all_go_out_annotated() {
        let mut log = Log {
            live: true,
            ..Log::default()
        };
        let mut e = engine(vec![Box::new(Noting { panic_on: 0 })], &mut log);
        let mut records: Vec<PacketRecord> = Vec::new();
        for i in 0..200u16 {
            records.extend(masq_out(
                1_000 + u64::from(i),
                0,
                30_000 + i,
                30_000 + i,
                SERVER,
            ));
        }
        let events: Vec<Event> = records.into_iter().map(Event::Packet).collect();
        e.feed(&events);
        e.tick(u64::MAX, &[]);
        let changed = |e: &Engine<'_>| e.backlog.len();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while (changed(&e) > 0 || e.annotation.as_ref().is_some_and(|a| a.in_flight() > 0))
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(5));
            e.tick(u64::MAX, &[]);
        }
        e.finish();
        drop(e);
        let changed: Vec<&String> = log
            .seen
            .iter()
            .filter(|l| l.starts_with("changed"))
            .collect();
        assert_eq!(
            changed.len(),
            200,
            "every change, in spite of a queue of 64"
        );
        assert_eq!(log.finals.len(), 200);
        assert!(
            log.finals.iter().all(|f| f.notes.len() == 1),
            "annotated once each"
        );
    }

    #[test]
    fn the_summary_counts_what_went_unused() {
        let mut log = Log::default();
        let mut e = engine(Vec::new(), &mut log);
        let mut stray = masq_out(900, 0, 42000, 42000, SERVER);
        stray.truncate(1);
        stray[0].slot = 20; // no hook of the topology has this slot
        let events: Vec<Event> = stray.into_iter().map(Event::Packet).collect();
        e.feed(&events);
        let end = Finished {
            undecodable: 2,
            drops: Some(HookStats {
                lost: 3,
                ..HookStats::default()
            }),
            ..Finished::default()
        };
        e.finished(StopReason::Duration, &end);
        let outcome = e.finish();
        drop(e);
        assert_eq!(outcome.stop, Some(StopReason::Duration));
        let want = Unused {
            undecodable: 2,
            ignored_events: 1,
            unmatched_drops: 0,
            orphan_fragments: 0,
            drops_lost: 3,
            unattributed_packets: 0,
        };
        assert_eq!(log.unused, Some(want));
    }
}
