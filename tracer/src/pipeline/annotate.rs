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

use crate::{correlate::FlowReport, discover::conntrack, model::NatKind, runtime::FlowNotes};

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
