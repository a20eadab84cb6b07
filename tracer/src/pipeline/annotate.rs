//! Annotators: what the engine adds to a flow report from outside the trace before it is
//! rendered: the kernel conntrack table's verdict on each NAT step ([`ConntrackConfirm`]), and what
//! the container runtime knows ([`RuntimeNotes`], e.g. a connection docker-proxy carries).
//!
//! They ask the kernel over netlink, which can block (2 s at worst, per question), so they run on
//! a thread of their own ([`Annotation`]) and the async loop only hands reports over and takes
//! them back: a slow answer delays one flow's line, never the reading of the ring buffer. The
//! thread is made from the caller's thread, so it asks in the namespace the trace runs in (the
//! host's).

use std::{
    panic::AssertUnwindSafe,
    sync::mpsc::{self, Receiver, SyncSender, TrySendError},
    thread::JoinHandle,
};

use std::sync::Arc;

use crate::{
    correlate::FlowReport,
    discover::{conntrack, nat_rules::NatRuleset},
    model::{NatKind, NatStep, RuleConfidence},
    runtime::FlowNotes,
};

/// Adds to a flow report what the trace alone does not know. May block.
pub trait Annotator: Send {
    fn annotate(&mut self, flow: &mut FlowReport);
}

/// The conntrack table's verdict on each NAT step of the opening direction that has none yet:
/// `Some(true)` when the kernel's entry shows the same mapping, `Some(false)` when another; left
/// `None` (asked again on the next update) while there is no entry.
pub(crate) struct ConntrackConfirm;

impl Annotator for ConntrackConfirm {
    fn annotate(&mut self, flow: &mut FlowReport) {
        let (src, dst, proto) = (flow.src, flow.dst, flow.proto);
        for entry in &mut flow.nat {
            let step = &mut entry.step;
            if step.conntrack.is_some() {
                continue;
            }
            let peer = match step.kind {
                NatKind::Snat => dst,
                NatKind::Dnat => src,
            };
            step.conntrack = conntrack::confirms(step, peer, proto).unwrap_or_else(|e| {
                tracing::debug!("conntrack lookup: {e}");
                None
            });
        }
    }
}

/// Counters read at most this often (each read runs the ruleset's tools again).
const COUNTERS_EVERY_NS: u64 = 250_000_000;
/// Counter readings kept (one per read: a few per second while new flows come).
const READINGS: usize = 64;

/// The rule counters' word on each NAT step of the opening direction. netfilter's NAT chains
/// see a connection's first packet only, so a rule whose packet counter moved between the
/// readings just before and just after a flow's first packet NATed some connection then. Of
/// several candidates, the only one that moved then is chosen ([`RuleConfidence::Counters`]); a
/// rule the walk chose whose counter did not move then is refuted (it becomes the one
/// candidate, with why). Rules without a counter (nftables rules without a `counter` statement)
/// say nothing. Counters count every connection, not this flow's only: where others were NATed
/// in the same interval, the counters can only narrow the choice.
pub(crate) struct RuleCounters {
    rules: Arc<NatRuleset>,
    /// Readings, oldest first: when (kernel monotonic time) and each rule's counter. The
    /// ruleset's own (read before tracing began) stand for time 0.
    readings: std::collections::VecDeque<(u64, Vec<Option<u64>>)>,
}

impl RuleCounters {
    pub(crate) fn new(rules: Arc<NatRuleset>) -> Self {
        let start = rules.parsed().iter().map(|r| r.counter).collect();
        Self {
            rules,
            readings: std::iter::once((0, start)).collect(),
        }
    }

    /// The readings just before `first_ns` and just after it (reading the counters now when
    /// none is after it yet, at most every [`COUNTERS_EVERY_NS`]).
    fn window(&mut self, first_ns: u64) -> Option<(usize, usize)> {
        // NAT happens within microseconds of the first sighting; a millisecond is plenty.
        let after_ns = first_ns.saturating_add(1_000_000);
        if self.readings.back().is_none_or(|(at, _)| *at <= after_ns) {
            let now_ns = super::session::monotonic_ns();
            let last = self.readings.back().map_or(0, |(at, _)| *at);
            if now_ns.saturating_sub(last) < COUNTERS_EVERY_NS || now_ns <= after_ns {
                return None;
            }
            match self.rules.counters_now() {
                Ok(c) => self.readings.push_back((now_ns, c)),
                Err(e) => {
                    tracing::debug!("rule counters: {e}");
                    return None;
                }
            }
            if self.readings.len() > READINGS {
                // The ruleset's own reading stays: it is the start of every early window.
                self.readings.remove(1);
            }
        }
        let before = self.readings.iter().rposition(|(at, _)| *at <= first_ns)?;
        let after = self.readings.iter().position(|(at, _)| *at > after_ns)?;
        Some((before, after))
    }

