//! NAT steps: where along a packet's path its tuple changed, and which rule did it.

use serde::Serialize;
use smallvec::SmallVec;

use crate::model::{
    Direction, Endpoint, Hook, NatKind, NatQuery, NatStep, RuleAttributor, Topology,
};

use super::{
    flows::{same_label, HookIdx, NatRec},
    intern::Pool,
    packets::{Instance, Sighting},
    report::Leg,
};

/// A NAT step of a flow and how many of its packets went through it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NatEntry {
    #[serde(flatten)]
    pub step: NatStep,
    pub packets: u64,
}

/// Records the NAT steps of one packet of leg `leg` into `entries`, counting repeats and asking
/// `attributor` for the rule of each step not seen before.
pub(super) fn record(
    inst: &Instance,
    leg: Leg,
    topology: &Topology,
    attributor: Option<&dyn RuleAttributor>,
    pool: &mut Pool,
    entries: &mut SmallVec<[NatRec; 1]>,
) {
    for pair in inst.sightings.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        let (Some(ha), Some(hb)) = (hook(topology, a.hook), hook(topology, b.hook)) else {
            continue;
        };
        for (kind, before, after, peer) in rewrites(a, b).into_iter().flatten() {
            // Same rewrite at the same place (rule and conntrack aside); a re-attached hook has
            // a new index but the same label.
            let same = |e: &&mut NatRec| {
                e.leg == leg
                    && e.kind == kind
                    && pool.endpoint(e.before) == before
                    && pool.endpoint(e.after) == after
                    && (e.between == (a.hook, b.hook) || same_place(topology, e.between, (ha, hb)))
            };
            if let Some(e) = entries.iter_mut().find(same) {
                e.packets += 1;
                continue;
            }
            let q = || query(kind, before, after, peer, a, ha, hb);
            let rule = attributor.and_then(|attr| attr.attribute(&q()));
            entries.push(NatRec {
                leg,
                kind,
                conntrack: None,
                between: (a.hook, b.hook),
                rule: rule.as_deref().and_then(|r| pool.strings.intern(r)),
                before: pool.acquire_endpoint(before),
                after: pool.acquire_endpoint(after),
                packets: 1,
            });
        }
    }
}

/// The step as the report shows it: hooks by label, the rule by its text.
pub(super) fn entry(rec: &NatRec, topology: &Topology, pool: &Pool) -> NatEntry {
    let label = |i: HookIdx| hook(topology, i).map(Hook::label).unwrap_or_default();
    NatEntry {
        step: NatStep {
            kind: rec.kind,
            before: pool.endpoint(rec.before),
            after: pool.endpoint(rec.after),
            between: (label(rec.between.0), label(rec.between.1)),
            rule: rec.rule.map(|r| pool.strings.get(r).to_string()),
            conntrack: rec.conntrack,
        },
        packets: rec.packets,
    }
}

fn hook(topology: &Topology, i: HookIdx) -> Option<&Hook> {
    topology.hooks.get(usize::from(i))
}

fn same_place(topology: &Topology, between: (HookIdx, HookIdx), hooks: (&Hook, &Hook)) -> bool {
    let (Some(a), Some(b)) = (hook(topology, between.0), hook(topology, between.1)) else {
        return false;
    };
    same_label(a, hooks.0) && same_label(b, hooks.1)
}

/// The rewrites between two consecutive sightings: (kind, before, after, untouched peer).
type Rewrite = (NatKind, Endpoint, Endpoint, Endpoint);

fn rewrites(a: &Sighting, b: &Sighting) -> [Option<Rewrite>; 2] {
    let (ta, tb) = (a.tuple, b.tuple);
    [
        (ta.src != tb.src).then_some((NatKind::Snat, ta.src, tb.src, tb.dst)),
        (ta.dst != tb.dst).then_some((NatKind::Dnat, ta.dst, tb.dst, tb.src)),
    ]
}

fn query<'a>(
    kind: NatKind,
    rewritten_before: Endpoint,
    rewritten_after: Endpoint,
    peer: Endpoint,
    a: &Sighting,
    before: &'a Hook,
    after: &'a Hook,
) -> NatQuery<'a> {
    NatQuery {
        kind,
        proto: a.tuple.proto,
        before: rewritten_before,
        after: rewritten_after,
        peer,
        in_iface: (before.direction == Direction::Ingress).then_some(before.ifname.as_str()),
        out_iface: (after.direction == Direction::Egress).then_some(after.ifname.as_str()),
    }
}
