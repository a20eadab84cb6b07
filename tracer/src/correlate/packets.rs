//! From events to packets: sightings buffered by fingerprint until they settle, then split into
//! packet instances (one packet's crossings of the hooks, in path order).

use std::{net::IpAddr, ops::Range};

use hashbrown::HashMap;
use smallvec::SmallVec;

use crate::model::{Direction, DropRecord, Orientation, Place};

use super::{flows::HookIdx, frags::Frag, tuple::Tuple};

/// One packet seen at one hook, reduced to what correlation needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Sighting {
    /// Index of the hook in `Topology::hooks`.
    pub hook: HookIdx,
    pub place: Place,
    pub direction: Direction,
    pub ktime_ns: u64,
    pub tuple: Tuple,
    pub pkt_len: u32,
    /// TCP flags (0 for other protocols): the same at every hook, NAT leaves them alone.
    pub tcp_flags: u8,
    /// TCP sequence number or ICMP echo sequence, as the kernel program read it.
    pub seq: u32,
}

/// One packet's path: its sightings in time order, at most one per hook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Instance {
    pub fingerprint: u64,
    /// Never empty.
    pub sightings: Vec<Sighting>,
    /// Name of the kernel drop reason of a drop event that matched this packet.
    pub drop_reason: Option<String>,
    /// The IP fragment this packet is (the same at every hook: the fingerprint covers it).
    pub frag: Frag,
    /// For a first fragment joined with its datagram reassembled (see [`super::frags`]): the
    /// hooks that saw the whole datagram rather than the fragment.
    pub whole_at: SmallVec<[HookIdx; 2]>,
}

impl Instance {
    pub(super) fn first(&self) -> Option<&Sighting> {
        self.sightings.first()
    }

    pub(super) fn first_ns(&self) -> u64 {
        self.first().map_or(0, |s| s.ktime_ns)
    }

    pub(super) fn last_ns(&self) -> u64 {
        self.sightings.last().map_or(0, |s| s.ktime_ns)
    }

    /// Which way the packet went: told by its first hook, or (first seen at the bridge) by
    /// whether its source is one of the traced side's addresses.
    pub(super) fn orientation(&self, target_addrs: &[IpAddr]) -> Orientation {
        let Some(first) = self.first() else {
            return Orientation::Outbound;
        };
        if let Some(o) = Orientation::of_hook(first.place, first.direction) {
            return o;
        }
        if first.tuple.src_in(target_addrs) {
            Orientation::Outbound
        } else if first.tuple.reversed().src_in(target_addrs) {
            Orientation::Inbound
        } else {
            majority_orientation(&self.sightings)
        }
    }

    /// The tuple as the traced side sees it, when the packet was seen at a container or veth hook.
    pub(super) fn traced_tuple(&self) -> Option<Tuple> {
        let traced = self.sightings.iter().find(|s| s.place.is_source());
        traced.map(|s| s.tuple)
    }

    /// The tuple at the hook nearest the traced side: the first for an outbound packet, the
    /// last for an inbound one.
    pub(super) fn nearest_tuple(&self, orientation: Orientation) -> Option<Tuple> {
        let nearest = match orientation {
            Orientation::Outbound => self.sightings.first(),
            Orientation::Inbound => self.sightings.last(),
        };
        nearest.map(|s| s.tuple)
    }
}

/// The orientation most of the sightings' hooks imply (outbound on a tie).
fn majority_orientation(sightings: &[Sighting]) -> Orientation {
    let vote: i64 = sightings
        .iter()
        .filter_map(|s| Orientation::of_hook(s.place, s.direction))
        .map(|o| if o == Orientation::Outbound { 1 } else { -1 })
        .sum();
    if vote >= 0 {
        Orientation::Outbound
    } else {
        Orientation::Inbound
    }
}

/// Sightings (and drops) of one fingerprint not yet turned into instances.
#[derive(Debug, Default)]
struct Group {
    /// The fragment bits of the fingerprint (one packet's: the fingerprint covers them).
    frag: Frag,
    sightings: Vec<Sighting>,
    drops: Vec<DropRecord>,
    /// Arrival number of the latest sighting (see [`Pending::take_oldest`]).
    touched: u64,
    /// [`Group::compute_oldest_ns`], kept up to date: the settle scan then reads no sightings.
    oldest_ns: u64,
}

impl Group {
    fn oldest_ns(&self) -> u64 {
        self.oldest_ns
    }

