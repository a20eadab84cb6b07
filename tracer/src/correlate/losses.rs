//! When hooks could not see: the kernel counts, per hook, the events its ring buffer had no
//! room for, and the engine reads those counters every tick. A counter that grew since the last
//! read marks that interval of that hook as lossy. A hook is blind, too, before it is attached
//! (hooks attach one after another, traffic already running) and once the trace ends. A packet
//! whose sightings end before a hook while it was lossy or blind may have gone on unseen: its
//! end is no evidence of a loss.

use crate::model::{Direction, Hook, HookStats};

/// Lossy intervals kept at most (merged while contiguous); the oldest go first beyond this.
const MAX_SPANS: usize = 4096;

/// How long after its last sighting a packet is still on its way to the next hook.
pub(crate) const ON_ITS_WAY_NS: u64 = 50_000_000;

/// Why a hook could not see for a while.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Gap {
    /// Its events did not fit in the ring buffer.
    RingFull,
    /// It was not attached yet, or any more.
    NotAttached,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Span {
    slot: u8,
    direction: Direction,
    gap: Gap,
    /// The interval `(after_ns, until_ns]` of kernel monotonic time.
    after_ns: u64,
    until_ns: u64,
}

/// The lossy intervals of every hook, as far as the counters tell.
#[derive(Debug, Default)]
pub(crate) struct LossLog {
    /// Per hook: the lost count and the time of the last read.
    last: Vec<(u8, Direction, u64, u64)>,
    /// Per hook: the attach time whose blind span before it was added.
    attached: Vec<(u8, Direction, u64)>,
    spans: Vec<Span>,
}

impl LossLog {
    /// Reads one tick's counters (cumulative per hook) taken at `now_ns`.
    pub(crate) fn note(&mut self, now_ns: u64, stats: &[(Hook, HookStats)]) {
        for (hook, st) in stats {
            let key = (hook.slot, hook.direction);
            self.note_attached(hook, st.attached_ns);
            if st.detached_ns != 0 {
                self.note_end(hook, st.detached_ns);
            }
            let known = self.last.iter().position(|l| (l.0, l.1) == key);
            let (lost_before, read_before) =
                known.map_or((0, 0), |i| (self.last[i].2, self.last[i].3));
            if st.lost > lost_before {
                self.add(Span {
                    slot: hook.slot,
                    direction: hook.direction,
                    gap: Gap::RingFull,
                    after_ns: read_before,
                    until_ns: now_ns,
                });
            }
            match known {
                Some(i) => self.last[i] = (key.0, key.1, st.lost.max(lost_before), now_ns),
                None => self.last.push((key.0, key.1, st.lost, now_ns)),
            }
        }
    }

    /// A hook attached at `attached_ns` (0: not known) saw nothing before.
    fn note_attached(&mut self, hook: &Hook, attached_ns: u64) {
        let key = (hook.slot, hook.direction, attached_ns);
        if attached_ns == 0 || self.attached.contains(&key) {
            return;
        }
        self.attached.retain(|a| (a.0, a.1) != (key.0, key.1));
        self.attached.push(key);
        self.add(Span {
            slot: hook.slot,
            direction: hook.direction,
            gap: Gap::NotAttached,
            after_ns: 0,
            until_ns: attached_ns,
        });
    }

    /// Detaching began at `end_ns`: the hooks, detached one after another from then on, see
    /// nothing later, so what was on its way then may have gone on unseen.
    fn note_end(&mut self, hook: &Hook, end_ns: u64) {
        self.add(Span {
            slot: hook.slot,
            direction: hook.direction,
            gap: Gap::NotAttached,
            after_ns: end_ns,
            until_ns: u64::MAX,
        });
    }

    fn add(&mut self, span: Span) {
        let contiguous = self.spans.iter_mut().rev().find(|s| {
            (s.slot, s.direction, s.gap) == (span.slot, span.direction, span.gap)
                && s.until_ns >= span.after_ns
                && s.after_ns <= span.after_ns
        });
        if let Some(s) = contiguous {
            s.until_ns = s.until_ns.max(span.until_ns);
            return;
        }
        if self.spans.len() >= MAX_SPANS {
            self.spans.remove(0);
        }
        self.spans.push(span);
    }

