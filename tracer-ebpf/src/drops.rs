//! Drop reasons: `pathtrace_drop` runs on the `kfree_skb` tracepoint (`tp_btf`), which the kernel
//! fires when it frees a packet with an `enum skb_drop_reason`. For a packet the tc programs
//! emitted (its fingerprint is in `TRACED`), it sends a [`DropEvent`] with the reason and the
//! freeing function's address.
//!
//! Rust eBPF has no CO-RE relocations, so the `struct sk_buff` offsets come from userspace (read
//! from BTF) in the read-only `SKB_OFFSETS` global, and the packet is read from kernel memory with
//! `bpf_probe_read_kernel`, bounded by the bytes the skb holds in its linear buffer.

use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_probe_read_kernel_buf},
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use tracer_common::{
    config::{HookCounters, ModeConfig, SkbOffsets, TRACED_MAX},
    event::{DropEvent, EventHeader, PacketMeta, HOOK_NONE, KIND_DROP},
    parse::{parse_l3, Frame},
    tuple::Tuple,
    words::ZeroWords,
};

use crate::{
    maps::{global_field, DROP_COUNTERS, EVENTS, MODE, SKB_OFFSETS, TRACED},
    observe::{of_interest, remote_key},
};

/// `SKB_NOT_DROPPED_YET`: the first value of `enum skb_drop_reason` in every kernel that has it.
const SKB_NOT_DROPPED_YET: u32 = 0;

/// The L3 header in the skb's linear buffer, read through `bpf_probe_read_kernel`. Offsets are
/// from the L3 header; a read is attempted only when it lies wholly below `bound`.
struct KernelFrame {
    base: u64,
    bound: usize,
}

impl Frame for KernelFrame {
    #[inline(always)]
    fn read<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        if offset > self.bound || self.bound - offset < N {
            return None;
        }
        let src = self.base.wrapping_add(offset as u64) as *const [u8; N];
        // SAFETY: the helper checks the address and fails (instead of faulting) when it is not
        // readable kernel memory; the bound keeps us inside the skb's linear data.
        unsafe { bpf_probe_read_kernel(src) }.ok()
    }

    #[inline(always)]
    fn read_into<const N: usize>(&self, offset: usize, out: &mut [u8; N]) -> bool {
        if offset > self.bound || self.bound - offset < N {
            return false;
        }
        let src = self.base.wrapping_add(offset as u64) as *const u8;
        // SAFETY: as in `read`; `out` is N writable bytes.
        unsafe { bpf_probe_read_kernel_buf(src, out) }.is_ok()
    }
}

// The loader asks for the program by this name.
const _: () = {
    let _ = pathtrace_drop;
    assert!(tracer_common::names::same(
        stringify!(pathtrace_drop),
        tracer_common::names::PROGRAM_DROP
    ));
};

#[btf_tracepoint(function = "kfree_skb")]
pub(crate) fn pathtrace_drop(ctx: BtfTracePointContext) -> i32 {
    let offsets = SKB_OFFSETS.load();
    // Read-only data: with drop reasons off, the verifier prunes everything after this.
    if offsets.valid == 0 {
        return 0;
    }
    // Arguments of the tracepoint: (struct sk_buff *skb, void *location,
    // enum skb_drop_reason reason, struct sock *rx_sk).
    let skb: u64 = ctx.arg(0);
    let location: u64 = ctx.arg(1);
    let reason: u32 = ctx.arg(2);
    if reason == SKB_NOT_DROPPED_YET || reason == offsets.consumed_reason {
        return 0;
    }
    let Some(counters) = DROP_COUNTERS.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: a per-CPU array slot is only touched by this CPU while this program runs.
    let counters = unsafe { &mut *counters };
    counters.seen += 1;
    let mut meta_slot = core::mem::MaybeUninit::uninit();
    let meta = PacketMeta::zero_in(&mut meta_slot);
    match ours(skb, meta) {
        Some(traced) => emit(meta, traced, reason, location, counters),
        None => counters.filtered += 1,
    }
    0
}

/// Parses the freed packet into `meta`; whether it is ours: `Some(true)` when the tc programs
/// emitted it, `Some(false)` in aggregate mode when one of its ends is of interest (a packet
/// only counted, not sent), `None` otherwise.
#[inline(never)]
fn ours(skb: u64, meta: &mut PacketMeta) -> Option<bool> {
    let fingerprint = freed_fingerprint(skb, meta)?;
    let slot = TRACED.get(traced_slot(fingerprint))?;
    if *slot == fingerprint {
        return Some(true);
    }
    if global_field!(MODE: ModeConfig, aggregate) == 0 {
        return None;
    }
    let tuple = Tuple::of(meta);
    (of_interest(&remote_key(&tuple, true)) || of_interest(&remote_key(&tuple, false)))
        .then_some(false)
}

