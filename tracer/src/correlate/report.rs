//! What correlation reports about a flow: the renderers' input.

use std::fmt;

use serde::Serialize;

use crate::model::{Direction, Endpoint, Orientation, Proto, Topology};

use super::{
    flows::{DropTally, FlowState, FragHop, HookIdx, Hop, LegTotals},
    intern::Pool,
    losses::Gap,
    nat::{self, NatEntry},
};

/// Identifies a flow; ids grow in the order flows are first seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct FlowId(pub u64);

impl fmt::Display for FlowId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// One direction of a flow: `Out` is the direction of the packet that opened it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Leg {
    Out,
    Back,
}

impl Leg {
    pub(crate) fn other(self) -> Self {
        match self {
            Self::Out => Self::Back,
            Self::Back => Self::Out,
        }
    }
}

/// One hook of a leg's path and how long after their first sighting packets got there.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HopTiming {
    /// `<ns>:<ifname>`.
    pub hook: String,
    pub dir: Direction,
    /// Mean over the `samples` packets followed here, in microseconds (0 with no samples).
    pub delta_us: f64,
    pub slot: u8,
    /// Packets of the leg seen at this hook (a datagram sent in fragments is one packet): every
    /// one, in both modes (in aggregate mode, as the kernel counted them).
    pub packets: u64,
    /// Packets followed here event by event, which `delta_us` rests on: all of them in
    /// every-packet mode; the first packets, TCP SYN/FIN/RST and the sample in aggregate mode.
    pub samples: u64,
    /// In a flow whose datagrams were fragmented somewhere: the fragments seen at this hook (0
    /// where the hook saw them whole, reassembled); `None` in a flow without fragments.
    pub fragments: Option<u64>,
}

/// Packets of a leg that were last seen at one hook, short of where that leg's packets go.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Stop {
    pub leg: Leg,
    /// `<ns>:<ifname>` of the last hook the packets were seen at.
    pub after_hook: String,
    pub after_dir: Direction,
    pub count: u64,
    /// Kernel drop reason, when a drop event matched these packets.
    pub reason: Option<String>,
    /// What is known about why they were not seen further.
    pub cause: StopCause,
}

/// Why packets were last seen where they were, as far as pathtrace can tell. Only `Dropped` and
/// `NotSeen` are losses; the others say where pathtrace could not follow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopCause {
    /// The kernel freed them with the drop reason in [`Stop::reason`].
    Dropped,
    /// Not seen again, and nothing pathtrace knows explains it.
    NotSeen,
    /// The ring buffer had no room at `at` when they would have got there: whether they did is
    /// not known.
    EventsLost { at: String, at_dir: Direction },
    /// The hook `at` was not attached yet (or any more) when they would have got there: whether
    /// they did is not known.
    NotAttached { at: String, at_dir: Direction },
    /// The kernel routes them out by an interface pathtrace does not watch.
    UntracedExit { via: String, route: String },
}

impl StopCause {
    /// Whether the packets are known to have gone no further (dropped, or not seen again with
    /// nothing to explain it); otherwise pathtrace only lost sight of them.
    pub fn is_loss(&self) -> bool {
        matches!(self, Self::Dropped | Self::NotSeen)
    }
}

impl Stop {
    /// `lost after host:docker0 ingress (NETFILTER_DROP)`, `not seen after ... (ring buffer full
    /// at ...)`, `left by an untraced interface ...`.
    pub(crate) fn describe(&self) -> String {
        let (hook, dir) = (&self.after_hook, self.after_dir);
        match &self.cause {
            StopCause::Dropped | StopCause::NotSeen => {
                let reason = self
                    .reason
                    .as_ref()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default();
                format!("lost after {hook} {dir}{reason}")
            }
            StopCause::EventsLost { at, at_dir } => {
                format!("not seen after {hook} {dir} (ring buffer full at {at} {at_dir})")
            }
            StopCause::NotAttached { at, at_dir } => {
                format!("not seen after {hook} {dir} ({at} {at_dir} was not attached then)")
            }
            StopCause::UntracedExit { via, route } => {
                format!("left by the untraced interface {via} after {hook} {dir} (route: {route})")
            }
        }
    }
}

