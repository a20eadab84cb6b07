//! The names that cross the kernel boundary: maps, load-time globals and programs, as the ELF
//! object spells them and as the loader asks for them.
//!
//! The kernel side cannot take these as arguments (aya-ebpf names a map or a program after its
//! Rust item), so `tracer-ebpf` asserts at compile time that each item's name is the one here
//! ([`same`], [`is_hook_program`]). A rename on either side fails the build instead of a load.

/// Ring buffer of events to userspace ([`crate::event`]); resized at load time.
pub const MAP_EVENTS: &str = "EVENTS";
/// Per-slot [`crate::config::HookConfig`], written before a slot is attached.
pub const MAP_HOOKS: &str = "HOOKS";
/// Per-slot, per-CPU [`crate::config::HookCounters`].
pub const MAP_COUNTERS: &str = "COUNTERS";
/// Remote endpoints of interest ([`crate::config::EndpointKey`]) that shared hooks emit.
pub const MAP_INTEREST: &str = "INTEREST";
/// Which hash slots of [`MAP_INTEREST`]'s keys were ever filled ([`crate::config::SEEN_SLOTS`]).
pub const MAP_SEEN: &str = "SEEN";
/// Fingerprints of emitted packets, for the drop program.
pub const MAP_TRACED: &str = "TRACED";
/// The drop program's per-CPU counters.
pub const MAP_DROP_COUNTERS: &str = "DROP_COUNTERS";

/// Aggregate mode's per-CPU counts per flow per hook ([`crate::config::FlowKey`] →
/// [`crate::config::FlowCounts`]), drained by userspace one epoch at a time.
pub const MAP_FLOW_STATS: &str = "FLOW_STATS";
/// The per-CPU write-back cache of the flow each hook counted last ([`crate::config::FlowCache`]).
pub const MAP_FLOW_CACHE: &str = "FLOW_CACHE";
/// The epoch (0 or 1) the hooks count in, written by userspace.
pub const MAP_EPOCH: &str = "EPOCH";
/// Aggregate mode: fingerprints of the first packets an entry hook picked, for the hooks after it.
pub const MAP_SELECTED: &str = "SELECTED";

/// How the hooks report ([`crate::config::ModeConfig`]), a load-time global.
pub const GLOBAL_MODE: &str = "MODE";
/// The in-kernel filter ([`crate::config::FilterConfig`]), a load-time global.
pub const GLOBAL_FILTER: &str = "FILTER";
/// `struct sk_buff` offsets ([`crate::config::SkbOffsets`]), a load-time global.
pub const GLOBAL_SKB_OFFSETS: &str = "SKB_OFFSETS";
/// Bytes waiting in the ring buffer before the reader is woken, a load-time global.
pub const GLOBAL_WAKE_BYTES: &str = "WAKE_BYTES";
/// aya-log's level global (named by aya-log-ebpf, not by us).
pub const GLOBAL_LOG_LEVEL: &str = "AYA_LOG_LEVEL";

/// Hook programs are `pathtrace_h0` .. `pathtrace_h23`: this prefix and the slot in decimal (also
/// the name `tc filter show` prints in netlink mode, and what `pathtrace cleanup` looks for).
pub const HOOK_PROGRAM_PREFIX: &str = "pathtrace_h";
/// The drop-reason program on the `kfree_skb` tracepoint.
pub const PROGRAM_DROP: &str = "pathtrace_drop";
/// The filter expression's verdict as a classifier's return code, for `BPF_PROG_TEST_RUN`.
pub const PROGRAM_FILTER_TEST: &str = "pathtrace_filter_test";

/// Whether two strings are equal, in a `const` context.
pub const fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// Whether `name` is the hook program of `slot`: [`HOOK_PROGRAM_PREFIX`] then `slot` in decimal.
pub const fn is_hook_program(name: &str, slot: usize) -> bool {
    let (name, prefix) = (name.as_bytes(), HOOK_PROGRAM_PREFIX.as_bytes());
    if name.len() <= prefix.len() {
        return false;
    }
    let mut i = 0;
    while i < prefix.len() {
        if name[i] != prefix[i] {
            return false;
        }
        i += 1;
    }
    let mut value = 0usize;
    while i < name.len() {
        let digit = name[i];
        if !digit.is_ascii_digit() {
            return false;
        }
        value = value * 10 + (digit - b'0') as usize;
        i += 1;
    }
    value == slot
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_compare_in_const_context() {
        const _: () = assert!(same(MAP_EVENTS, "EVENTS"));
        assert!(!same("EVENTS", "EVENT"));
        assert!(is_hook_program("pathtrace_h0", 0));
        assert!(is_hook_program("pathtrace_h23", 23));
        assert!(!is_hook_program("pathtrace_h23", 2));
        assert!(!is_hook_program("pathtrace_h", 0));
        assert!(!is_hook_program("pathtrace_hx", 0));
        assert!(!is_hook_program("pathtrace_drop", 0));
    }
}
