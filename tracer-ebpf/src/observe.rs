//! The body every hook program runs: count, parse, filter, decide interest, emit.

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{bpf_ktime_get_ns, bpf_skb_load_bytes},
    programs::TcContext,
};
use aya_log_ebpf::debug;
use tracer_common::{
    config::{
        EndpointKey, FilterConfig, HookCounters, ROLE_ALL, ROLE_SHARED, ROLE_SOURCE_IN,
        ROLE_SOURCE_OUT,
    },
    event::{EventHeader, PacketEvent, PacketMeta, CAPTURE_MAX, KIND_PACKET},
    parse::parse,
    tuple::{peek, Peek, Tuple},
    words::ZeroWords,
};

use crate::{
    frame::{LinearFrame, SkbFrame},
    maps::{global_field, COUNTERS, EVENTS, FILTER, HOOKS, INTEREST, WAKE_BYTES},
};

#[inline(never)]
pub(crate) fn observe(ctx: &TcContext, slot: u32) {
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
    // Decide on the few header fields read in place when we can: most packets a filtered or
    // shared hook sees are rejected, and then the full parse below is never paid for.
    let decided = needs_tuple(role) && decide_early(ctx, role)?;
    let meta = parse(&SkbFrame(ctx));
    if meta.family == 0 {
        return Err(());
    }
    if !decided && !admit_parsed(role, &meta) {
        return Err(());
    }
    emit(ctx, slot, hook.direction, &meta, counters);
    Ok(())
}

/// Whether this hook's decision looks at the packet at all (read-only data: with no filter, the
/// verifier drops the early test from source hooks).
#[inline(always)]
fn needs_tuple(role: u32) -> bool {
    role == ROLE_SHARED || global_field!(FILTER: FilterConfig, flags) != 0
}

/// The first `min(pkt_len, snaplen)` bytes of the packet into `data`; how many were copied.
#[inline(always)]
fn copy_packet(ctx: &TcContext, slot: u32, pkt_len: u32, snaplen: u32, data: *mut u8) -> u32 {
    // The helper rejects a length the verifier cannot prove to be in 1..=CAPTURE_MAX, and LLVM
    // folds two-sided range checks into a form the verifier does not track. A mask is
    // branch-free and provable: for `want` in 1..=256 this is `want` itself. (`want` is never 0:
    // the frame parsed as IP, so it holds at least 34 bytes, and snaplen is not 0 here.)
    const _: () = assert!(CAPTURE_MAX == 256);
    let want = if pkt_len < snaplen { pkt_len } else { snaplen };
    let len = (want.wrapping_sub(1) & 0xff) + 1;
    // SAFETY: `data` is the event's CAPTURE_MAX-byte buffer; `len` is at most CAPTURE_MAX.
    let ret = unsafe { bpf_skb_load_bytes(ctx.skb.skb.cast(), 0, data.cast(), len) };
    if ret == 0 {
        len
    } else {
        debug!(ctx, "pathtrace: load_bytes failed, slot {}", slot);
        0
    }
}

/// `Ok(true)`: decided to emit; `Err(())`: decided not to; `Ok(false)`: the frame needs the full
/// parse to tell.
#[inline(never)]
fn decide_early(ctx: &TcContext, role: u32) -> Result<bool, ()> {
    let mut slot = core::mem::MaybeUninit::uninit();
    let tuple = Tuple::zero_in(&mut slot);
    match peek(&LinearFrame::new(ctx), tuple) {
        Peek::NotIp => Err(()),
        Peek::Ip if admit(role, tuple) => Ok(true),
        Peek::Ip => Err(()),
        Peek::Unsure => Ok(false),
    }
}

/// [`admit`] for a packet [`decide_early`] was unsure of. (Its own subprogram, like the other
/// decision steps, so that their stack frames do not add up in the classifier's 512 bytes.)
#[inline(never)]
fn admit_parsed(role: u32, meta: &PacketMeta) -> bool {
    admit(role, &Tuple::of(meta))
}

/// The filter, then the role.
#[inline(always)]
fn admit(role: u32, tuple: &Tuple) -> bool {
    filter_admits(tuple) && role_admits(role, tuple)
}

#[inline(never)]
fn filter_admits(tuple: &Tuple) -> bool {
    filter().admits(tuple)
}

/// `FILTER`, read as seven 4-byte words. (`FILTER.load()` reads it field by field and its
/// address arrays byte by byte: 28 loads and as many stack spills, on every packet.)
#[inline(always)]
fn filter() -> FilterConfig {
    const WORDS: usize = size_of::<FilterConfig>() / 4;
    const _: () = assert!(align_of::<FilterConfig>() == 4 && WORDS * 4 == 28);
    let filter: *const [u32; WORDS] = (&raw const FILTER).cast();
    // SAFETY: `Global<T>` is a transparent wrapper of an initialised `T`, 4-byte aligned and 28
    // bytes long; every bit pattern of the words is a valid `FilterConfig` (integers and byte
    // arrays). Volatile, so that the value the loader wrote is not folded to the default.
    unsafe { core::mem::transmute::<[u32; WORDS], FilterConfig>(core::ptr::read_volatile(filter)) }
}

/// Source hooks remember the remote end and emit; shared hooks emit when one of the ends is of
/// interest.
#[inline(never)]
fn role_admits(role: u32, tuple: &Tuple) -> bool {
    match role {
        ROLE_SOURCE_OUT => remember(&remote_key(tuple, true)),
        ROLE_SOURCE_IN => remember(&remote_key(tuple, false)),
        ROLE_SHARED => {
            return of_interest(&remote_key(tuple, true)) || of_interest(&remote_key(tuple, false))
        }
        ROLE_ALL => {}
        _ => return false,
    }
    true
}

/// The far end of the packet: its destination when `towards_dst`, else its source.
#[inline(always)]
fn remote_key(tuple: &Tuple, towards_dst: bool) -> EndpointKey {
    let (addr, port) = if towards_dst {
        (tuple.daddr, tuple.dport)
    } else {
        (tuple.saddr, tuple.sport)
    };
    EndpointKey {
        addr,
        // 0 for every protocol without ports: ICMP echo ids are rewritten by NAT, and error
        // messages carry none, so ICMP is keyed on the address.
        port,
        proto: tuple.proto,
        family: tuple.family,
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
    let snaplen = u32::from(global_field!(FILTER: FilterConfig, snaplen));
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
        // No packet bytes when nothing stores them (no `-w`): userspace asks for snaplen 0.
        (*ev).cap_len = if snaplen == 0 {
            0
        } else {
            copy_packet(ctx, slot, pkt_len, snaplen, (*ev).data.as_mut_ptr())
        };
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
