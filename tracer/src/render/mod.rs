//! Render: the renderer seam. The engine (`pipeline`) hands whoever consumes a trace the same
//! stream of [`Update`]s; a [`Renderer`] turns them into output, or keeps what it needs.
//!
//! - [`StreamRenderer`] writes lines through a [`Printer`]: one per [`Format`], text ([`text`])
//!   for people and JSON lines ([`json`]) for programs, each a whole printer (ripgrep's model):
//!   live flows, notes and the summary, and the reports of `inspect`, `verify` and `diff`.
//! - [`Collect`] keeps the final flows, for verbs that judge them (`verify`, `diff`).
//!
//! To add a renderer (a terminal view, an HTML report): a type that implements [`Renderer`] in a
//! file of its own here, and its [`Format`] variant. Printers are pure functions of their input,
//! so replaying a capture prints what the live run printed; JSON objects come from serde types,
//! with a fixed key order and no wall-clock time.

mod inspect;
mod json;
pub(crate) mod output;
mod text;
pub mod tui;

use crate::{
    analyze::{diff::Comparison, inspect::Report, verify::Verdict},
    correlate::FlowReport,
    model::{Hook, HookStats, Reporting},
};

pub use output::Output;

/// What the end-of-trace summary covers.
#[derive(Clone, Copy, Debug)]
pub struct Summary<'a> {
    /// Flows in the table.
    pub flows: usize,
    /// Flows evicted to keep the table bounded.
    pub evicted: u64,
    /// Counters per hook, in the order to print them.
    pub hooks: &'a [(Hook, HookStats)],
    /// Hooks released while tracing (interface gone, or replaced after a restart or a network
    /// change), with their counts when released.
    pub released: &'a [(Hook, HookStats)],
    /// What the engine could not use, each counted where it happened.
    pub unused: Unused,
    /// How the kernel programs reported (JSON and text say which mode produced the trace).
    pub reporting: Reporting,
    /// The filter expression that chose the flows, when there was one.
    pub filter: Option<&'a str>,
}

/// How a live trace is going, told every tick (a quarter second): what a status line shows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Packet sightings at the hooks so far (one per packet per hook: sent as events or
    /// counted in the kernel).
    pub sightings: u64,
    /// Flows in the table.
    pub flows: usize,
    /// Events the ring buffer had no room for, over every hook.
    pub lost: u64,
}

/// Events and records the engine received but could not use. Printed only when not zero (text:
/// a `!!` line each; JSON: the field is present only then).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Unused {
    /// Ring-buffer records that did not decode (a kernel object of another version).
    pub undecodable: u64,
    /// Packet events of a hook slot the topology does not know, or without a fingerprint.
    pub ignored_events: u64,
    /// Kernel drop reports that matched no traced packet.
    pub unmatched_drops: u64,
    /// IP fragments after the first whose first fragment was not seen: in no flow.
    pub orphan_fragments: u64,
    /// Drop reports the drop program could not send (ring buffer full).
    pub drops_lost: u64,
    /// Aggregate mode: packets the kernel counted whose tuple no flow had (its events never
    /// arrived, or the flow was evicted).
    pub unattributed_packets: u64,
}

