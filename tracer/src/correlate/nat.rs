//! NAT steps: where along a packet's path its tuple changed, and which rule did it.

use serde::Serialize;

use crate::model::{
    Direction, Endpoint, Hook, NatKind, NatQuery, NatStep, RuleAttributor, Topology,
};

use super::packets::{Instance, Sighting};

/// A NAT step of a flow and how many of its packets went through it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NatEntry {
    #[serde(flatten)]
    pub step: NatStep,
    pub packets: u64,
}

impl NatEntry {
    /// Same rewrite at the same place (rule and conntrack aside).
    fn same_as(&self, step: &NatStep) -> bool {
        let s = &self.step;
        s.kind == step.kind
            && s.before == step.before
            && s.after == step.after
            && s.between == step.between
    }
}

/// Records the NAT steps of one packet into `entries`, counting repeats and asking `attributor`
/// for the rule of each step not seen before.
pub fn record(
    inst: &Instance,
    topology: &Topology,
    attributor: Option<&dyn RuleAttributor>,
    entries: &mut Vec<NatEntry>,
) {
    for pair in inst.sightings.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        let (Some(ha), Some(hb)) = (topology.hooks.get(a.hook), topology.hooks.get(b.hook)) else {
            continue;
        };
        for (kind, before, after, peer) in rewrites(a, b) {
            let step = NatStep {
                kind,
                before,
                after,
                between: (ha.label(), hb.label()),
                rule: None,
                conntrack: None,
            };
            if let Some(e) = entries.iter_mut().find(|e| e.same_as(&step)) {
                e.packets += 1;
                continue;
            }
            let rule = attributor.and_then(|attr| attr.attribute(&query(&step, peer, a, ha, hb)));
            entries.push(NatEntry {
                step: NatStep { rule, ..step },
                packets: 1,
            });
        }
    }
}

/// The rewrites between two consecutive sightings: (kind, before, after, untouched peer).
fn rewrites(a: &Sighting, b: &Sighting) -> Vec<(NatKind, Endpoint, Endpoint, Endpoint)> {
    let (ta, tb) = (a.tuple, b.tuple);
    let mut out = Vec::new();
    if ta.src != tb.src {
        out.push((NatKind::Snat, ta.src, tb.src, tb.dst));
    }
    if ta.dst != tb.dst {
        out.push((NatKind::Dnat, ta.dst, tb.dst, tb.src));
    }
    out
}

fn query<'a>(
    step: &NatStep,
    peer: Endpoint,
    a: &Sighting,
    before: &'a Hook,
    after: &'a Hook,
) -> NatQuery<'a> {
    NatQuery {
        kind: step.kind,
        proto: a.tuple.proto,
        before: step.before,
        after: step.after,
        peer,
        in_iface: (before.direction == Direction::Ingress).then_some(before.ifname.as_str()),
        out_iface: (after.direction == Direction::Egress).then_some(after.ifname.as_str()),
    }
}