/// Everything known about one flow.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FlowReport {
    pub id: FlowId,
    pub proto: Proto,
    /// Which way the opening packet went (`inbound` for a published port).
    pub origin: Orientation,
    /// Traced-side addresses of the opening direction.
    pub src: Endpoint,
    pub dst: Endpoint,
    pub packets_out: u64,
    pub packets_back: u64,
    pub bytes_out: u64,
    pub bytes_back: u64,
    /// Kernel monotonic time of the first and last sighting.
    pub first_ns: u64,
    pub last_ns: u64,
    /// Path of the opening direction, in path order.
    pub hops: Vec<HopTiming>,
    pub hops_back: Vec<HopTiming>,
    /// NAT of the opening direction (MASQUERADE of outbound, DNAT of a published port).
    pub nat: Vec<NatEntry>,
    /// The reverse translations on replies (de-NAT).
    pub nat_back: Vec<NatEntry>,
    pub stops: Vec<Stop>,
    /// What the path alone does not tell (e.g. a connection carried by docker-proxy); added by
    /// the view, which knows more of the world than correlation does.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// First seen while a hook of the path was not attached yet: its first packets may have
    /// crossed hooks that could not see them.
    pub before_path_complete: bool,
    /// Whether the packet and byte counts are the kernel's (aggregate mode) rather than the
    /// events' (every-packet mode). Exact either way, unless a summary says events were lost.
    pub kernel_counts: bool,
}

/// What the kernel counted of a flow (aggregate mode), for [`FlowReport::build`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct Counted<'a> {
    /// No packet of the flow was counted for longer than events take to settle: the per-hop
    /// counts are final (packets in flight between two hooks have arrived), and their
    /// differences are where packets stopped.
    pub settled: bool,
    /// Kernel drops of packets no event was sent for, found by tuple.
    pub drops: &'a [DropTally],
    /// When hooks were not attached: a count that falls where a later hook was not attached
    /// yet (or any more) while the flow ran is no evidence of a loss.
    pub losses: &'a super::losses::LossLog,
}

impl FlowReport {
    /// Builds the report of a flow.
    pub(crate) fn build(
        flow: &FlowState,
        topology: &Topology,
        pool: &Pool,
        frags: Option<&[FragHop]>,
        counted: Option<Counted<'_>>,
    ) -> Self {
        // The kernel's counts stand for the flow's packets (else the events do).
        let kernel = counted.is_some();
        let stops_of = |leg| match counted {
            Some(c) => counted_stops(flow, leg, topology, pool, c),
            None => lost(flow, leg, topology, pool),
        };
        let mut stops = stops_of(Leg::Out);
        stops.extend(stops_of(Leg::Back));
        let key = pool.tuple(flow.key);
        let nat = |leg: Leg| -> Vec<NatEntry> {
            let recs = flow.nat.iter().filter(|n| n.leg == leg);
            recs.map(|n| {
                let mut e = nat::entry(n, topology, pool);
                // Counted in the kernel: every packet that crossed the hook after the rewrite.
                let after = flow
                    .hops
                    .iter()
                    .find(|h| h.leg == leg && h.hook == n.between.1);
                if let Some(h) = after.filter(|_| counted.is_some()) {
                    e.packets = e.packets.max(hop_packets(h));
                }
                e
            })
            .collect()
        };
        let ((packets_out, bytes_out), (packets_back, bytes_back)) = (
            leg_totals(flow, Leg::Out, kernel),
            leg_totals(flow, Leg::Back, kernel),
        );
        Self {
            id: flow.id,
            proto: key.proto,
            origin: flow.origin,
            src: key.src,
            dst: key.dst,
            packets_out,
            packets_back,
            bytes_out,
            bytes_back,
            first_ns: flow.first_ns,
            last_ns: flow.last_ns,
            hops: hops(flow, Leg::Out, topology, frags, kernel),
            hops_back: hops(flow, Leg::Back, topology, frags, kernel),
            nat: nat(Leg::Out),
            nat_back: nat(Leg::Back),
            stops,
            notes: Vec::new(),
            before_path_complete: false,
            kernel_counts: counted.is_some(),
        }
    }
}

fn hops(
    flow: &FlowState,
    leg: Leg,
    topology: &Topology,
    frags: Option<&[FragHop]>,
    kernel: bool,
) -> Vec<HopTiming> {
    let orientation = flow.leg(leg).1;
    let mut out: Vec<((u32, u8, u16), HopTiming)> = flow
        .hops
        .iter()
        .filter(|h| h.leg == leg && (kernel || h.packets() > 0))
        .filter_map(|acc| {
            let hook = topology.hooks.get(usize::from(acc.hook))?;
            let mean_ns = acc.sum_ns as f64 / acc.packets().max(1) as f64;
            let timing = HopTiming {
                hook: hook.label(),
                dir: hook.direction,
                delta_us: mean_ns / 1000.0,
                slot: hook.slot,
                packets: if kernel {
                    hop_packets(acc)
                } else {
                    acc.packets()
                },
                samples: acc.packets(),
                fragments: frags.map(|f| {
                    f.iter()
                        .filter(|h| h.hook == acc.hook && h.leg == leg)
                        .map(|h| h.fragments)
                        .sum()
                }),
            };
            let rank = orientation.rank(hook.place, hook.direction);
            Some(((rank, hook.slot, acc.hook), timing))
        })
        .collect();
    out.sort_by_key(|(order, _)| *order);
    out.into_iter().map(|(_, t)| t).collect()
}