    /// Whether the rule with this text NATed a connection between two readings; `None` when
    /// it has no counter.
    fn moved(&self, (before, after): (usize, usize), text: &str) -> Option<bool> {
        let i = self.rules.index_of(text)?;
        let at = |r: usize| self.readings.get(r)?.1.get(i).copied().flatten();
        Some(at(after)? > at(before)?)
    }

    fn judge(&self, step: &mut NatStep, window: (usize, usize)) {
        match step.rule_confidence {
            Some(RuleConfidence::Candidates) => {
                let verdicts: Vec<Option<bool>> = step
                    .candidates
                    .iter()
                    .map(|c| self.moved(window, c))
                    .collect();
                let moved: Vec<usize> = (0..verdicts.len())
                    .filter(|&i| verdicts[i] == Some(true))
                    .collect();
                if let ([one], false) = (moved.as_slice(), verdicts.contains(&None)) {
                    step.rule = Some(step.candidates[*one].clone());
                    step.rule_confidence = Some(RuleConfidence::Counters);
                }
            }
            Some(RuleConfidence::Evaluated) => {
                let Some(rule) = step.rule.clone() else {
                    return;
                };
                if self.moved(window, &rule) == Some(false) {
                    step.rule = None;
                    step.rule_confidence = Some(RuleConfidence::Candidates);
                    step.candidates = vec![rule];
                    step.why = Some(
                        "the walk of the ruleset chose it, but its counter did not move when the flow began"
                            .into(),
                    );
                }
            }
            _ => {}
        }
    }
}

impl Annotator for RuleCounters {
    fn annotate(&mut self, flow: &mut FlowReport) {
        let judged = |s: &NatStep| {
            matches!(
                s.rule_confidence,
                Some(RuleConfidence::Candidates | RuleConfidence::Evaluated)
            )
        };
        if !flow.nat.iter().any(|e| judged(&e.step)) {
            return;
        }
        // Not yet (no reading after the flow began, and one was made a moment ago): the flow
        // is judged on a later update, or in the final report.
        let Some(window) = self.window(flow.first_ns) else {
            return;
        };
        for e in &mut flow.nat {
            self.judge(&mut e.step, window);
        }
    }
}

/// Flows that cross a tunnel uplink: where pathtrace's view of them ends. The hook sees the
/// inner packet (before encapsulation on the way out, after decapsulation on the way back);
/// what the tunnel sends is another packet, to its remote, which is not followed.
pub(crate) struct TunnelNotes(pub Vec<(String, String)>);

impl TunnelNotes {
    /// The note for flows crossing `label`, a `what` (see [`crate::discover::path::DiscoveredPath::tunnels`]).
    pub(crate) fn note(label: &str, what: &str) -> String {
        format!(
            "{label} is a {what}: pathtrace sees the packets there before encapsulation (after \
             decapsulation on the way back) and does not follow the encapsulated packets"
        )
    }
}

impl Annotator for TunnelNotes {
    fn annotate(&mut self, flow: &mut FlowReport) {
        for (label, what) in &self.0 {
            let crosses = flow
                .hops
                .iter()
                .chain(&flow.hops_back)
                .any(|h| &h.hook == label);
            if crosses {
                flow.notes.push(Self::note(label, what));
            }
        }
    }
}

/// The same note on every flow (how the trace found its packets, when every flow should say).
pub(crate) struct EveryFlowNote(pub String);

impl Annotator for EveryFlowNote {
    fn annotate(&mut self, flow: &mut FlowReport) {
        flow.notes.push(self.0.clone());
    }
}