    /// Keeps `oldest_ns` when a sighting or drop of time `ns` is added.
    fn note_added(&mut self, ns: u64) {
        let first = self.sightings.len() + self.drops.len() == 1;
        self.oldest_ns = if first { ns } else { self.oldest_ns.min(ns) };
    }

    fn compute_oldest_ns(&self) -> u64 {
        let s = self.sightings.iter().map(|s| s.ktime_ns);
        s.chain(self.drops.iter().map(|d| d.ktime_ns))
            .min()
            .unwrap_or(0)
    }

    fn is_empty(&self) -> bool {
        self.sightings.is_empty() && self.drops.is_empty()
    }

    /// Splits the sightings into instances and appends to `out` the leading ones whose last
    /// sighting is at or before `cutoff_ns`, with the drops that belong to them. Returns the
    /// number of drops given up (due, but no packet to match).
    fn take(&mut self, fp: u64, cutoff_ns: u64, gap_ns: u64, out: &mut Vec<Instance>) -> u64 {
        let orientation = majority_orientation(&self.sightings);
        self.sightings
            .sort_by_key(|s| (s.ktime_ns, orientation.rank(s.place, s.direction)));
        let bounds = split(&self.sightings, gap_ns);
        let due = bounds
            .iter()
            .take_while(|r| self.sightings[r.end - 1].ktime_ns <= cutoff_ns)
            .count();
        let starts: SmallVec<[u64; 2]> = bounds
            .iter()
            .map(|r| self.sightings[r.start].ktime_ns)
            .collect();
        let first = out.len();
        if due == 1 && bounds.len() == 1 {
            // One packet, all of it due (the common case): its sightings move as they are.
            out.push(Instance {
                fingerprint: fp,
                sightings: std::mem::take(&mut self.sightings),
                drop_reason: None,
                frag: self.frag,
                whole_at: SmallVec::new(),
            });
        } else {
            let keep_from = bounds.get(due).map_or(self.sightings.len(), |r| r.start);
            let rest = self.sightings.split_off(keep_from);
            let mut taken = std::mem::replace(&mut self.sightings, rest).into_iter();
            out.extend(bounds[..due].iter().map(|r| Instance {
                fingerprint: fp,
                sightings: taken.by_ref().take(r.len()).collect(),
                drop_reason: None,
                frag: self.frag,
                whole_at: SmallVec::new(),
            }));
        }
        let given_up = if self.drops.is_empty() {
            0
        } else {
            self.attach_drops(&starts, &mut out[first..], cutoff_ns)
        };
        self.oldest_ns = self.compute_oldest_ns();
        given_up
    }

    /// Gives each drop to the instance that started last before it; drops that belong to a
    /// pending instance stay. Returns how many due drops matched no packet at all.
    fn attach_drops(&mut self, starts: &[u64], taken: &mut [Instance], cutoff_ns: u64) -> u64 {
        let mut given_up = 0;
        self.drops.retain(|d| {
            if starts.is_empty() {
                // No packet with this tag (yet): wait for one until the drop itself is due.
                let due = d.ktime_ns <= cutoff_ns;
                given_up += u64::from(due);
                return !due;
            }
            // The instance that started last before the drop (the first, if none did).
            let owner = starts.iter().rposition(|&t| t <= d.ktime_ns).unwrap_or(0);
            let Some(inst) = taken.get_mut(owner) else {
                return true; // its packet is still pending
            };
            let name = || {
                d.reason_name
                    .clone()
                    .unwrap_or_else(|| format!("reason {}", d.reason))
            };
            inst.drop_reason.get_or_insert_with(name);
            false
        });
        given_up
    }
}

/// Index ranges of the instances in time-sorted sightings: a new instance starts at a hook the
/// current one already crossed, after a gap longer than `gap_ns`, or where the tuple changes on
/// both sides at once (NAT rewrites one side; such a pair is two packets sharing a tag).
fn split(sightings: &[Sighting], gap_ns: u64) -> SmallVec<[Range<usize>; 2]> {
    let mut bounds = SmallVec::new();
    let mut start = 0;
    for i in 1..sightings.len() {
        let (prev, cur) = (&sightings[i - 1], &sightings[i]);
        let repeated = sightings[start..i].iter().any(|s| s.hook == cur.hook);
        let gap = cur.ktime_ns.saturating_sub(prev.ktime_ns) > gap_ns;
        let (a, b) = (prev.tuple, cur.tuple);
        let foreign = a.proto != b.proto || (a.src != b.src && a.dst != b.dst);
        if repeated || gap || foreign {
            bounds.push(start..i);
            start = i;
        }
    }
    if start < sightings.len() {
        bounds.push(start..sightings.len());
    }
    bounds
}

