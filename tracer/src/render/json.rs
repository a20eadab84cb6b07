//! The JSON-lines printer. Each line is built from a struct (fixed key order, `type` first);
//! endpoints are `ip:port` strings (`[ip]:port` for IPv6); no wall-clock time, so replay output
//! can be compared with live output line by line.

use std::hash::{Hash as _, Hasher as _};

use serde::Serialize;

use crate::{
    analyze::{
        diff::{Change, Comparison},
        inspect::Report,
        verify::{Check, Verdict},
    },
    correlate::{FlowReport, HopTiming, Leg, NatEntry, Stop, StopCause},
    model::{Direction, Hook, NatKind, Orientation, Proto, RuleConfidence},
};

use super::{Printer, RenderError, Summary};

/// The JSON-lines format.
pub(super) struct Json;

impl Printer for Json {
    /// None: the first line of a JSON trace is its first flow.
    fn started(&self, _mode: &str, _hooks: &[Hook]) -> Option<String> {
        None
    }

    fn flow(&self, flow: &FlowReport) -> Result<String, RenderError> {
        Ok(flow_line(flow)? + "\n")
    }

    /// A flow's line is printed again whenever it changed (counts included).
    fn change_key(&self, _flow: &FlowReport, rendered: &str) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        rendered.hash(&mut h);
        h.finish()
    }

    fn note(&self, message: &str) -> Result<String, RenderError> {
        line(&NoteLine {
            kind: "note",
            message,
        })
    }

    fn final_header(&self) -> Option<String> {
        None
    }

    fn summary(&self, summary: &Summary<'_>) -> Result<String, RenderError> {
        Ok(summary_line(summary)? + "\n")
    }

    /// One object per container.
    fn inspect(&self, reports: &[Report]) -> Result<String, RenderError> {
        let mut out = String::new();
        for report in reports {
            out.push_str(&line(&InspectLine {
                kind: "inspect",
                report,
            })?);
        }
        Ok(out)
    }

    fn verify(&self, v: &Verdict<'_>) -> Result<String, RenderError> {
        line(&VerifyLine {
            kind: "verify",
            result: if v.pass { "pass" } else { "fail" },
            probe: ProbeLine {
                proto: v.probe.proto,
                to: v.to,
                outcome: &v.outcome,
            },
            checks: &v.checks,
            flow: v.flow.map(flow_object),
        })
    }

    /// One `change` object per change, then the `diff` verdict.
    fn diff(&self, d: &Comparison) -> Result<String, RenderError> {
        let mut out = String::new();
        for c in &d.changes {
            out.push_str(&line(&ChangeLine {
                kind: "change",
                change: c,
            })?);
        }
        out.push_str(&line(&DiffLine {
            kind: "diff",
            same: d.same(),
            changes: d.changes.len(),
            flows_before: d.flows_before,
            flows_after: d.flows_after,
        })?);
        Ok(out)
    }
}

/// A value as one line.
fn line<T: Serialize>(value: &T) -> Result<String, RenderError> {
    Ok(serde_json::to_string(value)? + "\n")
}

#[derive(Serialize)]
struct NoteLine<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    message: &'a str,
}

#[derive(Serialize)]
struct InspectLine<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(flatten)]
    report: &'a Report,
}

#[derive(Serialize)]
struct VerifyLine<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    result: &'static str,
    probe: ProbeLine<'a>,
    checks: &'a [Check],
    flow: Option<FlowLine<'a>>,
}

#[derive(Serialize)]
struct ProbeLine<'a> {
    proto: Proto,
    to: &'a str,
    outcome: &'a str,
}

#[derive(Serialize)]
struct ChangeLine<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(flatten)]
    change: &'a Change,
}

#[derive(Serialize)]
struct DiffLine {
    #[serde(rename = "type")]
    kind: &'static str,
    same: bool,
    changes: usize,
    flows_before: usize,
    flows_after: usize,
}

