//! Every map the kernel programs use, each bounded. Userspace may resize `EVENTS` at load time.

use aya_ebpf::{
    macros::map,
    maps::{Array, LruHashMap, PerCpuArray, RingBuf},
    Global,
};
use tracer_common::{
    config::{EndpointKey, FilterConfig, HookConfig, HookCounters, INTEREST_MAX},
    MAX_HOOKS,
};

/// Events to userspace. 8 MiB by default (`--ring-size` changes it at load time).
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(8 << 20, 0);

/// Per-slot direction and role, written by userspace before the slot is attached.
#[map]
pub static HOOKS: Array<HookConfig> = Array::with_max_entries(MAX_HOOKS as u32, 0);

/// Per-slot counters (per CPU, so no atomics on the fast path).
#[map]
pub static COUNTERS: PerCpuArray<HookCounters> = PerCpuArray::with_max_entries(MAX_HOOKS as u32, 0);

/// Remote endpoints the traced side talks to; shared hooks emit only packets to or from them.
#[map]
pub static INTEREST: LruHashMap<EndpointKey, u32> = LruHashMap::with_max_entries(INTEREST_MAX, 0);

/// The in-kernel filter, fixed at load time (read-only data, so switched-off tests cost nothing).
#[unsafe(no_mangle)]
pub static FILTER: Global<FilterConfig> = Global::new(FilterConfig::NONE);
