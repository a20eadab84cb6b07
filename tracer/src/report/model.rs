//! What the report shows, computed from a capture and its replayed flows: per-hook packet counts,
//! per-hop latency samples (each packet's time at a hook minus its first sighting, by its
//! NAT-invariant fingerprint) and their percentiles, and the flows' hops, NAT and stops.

use std::collections::{BTreeMap, HashMap};

use crate::{
    capture::Capture,
    correlate::{FlowReport, HopTiming, NatEntry},
    model::{Direction, Endpoint, NatKind, Orientation, Proto},
};

use super::svg::{self, Diagram};

/// The whole page.
pub(crate) struct ReportModel {
    pub title: String,
    pub host: String,
    pub kernel: String,
    pub source: String,
    pub span: String,
    pub filter: Option<String>,
    pub packets: usize,
    pub hooks: usize,
    pub topology: Diagram,
    pub flows: Vec<FlowView>,
    /// Flows not drawn (past [`super::MAX_FLOWS`]).
    pub left_out: usize,
    pub total_flows: usize,
    pub warnings: Vec<String>,
}

/// One flow's section.
pub(crate) struct FlowView {
    pub id: u64,
    pub heading: String,
    pub counts: String,
    pub legs: Vec<LegView>,
    pub stops: Vec<StopView>,
    pub notes: Vec<String>,
}

pub(crate) struct LegView {
    pub name: &'static str,
    pub chain: Diagram,
    pub hops: Vec<HopRow>,
    pub nat: Vec<NatView>,
    /// The latency CDF (inline SVG), when a hop past the first has samples.
    pub plot: Option<String>,
}

pub(crate) struct HopRow {
    pub hook: String,
    pub packets: u64,
    pub samples: usize,
    pub p50: String,
    pub p90: String,
    pub p99: String,
}

pub(crate) struct NatView {
    pub what: String,
    pub between: String,
    pub rule: String,
}

pub(crate) struct StopView {
    pub text: String,
    pub loss: bool,
}

/// Nearest-rank percentile of sorted samples.
pub(crate) fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// `4.2 µs`, `1.3 ms`.
pub(crate) fn micros(us: f64) -> String {
    if us < 1000.0 {
        format!("{us:.1} µs")
    } else {
        format!("{:.2} ms", us / 1000.0)
    }
}

/// Per `(hook label, direction)`: each packet's delay there after its first sighting, in µs,
/// grouped by fingerprint (a packet's copies at every hook share it).
pub(crate) type Samples = HashMap<u64, HashMap<(String, Direction), Vec<f64>>>;

/// For every fingerprint, its packets' delays at each hook.
fn delays(cap: &Capture) -> Samples {
    let label: HashMap<(u8, Direction), String> = cap
        .topology
        .hooks
        .iter()
        .map(|h| ((h.slot, h.direction), h.label()))
        .collect();
    let mut first: HashMap<u64, u64> = HashMap::new();
    for r in &cap.records {
        let f = first.entry(r.fingerprint).or_insert(r.ktime_ns);
        *f = (*f).min(r.ktime_ns);
    }
    let mut out: Samples = HashMap::new();
    for r in &cap.records {
        let Some(l) = label.get(&(r.slot, r.direction)) else {
            continue;
        };
        let us = r.ktime_ns.saturating_sub(first[&r.fingerprint]) as f64 / 1e3;
        out.entry(r.fingerprint)
            .or_default()
            .entry((l.clone(), r.direction))
            .or_default()
            .push(us);
    }
    out
}

impl ReportModel {
    pub(crate) fn build(
        cap: &Capture,
        flows: &[FlowReport],
        filter: Option<&str>,
        source: &str,
    ) -> Self {
        let meta = cap.meta.as_ref();
        let (first, last) = cap.records.iter().fold((u64::MAX, 0), |(a, b), r| {
            (a.min(r.ktime_ns), b.max(r.ktime_ns))
        });
        let span = if cap.records.is_empty() {
            "no packets".to_string()
        } else {
            format!("{:.3} s of packets", (last - first) as f64 / 1e9)
        };
        // Which flow each fingerprint belongs to: the flow whose tuple (either way) a packet
        // of it has, at any hook.
        let mut of_tuple = HashMap::new();
        for f in flows {
            of_tuple.insert(tuple_key(f.proto, f.src, f.dst), f.id.0);
            of_tuple.insert(tuple_key(f.proto, f.dst, f.src), f.id.0);
        }
        let mut flow_of_fp: HashMap<u64, u64> = HashMap::new();
        for r in &cap.records {
            if let Some(id) = of_tuple.get(&tuple_key(r.proto, r.src, r.dst)) {
                flow_of_fp.entry(r.fingerprint).or_insert(*id);
            }
        }
        let samples = delays(cap);
        let mut per_flow: HashMap<u64, HashMap<(String, Direction), Vec<f64>>> = HashMap::new();
        for (fp, hooks) in samples {
            let Some(id) = flow_of_fp.get(&fp) else {
                continue;
            };
            let into = per_flow.entry(*id).or_default();
            for (k, v) in hooks {
                into.entry(k).or_default().extend(v);
            }
        }
        // Per-hook packet counts, and the drops at each hook (from the flows' stops).
        let mut counts: BTreeMap<(u8, Direction), u64> = BTreeMap::new();
        for r in &cap.records {
            *counts.entry((r.slot, r.direction)).or_default() += 1;
        }
        let mut drops: HashMap<(String, Direction), (u64, Vec<String>)> = HashMap::new();
        for f in flows {
            for s in f.stops.iter().filter(|s| s.cause.is_loss()) {
                let d = drops
                    .entry((s.after_hook.clone(), s.after_dir))
                    .or_default();
                d.0 += s.count;
                let why = s.reason.clone().unwrap_or_else(|| "reason unknown".into());
                if !d.1.contains(&why) {
                    d.1.push(why);
                }
            }
        }
        let topology = svg::topology(&cap.topology.hooks, &counts, &drops);
        let empty = HashMap::new();
        let views = flows
            .iter()
            .take(super::MAX_FLOWS)
            .map(|f| flow_view(f, per_flow.get(&f.id.0).unwrap_or(&empty)))
            .collect();
        Self {
            title: format!("pathtrace report: {}", cap.topology.target),
            host: meta.map_or("unknown".into(), |m| m.hostname.clone()),
            kernel: meta.map_or("unknown".into(), |m| m.kernel_release.clone()),
            source: source.to_string(),
            span,
            filter: filter.map(str::to_string),
            packets: cap.records.len(),
            hooks: cap.topology.hooks.len(),
            topology,
            flows: views,
            left_out: flows.len().saturating_sub(super::MAX_FLOWS),
            total_flows: flows.len(),
            warnings: cap.warnings.clone(),
        }
    }
}