/// The runtime's notes on a flow (see [`crate::runtime::ContainerRuntime::flow_notes`]).
pub(crate) struct RuntimeNotes(pub Box<dyn FlowNotes>);

impl Annotator for RuntimeNotes {
    fn annotate(&mut self, flow: &mut FlowReport) {
        let notes = self.0.notes(flow);
        flow.notes.extend(notes);
    }
}

/// Reports handed to the annotation thread and not taken back, at most. Enough to keep it busy;
/// few, because a report holds a flow's hops and steps while it waits (the engine keeps the ids
/// of flows beyond this, which cost 8 bytes each, and builds their reports when there is room).
const QUEUE: usize = 64;

/// The annotation thread: reports go in, annotated, in the order they came.
pub(crate) struct Annotation {
    jobs: Option<SyncSender<FlowReport>>,
    done: Option<Receiver<FlowReport>>,
    thread: Option<JoinHandle<()>>,
    in_flight: usize,
}

impl Annotation {
    /// A thread running `annotators` in order on every report; `None` when there are none.
    pub(crate) fn spawn(annotators: Vec<Box<dyn Annotator>>) -> Option<Self> {
        if annotators.is_empty() {
            return None;
        }
        let (jobs, rx) = mpsc::sync_channel::<FlowReport>(QUEUE);
        // Unbounded, but never longer than `QUEUE` plus what the engine takes back each drain.
        let (tx, done) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("pathtrace-annotate".into())
            .spawn(move || {
                let mut annotators = annotators;
                for mut flow in rx {
                    // An annotator that panics costs the flow its annotations, never the flow.
                    let annotated = std::panic::catch_unwind(AssertUnwindSafe(|| {
                        for a in &mut annotators {
                            a.annotate(&mut flow);
                        }
                    }));
                    if annotated.is_err() {
                        tracing::warn!("annotating flow {} failed; it is shown as traced", flow.id);
                    }
                    if tx.send(flow).is_err() {
                        return;
                    }
                }
            });
        let thread = match thread {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!("annotation thread: {e}; flows are shown without conntrack verdicts or runtime notes");
                return None;
            }
        };
        Some(Self {
            jobs: Some(jobs),
            done: Some(done),
            thread: Some(thread),
            in_flight: 0,
        })
    }

    /// Queues a report without waiting; gives it back when the queue is full.
    pub(crate) fn try_submit(&mut self, flow: FlowReport) -> Option<FlowReport> {
        let Some(jobs) = &self.jobs else {
            return Some(flow);
        };
        match jobs.try_send(flow) {
            Ok(()) => {
                self.in_flight += 1;
                None
            }
            Err(TrySendError::Full(flow) | TrySendError::Disconnected(flow)) => Some(flow),
        }
    }

    /// Queues a report, waiting for room; gives it back when the thread is gone.
    pub(crate) fn submit(&mut self, flow: FlowReport) -> Option<FlowReport> {
        let Some(jobs) = &self.jobs else {
            return Some(flow);
        };
        match jobs.send(flow) {
            Ok(()) => {
                self.in_flight += 1;
                None
            }
            Err(mpsc::SendError(flow)) => Some(flow),
        }
    }

    /// An annotated report that is ready, without waiting.
    pub(crate) fn ready(&mut self) -> Option<FlowReport> {
        let flow = self.done.as_ref()?.try_recv().ok()?;
        self.in_flight -= 1;
        Some(flow)
    }

    /// The next annotated report, waiting for it; `None` when none is in flight (or the thread
    /// is gone, which it is only after a panic outside an annotator).
    pub(crate) fn wait(&mut self) -> Option<FlowReport> {
        if self.in_flight == 0 {
            return None;
        }
        match self.done.as_ref()?.recv() {
            Ok(flow) => {
                self.in_flight -= 1;
                Some(flow)
            }
            Err(_) => {
                let lost = std::mem::take(&mut self.in_flight);
                tracing::error!("the annotation thread ended with {lost} flows in hand");
                None
            }
        }
    }

    /// Reports handed over and not taken back yet.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight
    }
}

impl Drop for Annotation {
    fn drop(&mut self) {
        // Closing both ends ends the thread after the report in hand: what is still queued is
        // not asked about.
        self.jobs = None;
        self.done = None;
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::warn!("the annotation thread panicked");
            }
        }
    }
}
