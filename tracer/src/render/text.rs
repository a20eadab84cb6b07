//! The text printer: one block per flow, hops in path order with NAT lines between the hops they
//! happened between; `** ` notes; the summary table; and the reports of `inspect`, `verify` and
//! `diff`, for people.

use std::hash::{Hash as _, Hasher as _};

use crate::{
    analyze::{diff::Comparison, inspect::Report, verify::Verdict},
    correlate::{FlowReport, HopTiming, Leg, NatEntry, Stop, StopCause},
    model::{Hook, NatKind, Orientation, RuleConfidence},
};

use super::{inspect, Printer, RenderError, Summary};

/// The text format.
pub(super) struct Text;

impl Printer for Text {
    fn started(&self, mode: &str, hooks: &[Hook]) -> Option<String> {
        let names: Vec<String> = hooks
            .iter()
            .map(|h| format!("{} {}", h.label(), h.direction))
            .collect();
        Some(format!(
            "tracing {} hooks ({mode}): {}\n",
            hooks.len(),
            names.join(", ")
        ))
    }

    fn flow(&self, flow: &FlowReport) -> Result<String, RenderError> {
        Ok(flow_block(flow))
    }

    /// A flow is printed again only when its path, NAT or losses changed, not its counts.
    fn change_key(&self, flow: &FlowReport, _rendered: &str) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        shape_of(flow).hash(&mut h);
        h.finish()
    }

    fn note(&self, message: &str) -> Result<String, RenderError> {
        Ok(format!("** {message}\n"))
    }

    fn final_header(&self) -> Option<String> {
        Some("--- final ---\n".to_string())
    }

    fn summary(&self, summary: &Summary<'_>) -> Result<String, RenderError> {
        Ok(summary_block(summary))
    }

    fn inspect(&self, reports: &[Report]) -> Result<String, RenderError> {
        let blocks: Vec<String> = reports.iter().map(inspect::text_block).collect();
        Ok(blocks.join("\n"))
    }

    fn verify(&self, v: &Verdict<'_>) -> Result<String, RenderError> {
        let verdict = if v.pass { "PASS" } else { "FAIL" };
        let mut out = format!(
            "{verdict} {} probe to {} ({})\n",
            v.probe.proto, v.to, v.outcome
        );
        for c in &v.checks {
            let ok = if c.ok { "ok" } else { "FAIL" };
            out.push_str(&format!(
                "  [{ok}] {}: expected {}, observed {}\n",
                c.name, c.expected, c.observed
            ));
        }
        match v.flow {
            Some(f) => out.push_str(&format!("observed:\n{}", flow_block(f))),
            None => out.push_str("observed: nothing of the probe on the traced hooks\n"),
        }
        Ok(out)
    }

    fn diff(&self, d: &Comparison) -> Result<String, RenderError> {
        if d.same() {
            return Ok(format!(
                "same: {} flow(s) before, {} after, no change in path, NAT, rules or drops\n",
                d.flows_before, d.flows_after
            ));
        }
        let mut out = String::new();
        for c in &d.changes {
            out.push_str(&format!(
                "{}: {} changed\n  before: {}\n  after:  {}\n",
                c.flow, c.what, c.before, c.after
            ));
        }
        out.push_str(&format!("{} change(s)\n", d.changes.len()));
        Ok(out)
    }
}

/// The parts of a flow the text shows that are worth reprinting it for: its hops, its NAT steps
/// (a conntrack verdict shows only when it disagrees) and its losses.
fn shape_of(f: &FlowReport) -> String {
    let hops: Vec<_> = f.hops.iter().map(|h| (h.hook.as_str(), h.dir)).collect();
    let back: Vec<_> = f
        .hops_back
        .iter()
        .map(|h| (h.hook.as_str(), h.dir))
        .collect();
    let nat: Vec<_> = f
        .nat
        .iter()
        .map(|n| {
            let s = &n.step;
            (
                s.before,
                s.after,
                s.rule.as_deref(),
                s.conntrack == Some(false),
            )
        })
        .collect();
    let stops: Vec<_> = f
        .stops
        .iter()
        .map(|s| (s.after_hook.as_str(), s.reason.as_deref(), &s.cause))
        .collect();
    format!("{hops:?}{back:?}{nat:?}{stops:?}")
}