/// A tuple as flows and packets are matched by: an ICMP echo's id is on one side or the other
/// depending on the direction, so it is put on both.
fn tuple_key(proto: Proto, a: Endpoint, b: Endpoint) -> (Proto, Endpoint, Endpoint) {
    match proto {
        Proto::Icmp | Proto::Icmpv6 => {
            let id = a.port.max(b.port);
            (proto, Endpoint::new(a.addr, id), Endpoint::new(b.addr, id))
        }
        _ => (proto, a, b),
    }
}

fn flow_view(f: &FlowReport, samples: &HashMap<(String, Direction), Vec<f64>>) -> FlowView {
    let inbound = if f.origin == Orientation::Inbound {
        " (inbound)"
    } else {
        ""
    };
    let mut legs = vec![leg_view("out", &f.hops, &f.nat, f, samples)];
    if !f.hops_back.is_empty() {
        legs.push(leg_view("back", &f.hops_back, &f.nat_back, f, samples));
    }
    FlowView {
        id: f.id.0,
        heading: format!("{} {} → {}{inbound}", f.proto, f.src, f.dst),
        counts: format!(
            "{} packets out ({} bytes), {} back ({} bytes)",
            f.packets_out, f.bytes_out, f.packets_back, f.bytes_back
        ),
        legs,
        stops: f
            .stops
            .iter()
            .map(|s| StopView {
                text: format!("{} packets: {}", s.count, s.describe()),
                loss: s.cause.is_loss(),
            })
            .collect(),
        notes: f.notes.clone(),
    }
}

fn leg_view(
    name: &'static str,
    hops: &[HopTiming],
    nat: &[NatEntry],
    f: &FlowReport,
    samples: &HashMap<(String, Direction), Vec<f64>>,
) -> LegView {
    let leg = if name == "out" {
        crate::correlate::Leg::Out
    } else {
        crate::correlate::Leg::Back
    };
    let mut rows = Vec::new();
    let mut series = Vec::new();
    for (i, h) in hops.iter().enumerate() {
        let mut s = samples
            .get(&(h.hook.clone(), h.dir))
            .cloned()
            .unwrap_or_default();
        s.sort_by(f64::total_cmp);
        let p = |q| percentile(&s, q).map_or("–".to_string(), micros);
        rows.push(HopRow {
            hook: format!("{} {}", h.hook, h.dir),
            packets: h.packets,
            samples: s.len(),
            p50: p(50.0),
            p90: p(90.0),
            p99: p(99.0),
        });
        if i > 0 && !s.is_empty() {
            series.push((format!("{} {}", h.hook, h.dir), s));
        }
    }
    let nat_views = nat
        .iter()
        .map(|e| NatView {
            what: nat_what(e, name == "back"),
            between: format!("between {} and {}", e.step.between.0, e.step.between.1),
            rule: e
                .step
                .rule
                .clone()
                .or_else(|| {
                    (!e.step.candidates.is_empty())
                        .then(|| format!("one of: {}", e.step.candidates.join(" | ")))
                })
                .unwrap_or_else(|| "no rule named (a reply's reverse translation)".into()),
        })
        .collect();
    let stops: Vec<_> = f.stops.iter().filter(|s| s.leg == leg).collect();
    LegView {
        name,
        chain: svg::chain(hops, nat, &stops, name == "back"),
        hops: rows,
        nat: nat_views,
        plot: (!series.is_empty()).then(|| svg::cdf(&series)),
    }
}

/// `SNAT (MASQUERADE) a → b`, `de-NAT dst a → b`.
pub(crate) fn nat_what(e: &NatEntry, back: bool) -> String {
    let s = &e.step;
    let kind = match (s.kind, back) {
        (NatKind::Snat, false) => {
            let masq = s
                .rule
                .as_deref()
                .is_some_and(|r| r.to_ascii_lowercase().contains("masquerade"));
            if masq {
                "SNAT (MASQUERADE)"
            } else {
                "SNAT"
            }
        }
        (NatKind::Dnat, false) => "DNAT",
        (NatKind::Snat, true) => "de-NAT src",
        (NatKind::Dnat, true) => "de-NAT dst",
    };
    format!("{kind} {} → {}", s.before, s.after)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let s: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&s, 50.0), Some(50.0));
        assert_eq!(percentile(&s, 90.0), Some(90.0));
        assert_eq!(percentile(&s, 99.0), Some(99.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[1.0, 2.0, 3.0], 0.0), Some(1.0));
    }

    #[test]
    fn micros_switch_to_milliseconds() {
        assert_eq!(micros(4.25), "4.2 µs");
        assert_eq!(micros(1500.0), "1.50 ms");
    }
}