#[derive(Serialize)]
struct FlowLine<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    id: u64,
    proto: String,
    origin: Orientation,
    src: String,
    dst: String,
    packets_out: u64,
    packets_back: u64,
    bytes_out: u64,
    bytes_back: u64,
    /// `kernel`: the packet and byte counts are the kernel's per-hop counts (aggregate mode);
    /// `events`: one event per packet per hook.
    counts: &'static str,
    hops: Vec<HopLine<'a>>,
    hops_back: Vec<HopLine<'a>>,
    nat: Vec<NatLine<'a>>,
    nat_back: Vec<NatLine<'a>>,
    stops: Vec<StopLine<'a>>,
    /// Only when there is something to say (golden outputs without notes stay as they were).
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    notes: &'a [String],
    /// Only when true (see [`FlowReport::before_path_complete`]).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    before_path_complete: bool,
    /// Kernel monotonic time (the same in a replay of a capture).
    first_ns: u64,
    last_ns: u64,
}

#[derive(Serialize)]
struct HopLine<'a> {
    hook: &'a str,
    dir: Direction,
    delta_us: f64,
    packets: u64,
    samples: u64,
    /// Only in flows whose datagrams were fragmented somewhere.
    #[serde(skip_serializing_if = "Option::is_none")]
    fragments: Option<u64>,
}

#[derive(Serialize)]
struct NatLine<'a> {
    kind: NatKind,
    before: String,
    after: String,
    between: [&'a str; 2],
    rule: Option<&'a str>,
    /// `evaluated`, `counters` or `candidates`; null when no rule can have made it.
    rule_confidence: Option<RuleConfidence>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    candidates: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    why: Option<&'a str>,
    conntrack: Option<bool>,
    packets: u64,
}

#[derive(Serialize)]
struct StopLine<'a> {
    leg: Leg,
    after: &'a str,
    dir: Direction,
    count: u64,
    reason: Option<&'a str>,
    /// `dropped`, `not_seen` (losses); `events_lost` (the ring buffer had no room at `at`),
    /// `untraced_exit` (routed out by `via`, which is not traced).
    cause: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    at: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    at_dir: Option<Direction>,
    #[serde(skip_serializing_if = "Option::is_none")]
    via: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    route: Option<&'a str>,
}

#[derive(Serialize)]
struct SummaryLine<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    /// `aggregate` or `every_packet`, and the sample rate of `aggregate`.
    #[serde(flatten)]
    reporting: crate::model::Reporting,
    /// The filter expression that chose the flows.
    #[serde(skip_serializing_if = "Option::is_none")]
    filter: Option<&'a str>,
    flows: usize,
    evicted: u64,
    hooks: Vec<HookLine>,
    // What the engine could not use: present only when not zero.
    #[serde(skip_serializing_if = "is_zero")]
    undecodable: u64,
    #[serde(skip_serializing_if = "is_zero")]
    ignored_events: u64,
    #[serde(skip_serializing_if = "is_zero")]
    unmatched_drops: u64,
    #[serde(skip_serializing_if = "is_zero")]
    orphan_fragments: u64,
    #[serde(skip_serializing_if = "is_zero")]
    drops_lost: u64,
    #[serde(skip_serializing_if = "is_zero")]
    unattributed_packets: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Serialize)]
struct HookLine {
    hook: String,
    dir: Direction,
    seen: u64,
    filtered: u64,
    emitted: u64,
    lost: u64,
    aggregated: u64,
    overflow: u64,
    /// Released while tracing (its counts are those it had then); only when true.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    released: bool,
}

/// A flow as one JSON object (no trailing newline).
pub(crate) fn flow_line(f: &FlowReport) -> serde_json::Result<String> {
    serde_json::to_string(&flow_object(f))
}