/// A flow as a block of lines, e.g.
///
/// ```text
/// tcp 10.200.1.2:41234 -> 10.200.2.2:8080   6 pkts out, 5 back
///   lab-ctr:eth0 egress +0 -> host:pt-veth0 ingress +4µs -> host:pt-br0 ingress +9µs
///   => SNAT (MASQUERADE) 10.200.1.2:41234 -> 10.200.2.1:41234   [-A POSTROUTING ...]
///   -> host:pt-up0 egress +21µs
/// ```
pub(crate) fn flow_block(f: &FlowReport) -> String {
    let inbound = if f.origin == Orientation::Inbound {
        " (inbound)"
    } else {
        ""
    };
    let mut out = format!(
        "{} {} -> {}{inbound}   {} out, {} back\n",
        f.proto,
        f.src,
        f.dst,
        plural(f.packets_out, "pkt"),
        f.packets_back
    );
    if f.kernel_counts {
        // Counts are the kernel's, every packet; the timings rest on the followed ones.
        let followed = |hops: &[HopTiming]| hops.iter().map(|h| h.samples).max().unwrap_or(0);
        out.push_str(&format!(
            "  counted in the kernel; timings from {} out, {} back followed at every hop\n",
            plural(followed(&f.hops), "pkt"),
            followed(&f.hops_back)
        ));
    }
    chain(&mut out, "", &f.hops, &f.nat, out_nat_line);
    if !f.hops_back.is_empty() {
        chain(&mut out, "back: ", &f.hops_back, &f.nat_back, back_nat_line);
    }
    for stop in &f.stops {
        out.push_str(&stop_line(stop));
    }
    for note in &f.notes {
        out.push_str(&format!("  note: {note}\n"));
    }
    if f.before_path_complete {
        out.push_str(
            "  note: first seen while hooks were still attaching: hooks attached later did not see its first packets\n",
        );
    }
    out
}

/// Hops on one line, broken where a NAT step happened; steps whose hooks are not consecutive in
/// the chain follow it.
fn chain(
    out: &mut String,
    lead: &str,
    hops: &[HopTiming],
    nat: &[NatEntry],
    nat_line: fn(&NatEntry) -> String,
) {
    let mut used = vec![false; nat.len()];
    let mut line = format!("  {lead}");
    for (i, hop) in hops.iter().enumerate() {
        if let Some(prev) = i.checked_sub(1).and_then(|p| hops.get(p)) {
            let mut broke = false;
            for (n, entry) in nat.iter().enumerate() {
                let (a, b) = &entry.step.between;
                if !used[n] && *a == prev.hook && *b == hop.hook {
                    if !broke {
                        out.push_str(&line);
                        out.push('\n');
                    }
                    out.push_str(&nat_line(entry));
                    used[n] = true;
                    broke = true;
                }
            }
            line = if broke {
                "  -> ".to_string()
            } else {
                line + " -> "
            };
        }
        let delta = if hop.samples == 0 {
            // Counted here, but no packet was followed to this hop: no timing.
            "+?".to_string()
        } else {
            format_delta_us(hop.delta_us)
        };
        line.push_str(&format!("{} {} {delta}", hop.hook, hop.dir));
        // A fragmented flow: what each hook saw of its datagrams.
        match hop.fragments {
            Some(0) => line.push_str(" (reassembled)"),
            Some(1) => line.push_str(" (1 fragment)"),
            Some(n) => line.push_str(&format!(" ({n} fragments)")),
            None => {}
        }
    }
    out.push_str(&line);
    out.push('\n');
    for (entry, _) in nat.iter().zip(&used).filter(|(_, u)| !**u) {
        out.push_str(&nat_line(entry));
    }
}

/// `  => SNAT (MASQUERADE) a -> b   [rule]`: a translation of the opening direction.
pub(super) fn out_nat_line(e: &NatEntry) -> String {
    let kind = match e.step.kind {
        NatKind::Snat => "SNAT",
        NatKind::Dnat => "DNAT",
    };
    let masq = e
        .step
        .rule
        .as_deref()
        .is_some_and(|r| r.to_ascii_lowercase().contains("masquerade"));
    let how = if masq { " (MASQUERADE)" } else { "" };
    nat_line("=>", &format!("{kind}{how}"), e)
}

/// `  <= de-NAT dst a -> b`: the reverse translation on a reply.
pub(super) fn back_nat_line(e: &NatEntry) -> String {
    let side = match e.step.kind {
        NatKind::Snat => "de-NAT src",
        NatKind::Dnat => "de-NAT dst",
    };
    nat_line("<=", side, e)
}

fn nat_line(arrow: &str, what: &str, e: &NatEntry) -> String {
    let mut line = format!("  {arrow} {what} {} -> {}", e.step.before, e.step.after);
    let step = &e.step;
    match (&step.rule, step.rule_confidence) {
        (Some(rule), Some(RuleConfidence::Counters)) => line.push_str(&format!(
            "   [{rule}]   (of {} candidate rules, the one whose counter moved)",
            step.candidates.len()
        )),
        (Some(rule), _) => line.push_str(&format!("   [{rule}]")),
        (None, Some(RuleConfidence::Candidates)) => {
            line.push_str(&format!("   [one of: {}]", step.candidates.join(" | ")));
            if let Some(why) = &step.why {
                line.push_str(&format!("   (cannot tell which: {why})"));
            }
        }
        (None, _) => {}
    }
    if e.step.conntrack == Some(false) {
        line.push_str("   (conntrack disagrees)");
    }
    line.push('\n');
    line
}