/// What the engine tells a renderer, in this order: `Started`, then `FlowChanged` and `Note` while
/// tracing, then `Final`, every flow once as `FlowFinal`, and the `Summary`.
#[derive(Debug)]
pub enum Update<'a> {
    /// Every hook is attached; tracing starts.
    Started {
        mode: &'a str,
        hooks: &'a [Hook],
    },
    /// A flow changed while tracing. `printed` is the renderer's own note of what it last wrote
    /// of this flow (0 until it writes one), kept with the flow in the engine's bounded table so
    /// that a renderer needs no per-flow memory of its own.
    FlowChanged {
        flow: &'a FlowReport,
        printed: &'a mut u64,
    },
    /// Something the user should know (a container restarted, an interface moved away).
    Note(&'a str),
    /// A live trace's tick, with its counters so far.
    Progress(&'a Progress),
    /// The trace ended; the final report follows.
    Final,
    /// A flow in its final state.
    FlowFinal(&'a FlowReport),
    Summary(&'a Summary<'a>),
}

/// A consumer of the engine's updates.
pub trait Renderer {
    /// Whether [`Update::FlowChanged`] is wanted (else flows come only in the final report).
    fn wants_changes(&self) -> bool;
    fn update(&mut self, update: Update<'_>);
    /// Everything is rendered: write out what is queued (blocks until it is).
    fn close(&mut self) {}
}

/// Why output could not be rendered.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RenderError {
    #[error("cannot encode JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// One output format, whole: everything pathtrace prints, as strings that end in a newline.
pub(crate) trait Printer: Sync {
    /// The first line of a live trace, if the format has one.
    fn started(&self, mode: &str, hooks: &[Hook]) -> Option<String>;
    /// One flow: a block of lines (text) or one line (JSON).
    fn flow(&self, flow: &FlowReport) -> Result<String, RenderError>;
    /// What of `flow` this format shows, as a hash: a changed flow is printed again only when its
    /// key changed.
    fn change_key(&self, flow: &FlowReport, rendered: &str) -> u64;
    fn note(&self, message: &str) -> Result<String, RenderError>;
    /// The line between a live trace's updates and its final report, if the format has one.
    fn final_header(&self) -> Option<String>;
    fn summary(&self, summary: &Summary<'_>) -> Result<String, RenderError>;
    /// `inspect`: one report per container.
    fn inspect(&self, reports: &[Report]) -> Result<String, RenderError>;
    /// `verify`: the verdict, each check, the observed flow.
    fn verify(&self, verdict: &Verdict<'_>) -> Result<String, RenderError>;
    /// `diff`: each change, then the verdict.
    fn diff(&self, comparison: &Comparison) -> Result<String, RenderError>;
}

/// An output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// One indented block per flow, for people.
    Text,
    /// One JSON object per line, for programs.
    Json,
}

impl Format {
    /// `--json` or not.
    pub(crate) fn of_json_flag(json: bool) -> Self {
        if json {
            Self::Json
        } else {
            Self::Text
        }
    }

    /// The format's printer.
    pub(crate) fn printer(self) -> &'static dyn Printer {
        match self {
            Self::Text => &text::Text,
            Self::Json => &json::Json,
        }
    }

    /// The renderer of a trace in this format into `out`: with `live`, flow updates while tracing,
    /// else only the final report.
    pub fn renderer(self, out: Output, live: bool) -> Box<dyn Renderer> {
        Box::new(StreamRenderer::new(self.printer(), out, live))
    }

    #[cfg(test)]
    /// One flow, ending in a newline.
    pub(crate) fn flow(self, flow: &FlowReport) -> Result<String, RenderError> {
        self.printer().flow(flow)
    }

    #[cfg(test)]
    /// The summary, ending in a newline.
    pub(crate) fn summary(self, summary: &Summary<'_>) -> Result<String, RenderError> {
        self.printer().summary(summary)
    }
}

/// Writes a trace's updates through a printer into a bounded, non-blocking [`Output`]: updates
/// while tracing are shed (and counted) when the output is too slow; the final report waits for
/// room.
pub(crate) struct StreamRenderer {
    printer: &'static dyn Printer,
    out: Output,
    live: bool,
    rate: Rate,
}

impl StreamRenderer {
    pub(crate) fn new(printer: &'static dyn Printer, out: Output, live: bool) -> Self {
        Self {
            printer,
            out,
            live,
            rate: Rate::default(),
        }
    }

    fn send_final(&self, rendered: Result<String, RenderError>, what: &str) {
        match rendered {
            Ok(r) => self.out.send_blocking(r),
            Err(e) => tracing::warn!("rendering {what}: {e}"),
        }
    }
}

impl Renderer for StreamRenderer {
    fn wants_changes(&self) -> bool {
        self.live
    }

    fn update(&mut self, update: Update<'_>) {
        match update {
            Update::Started { mode, hooks } => {
                if let Some(line) = self.printer.started(mode, hooks) {
                    self.out.send(line);
                }
            }
            Update::FlowChanged { flow, printed } => {
                let rendered = match self.printer.flow(flow) {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!("rendering flow {}: {e}", flow.id);
                        return;
                    }
                };
                // 0 is "never printed"; a key hashing to 0 is merely printed once more.
                let key = self.printer.change_key(flow, &rendered);
                if *printed != key {
                    *printed = key;
                    self.out.send(rendered);
                }
            }
            Update::Note(message) => match self.printer.note(message) {
                Ok(line) => self.out.send(line),
                Err(e) => tracing::warn!("note: {e}"),
            },
            Update::Progress(p) => self.out.status(self.rate.status(p)),
            Update::Final => {
                self.out.status(String::new());
                if let Some(header) = self.printer.final_header().filter(|_| self.live) {
                    self.out.send_blocking(header);
                }
            }
            Update::FlowFinal(flow) => self.send_final(self.printer.flow(flow), "flow"),
            Update::Summary(summary) => self.send_final(self.printer.summary(summary), "summary"),
        }
    }

    /// After the last line of output: the one line about what it could not take.
    fn close(&mut self) {
        self.out.close();
        let shed = self.out.shed();
        if shed > 0 {
            crate::say(&format!(
                "pathtrace: {shed} output updates were dropped because the output was too slow"
            ));
        }
    }
}

/// Elapsed time and sightings per second of a live trace, from its ticks: what a status line
/// shows.
#[derive(Debug, Default)]
pub(crate) struct Rate {
    started: Option<std::time::Instant>,
    /// The previous tick's time and sightings.
    last: Option<(std::time::Instant, u64)>,
    per_second: f64,
}

impl Rate {
    /// Takes a tick in; seconds since the first one and sightings per second (smoothed).
    pub(crate) fn tick(&mut self, p: &Progress) -> (f64, f64) {
        let now = std::time::Instant::now();
        let started = *self.started.get_or_insert(now);
        if let Some((at, before)) = self.last {
            let dt = now.duration_since(at).as_secs_f64();
            if dt > 0.0 {
                let instant = p.sightings.saturating_sub(before) as f64 / dt;
                self.per_second = 0.5 * self.per_second + 0.5 * instant;
            }
        }
        self.last = Some((now, p.sightings));
        (now.duration_since(started).as_secs_f64(), self.per_second)
    }

    /// `12 s · 4 flows · 1204 packet sightings (96/s) · 0 events lost`.
    pub(crate) fn status(&mut self, p: &Progress) -> String {
        let (elapsed, rate) = self.tick(p);
        format!(
            "pathtrace: {elapsed:.0} s · {} flows · {} packet sightings ({rate:.0}/s) · {} events lost",
            p.flows, p.sightings, p.lost
        )
    }
}

/// Keeps every final flow and renders nothing: what `verify` and `diff` judge.
#[derive(Debug, Default)]
pub(crate) struct Collect {
    pub flows: Vec<FlowReport>,
}

impl Renderer for Collect {
    fn wants_changes(&self) -> bool {
        false
    }

    fn update(&mut self, update: Update<'_>) {
        if let Update::FlowFinal(flow) = update {
            self.flows.push(flow.clone());
        }
    }
}

#[cfg(test)]
mod tests;
