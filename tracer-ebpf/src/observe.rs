//! The body every hook program runs: count, parse, filter, decide interest, emit.

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{bpf_ktime_get_ns, bpf_skb_load_bytes},
    programs::TcContext,
};
use aya_log_ebpf::debug;
use tracer_common::{
    config::{
        EndpointKey, HookCounters, FILTER_ADDR, FILTER_PORT, FILTER_PROTO, ROLE_ALL, ROLE_SHARED,
        ROLE_SOURCE_IN, ROLE_SOURCE_OUT,
    },
    event::{EventHeader, PacketEvent, PacketMeta, CAPTURE_MAX, KIND_PACKET},
    parse::{is_echo, parse, IPPROTO_TCP, IPPROTO_UDP},
};

use crate::{
    frame::SkbFrame,
    maps::{COUNTERS, EVENTS, FILTER, HOOKS, INTEREST, WAKE_BYTES},
};

#[inline(never)]
pub fn observe(ctx: &TcContext, slot: u32) {
    let Some(counters) = COUNTERS.get_ptr_mut(slot) else {
        return;
    };
    // SAFETY: a per-CPU array slot is only touched by this CPU while this program runs.
    let counters = unsafe { &mut *counters };
    counters.seen += 1;
    if emit_if_wanted(ctx, slot, counters).is_err() {
        counters.filtered += 1;
    }
}

/// `Err(())` means "not emitted by choice" (filtered, not IP, slot unused).
#[inline(always)]
fn emit_if_wanted(ctx: &TcContext, slot: u32, counters: &mut HookCounters) -> Result<(), ()> {
    let hook = HOOKS.get(slot).ok_or(())?;
    let role = hook.role;
    if role == 0 {
        return Err(());
    }
    let meta = parse(&SkbFrame(ctx));
    if meta.family == 0 {
        return Err(());
    }
    if !filter_pass(&meta) {
        return Err(());
    }
    match role {
        ROLE_SOURCE_OUT => remember(&remote_key(&meta, true)),
        ROLE_SOURCE_IN => remember(&remote_key(&meta, false)),
        ROLE_SHARED => {
            if !of_interest(&remote_key(&meta, true)) && !of_interest(&remote_key(&meta, false)) {
                return Err(());
            }
        }
        ROLE_ALL => {}
        _ => return Err(()),
    }
    emit(ctx, slot, hook.direction, &meta, counters);
    Ok(())
}

#[inline(never)]
fn filter_pass(meta: &PacketMeta) -> bool {
    let filter = FILTER.load();
    if filter.flags & FILTER_PROTO != 0 && meta.proto != filter.proto {
        return false;
    }
    if filter.flags & FILTER_PORT != 0 {
        let ported = meta.proto == IPPROTO_TCP || meta.proto == IPPROTO_UDP;
        if !ported || (meta.sport != filter.port && meta.dport != filter.port) {
            return false;
        }
    }
    if filter.flags & FILTER_ADDR != 0 {
        if meta.family != filter.family {
            return false;
        }
        let bits = u32::from(filter.prefix_len);
        if !prefix_match(&meta.saddr, &filter.addr, bits)
            && !prefix_match(&meta.daddr, &filter.addr, bits)
        {
            return false;
        }
    }
    true
}

/// Compares the first `bits` bits of two addresses, four bytes at a time (bounded, no loop state
/// the verifier has to track beyond four iterations).
#[inline(always)]
fn prefix_match(a: &[u8; 16], b: &[u8; 16], bits: u32) -> bool {
    let mut i = 0usize;
    while i < 4 {
        let start = (i as u32) * 32;
        if bits <= start {
            return true;
        }
        let wa = u32::from_be_bytes([a[i * 4], a[i * 4 + 1], a[i * 4 + 2], a[i * 4 + 3]]);
        let wb = u32::from_be_bytes([b[i * 4], b[i * 4 + 1], b[i * 4 + 2], b[i * 4 + 3]]);
        let take = bits - start;
        let mask = if take >= 32 {
            u32::MAX
        } else {
            !(u32::MAX >> take)
        };
        if (wa ^ wb) & mask != 0 {
            return false;
        }
        i += 1;
    }
    true
}

/// The far end of the packet: its destination when `towards_dst`, else its source.
#[inline(always)]
fn remote_key(meta: &PacketMeta, towards_dst: bool) -> EndpointKey {
    let ported = meta.proto == IPPROTO_TCP || meta.proto == IPPROTO_UDP;
    let (addr, port) = if towards_dst {
        (meta.daddr, meta.dport)
    } else {
        (meta.saddr, meta.sport)
    };
    EndpointKey {
        addr,
        // ICMP echo ids are rewritten by NAT, and error messages carry none: key on the address.
        port: if ported && !is_echo(meta.proto, meta.icmp_type) {
            port
        } else {
            0
        },
        proto: meta.proto,
        family: meta.family,
    }
}

#[inline(always)]
fn remember(key: &EndpointKey) {
    if INTEREST.get_ptr(key).is_none() {
        // Insertion can only fail when the key was inserted concurrently by another CPU (fine) or
        // on allocation failure in the LRU, where the worst outcome is a missed shared-hook event,
        // which the per-flow gap accounting in userspace then reports.
        let _ = INTEREST.insert(key, &1, 0);
    }
}

#[inline(always)]
fn of_interest(key: &EndpointKey) -> bool {
    INTEREST.get_ptr(key).is_some()
}

#[inline(never)]
fn emit(
    ctx: &TcContext,
    slot: u32,
    direction: u32,
    meta: &PacketMeta,
    counters: &mut HookCounters,
) {
    let Some(mut entry) = EVENTS.reserve::<PacketEvent>(0) else {
        counters.lost += 1;
        return;
    };
    let ev = entry.as_mut_ptr();
    let pkt_len = ctx.len();
    let snaplen = u32::from(FILTER.load().snaplen);
    // SAFETY: `ev` points at a reserved, exclusively owned ring-buffer record of the right size.
    unsafe {
        (*ev).header = EventHeader {
            kind: KIND_PACKET,
            hook: slot as u8,
            direction: direction as u8,
            ifindex: (*ctx.skb.skb).ifindex,
            ktime_ns: bpf_ktime_get_ns(),
        };
        (*ev).meta = *meta;
        (*ev).pkt_len = pkt_len;
        // The helper rejects a length the verifier cannot prove to be in 1..=CAPTURE_MAX, and
        // LLVM folds two-sided range checks into a form the verifier does not track. A mask is
        // branch-free and provable: for `want` in 1..=256 this is `want` itself. (`want` is never
        // 0: the frame parsed as IP, so it holds at least 34 bytes.)
        const _: () = assert!(CAPTURE_MAX == 256);
        let want = if pkt_len < snaplen { pkt_len } else { snaplen };
        let len = (want.wrapping_sub(1) & 0xff) + 1;
        let ret = bpf_skb_load_bytes(ctx.skb.skb.cast(), 0, (*ev).data.as_mut_ptr().cast(), len);
        let got = if ret == 0 {
            len
        } else {
            debug!(ctx, "pathtrace: load_bytes failed, slot {}", slot);
            0
        };
        (*ev).cap_len = got;
    }
    // Wake the reader only when the ring fills up; it drains on a timer otherwise.
    let flags = if EVENTS.query(u64::from(BPF_RB_AVAIL_DATA)) >= WAKE_BYTES.load() {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    entry.submit(u64::from(flags));
    counters.emitted += 1;
    crate::drops::remember(meta.fingerprint);
}