/// Every packet of a hop: the kernel's count in aggregate mode (never fewer than the events
/// placed there, which a count drained later may not include yet), the events otherwise.
fn hop_packets(h: &Hop) -> u64 {
    h.counted.max(h.packets())
}

/// Packets and bytes of a leg: where the kernel counted, those of the hop that counted the most
/// (the leg's entry, unless packets joined it later); else the events' totals.
fn leg_totals(flow: &FlowState, leg: Leg, kernel: bool) -> (u64, u64) {
    let events = flow.leg(leg).0;
    if !kernel {
        return (events.packets, events.bytes);
    }
    let counted = flow
        .hops
        .iter()
        .filter(|h| h.leg == leg && h.counted > 0)
        .max_by_key(|h| h.counted);
    match counted {
        Some(h) if h.counted >= events.packets => (h.counted, h.counted_bytes),
        _ => (events.packets, events.bytes),
    }
}

/// Aggregate mode's stops. Settled, they are where the exact per-hop counts fall along the
/// leg's path (and all of a last hop's packets when it is short of where the leg ends), named
/// by the drop reason the kernel gave there. While packets still flow, only what the kernel
/// reported as drops is shown: a count difference then includes packets in flight.
fn counted_stops(
    flow: &FlowState,
    leg: Leg,
    topology: &Topology,
    pool: &Pool,
    counted: Counted<'_>,
) -> Vec<Stop> {
    let sampled = lost(flow, leg, topology, pool);
    let tallies: Vec<&DropTally> = counted.drops.iter().filter(|d| d.leg == leg).collect();
    let reason_of = |d: &DropTally| d.reason.map(|r| pool.strings.get(r).to_string());
    let tallied = |reason: &Option<String>| -> u64 {
        let same = tallies.iter().filter(|d| reason_of(d) == *reason);
        same.map(|d| d.count).sum()
    };
    let orientation = flow.leg(leg).1;
    let mut path: Vec<(u32, &Hop)> = flow
        .hops
        .iter()
        .filter(|h| h.leg == leg && hop_packets(h) > 0)
        .filter_map(|h| {
            let hook = topology.hooks.get(usize::from(h.hook))?;
            Some((orientation.rank(hook.place, hook.direction), h))
        })
        .collect();
    path.sort_by_key(|(rank, h)| (*rank, h.hook));
    let stop_at = |hook: HookIdx, count: u64, reason: Option<String>| -> Option<Stop> {
        let h = topology.hooks.get(usize::from(hook))?;
        let cause = if reason.is_some() {
            StopCause::Dropped
        } else {
            StopCause::NotSeen
        };
        Some(Stop {
            leg,
            after_hook: h.label(),
            after_dir: h.direction,
            count,
            reason,
            cause,
        })
    };
    if !counted.settled {
        // Drops the kernel reported: the sampled ones where they were last seen, with the
        // tallied ones of the same reason; a reason no sample showed goes to the leg's last
        // counted hop.
        let mut stops: Vec<Stop> = sampled
            .into_iter()
            .filter(|s| s.cause == StopCause::Dropped)
            .map(|mut s| {
                s.count += tallied(&s.reason);
                s
            })
            .collect();
        for d in &tallies {
            let reason = reason_of(d);
            if stops.iter().any(|s| s.reason == reason) {
                continue;
            }
            if let Some(stop) = path
                .last()
                .and_then(|(_, h)| stop_at(h.hook, tallied(&reason), reason.clone()))
            {
                stops.push(stop);
            }
        }
        return stops;
    }
    let terminal = terminal_rank(flow, leg, orientation, topology);
    let mut stops = Vec::new();
    let mut tallies_left: Vec<(Option<String>, u64)> = Vec::new();
    for d in &tallies {
        let reason = reason_of(d);
        match tallies_left.iter_mut().find(|(r, _)| *r == reason) {
            Some((_, n)) => *n += d.count,
            None => tallies_left.push((reason, d.count)),
        }
    }
    for (i, (rank, h)) in path.iter().enumerate() {
        let here = hop_packets(h);
        let missing = match path.get(i + 1) {
            Some((_, next)) => here.saturating_sub(hop_packets(next)),
            None if *rank < terminal => here,
            None => 0,
        };
        if missing == 0 {
            continue;
        }
        let Some(hook) = topology.hooks.get(usize::from(h.hook)) else {
            continue;
        };
        let (label, dir) = (hook.label(), hook.direction);
        // What the followed packets that ended here showed: a drop reason, or that pathtrace
        // only lost sight of them (an untraced exit, a hook not attached yet, a full ring).
        let seen_here = |s: &&Stop| s.after_hook == label && s.after_dir == dir;
        if let Some(s) = sampled
            .iter()
            .filter(seen_here)
            .find(|s| !s.cause.is_loss())
        {
            stops.push(Stop {
                count: missing,
                ..s.clone()
            });
            continue;
        }
        let reason = sampled
            .iter()
            .filter(seen_here)
            .find_map(|s| s.reason.clone())
            .or_else(|| {
                // Else a reason the kernel gave for this leg's unsampled packets.
                let left = tallies_left.iter_mut().find(|(_, n)| *n > 0)?;
                left.1 = left.1.saturating_sub(missing);
                left.0.clone()
            });
        // A hook further on that was not attached yet when the flow began, or any more when
        // it ended: the difference may be packets it could not see.
        let rank = *rank;
        let unattached = topology
            .hooks
            .iter()
            .filter(|x| orientation.crosses(x.place, x.direction))
            .filter(|x| orientation.rank(x.place, x.direction) > rank)
            .find(|x| {
                [flow.first_ns, flow.counts_last_ns].iter().any(|t| {
                    counted.losses.lossy(x.slot, x.direction, *t) == Some(Gap::NotAttached)
                })
            });
        if let (Some(x), None) = (unattached, &reason) {
            stops.push(Stop {
                leg,
                after_hook: label,
                after_dir: dir,
                count: missing,
                reason: None,
                cause: StopCause::NotAttached {
                    at: x.label(),
                    at_dir: x.direction,
                },
            });
            continue;
        }
        stops.extend(stop_at(h.hook, missing, reason));
    }
    stops
}