pub(super) fn stop_line(s: &Stop) -> String {
    let leg = if s.leg == Leg::Back { " (back)" } else { "" };
    let (count, hook, dir) = (s.count, &s.after_hook, s.after_dir);
    match &s.cause {
        StopCause::EventsLost { at, at_dir } => {
            return format!(
                "  {count} events not seen after {hook} {dir}{leg} (ring buffer full at {at} {at_dir}; not a packet loss as far as pathtrace can tell)\n"
            )
        }
        StopCause::NotAttached { at, at_dir } => {
            return format!(
                "  {count} not seen after {hook} {dir}{leg} ({at} {at_dir} was not attached yet, or no longer, when they would have crossed it; not a packet loss as far as pathtrace can tell)\n"
            )
        }
        StopCause::UntracedExit { via, route } => {
            return format!(
                "  {count} left by the untraced interface {via} after {hook} {dir}{leg} (route: {route}; trace it with --uplink {via})\n"
            )
        }
        StopCause::Dropped | StopCause::NotSeen => {}
    }
    let mut line = format!(
        "  lost: {} after {} {}{leg}",
        s.count, s.after_hook, s.after_dir
    );
    if let Some(reason) = &s.reason {
        line.push_str(&format!(" (reason: {reason})"));
    }
    line.push('\n');
    line
}

fn plural(n: u64, word: &str) -> String {
    if n == 1 {
        format!("{n} {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// A delta from the first hop: `+0`, `+4µs`, `+4.5µs`, `+120µs`, `+1.2ms`, `+3.40s`.
pub(crate) fn format_delta_us(us: f64) -> String {
    let us = us.max(0.0);
    if us == 0.0 {
        "+0".to_string()
    } else if us < 10.0 && us.fract() >= 0.05 {
        format!("+{us:.1}µs")
    } else if us < 999.5 {
        format!("+{us:.0}µs")
    } else if us < 999_950.0 {
        format!("+{:.1}ms", us / 1e3)
    } else {
        format!("+{:.2}s", us / 1e6)
    }
}

/// Flow count, evictions and one row per hook, then one loud line per hook that lost events and
/// one per kind of event the engine could not use.
pub(crate) fn summary_block(s: &Summary<'_>) -> String {
    let mut out = format!("{} flows, {} evicted\n", s.flows, s.evicted);
    if let Some(filter) = s.filter {
        out.push_str(&format!("filter: '{filter}'\n"));
    }
    let aggregate = matches!(s.reporting, crate::model::Reporting::Aggregate { .. });
    if aggregate {
        out.push_str(&format!("mode: {}\n", s.reporting));
    }
    // The hooks attached at the end, then those released before it (marked).
    let rows: Vec<(Hook, crate::model::HookStats)> = s
        .hooks
        .iter()
        .cloned()
        .chain(s.released.iter().map(|(h, st)| {
            let mut h = h.clone();
            h.ifname.push_str(" (released)");
            (h, *st)
        }))
        .collect();
    let s = &Summary { hooks: &rows, ..*s };
    let labels: Vec<String> = s.hooks.iter().map(|(h, _)| h.label()).collect();
    let width = labels
        .iter()
        .map(|l| l.chars().count())
        .max()
        .unwrap_or(0)
        .max(4);
    let counted_col = |n: u64| {
        if aggregate {
            format!(" {n:>10}")
        } else {
            String::new()
        }
    };
    let counted_head = if aggregate {
        format!(" {:>10}", "counted")
    } else {
        String::new()
    };
    out.push_str(&format!(
        "{:<width$}  {:<7} {:>10} {:>10} {:>10} {:>10}{counted_head}\n",
        "hook", "dir", "seen", "filtered", "emitted", "lost"
    ));
    for ((hook, st), label) in s.hooks.iter().zip(&labels) {
        out.push_str(&format!(
            "{label:<width$}  {:<7} {:>10} {:>10} {:>10} {:>10}{}\n",
            hook.direction.as_str(),
            st.seen,
            st.filtered,
            st.emitted,
            st.lost,
            counted_col(st.aggregated)
        ));
    }
    for ((hook, st), label) in s.hooks.iter().zip(&labels) {
        if st.overflow > 0 {
            out.push_str(&format!(
                "!! {} packets at {label} {} found the kernel's flow map full: sent as events instead (counts stay exact unless events were lost there too)\n",
                st.overflow, hook.direction
            ));
        }
    }
    for ((hook, st), label) in s.hooks.iter().zip(&labels) {
        if st.lost > 0 {
            out.push_str(&format!(
                "!! {} events lost at {label} {}: ring buffer full\n",
                st.lost, hook.direction
            ));
        }
    }
    let u = &s.unused;
    for (n, what) in [
        (u.undecodable, "ring-buffer records could not be decoded"),
        (
            u.ignored_events,
            "packet events came from no known hook or had no fingerprint",
        ),
        (
            u.unmatched_drops,
            "kernel drop reports matched no traced packet",
        ),
        (
            u.orphan_fragments,
            "IP fragments came without their first fragment (no ports: in no flow)",
        ),
        (u.drops_lost, "drop reports were lost: ring buffer full"),
        (
            u.unattributed_packets,
            "packets the kernel counted matched no flow (their events never arrived, or the flow was evicted)",
        ),
    ] {
        if n > 0 {
            out.push_str(&format!("!! {n} {what}\n"));
        }
    }
    out
}
