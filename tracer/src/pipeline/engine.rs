//! The engine: a session's events in, [`Update`]s out. It correlates events into flows (see
//! `correlate`), has each changed flow annotated ([`super::annotate`], off the async loop), and
//! hands a [`Renderer`] the stream of updates: flows as they change (at most every tick), notes,
//! then every flow in its final state and the summary. Live traces and replays of a capture go
//! through the same engine, so they print the same.
//!
//! Every count it keeps reaches the summary: flows evicted, events it had no hook for, drop
//! reports that matched no packet, and what the session could not decode or send.

use std::{collections::HashMap, net::IpAddr, sync::Arc};

use crate::{
    collect::Event,
    correlate::{CorrelateConfig, Correlator, FlowId, FlowReport},
    model::{Hook, HookStats, RuleAttributor, Topology},
    render::{Renderer, Summary, Unused, Update},
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
        // Updates still being annotated were due before the end: they go out as updates.
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
        let (stop, stats, undecodable, drops_lost) = match &self.end {
            Some((why, end)) => (
                Some(*why),
                end.stats.as_slice(),
                end.undecodable,
                end.drops.map_or(0, |d| d.lost),
            ),
            None => (None, &[][..], 0, 0),
        };
        let summary = Summary {
            flows,
            evicted: self.correlator.evicted_flows(),
            hooks: stats,
            unused: Unused {
                undecodable,
                ignored_events: self.correlator.ignored_events(),
                unmatched_drops: self.correlator.unmatched_drops(),
                drops_lost,
            },
        };
        self.renderer.update(Update::Summary(&summary));
        self.renderer.close();
        Outcome { flows, stop }
    }

    /// The flows `advance` found changed: annotated first when there are annotators (off this
    /// thread; a full queue sends the flow as it is), then rendered.
    fn report_changed(&mut self, ids: Vec<FlowId>) {
        if !self.renderer.wants_changes() {
            return;
        }
        for id in ids {
            let Some(flow) = self.correlator.flow(id) else {
                continue;
            };
            let unannotated = match self.annotation.as_mut() {
                Some(a) => a.try_submit(flow),
                None => Some(flow),
            };
            if let Some(flow) = unannotated {
                self.render_changed(&flow);
            }
        }
    }

    /// Takes back the updates the annotation thread is done with.
    fn collect_annotated(&mut self) {
        while let Some(flow) = self.annotation.as_mut().and_then(Annotation::ready) {
            self.changed_annotated(flow);
        }
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
                Event::Packet(p) => self.correlator.push(p),
                Event::Drop(d) => self.correlator.push_drop(d.clone()),
            }
        }
        self.collect_annotated();
    }

    fn tick(&mut self, now_ns: u64, stats: &[(Hook, HookStats)]) {
        self.collect_annotated();
        let ids = self.correlator.advance(now_ns);
        self.report_changed(ids);
        self.warn_lost(stats);
    }

    fn hooks_changed(&mut self, hooks: &[Hook], target_addrs: Option<&[IpAddr]>) {
        self.correlator.update_topology(hooks, target_addrs);
    }

    fn note(&mut self, msg: &str) {
        self.renderer.update(Update::Note(msg));
    }

    fn finished(&mut self, why: StopReason, end: &Finished) {
        self.end = Some((why, end.clone()));
    }
}
