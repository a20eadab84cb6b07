//! When hooks lost events: the kernel counts, per hook, the events its ring buffer had no room
//! for, and the engine reads those counters every tick. A counter that grew since the last read
//! marks that interval of that hook as lossy. A packet whose sightings end before such a hook,
//! while it was lossy, may have gone on unseen: its end is no evidence of a loss.

use crate::model::{Direction, Hook, HookStats};

/// Lossy intervals kept at most (merged while contiguous); the oldest go first beyond this.
const MAX_SPANS: usize = 4096;

/// How long after its last sighting a packet is still on its way to the next hook.
pub(crate) const ON_ITS_WAY_NS: u64 = 50_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Span {
    slot: u8,
    direction: Direction,
    /// The interval `(after_ns, until_ns]` of kernel monotonic time.
    after_ns: u64,
    until_ns: u64,
}

/// The lossy intervals of every hook, as far as the counters tell.
#[derive(Debug, Default)]
pub(crate) struct LossLog {
    /// Per hook: the lost count and the time of the last read.
    last: Vec<(u8, Direction, u64, u64)>,
    spans: Vec<Span>,
}

impl LossLog {
    /// Reads one tick's counters (cumulative per hook) taken at `now_ns`.
    pub(crate) fn note(&mut self, now_ns: u64, stats: &[(Hook, HookStats)]) {
        for (hook, st) in stats {
            let key = (hook.slot, hook.direction);
            let known = self.last.iter().position(|l| (l.0, l.1) == key);
            let (lost_before, read_before) =
                known.map_or((0, 0), |i| (self.last[i].2, self.last[i].3));
            if st.lost > lost_before {
                self.add(Span {
                    slot: hook.slot,
                    direction: hook.direction,
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

    fn add(&mut self, span: Span) {
        let contiguous = self.spans.iter_mut().rev().find(|s| {
            (s.slot, s.direction) == (span.slot, span.direction) && s.until_ns >= span.after_ns
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

    /// Whether nothing was lost anywhere (the common case: nothing to look up).
    pub(crate) fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Whether the hook of `slot` and `direction` was losing events while a packet last seen at
    /// `at_ns` would have crossed it.
    pub(crate) fn lossy(&self, slot: u8, direction: Direction, at_ns: u64) -> bool {
        let until = at_ns.saturating_add(ON_ITS_WAY_NS);
        self.spans.iter().any(|s| {
            (s.slot, s.direction) == (slot, direction) && s.after_ns < until && s.until_ns >= at_ns
        })
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
        assert!(log.is_empty());
        log.note(500 * ms, &[(hook(1), lost(7)), (hook(2), lost(0))]);
        log.note(750 * ms, &[(hook(1), lost(7)), (hook(2), lost(0))]);
        assert!(log.lossy(1, Direction::Ingress, 300 * ms));
        assert!(
            log.lossy(1, Direction::Ingress, 249 * ms),
            "on its way into the lossy interval"
        );
        assert!(!log.lossy(1, Direction::Ingress, 600 * ms));
        assert!(!log.lossy(2, Direction::Ingress, 300 * ms));
        assert!(!log.lossy(1, Direction::Egress, 300 * ms));
        // Growing again in the next interval extends the span.
        log.note(1_000 * ms, &[(hook(1), lost(9))]);
        assert!(log.lossy(1, Direction::Ingress, 900 * ms));
        assert_eq!(log.spans.len(), 2, "not contiguous: {:?}", log.spans);
    }
}