/// A flow as the one flow object every output uses (a live or replayed line, `verify`'s flow).
fn flow_object(f: &FlowReport) -> FlowLine<'_> {
    FlowLine {
        kind: "flow",
        id: f.id.0,
        proto: f.proto.to_string(),
        origin: f.origin,
        src: f.src.to_string(),
        dst: f.dst.to_string(),
        packets_out: f.packets_out,
        packets_back: f.packets_back,
        bytes_out: f.bytes_out,
        bytes_back: f.bytes_back,
        counts: if f.kernel_counts { "kernel" } else { "events" },
        hops: f.hops.iter().map(hop).collect(),
        hops_back: f.hops_back.iter().map(hop).collect(),
        nat: f.nat.iter().map(nat).collect(),
        nat_back: f.nat_back.iter().map(nat).collect(),
        stops: f.stops.iter().map(stop).collect(),
        notes: &f.notes,
        before_path_complete: f.before_path_complete,
        first_ns: f.first_ns,
        last_ns: f.last_ns,
    }
}

/// The summary as one JSON object (no trailing newline).
pub(crate) fn summary_line(s: &Summary<'_>) -> serde_json::Result<String> {
    let line = |(h, st): &(Hook, crate::model::HookStats), released: bool| HookLine {
        hook: h.label(),
        dir: h.direction,
        seen: st.seen,
        filtered: st.filtered,
        emitted: st.emitted,
        lost: st.lost,
        aggregated: st.aggregated,
        overflow: st.overflow,
        released,
    };
    let hooks = s
        .hooks
        .iter()
        .map(|h| line(h, false))
        .chain(s.released.iter().map(|h| line(h, true)))
        .collect();
    serde_json::to_string(&SummaryLine {
        kind: "summary",
        reporting: s.reporting,
        filter: s.filter,
        flows: s.flows,
        evicted: s.evicted,
        hooks,
        undecodable: s.unused.undecodable,
        ignored_events: s.unused.ignored_events,
        unmatched_drops: s.unused.unmatched_drops,
        orphan_fragments: s.unused.orphan_fragments,
        drops_lost: s.unused.drops_lost,
        unattributed_packets: s.unused.unattributed_packets,
    })
}

fn hop(h: &HopTiming) -> HopLine<'_> {
    HopLine {
        hook: &h.hook,
        dir: h.dir,
        // Nanosecond resolution: no float noise in the last digits.
        delta_us: (h.delta_us * 1000.0).round() / 1000.0,
        packets: h.packets,
        samples: h.samples,
        fragments: h.fragments,
    }
}

fn nat(e: &NatEntry) -> NatLine<'_> {
    let s = &e.step;
    NatLine {
        kind: s.kind,
        before: s.before.to_string(),
        after: s.after.to_string(),
        between: [&s.between.0, &s.between.1],
        rule: s.rule.as_deref(),
        rule_confidence: s.rule_confidence,
        candidates: &s.candidates,
        why: s.why.as_deref(),
        conntrack: s.conntrack,
        packets: e.packets,
    }
}

fn stop(s: &Stop) -> StopLine<'_> {
    let mut line = StopLine {
        leg: s.leg,
        after: &s.after_hook,
        dir: s.after_dir,
        count: s.count,
        reason: s.reason.as_deref(),
        cause: "not_seen",
        at: None,
        at_dir: None,
        via: None,
        route: None,
    };
    match &s.cause {
        StopCause::Dropped => line.cause = "dropped",
        StopCause::NotSeen => {}
        StopCause::EventsLost { at, at_dir } => {
            (line.cause, line.at, line.at_dir) = ("events_lost", Some(at.as_str()), Some(*at_dir));
        }
        StopCause::NotAttached { at, at_dir } => {
            (line.cause, line.at, line.at_dir) = ("not_attached", Some(at.as_str()), Some(*at_dir));
        }
        StopCause::UntracedExit { via, route } => {
            (line.cause, line.via, line.route) =
                ("untraced_exit", Some(via.as_str()), Some(route.as_str()));
        }
    }
    line
}