/// The freed packet's fingerprint when it is IP and readable; its metadata into `meta`.
#[inline(always)]
fn freed_fingerprint(skb: u64, out: &mut PacketMeta) -> Option<u64> {
    // Loaded here rather than passed in, so each offset stays a constant the verifier knows.
    let offsets = SKB_OFFSETS.load();
    let head: u64 = read_field(skb, offsets.head)?;
    let data: u64 = read_field(skb, offsets.data)?;
    let len: u32 = read_field(skb, offsets.len)?;
    let data_len: u32 = read_field(skb, offsets.data_len)?;
    let network_header: u16 = read_field(skb, offsets.network_header)?;
    let protocol: u16 = read_field(skb, offsets.protocol)?;
    // The linear buffer holds `len - data_len` bytes from `data` on; the L3 header starts at
    // `head + network_header` (a header already pulled sits before `data`, which is fine).
    let linear_end = data.checked_add(u64::from(len.checked_sub(data_len)?))?;
    let l3 = head.checked_add(u64::from(network_header))?;
    if linear_end <= l3 {
        return None;
    }
    // The parser reads at most a few hundred bytes in; a bound past 64 KiB is never needed.
    let bound = (linear_end - l3).min(0xffff) as usize;
    let frame = KernelFrame { base: l3, bound };
    *out = parse_l3(&frame, u16::from_be(protocol), 0);
    (out.family != 0).then_some(out.fingerprint)
}

/// Where `fingerprint` lives in `TRACED`. Fingerprints are well mixed, so their low bits do.
#[inline(always)]
fn traced_slot(fingerprint: u64) -> u32 {
    const _: () = assert!(TRACED_MAX.is_power_of_two());
    (fingerprint as u32) & (TRACED_MAX - 1)
}

/// One field of `struct sk_buff` at `offset` bytes.
#[inline(always)]
fn read_field<T>(skb: u64, offset: u32) -> Option<T> {
    let src = skb.wrapping_add(u64::from(offset)) as *const T;
    // SAFETY: the helper fails instead of faulting on an unreadable address.
    unsafe { bpf_probe_read_kernel(src) }.ok()
}

#[inline(never)]
fn emit(meta: &PacketMeta, traced: bool, reason: u32, location: u64, counters: &mut HookCounters) {
    let Some(mut entry) = EVENTS.reserve::<DropEvent>(0) else {
        counters.lost += 1;
        return;
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` points at a reserved, exclusively owned ring-buffer record of the right size.
    unsafe {
        ev.write(DropEvent {
            header: EventHeader {
                kind: KIND_DROP,
                hook: HOOK_NONE,
                direction: 0,
                ifindex: 0,
                ktime_ns: bpf_ktime_get_ns(),
            },
            fingerprint: meta.fingerprint,
            reason,
            _pad0: 0,
            location,
            saddr: meta.saddr,
            daddr: meta.daddr,
            sport: meta.sport,
            dport: meta.dport,
            family: meta.family,
            proto: meta.proto,
            traced: u8::from(traced),
            icmp_type: meta.icmp_type,
        });
    }
    entry.submit(0);
    counters.emitted += 1;
}

/// Called by the tc programs after they emit a packet: remembers its fingerprint so that a later
/// drop of the same packet is reported. One array store (skipped when the slot already holds it,
/// as it does at every hook after the first); nothing at all (folded away by the verifier) while
/// drop reasons are off. CPUs may race on a slot: the loser's packet is forgotten, and the worst
/// outcome is one unreported drop, as with an eviction.
#[inline(always)]
pub(crate) fn remember(fingerprint: u64) {
    if global_field!(SKB_OFFSETS: SkbOffsets, valid) == 0 {
        return;
    }
    if let Some(slot) = TRACED.get_ptr_mut(traced_slot(fingerprint)) {
        // SAFETY: an array element is always valid memory; a torn read cannot happen for an
        // aligned u64, and a lost race is harmless (see above).
        unsafe {
            if *slot != fingerprint {
                *slot = fingerprint;
            }
        }
    }
}