/// The settle buffer: sightings and drops by fingerprint. (hashbrown's default hasher, seeded
/// per process: a fingerprint is a packet-controlled value, and SipHash cost a tenth of the
/// reader's time.)
#[derive(Debug, Default)]
pub(super) struct Pending {
    groups: HashMap<u64, Group>,
    sightings: usize,
    arrivals: u64,
    unmatched_drops: u64,
}

impl Pending {
    pub(super) fn push(&mut self, fingerprint: u64, sighting: Sighting, frag: Frag) {
        self.arrivals += 1;
        let group = self.groups.entry(fingerprint).or_default();
        group.frag = frag;
        group.sightings.push(sighting);
        group.note_added(sighting.ktime_ns);
        group.touched = self.arrivals;
        self.sightings += 1;
    }

    pub(super) fn push_drop(&mut self, drop: DropRecord) {
        let group = self.groups.entry(drop.fingerprint).or_default();
        let ns = drop.ktime_ns;
        group.drops.push(drop);
        group.note_added(ns);
    }

    /// Sightings waiting to settle.
    pub(super) fn len(&self) -> usize {
        self.sightings
    }

    /// Drops that matched no packet.
    pub(super) fn unmatched_drops(&self) -> u64 {
        self.unmatched_drops
    }

    /// Drops that matched no packet elsewhere (found by neither fingerprint nor tuple).
    pub(super) fn count_unmatched(&mut self, n: u64) {
        self.unmatched_drops += n;
    }

    /// Takes every instance whose last sighting is at or before `cutoff_ns`, oldest first.
    pub(super) fn take_settled(&mut self, cutoff_ns: u64, gap_ns: u64) -> Vec<Instance> {
        let mut out = Vec::new();
        let (unmatched, sightings) = (&mut self.unmatched_drops, &mut self.sightings);
        self.groups.retain(|fp, group| {
            if group.oldest_ns() > cutoff_ns {
                return true;
            }
            let first = out.len();
            *unmatched += group.take(*fp, cutoff_ns, gap_ns, &mut out);
            *sightings -= out[first..]
                .iter()
                .map(|i| i.sightings.len())
                .sum::<usize>();
            !group.is_empty()
        });
        sort_instances(&mut out);
        out
    }

    /// Takes whole fingerprint groups, least recently pushed to first, until at most `keep`
    /// sightings are left. (Arrival order, not kernel time: a packet still crossing the hooks
    /// can carry older timestamps than one finished on another CPU.)
    pub(super) fn take_oldest(&mut self, keep: usize, gap_ns: u64) -> Vec<Instance> {
        let mut by_age: Vec<(u64, u64)> =
            self.groups.iter().map(|(fp, g)| (g.touched, *fp)).collect();
        by_age.sort_unstable();
        let mut left = self.sightings;
        let chosen: Vec<u64> = by_age
            .into_iter()
            .take_while(|(_, fp)| {
                let over = left > keep;
                left -= self.groups.get(fp).map_or(0, |g| g.sightings.len());
                over
            })
            .map(|(_, fp)| fp)
            .collect();
        self.take_groups(&chosen, u64::MAX, gap_ns)
    }

    fn take_groups(&mut self, fps: &[u64], cutoff_ns: u64, gap_ns: u64) -> Vec<Instance> {
        let mut out = Vec::new();
        for fp in fps {
            let Some(group) = self.groups.get_mut(fp) else {
                continue;
            };
            let first = out.len();
            self.unmatched_drops += group.take(*fp, cutoff_ns, gap_ns, &mut out);
            self.sightings -= out[first..]
                .iter()
                .map(|i| i.sightings.len())
                .sum::<usize>();
            if group.is_empty() {
                self.groups.remove(fp);
            }
        }
        sort_instances(&mut out);
        out
    }
}

/// Oldest first; the keys are computed once and sorted apart from the instances (stable).
fn sort_instances(out: &mut [Instance]) {
    out.sort_by_cached_key(|i| (i.first_ns(), i.fingerprint, i.first().map(|s| s.hook)));
}
