//! NAT steps: where along a packet's path its tuple changed, and which rule did it.

use std::cmp::Ordering;

use serde::Serialize;
use smallvec::SmallVec;

use crate::model::{
    Direction, Endpoint, Hook, NatKind, NatQuery, NatStep, Orientation, RuleAttributor, Topology,
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
    orientation: Orientation,
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
                    && (e.between == (a.hook, b.hook)
                        || same_place(topology, e.between, (ha, hb))
                        || nested(topology, orientation, e.between, (a.hook, b.hook)).is_some())
            };
            let q = || query(kind, before, after, peer, a, ha, hb);
            if let Some(e) = entries.iter_mut().find(same) {
                e.packets += 1;
                // A packet whose event at a hook in between was lost shows the same rewrite over
                // a wider span: one step, placed as narrowly as any packet showed it.
                if nested(topology, orientation, e.between, (a.hook, b.hook))
                    == Some(Ordering::Greater)
                {
                    e.between = (a.hook, b.hook);
                    let rule = attributor.and_then(|attr| attr.attribute(&q()));
                    e.rule = rule.and_then(|a| pool.attributions.intern_with(&a, || a.clone()));
                }
                continue;
            }
            let rule = attributor.and_then(|attr| attr.attribute(&q()));
            entries.push(NatRec {
                leg,
                kind,
                conntrack: None,
                between: (a.hook, b.hook),
                rule: rule.and_then(|a| pool.attributions.intern_with(&a, || a.clone())),
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
    let attribution = rec.rule.and_then(|r| pool.attributions.value(r));
    NatEntry {
        step: NatStep {
            kind: rec.kind,
            before: pool.endpoint(rec.before),
            after: pool.endpoint(rec.after),
            between: (label(rec.between.0), label(rec.between.1)),
            rule: attribution.and_then(|a| a.rule.clone()),
            rule_confidence: attribution.map(|a| a.confidence),
            candidates: attribution
                .map(|a| a.candidates.clone())
                .unwrap_or_default(),
            why: attribution.and_then(|a| a.why.clone()),
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

/// Whether two spans of hooks share one end and one lies within the other: `Greater` when
/// `known` is the wider, `Less` when `new` is; `None` otherwise (also when equal).
fn nested(
    topology: &Topology,
    orientation: Orientation,
    known: (HookIdx, HookIdx),
    new: (HookIdx, HookIdx),
) -> Option<Ordering> {
    let rank = |i: HookIdx| hook(topology, i).map(|h| orientation.rank(h.place, h.direction));
    let same = |x: HookIdx, y: HookIdx| match (hook(topology, x), hook(topology, y)) {
        (Some(x), Some(y)) => same_label(x, y),
        _ => false,
    };
    let (k0, k1, n0, n1) = (rank(known.0)?, rank(known.1)?, rank(new.0)?, rank(new.1)?);
    if same(known.1, new.1) && !same(known.0, new.0) {
        Some(n0.cmp(&k0)).filter(|o| o.is_ne())
    } else if same(known.0, new.0) && !same(known.1, new.1) {
        Some(k1.cmp(&n1)).filter(|o| o.is_ne())
    } else {
        None
    }
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