    /// Whether any hook could not see at some time while a packet last seen at `at_ns` was
    /// on its way (the quick test before [`LossLog::lossy`] per hook).
    pub(crate) fn covers(&self, at_ns: u64) -> bool {
        let until = at_ns.saturating_add(ON_ITS_WAY_NS);
        self.spans
            .iter()
            .any(|s| s.after_ns < until && s.until_ns >= at_ns)
    }

    /// Why the hook of `slot` and `direction` could not see while a packet last seen at `at_ns`
    /// would have crossed it, if it could not (the ring buffer first: it is the likelier).
    pub(crate) fn lossy(&self, slot: u8, direction: Direction, at_ns: u64) -> Option<Gap> {
        let until = at_ns.saturating_add(ON_ITS_WAY_NS);
        self.spans
            .iter()
            .filter(|s| {
                (s.slot, s.direction) == (slot, direction)
                    && s.after_ns < until
                    && s.until_ns >= at_ns
            })
            .map(|s| s.gap)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Place, Role};

    fn hook(slot: u8) -> Hook {
        Hook {
            slot,
            ns_label: "host".into(),
            ifname: "br0".into(),
            ifindex: 3,
            direction: Direction::Ingress,
            place: Place::Bridge,
            role: Role::Shared,
        }
    }

    fn lost(n: u64) -> HookStats {
        HookStats {
            lost: n,
            ..HookStats::default()
        }
    }

    #[test]
    fn an_interval_is_lossy_only_where_its_counter_grew() {
        let mut log = LossLog::default();
        let ms = 1_000_000;
        log.note(250 * ms, &[(hook(1), lost(0)), (hook(2), lost(0))]);
        assert!(log.spans.is_empty());
        log.note(500 * ms, &[(hook(1), lost(7)), (hook(2), lost(0))]);
        log.note(750 * ms, &[(hook(1), lost(7)), (hook(2), lost(0))]);
        assert_eq!(
            log.lossy(1, Direction::Ingress, 300 * ms),
            Some(Gap::RingFull)
        );
        assert!(
            log.lossy(1, Direction::Ingress, 249 * ms).is_some(),
            "on its way into the lossy interval"
        );
        assert!(log.lossy(1, Direction::Ingress, 600 * ms).is_none());
        assert!(log.lossy(2, Direction::Ingress, 300 * ms).is_none());
        assert!(log.lossy(1, Direction::Egress, 300 * ms).is_none());
        // Growing again in the next interval extends the span.
        log.note(1_000 * ms, &[(hook(1), lost(9))]);
        assert!(log.lossy(1, Direction::Ingress, 900 * ms).is_some());
        assert_eq!(log.spans.len(), 2, "not contiguous: {:?}", log.spans);
    }

    #[test]
    fn a_hook_is_blind_before_it_is_attached_and_once_detaching_began() {
        let mut log = LossLog::default();
        let ms = 1_000_000;
        let at = |attached_ns, detached_ns| HookStats {
            attached_ns,
            detached_ns,
            ..HookStats::default()
        };
        log.note(
            300 * ms,
            &[(hook(1), at(100 * ms, 0)), (hook(2), at(20 * ms, 0))],
        );
        assert_eq!(
            log.lossy(1, Direction::Ingress, 90 * ms),
            Some(Gap::NotAttached)
        );
        assert_eq!(log.lossy(2, Direction::Ingress, 90 * ms), None);
        assert!(
            !log.covers(200 * ms),
            "attached and not losing: nothing to look up"
        );
        // Read again: the same attach time adds nothing.
        log.note(400 * ms, &[(hook(1), at(100 * ms, 0))]);
        assert_eq!(log.spans.len(), 2);
        log.note(900 * ms, &[(hook(1), at(100 * ms, 800 * ms))]);
        assert_eq!(
            log.lossy(1, Direction::Ingress, 790 * ms),
            Some(Gap::NotAttached)
        );
        assert_eq!(log.lossy(1, Direction::Ingress, 700 * ms), None);
        // Where the ring buffer was full too, that is the reason given.
        log.note(950 * ms, &[(hook(1), lost(3))]);
        assert_eq!(
            log.lossy(1, Direction::Ingress, 920 * ms),
            Some(Gap::RingFull)
        );
    }
}