/// Packets of a leg that ended before the leg's terminal hook, or that the kernel dropped.
fn lost(flow: &FlowState, leg: Leg, topology: &Topology, pool: &Pool) -> Vec<Stop> {
    let strings = &pool.strings;
    let orientation = flow.leg(leg).1;
    let terminal = terminal_rank(flow, leg, orientation, topology);
    let mut ends: Vec<_> = flow.ends.iter().filter(|e| e.leg == leg).collect();
    // In the order the report always had: by hook, then reason (none first).
    ends.sort_by(|a, b| {
        let reason = |e: &super::flows::End| e.reason.map(|r| strings.get(r));
        (a.hook, reason(a)).cmp(&(b.hook, reason(b)))
    });
    ends.into_iter()
        .filter_map(|end| {
            let hook = topology.hooks.get(usize::from(end.hook))?;
            let reason = end.reason.map(|r| strings.get(r).to_string());
            let short = orientation.rank(hook.place, hook.direction) < terminal;
            // A packet that reached the end of its path and was then freed by the receiving
            // stack (no socket any more, queue purged at close) was delivered, not lost; only a
            // firewall drop there is worth reporting.
            let dropped = reason.as_deref().is_some_and(|r| short || is_firewall(r));
            let cause = match (&reason, end.unseen_at()) {
                (Some(_), _) => StopCause::Dropped,
                (None, Some((at, gap))) => match (topology.hooks.get(usize::from(at)), gap) {
                    (Some(h), Gap::RingFull) => StopCause::EventsLost {
                        at: h.label(),
                        at_dir: h.direction,
                    },
                    (Some(h), Gap::NotAttached) => StopCause::NotAttached {
                        at: h.label(),
                        at_dir: h.direction,
                    },
                    (None, _) => StopCause::NotSeen,
                },
                (None, None) => StopCause::NotSeen,
            };
            (short || dropped).then(|| Stop {
                leg,
                after_hook: hook.label(),
                after_dir: hook.direction,
                count: end.count,
                reason,
                cause,
            })
        })
        .collect()
}

/// Drop reasons that come from a filtering decision rather than from delivery's end.
fn is_firewall(reason: &str) -> bool {
    reason.starts_with("NETFILTER") || reason.starts_with("IPTABLES") || reason.contains("FILTER")
}

/// Where a leg's packets are expected to end: the farthest any of them got, and no nearer than
/// the mirror of where the other leg's packets come in (a reply entering at the uplink means
/// the request left by it); with no packets the other way, the topology's main path end.
fn terminal_rank(flow: &FlowState, leg: Leg, orientation: Orientation, topology: &Topology) -> u32 {
    let other: &LegTotals = flow.leg(leg.other()).0;
    let reached = flow
        .ends
        .iter()
        .filter(|e| e.leg == leg)
        .filter_map(|e| topology.hooks.get(usize::from(e.hook)))
        .map(|h| orientation.rank(h.place, h.direction))
        .max();
    let expected = match other.entry {
        Some((_, place, dir)) => Some(orientation.mirror_rank(place, dir)),
        None => orientation.main_path_end(topology.hooks.iter().map(|h| (h.place, h.direction))),
    };
    reached.max(expected).unwrap_or(0)
}
