//! The text renderer: one block per flow, hops in path order with NAT lines between the hops
//! they happened between.

use crate::{
    correlate::{FlowReport, HopTiming, Leg, NatEntry, Orientation, Stop},
    model::NatKind,
};

use super::Summary;

/// A flow as a block of lines, e.g.
///
/// ```text
/// tcp 10.200.1.2:41234 -> 10.200.2.2:8080   6 pkts out, 5 back
///   lab-ctr:eth0 egress +0 -> host:pt-veth0 ingress +4µs -> host:pt-br0 ingress +9µs
///   => SNAT (MASQUERADE) 10.200.1.2:41234 -> 10.200.2.1:41234   [-A POSTROUTING ...]
///   -> host:pt-up0 egress +21µs
/// ```
pub fn flow_block(f: &FlowReport) -> String {
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
        line.push_str(&format!(
            "{} {} {}",
            hop.hook,
            hop.dir,
            format_delta_us(hop.delta_us)
        ));
    }
    out.push_str(&line);
    out.push('\n');
    for (entry, _) in nat.iter().zip(&used).filter(|(_, u)| !**u) {
        out.push_str(&nat_line(entry));
    }
}

/// `  => SNAT (MASQUERADE) a -> b   [rule]`: a translation of the opening direction.
fn out_nat_line(e: &NatEntry) -> String {
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
fn back_nat_line(e: &NatEntry) -> String {
    let side = match e.step.kind {
        NatKind::Snat => "de-NAT src",
        NatKind::Dnat => "de-NAT dst",
    };
    nat_line("<=", side, e)
}

fn nat_line(arrow: &str, what: &str, e: &NatEntry) -> String {
    let mut line = format!("  {arrow} {what} {} -> {}", e.step.before, e.step.after);
    if let Some(rule) = &e.step.rule {
        line.push_str(&format!("   [{rule}]"));
    }
    if e.step.conntrack == Some(false) {
        line.push_str("   (conntrack disagrees)");
    }
    line.push('\n');
    line
}

fn stop_line(s: &Stop) -> String {
    let leg = if s.leg == Leg::Back { " (back)" } else { "" };
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
pub fn format_delta_us(us: f64) -> String {
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

/// Flow count, evictions and one row per hook, then one loud line per hook that lost events.
pub fn summary_block(s: &Summary<'_>) -> String {
    let mut out = format!("{} flows, {} evicted\n", s.flows, s.evicted);
    let labels: Vec<String> = s.hooks.iter().map(|(h, _)| h.label()).collect();
    let width = labels
        .iter()
        .map(|l| l.chars().count())
        .max()
        .unwrap_or(0)
        .max(4);
    out.push_str(&format!(
        "{:<width$}  {:<7} {:>10} {:>10} {:>10} {:>10}\n",
        "hook", "dir", "seen", "filtered", "emitted", "lost"
    ));
    for ((hook, st), label) in s.hooks.iter().zip(&labels) {
        out.push_str(&format!(
            "{label:<width$}  {:<7} {:>10} {:>10} {:>10} {:>10}\n",
            hook.direction.as_str(),
            st.seen,
            st.filtered,
            st.emitted,
            st.lost
        ));
    }
    for ((hook, st), label) in s.hooks.iter().zip(&labels) {
        if st.lost > 0 {
            out.push_str(&format!(
                "!! {} events lost at {label} {}: ring buffer full\n",
                st.lost, hook.direction
            ));
        }
    }
    out
}
