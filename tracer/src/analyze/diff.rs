//! What `pathtrace diff BEFORE AFTER` concludes: what changed between two captures, flows
//! matched by their container-side tuple (protocol, source address, destination address and port;
//! ephemeral source ports and echo ids differ between runs, so they are not part of the key).
//! Pure: [`compare`] takes the flows of both replays.

use std::{collections::BTreeMap, net::IpAddr};

use serde::Serialize;

use crate::{
    correlate::{FlowReport, Stop},
    model::{NatKind, Proto},
};

/// Flows of two captures are the same conversation when these agree.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub(crate) struct FlowKey {
    pub proto: Proto,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub dst_port: u16,
}

impl std::fmt::Display for FlowKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.proto.has_ports() {
            write!(
                f,
                "{} {} -> {}:{}",
                self.proto, self.src, self.dst, self.dst_port
            )
        } else {
            write!(f, "{} {} -> {}", self.proto, self.src, self.dst)
        }
    }
}

/// What a flow looks like, for comparison.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct Shape {
    pub path: Vec<String>,
    /// `SNAT to 10.0.2.1 (port kept)`-style descriptions of the NAT steps.
    pub nat: Vec<String>,
    pub rules: Vec<String>,
    pub drops: Vec<String>,
}

/// One difference.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct Change {
    pub flow: String,
    pub what: &'static str,
    pub before: String,
    pub after: String,
}

pub(crate) fn key(f: &FlowReport) -> FlowKey {
    FlowKey {
        proto: f.proto,
        src: f.src.addr,
        dst: f.dst.addr,
        dst_port: if f.proto.has_ports() { f.dst.port } else { 0 },
    }
}

pub(crate) fn shape(f: &FlowReport) -> Shape {
    Shape {
        path: f
            .hops
            .iter()
            .map(|h| format!("{} {}", h.hook, h.dir))
            .collect(),
        nat: f
            .nat
            .iter()
            .map(|n| {
                let s = &n.step;
                let side = match s.kind {
                    NatKind::Snat => "SNAT",
                    NatKind::Dnat => "DNAT",
                };
                let port = if s.before.port == s.after.port {
                    "port kept"
                } else {
                    "port rewritten"
                };
                format!("{side} to {} ({port})", s.after.addr)
            })
            .collect(),
        rules: f.nat.iter().filter_map(|n| n.step.rule.clone()).collect(),
        drops: f.stops.iter().map(Stop::describe).collect(),
    }
}

/// The representative shape per key: the flow with the most packets.
fn shapes(flows: &[FlowReport]) -> BTreeMap<FlowKey, Shape> {
    let mut best: BTreeMap<FlowKey, &FlowReport> = BTreeMap::new();
    for f in flows {
        let k = key(f);
        let total = f.packets_out + f.packets_back;
        match best.get(&k) {
            Some(b) if b.packets_out + b.packets_back >= total => {}
            _ => {
                best.insert(k, f);
            }
        }
    }
    best.into_iter().map(|(k, f)| (k, shape(f))).collect()
}

/// Pure comparison of two sets of flows.
pub(crate) fn compare(before: &[FlowReport], after: &[FlowReport]) -> Vec<Change> {
    let (a, b) = (shapes(before), shapes(after));
    let mut changes = Vec::new();
    let join = |v: &[String]| {
        if v.is_empty() {
            "none".to_string()
        } else {
            v.join("; ")
        }
    };
    for (k, sa) in &a {
        let Some(sb) = b.get(k) else {
            changes.push(Change {
                flow: k.to_string(),
                what: "flow",
                before: "present".into(),
                after: "absent".into(),
            });
            continue;
        };
        let fields: [(&'static str, &Vec<String>, &Vec<String>); 4] = [
            ("path", &sa.path, &sb.path),
            ("nat", &sa.nat, &sb.nat),
            ("rule", &sa.rules, &sb.rules),
            ("drops", &sa.drops, &sb.drops),
        ];
        for (what, x, y) in fields {
            if x != y {
                let sep = if what == "path" { " -> " } else { "; " };
                let fmt = |v: &Vec<String>| {
                    if v.is_empty() {
                        "none".to_string()
                    } else {
                        v.join(sep)
                    }
                };
                changes.push(Change {
                    flow: k.to_string(),
                    what,
                    before: fmt(x),
                    after: fmt(y),
                });
            }
        }
    }
    for k in b.keys().filter(|k| !a.contains_key(k)) {
        changes.push(Change {
            flow: k.to_string(),
            what: "flow",
            before: "absent".into(),
            after: join(&b[k].path),
        });
    }
    changes
}

/// A diff, as `render` prints it.
#[derive(Clone, Debug)]
pub(crate) struct Comparison {
    pub changes: Vec<Change>,
    pub flows_before: usize,
    pub flows_after: usize,
}

impl Comparison {
    /// Compares the flows of two replays.
    pub(crate) fn of(before: &[FlowReport], after: &[FlowReport]) -> Self {
        Self {
            changes: compare(before, after),
            flows_before: before.len(),
            flows_after: after.len(),
        }
    }

    pub(crate) fn same(&self) -> bool {
        self.changes.is_empty()
    }
}
