//! The engine room: everything between "this is what to attach" and "this is what to print".
//!
//! ```text
//!  plan ──► session ──► (capture::record) ──► engine ──► annotate ──► Renderer
//!  hooks,   attach, read     -w FILE          correlate   conntrack,   text, JSON,
//!  topology ring buffer,     (raw events)     flows, NAT  runtime      collect
//!  rules    counters, detach                              notes
//! ```
//!
//! - [`plan`]: the hooks (with slots), topology, NAT rules and endpoints of interest of a trace.
//! - [`session`]: attaches, reads the ring buffer, hands events to an
//!   [`Observer`](session::Observer), detaches on every way out.
//! - [`engine`]: correlates events into flows and turns them into [`crate::render::Update`]s.
//! - [`annotate`]: conntrack verdicts and runtime notes, on a thread of their own.
//! - [`follow`]: a container's restarts and removal, as requests to the running session.
//!
//! Verbs compose these; [`trace`] is the composition every live trace shares, [`replay`] the one
//! for a capture.

pub mod annotate;
pub mod engine;
pub(crate) mod exits;
pub(crate) mod follow;
pub(crate) mod plan;
pub mod session;

use std::sync::Arc;

use tokio::sync::Notify;

use crate::{
    capture::{record::Recorder, Capture, CaptureWriter},
    collect::Event,
    discover::nat_rules::NatRuleset,
    model::{HookStats, RuleAttributor},
    render::Renderer,
};

use self::{
    engine::{Engine, Outcome},
    session::{Finished, Observer, SessionSpec, StopReason},
};

/// A live trace's session around `engine`: runs it to its end (writing `capture` as it goes),
/// then has the engine render its final report. A capture error ends the trace and is returned
/// after the report.
pub(crate) fn trace(
    rt: &tokio::runtime::Runtime,
    session: SessionSpec,
    engine: &mut Engine<'_>,
    capture: Option<CaptureWriter>,
) -> anyhow::Result<Outcome> {
    let stop = Arc::new(Notify::new());
    let capture_error = match capture {
        Some(writer) => {
            let mut recorder = Recorder::new(engine, writer, stop.clone());
            rt.block_on(session::run(session, &mut recorder, stop))?;
            recorder.error.take()
        }
        None => {
            rt.block_on(session::run(session, engine, stop))?;
            None
        }
    };
    let outcome = engine.finish();
    if let Some(e) = capture_error {
        return Err(e.into());
    }
    Ok(outcome)
}

/// A capture replayed through the same correlation and rendering as a live trace, into
/// `renderer`: NAT rules from the file's topology snapshot, no conntrack (a live-kernel question).
/// `filter`: the expression that chose the flows left in `cap`, for the summary.
pub(crate) fn replay(cap: &Capture, renderer: &mut dyn Renderer, filter: Option<&str>) -> Outcome {
    let rules: Arc<dyn RuleAttributor> = Arc::new(NatRuleset::from_rules(&cap.topology.nat_rules));
    let topology = Arc::new(cap.topology.clone());
    let mut engine = Engine::new(topology, Some(rules), 1 << 20, Vec::new(), renderer);
    // A file pathtrace did not write (no topology snapshot) names interfaces, not hooks on a
    // known path: its packets are counted per interface, never made into hop chains.
    if cap.meta.is_some() {
        // Drop reports among the packets in time order, as the live trace received them
        // (after the packet's own events).
        let mut events: Vec<Event> = cap.records.iter().cloned().map(Event::Packet).collect();
        events.extend(cap.drops.iter().cloned().map(Event::Drop));
        events.sort_by_key(|e| match e {
            Event::Packet(p) => p.ktime_ns,
            Event::Drop(d) => d.ktime_ns,
            Event::Counts(c) => c.last_ns,
        });
        engine.feed(&events);
    }
    // What the file holds per hook: every packet it has was emitted; nothing else is known.
    let stats = cap
        .topology
        .hooks
        .iter()
        .map(|h| {
            let emitted = cap
                .records
                .iter()
                .filter(|r| r.slot == h.slot && r.direction == h.direction)
                .count() as u64;
            let time = cap
                .hook_times
                .iter()
                .find(|t| (t.slot, t.direction) == (h.slot, h.direction));
            let stats = HookStats {
                seen: emitted,
                filtered: 0,
                emitted,
                lost: 0,
                aggregated: 0,
                overflow: 0,
                attached_ns: time.map_or(0, |t| t.attached_ns),
                detached_ns: time.map_or(0, |t| t.detached_ns),
            };
            (h.clone(), stats)
        })
        .collect();
    let end = Finished {
        stats,
        filter: filter.map(str::to_string),
        ..Finished::default()
    };
    engine.finished(StopReason::Requested, &end);
    engine.finish()
}
