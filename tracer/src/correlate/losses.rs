//! When hooks could not see: the kernel counts, per hook, the events its ring buffer had no
//! room for, and the engine reads those counters every tick. A counter that grew since the last
//! read marks that interval of that hook as lossy. A hook is blind, too, before it is attached
//! (hooks attach one after another, traffic already running) and once the trace ends. A packet
//! whose sightings end before a hook while it was lossy or blind may have gone on unseen: its
//! end is no evidence of a loss.

use crate::model::{Direction, Hook, HookStats};

/// Ring buffer loss intervals kept at most (merged while contiguous); the oldest go first beyond this.
const MAX_SPANS: usize = 4096;

/// How long after its last sighting a packet is still on its way to the next hook.
pub(crate) const ON_ITS_WAY_NS: u64 = 50_000_000;

/// Why a hook could not see for a while.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Gap {
    /// Its events did not fit in the ring buffer.
    RingFull,
    /// It was not attached yet, or any more.
    NotAttached,
}

/// An interval `(after_ns, until_ns]` of kernel monotonic time in which a hook lost events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Span {
    slot: u8,
    direction: Direction,
    after_ns: u64,
    until_ns: u64,
}

/// What the counters told of one hook so far.
#[derive(Clone, Copy, Debug)]
struct Watch {
    slot: u8,
    direction: Direction,
    /// The lost count at the last read, and when that was.
    lost: u64,
    read_ns: u64,
    /// Attached at (0: not known); detaching began at (`u64::MAX`: not yet).
    attached_ns: u64,
    detached_ns: u64,
}

/// When every hook could see, as far as the counters tell.
#[derive(Debug)]
pub(crate) struct LossLog {
    hooks: Vec<Watch>,
    /// Ring buffer losses, merged while contiguous.
    spans: Vec<Span>,
    /// Until the last hook was attached, and from when the first began to detach, some hook
    /// could not see: the quick test of [`LossLog::covers`].
    all_attached_ns: u64,
    first_detached_ns: u64,
}

impl Default for LossLog {
    fn default() -> Self {
        Self {
            hooks: Vec::new(),
            spans: Vec::new(),
            all_attached_ns: 0,
            first_detached_ns: u64::MAX,
        }
    }
}

impl LossLog {
    /// Reads one tick's counters (cumulative per hook) taken at `now_ns`.
    pub(crate) fn note(&mut self, now_ns: u64, stats: &[(Hook, HookStats)]) {
        for (hook, st) in stats {
            let key = (hook.slot, hook.direction);
            let i = match self.hooks.iter().position(|w| (w.slot, w.direction) == key) {
                Some(i) => i,
                None => {
                    self.hooks.push(Watch {
                        slot: hook.slot,
                        direction: hook.direction,
                        lost: 0,
                        read_ns: 0,
                        attached_ns: 0,
                        detached_ns: u64::MAX,
                    });
                    self.hooks.len() - 1
                }
            };
            let w = self.hooks[i];
            if st.lost > w.lost {
                self.add(Span {
                    slot: hook.slot,
                    direction: hook.direction,
                    after_ns: w.read_ns,
                    until_ns: now_ns,
                });
            }
            let w = &mut self.hooks[i];
            (w.lost, w.read_ns) = (st.lost.max(w.lost), now_ns);
            if st.attached_ns != 0 {
                w.attached_ns = st.attached_ns;
            }
            if st.detached_ns != 0 {
                w.detached_ns = w.detached_ns.min(st.detached_ns);
            }
        }
        self.all_attached_ns = self.hooks.iter().map(|w| w.attached_ns).max().unwrap_or(0);
        self.first_detached_ns = self
            .hooks
            .iter()
            .map(|w| w.detached_ns)
            .min()
            .unwrap_or(u64::MAX);
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

    /// Whether a hook was not attached yet at `at_ns`.
    pub(crate) fn attaching_at(&self, at_ns: u64) -> bool {
        self.all_attached_ns != 0 && at_ns <= self.all_attached_ns
    }

    /// Whether any hook could not see at some time while a packet last seen at `at_ns` was
    /// on its way (the quick test before [`LossLog::lossy`] per hook).
    pub(crate) fn covers(&self, at_ns: u64) -> bool {
        let until = at_ns.saturating_add(ON_ITS_WAY_NS);
        self.attaching_at(at_ns)
            || until > self.first_detached_ns
            || self
                .spans
                .iter()
                .any(|s| s.after_ns < until && s.until_ns >= at_ns)
    }

    /// Why the hook of `slot` and `direction` could not see while a packet last seen at `at_ns`
    /// would have crossed it, if it could not (the ring buffer first: it is the likelier).
    pub(crate) fn lossy(&self, slot: u8, direction: Direction, at_ns: u64) -> Option<Gap> {
        let until = at_ns.saturating_add(ON_ITS_WAY_NS);
        let key = (slot, direction);
        let ring_full = self
            .spans
            .iter()
            .any(|s| (s.slot, s.direction) == key && s.after_ns < until && s.until_ns >= at_ns);
        if ring_full {
            return Some(Gap::RingFull);
        }
        let w = self.hooks.iter().find(|w| (w.slot, w.direction) == key)?;
        let attaching = w.attached_ns != 0 && at_ns <= w.attached_ns;
        (attaching || until > w.detached_ns).then_some(Gap::NotAttached)
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
        assert!(log.spans.is_empty() && !log.covers(200 * ms));
        log.note(900 * ms, &[(hook(1), at(100 * ms, 800 * ms))]);
        assert_eq!(
            log.lossy(1, Direction::Ingress, 790 * ms),
            Some(Gap::NotAttached)
        );
        assert_eq!(log.lossy(1, Direction::Ingress, 700 * ms), None);
        // An attach time not known (0: a capture without them) makes nothing blind.
        let mut unknown = LossLog::default();
        unknown.note(300 * ms, &[(hook(1), at(0, 0))]);
        assert!(!unknown.covers(0) && !unknown.attaching_at(0));
        assert_eq!(unknown.lossy(1, Direction::Ingress, 0), None);
        // Where the ring buffer was full too, that is the reason given.
        log.note(950 * ms, &[(hook(1), lost(3))]);
        assert_eq!(
            log.lossy(1, Direction::Ingress, 920 * ms),
            Some(Gap::RingFull)
        );
    }
}
