//! Aggregate mode's per-flow counts: draining `FLOW_STATS` one epoch at a time, exactly.
//!
//! The hook programs count each packet under the epoch they read from `EPOCH` (0 or 1). To
//! drain, userspace flips the epoch, waits until every program that may still have read the old
//! value has returned, and only then reads and deletes the old epoch's entries: nothing can
//! update them any more, so the counts read are final and no packet is counted twice or lost.
//! Each CPU's hooks also hold the flow they counted last in `FLOW_CACHE` (one element per slot
//! and epoch), counted there without a hash lookup; its packets are added to the key's entry
//! when the drain reads the old epoch, and the element is emptied.
//! The wait is `membarrier(MEMBARRIER_CMD_GLOBAL)`, which is `synchronize_rcu()`: tc programs
//! run inside RCU read-side sections (softirq, or with bottom halves off), so a grace period
//! outlasts every program that started before the flip.

use aya::maps::{MapData, PerCpuArray, PerCpuHashMap, PerCpuValues};
use tracer_common::{
    config::{FlowCache, FlowCounts, FlowKey},
    names::{MAP_EPOCH, MAP_FLOW_CACHE, MAP_FLOW_STATS},
};

use super::{AttachError, Tracer};

/// One drained `FLOW_STATS` key: a flow tuple at one hook slot, summed over the CPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Drained {
    pub key: FlowKey,
    pub counts: FlowCounts,
}

/// Sums one key's per-CPU values.
pub(crate) fn sum_cpus<'a>(values: impl IntoIterator<Item = &'a FlowCounts>) -> FlowCounts {
    let mut sum = FlowCounts::default();
    for v in values {
        sum.merge(v);
    }
    sum
}

/// Waits for an RCU grace period: every BPF program running when it was called has returned.
fn synchronize_programs() -> std::io::Result<()> {
    const MEMBARRIER_CMD_GLOBAL: libc::c_int = 1;
    // SAFETY: membarrier takes two integer arguments (and a cpu id, unused with flags 0); it
    // touches no memory of ours.
    let r = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

impl Tracer {
    /// Flips the counting epoch and drains the old one: every count of a packet the hooks saw
    /// before this call, exactly once. In every-packet mode there is nothing to drain.
    pub(crate) fn drain_flows(&mut self, out: &mut Vec<Drained>) -> Result<(), AttachError> {
        if !self.aggregate {
            return Ok(());
        }
        let old = self.epoch;
        let new = old ^ 1;
        super::set_u32(&mut self.ebpf, MAP_EPOCH, 0, u32::from(new))?;
        self.epoch = new;
        synchronize_programs().map_err(AttachError::Counters)?;
        let map = self
            .ebpf
            .map_mut(MAP_FLOW_STATS)
            .ok_or(AttachError::MissingMap(MAP_FLOW_STATS))?;
        let mut stats: PerCpuHashMap<&mut MapData, FlowKey, FlowCounts> =
            PerCpuHashMap::try_from(map).map_err(|source| AttachError::Map {
                name: MAP_FLOW_STATS,
                source,
            })?;
        let err = |source| AttachError::Map {
            name: MAP_FLOW_STATS,
            source,
        };
        let keys: Vec<FlowKey> = stats
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.epoch == old)
            .collect();
        let first = out.len();
        for key in keys {
            let values = stats.get(&key, 0).map_err(err)?;
            let counts = sum_cpus(values.iter());
            stats.remove(&key).map_err(err)?;
            out.push(Drained { key, counts });
        }
        self.drain_caches(old, &mut out[first..])?;
        out.retain(|d| d.counts.packets > 0);
        Ok(())
    }

    /// Adds what the per-CPU caches of epoch `old` counted to the keys drained from
    /// `FLOW_STATS` (every cached key has its entry there), and empties them.
    fn drain_caches(&mut self, old: u8, drained: &mut [Drained]) -> Result<(), AttachError> {
        let map = self
            .ebpf
            .map_mut(MAP_FLOW_CACHE)
            .ok_or(AttachError::MissingMap(MAP_FLOW_CACHE))?;
        let mut caches: PerCpuArray<&mut MapData, FlowCache> =
            PerCpuArray::try_from(map).map_err(|source| AttachError::Map {
                name: MAP_FLOW_CACHE,
                source,
            })?;
        let err = |source| AttachError::Map {
            name: MAP_FLOW_CACHE,
            source,
        };
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| AttachError::Counters(e))?;
        for slot in 0..tracer_common::MAX_HOOKS as u32 {
            let index = slot * 2 + u32::from(old);
            let per_cpu = caches.get(&index, 0).map_err(err)?;
            if per_cpu.iter().all(|c| c.base == 0) {
                continue;
            }
            for c in per_cpu
                .iter()
                .filter(|c| c.base != 0 && c.delta.packets > 0)
            {
                match drained.iter_mut().find(|d| d.key == c.key) {
                    Some(d) => d.counts.merge(&c.delta),
                    None => tracing::warn!(
                        "a cached flow count of slot {slot} has no flow map entry: {} packets not attributed",
                        c.delta.packets
                    ),
                }
            }
            let empty = PerCpuValues::try_from(vec![FlowCache::default(); cpus])
                .map_err(AttachError::Counters)?;
            caches.set(index, empty, 0).map_err(err)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(packets: u64, bytes: u64, first_ns: u64, last_ns: u64) -> FlowCounts {
        FlowCounts {
            packets,
            bytes,
            first_ns,
            last_ns,
            syn_at: 0,
        }
    }

    #[test]
    fn cpus_sum_exactly_and_an_idle_cpu_keeps_no_time() {
        // CPU 1 never counted this key: its zeroed slot must not make the first time 0.
        let per_cpu = [c(3, 300, 50, 90), c(0, 0, 0, 0), c(2, 128, 40, 70)];
        assert_eq!(sum_cpus(per_cpu.iter()), c(5, 428, 40, 90));
        assert_eq!(sum_cpus([c(0, 0, 0, 0)].iter()), c(0, 0, 0, 0));
    }

    #[test]
    fn merging_is_the_same_in_any_order() {
        let parts = [c(1, 60, 10, 10), c(7, 700, 5, 80), c(2, 90, 20, 100)];
        let a = sum_cpus(parts.iter());
        let b = sum_cpus(parts.iter().rev());
        assert_eq!(a, b);
        assert_eq!(a, c(10, 850, 5, 100));
        let big = c(u64::MAX / 2, 0, 1, 1);
        assert_eq!(sum_cpus([big, big].iter()).packets, u64::MAX - 1);
    }
}
