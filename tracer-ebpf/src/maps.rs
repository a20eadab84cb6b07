//! Every map the kernel programs use, each bounded. Userspace may resize `EVENTS` at load time.

use aya_ebpf::{
    macros::map,
    maps::{Array, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
    Global,
};
use tracer_common::{
    config::{
        EndpointKey, FilterConfig, FlowCache, FlowCounts, FlowKey, HookConfig, HookCounters,
        ModeConfig, SkbOffsets, FLOW_STATS_MAX, INTEREST_MAX, SEEN_SLOTS, TRACED_MAX,
    },
    names, MAX_HOOKS,
};

/// Asserts at compile time that a map or global is named as `tracer_common::names` says, which is
/// how the loader asks for it: `kernel_name!(EVENTS, MAP_EVENTS)`.
macro_rules! kernel_name {
    ($item:ident, $name:ident) => {
        const _: () = {
            // Refers to the item itself, so renaming it without its constant fails to compile.
            let _ = &raw const $item;
            assert!(names::same(stringify!($item), names::$name));
        };
    };
}

/// Events to userspace. 8 MiB by default (`--ring-size` changes it at load time).
#[map]
pub(crate) static EVENTS: RingBuf = RingBuf::with_byte_size(8 << 20, 0);
kernel_name!(EVENTS, MAP_EVENTS);

/// Per-slot direction and role, written by userspace before the slot is attached.
#[map]
pub(crate) static HOOKS: Array<HookConfig> = Array::with_max_entries(MAX_HOOKS as u32, 0);
kernel_name!(HOOKS, MAP_HOOKS);

/// Per-slot counters (per CPU, so no atomics on the fast path).
#[map]
pub(crate) static COUNTERS: PerCpuArray<HookCounters> =
    PerCpuArray::with_max_entries(MAX_HOOKS as u32, 0);
kernel_name!(COUNTERS, MAP_COUNTERS);

/// Remote endpoints the traced side talks to; shared hooks emit only packets to or from them.
#[map]
pub(crate) static INTEREST: LruHashMap<EndpointKey, u32> =
    LruHashMap::with_max_entries(INTEREST_MAX, 0);
kernel_name!(INTEREST, MAP_INTEREST);

/// 1 at [`EndpointKey::seen_slot`] of every endpoint ever put in `INTEREST` (see
/// `tracer_common::config::SEEN_SLOTS`); an array, so a read is inlined by the verifier.
#[map]
pub(crate) static SEEN: Array<u32> = Array::with_max_entries(SEEN_SLOTS, 0);
kernel_name!(SEEN, MAP_SEEN);

/// The in-kernel filter, fixed at load time (read-only data, so switched-off tests cost nothing).
#[unsafe(no_mangle)]
pub(crate) static FILTER: Global<FilterConfig> = Global::new(FilterConfig::NONE);
kernel_name!(FILTER, GLOBAL_FILTER);

/// Aggregate mode: packets and bytes per flow tuple per hook per epoch, per CPU. Bounded; a
/// packet it has no room for is sent as an event instead and counted in `overflow`.
#[map]
pub(crate) static FLOW_STATS: PerCpuHashMap<FlowKey, FlowCounts> =
    PerCpuHashMap::with_max_entries(FLOW_STATS_MAX, 0);
kernel_name!(FLOW_STATS, MAP_FLOW_STATS);

/// Aggregate mode: per slot and epoch (`slot * 2 + epoch`), per CPU, the flow the hook counted
/// last and what it counted of it since (see `FlowCache`).
#[map]
pub(crate) static FLOW_CACHE: PerCpuArray<FlowCache> =
    PerCpuArray::with_max_entries(2 * MAX_HOOKS as u32, 0);
kernel_name!(FLOW_CACHE, MAP_FLOW_CACHE);

/// The epoch (0 or 1) packets are counted in; userspace flips it, waits for the programs that
/// read the old one to finish, then drains that epoch's entries.
#[map]
pub(crate) static EPOCH: Array<u32> = Array::with_max_entries(1, 0);
kernel_name!(EPOCH, MAP_EPOCH);

/// Aggregate mode: the fingerprints of the first packets entry hooks picked, direct-mapped like
/// `TRACED`, so that the hooks after them pick the same packets.
#[map]
pub(crate) static SELECTED: Array<u64> = Array::with_max_entries(TRACED_MAX, 0);
kernel_name!(SELECTED, MAP_SELECTED);

/// How the hooks report, fixed at load time (read-only data).
#[unsafe(no_mangle)]
pub(crate) static MODE: Global<ModeConfig> = Global::new(ModeConfig::EVERY_PACKET);
kernel_name!(MODE, GLOBAL_MODE);

/// Fingerprints of packets the tc programs emitted (filled only while drop reasons are on); the
/// drop program reports a freed packet only when its fingerprint is here. A direct-mapped set:
/// fingerprint `f` lives in slot `f % TRACED_MAX`, and a newer packet overwrites an older one
/// in the same slot. An array element is a plain store, where an LRU hash insert per emitted
/// packet took a lock and dominated the traced path.
#[map]
pub(crate) static TRACED: Array<u64> = Array::with_max_entries(TRACED_MAX, 0);
kernel_name!(TRACED, MAP_TRACED);

/// The drop program's counters, one slot, per CPU: `seen` = drops (not consumed) it ran on,
/// `filtered` = not IP or not traced, `emitted`, `lost` (ring buffer full).
#[map]
pub(crate) static DROP_COUNTERS: PerCpuArray<HookCounters> = PerCpuArray::with_max_entries(1, 0);
kernel_name!(DROP_COUNTERS, MAP_DROP_COUNTERS);

/// `struct sk_buff` field offsets from the kernel's BTF, fixed at load time (read-only data:
/// while `valid` is 0 the drop program and the `TRACED` bookkeeping fold away).
#[unsafe(no_mangle)]
pub(crate) static SKB_OFFSETS: Global<SkbOffsets> = Global::new(SkbOffsets::NONE);
kernel_name!(SKB_OFFSETS, GLOBAL_SKB_OFFSETS);

/// Wake the reader only once this many bytes wait in `EVENTS` (userspace sets a quarter of the
/// ring); below that it drains on its own short timer. A wakeup per event costs more than the
/// event itself (an interrupt to the reader's CPU), so batching them keeps the traced path fast.
#[unsafe(no_mangle)]
pub(crate) static WAKE_BYTES: Global<u64> = Global::new(0);
kernel_name!(WAKE_BYTES, GLOBAL_WAKE_BYTES);

/// One field of a load-time global, read on its own: `global_field!(FILTER: FilterConfig, flags)`.
/// `Global::load` copies the whole value (field by field, byte arrays byte by byte), where the
/// per-packet path needs one field.
macro_rules! global_field {
    ($global:ident : $ty:ty, $field:ident) => {{
        let value: *const $ty = (&raw const $global).cast();
        // SAFETY: `Global<T>` is a transparent wrapper of an initialised `T`. Volatile, so that
        // the value the loader wrote is not folded to the compile-time default.
        unsafe { core::ptr::read_volatile(&raw const (*value).$field) }
    }};
}
pub(crate) use global_field;
