//! The body every hook program runs: count, parse, filter, decide interest, emit.

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{bpf_ktime_get_coarse_ns, bpf_ktime_get_ns, bpf_skb_load_bytes},
    programs::TcContext,
};
use tracer_common::{
    config::{
        EndpointKey, FilterConfig, FlowCache, FlowCounts, FlowKey, HookConfig, HookCounters,
        ModeConfig, FILTER_EXPR, FILTER_TUPLE, HOOK_ENTRY, INTEREST_DECLARED, INTEREST_FOLLOWED,
        ROLE_ALL, ROLE_SHARED, ROLE_SOURCE_IN, ROLE_SOURCE_OUT, TRACED_MAX,
    },
    event::{
        EventHeader, PacketEvent, PacketHeadEvent, PacketMeta, CAPTURE_MAX, KIND_PACKET,
        KIND_PACKET_HEAD, WHY_EVERY, WHY_FIRST, WHY_FLAGS, WHY_SAMPLED, WHY_UNCOUNTED,
    },
    parse::{self, parse, parse_ipv4_prefix_into, IPPROTO_TCP},
    sample::sampled,
    tuple::{is_echo_reply, peek, ported, Peek, Tuple},
    words::ZeroWords,
};

use crate::{
    frame::{LinearFrame, SkbFrame},
    maps::{
        global_field, COUNTERS, EPOCH, EVENTS, FILTER, FLOW_CACHE, FLOW_STATS, HOOKS, INTEREST,
        MODE, SEEN, SELECTED, WAKE_BYTES,
    },
};

/// `BPF_NOEXIST`: insert only.
const BPF_NOEXIST: u64 = 1;
/// TCP flags that open, close or reset a connection: FIN, SYN, RST.
const TCP_FIN_SYN_RST: u8 = 0x01 | 0x02 | 0x04;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

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
    // Read-only data: the verifier keeps one of the two.
    if global_field!(MODE: ModeConfig, aggregate) != 0 {
        return aggregate(ctx, slot, hook, counters);
    }
    // Decide on the few header fields read in place when we can: most packets a filtered or
    // shared hook sees are rejected, and then the full parse below is never paid for.
    let decided = needs_tuple(role) && decide_early(ctx, role)?;
    let meta = parse(&SkbFrame(ctx));
    if meta.family == 0 {
        return Err(());
    }
    if !decided && !admit_parsed(ctx, role, &meta, Ask) {
        return Err(());
    }
    let sent = emit(ctx, slot, hook.direction, &meta, WHY_EVERY);
    count_sent(sent, meta.fingerprint, counters);
    Ok(())
}

/// The counters of a packet [`emit`] was asked to send, and `TRACED` for the drop program.
#[inline(always)]
fn count_sent(sent: bool, fingerprint: u64, counters: &mut HookCounters) {
    if !sent {
        counters.lost += 1;
        return;
    }
    counters.emitted += 1;
    crate::drops::remember(fingerprint);
}

/// Aggregate mode: counts the packet in `FLOW_STATS` and sends an event only when it is
/// sampled, opens/closes/resets a TCP connection, is one of its flow's first packets, or could
/// not be counted. A TCP or UDP packet whose flow this hook counted already in this epoch is
/// found by the tuple read in place, before any parse, and needs no interest lookup: it was
/// admitted when its flow's entry was made. `Err(())`: not IP, or not admitted.
#[inline(never)]
fn aggregate(
    ctx: &TcContext,
    slot: u32,
    hook: &HookConfig,
    counters: &mut HookCounters,
) -> Result<(), ()> {
    let mut key_slot = core::mem::MaybeUninit::uninit();
    let key = FlowKey::zero_in(&mut key_slot);
    let keyed = peek_key(ctx, slot, hook.role, key)?;
    let cache = FLOW_CACHE
        .get_ptr_mut(slot * 2 + u32::from(key.epoch))
        .ok_or(())?;
    // SAFETY: this CPU's element, touched only by this CPU while this program runs; userspace
    // reads an epoch's elements only once no program can use that epoch any more.
    let cache = unsafe { &mut *cache };
    let cached = keyed && cache.base != 0 && same_key(&cache.key, key);
    // A flow this hook counted already in this epoch was admitted when its entry was made. (An
    // expression is asked first: a packet it keeps is admitted without the map's lookup, and one
    // it does not keep is admitted only as part of a flow the trace follows.)
    if keyed && !cached {
        let admitted = if global_field!(FILTER: FilterConfig, flags) & FILTER_EXPR != 0 {
            key_admits(ctx, hook.role, key, Given::asked(ctx))
        } else {
            FLOW_STATS.get_ptr(&*key).is_some() || key_admits(ctx, hook.role, key, Given(false))
        };
        if !admitted {
            return Err(());
        }
    }
    let mut meta_slot = core::mem::MaybeUninit::uninit();
    let meta = PacketMeta::zero_in(&mut meta_slot);
    if parse_packet(ctx, meta) == 0 {
        return Err(());
    }
    let syn = is_syn(meta);
    if cached {
        let nth = count_in_cache(cache, ctx.len(), syn);
        pick(ctx, slot, hook, meta, nth, counters);
        return Ok(());
    }
    if !keyed {
        if !admit_parsed(ctx, hook.role, meta, Given::asked(ctx)) {
            return Err(());
        }
        flow_key(slot, epoch(), meta, key);
    }
    let nth = count_flow(u64::from(ctx.len()), key, cache, syn, keyed);
    pick(ctx, slot, hook, meta, nth, counters);
    Ok(())
}

/// Counts the packet in `FLOW_STATS` under `key`, and (`keyed`: a TCP or UDP flow) gives the
/// cache to it. This CPU's count of the flow at this hook in this epoch since its connection's
/// SYN, this packet included; 0: the map had no room for it.
#[inline(never)]
fn count_flow(len: u64, key: &FlowKey, cache: &mut FlowCache, syn: bool, keyed: bool) -> u64 {
    let now = count_time();
    let (nth, syn_at) = match FLOW_STATS.get_ptr_mut(key) {
        // SAFETY: this CPU's value of the element, touched only by this CPU while this program
        // runs (another CPU's insert leaves it zeroed).
        Some(v) => unsafe { (count_into(v, len, now, syn), (*v).syn_at) },
        None => (insert(key, len, now, syn), 0),
    };
    if keyed && nth != 0 {
        // This flow takes the cache: what it held goes to its own entry first.
        take_cache(cache, key, nth, syn_at);
    }
    nth.saturating_sub(syn_at)
}

/// A TCP SYN without ACK: what opens a connection.
#[inline(always)]
fn is_syn(meta: &PacketMeta) -> bool {
    meta.proto == IPPROTO_TCP && meta.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
}

/// Counts the packet into this CPU's value; the value's packets after it.
#[inline(always)]
fn count_into(v: *mut FlowCounts, len: u64, now: u64, syn: bool) -> u64 {
    // SAFETY: the caller's: this CPU's value of a `FLOW_STATS` element.
    unsafe {
        if (*v).packets == 0 {
            (*v).first_ns = now;
        }
        if syn {
            (*v).syn_at = (*v).packets;
        }
        (*v).packets += 1;
        (*v).bytes += len;
        (*v).last_ns = now;
        (*v).packets
    }
}

/// Sends the counted packet's event if it is sampled, opens/closes/resets a TCP connection, is
/// one of its flow's first packets here, or was not counted (`nth == 0`).
#[inline(always)]
fn pick(
    ctx: &TcContext,
    slot: u32,
    hook: &HookConfig,
    meta: &PacketMeta,
    nth: u64,
    counters: &mut HookCounters,
) {
    let mut why = 0;
    if nth == 0 {
        counters.overflow += 1;
        why |= WHY_UNCOUNTED;
    }
    let fp = meta.fingerprint;
    if sampled(fp, global_field!(MODE: ModeConfig, sample_below)) {
        why |= WHY_SAMPLED;
    }
    if meta.proto == IPPROTO_TCP && meta.tcp_flags & TCP_FIN_SYN_RST != 0 {
        why |= WHY_FLAGS;
    }
    if first(hook.flags, fp, nth) {
        why |= WHY_FIRST;
    }
    if why == 0 {
        counters.aggregated += 1;
        return;
    }
    let sent = emit(ctx, slot, hook.direction, meta, why);
    count_sent(sent, fp, counters);
}

/// Counts a packet of the flow the cache holds there; the flow's count at this hook in this
/// epoch on this CPU since its connection's SYN, this packet included.
#[inline(never)]
fn count_in_cache(cache: &mut FlowCache, len: u32, syn: bool) -> u64 {
    let now = count_time();
    let d = &mut cache.delta;
    if d.packets == 0 {
        d.first_ns = now;
    }
    if syn {
        d.syn_at = cache.base + d.packets;
    }
    d.packets += 1;
    d.bytes += u64::from(len);
    d.last_ns = now;
    (cache.base + d.packets).saturating_sub(d.syn_at)
}

/// Whether two keys are the same, compared as five words.
#[inline(always)]
fn same_key(a: &FlowKey, b: &FlowKey) -> bool {
    let (a, b) = (
        (a as *const FlowKey).cast::<[u64; 5]>(),
        (b as *const FlowKey).cast::<[u64; 5]>(),
    );
    // SAFETY: `FlowKey` is 40 bytes, 8-byte aligned, without padding (asserted in
    // tracer-common): five initialised words.
    let (a, b) = unsafe { (&*a, &*b) };
    a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3] && a[4] == b[4]
}

/// Writes the cache's packets back into their flow's `FLOW_STATS` entry and gives the cache to
/// `key`, whose entry holds `nth` packets of this CPU now (`syn_at` of them before its SYN).
#[inline(never)]
fn take_cache(cache: &mut FlowCache, key: &FlowKey, nth: u64, syn_at: u64) {
    if cache.delta.packets != 0 {
        if let Some(v) = FLOW_STATS.get_ptr_mut(&cache.key) {
            // SAFETY: this CPU's value of the element (see `aggregate`).
            unsafe {
                let d = &cache.delta;
                if (*v).packets == 0 {
                    (*v).first_ns = d.first_ns;
                }
                (*v).packets += d.packets;
                (*v).bytes += d.bytes;
                (*v).last_ns = d.last_ns;
                if d.syn_at > (*v).syn_at {
                    (*v).syn_at = d.syn_at;
                }
            }
        }
    }
    cache.key = *key;
    cache.delta = FlowCounts::default();
    cache.delta.syn_at = syn_at;
    cache.base = nth;
}

/// The time a count is stamped with: the coarse clock where the kernel has it (read-only
/// data: the verifier drops the other call, so a kernel without the helper never sees it).
#[inline(always)]
fn count_time() -> u64 {
    let coarse = global_field!(MODE: ModeConfig, coarse_clock) != 0;
    // SAFETY: helpers without arguments.
    unsafe {
        if coarse {
            bpf_ktime_get_coarse_ns()
        } else {
            bpf_ktime_get_ns()
        }
    }
}

/// The epoch (0 or 1) userspace has the hooks count in.
#[inline(always)]
fn epoch() -> u8 {
    EPOCH.get(0).copied().unwrap_or(0) as u8 & 1
}

/// Reads the tuple in place into `tuple` and checks the filter (with an expression, also
/// [`turned_away`]); for TCP and UDP it also makes the flow's key. `Ok(true)`: keyed;
/// `Ok(false)`: the parse must tell (another protocol, or a frame shape `peek` does not read);
/// `Err(())`: not IP, or the filter rejects it.
#[inline(never)]
fn peek_key(ctx: &TcContext, slot: u32, role: u32, key: &mut FlowKey) -> Result<bool, ()> {
    let mut tuple_slot = core::mem::MaybeUninit::uninit();
    let tuple = Tuple::zero_in(&mut tuple_slot);
    match peek(&LinearFrame::new(ctx), tuple) {
        Peek::NotIp => Err(()),
        Peek::Unsure => Ok(false),
        Peek::Ip => {
            // Read-only data: without a tuple filter the verifier drops the test.
            if global_field!(FILTER: FilterConfig, flags) & FILTER_TUPLE != 0
                && !filter().admits(tuple)
            {
                return Err(());
            }
            if global_field!(FILTER: FilterConfig, flags) & FILTER_EXPR != 0
                && turned_away(ctx, role, tuple)
            {
                return Err(());
            }
            if !ported(tuple.proto) {
                return Ok(false);
            }
            key.set(tuple, slot as u8, epoch());
            Ok(true)
        }
    }
}

/// With an expression: whether [`role_admits`] surely refuses the packet, told by the
/// expression and the `SEEN` slots alone (no key built, no hash lookup), so that a packet the
/// expression rejects costs no more than that, before its flow's key and cache are looked at.
/// A false answer decides nothing: the cache, then [`role_admits`], still do. (A flow the trace
/// follows has its ends' slots set before its `INTEREST` entry, so its packets are never
/// turned away here.)
#[inline(always)]
fn turned_away(ctx: &TcContext, role: u32, tuple: &Tuple) -> bool {
    match role {
        ROLE_SOURCE_OUT | ROLE_SOURCE_IN => {
            !seen(tuple.end_slot(role == ROLE_SOURCE_OUT)) && !expr_keeps(ctx)
        }
        ROLE_SHARED => !seen(tuple.end_slot(true)) && !seen(tuple.end_slot(false)),
        ROLE_ALL => !expr_keeps(ctx),
        _ => false,
    }
}

/// [`role_admits`] for the tuple a key made by [`peek_key`] holds, with the expression's verdict
/// given.
#[inline(never)]
fn key_admits(ctx: &TcContext, role: u32, key: &FlowKey, verdict: Given) -> bool {
    let mut tuple_slot = core::mem::MaybeUninit::uninit();
    let tuple = Tuple::zero_in(&mut tuple_slot);
    key.tuple_into(tuple);
    role_admits(ctx, role, tuple, verdict)
}

/// The expression's verdict on the packet, as [`role_admits`] takes it.
///
/// `aggregate`'s frame is deep: below it, the chain `key_admits` or `admit_parsed`, then
/// `role_admits`, then the expression's subprogram added up to 544 bytes on the kernels that round
/// each frame to 32 bytes (before 6.7), past the verifier's 512. So `aggregate` asks the
/// expression itself, from its own frame, and passes the answer down ([`Given`]); every-packet
/// mode's chains are shallower, and there `role_admits` asks only when its role needs it
/// ([`Ask`]). Two instances of `role_admits`, one of which calls no subprogram.
trait ExprVerdict: Copy {
    fn keeps(self, ctx: &TcContext) -> bool;
}

/// Asks the expression when the answer is needed.
#[derive(Clone, Copy)]
struct Ask;

impl ExprVerdict for Ask {
    #[inline(always)]
    fn keeps(self, ctx: &TcContext) -> bool {
        expr_keeps(ctx)
    }
}

/// The expression's answer, asked beforehand.
#[derive(Clone, Copy)]
struct Given(bool);

impl Given {
    /// The expression's answer when there is one (read-only data: without an expression the
    /// verifier drops the call); false otherwise, which no role reads then.
    #[inline(always)]
    fn asked(ctx: &TcContext) -> Self {
        Self(global_field!(FILTER: FilterConfig, flags) & FILTER_EXPR != 0 && expr_keeps(ctx))
    }
}

impl ExprVerdict for Given {
    #[inline(always)]
    fn keeps(self, _ctx: &TcContext) -> bool {
        self.0
    }
}

/// [`parse`] of the packet into `meta`: in place from the linear data when that is sure to give
/// the same answer (IPv4 whose headers are there), else through `bpf_skb_load_bytes`. Returns
/// the fingerprint (0: not IP).
#[inline(always)]
fn parse_packet(ctx: &TcContext, meta: &mut PacketMeta) -> u64 {
    match parse_linear(ctx, meta) {
        0 => parse_skb(ctx, meta),
        fp => fp,
    }
}

/// [`parse_ipv4_prefix_into`] of the linear data into `meta` (all zero): its fingerprint, or 0
/// when it cannot tell, or the IPv4 header is bogus (the skb parse then says the same).
#[inline(never)]
fn parse_linear(ctx: &TcContext, meta: &mut PacketMeta) -> u64 {
    let frame = LinearFrame::new(ctx);
    let have = frame.len();
    if parse_ipv4_prefix_into(&frame, have, have == ctx.len() as usize, meta) && meta.family != 0 {
        meta.fingerprint
    } else {
        0
    }
}

/// [`parse`] through `bpf_skb_load_bytes` into `meta`: its fingerprint, 0 when not IP.
#[inline(never)]
fn parse_skb(ctx: &TcContext, meta: &mut PacketMeta) -> u64 {
    parse::parse_into(&SkbFrame(ctx), meta);
    if meta.family == 0 {
        0
    } else {
        meta.fingerprint
    }
}

/// A new `FLOW_STATS` entry for `key` holding this packet; 1, or 0 when the map is full. (When
/// another CPU made the entry meanwhile, this CPU's value in it is used.)
#[inline(never)]
fn insert(key: &FlowKey, len: u64, now: u64, syn: bool) -> u64 {
    let fresh = FlowCounts {
        packets: 1,
        bytes: len,
        first_ns: now,
        last_ns: now,
        syn_at: 0,
    };
    if FLOW_STATS.insert(key, &fresh, BPF_NOEXIST).is_ok() {
        return 1;
    }
    match FLOW_STATS.get_ptr_mut(key) {
        Some(v) => count_into(v, len, now, syn),
        None => 0,
    }
}

/// `FLOW_STATS`'s key for this packet at `slot`.
#[inline(always)]
fn flow_key(slot: u32, epoch: u8, meta: &PacketMeta, key: &mut FlowKey) {
    key.saddr = meta.saddr;
    key.daddr = meta.daddr;
    // `parse` puts an ICMP echo's identifier in `sport` (NAT rewrites it like a port; other ICMP
    // has 0 in both). Userspace's tuples hold a reply's identifier in `dport`, so that a reply's
    // tuple is its request's reversed: the key does the same. (For TCP and UDP this is the key
    // `peek_key` makes.)
    if is_echo_reply(meta.proto, meta.icmp_type) {
        key.dport = meta.sport;
    } else {
        key.sport = meta.sport;
        key.dport = meta.dport;
    }
    key.family = meta.family;
    key.proto = meta.proto;
    key.slot = slot as u8;
    key.epoch = epoch;
}

/// Whether this is one of its flow's first packets: decided at an entry hook, where it is among
/// the first `first_n` this CPU counted of the flow in this epoch (`nth`), and remembered in
/// `SELECTED`; looked up there by every other hook, so that a packet is picked at every hook or
/// at none.
#[inline(never)]
fn first(flags: u32, fp: u64, nth: u64) -> bool {
    let first_n = u64::from(global_field!(MODE: ModeConfig, first_n));
    if first_n == 0 {
        return false;
    }
    let Some(selected) = SELECTED.get_ptr_mut((fp as u32) & (TRACED_MAX - 1)) else {
        return false;
    };
    // SAFETY: an array element is always valid memory; a lost race between CPUs is harmless
    // (one packet sent as a sample at the hooks after the entry, or not).
    unsafe {
        if flags & HOOK_ENTRY == 0 {
            return *selected == fp;
        }
        let pick = nth != 0 && nth <= first_n;
        if pick {
            *selected = fp;
        } else if *selected == fp {
            // A packet like a picked one (a retransmission): not picked, so not at later hooks.
            *selected = 0;
        }
        pick
    }
}

/// Whether this hook's decision looks at the packet at all (read-only data: with no filter, the
/// verifier drops the early test from source hooks).
#[inline(always)]
fn needs_tuple(role: u32) -> bool {
    role == ROLE_SHARED || global_field!(FILTER: FilterConfig, flags) != 0
}

/// The first `min(pkt_len, snaplen)` bytes of the packet into `data`; how many were copied.
#[inline(always)]
fn copy_packet(ctx: &TcContext, pkt_len: u32, snaplen: u32, data: *mut u8) -> u32 {
    // The helper rejects a length the verifier cannot prove to be in 1..=CAPTURE_MAX, and LLVM
    // folds two-sided range checks into a form the verifier does not track. A mask is
    // branch-free and provable: for `want` in 1..=256 this is `want` itself. (`want` is never 0:
    // the frame parsed as IP, so it holds at least 34 bytes, and snaplen is not 0 here.)
    const _: () = assert!(CAPTURE_MAX == 256);
    let want = if pkt_len < snaplen { pkt_len } else { snaplen };
    let len = (want.wrapping_sub(1) & 0xff) + 1;
    // SAFETY: `data` is the event's CAPTURE_MAX-byte buffer; `len` is at most CAPTURE_MAX.
    let ret = unsafe { bpf_skb_load_bytes(ctx.skb.skb.cast(), 0, data.cast(), len) };
    // A failed copy leaves the event without bytes (cap_len 0), which the capture shows. (No
    // aya-log message here: its record buffer on the stack pushed the deepest call chain past
    // what Linux 5.10's verifier allows.)
    if ret == 0 {
        len
    } else {
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
        Peek::Ip if admit(ctx, role, tuple, Ask) => Ok(true),
        Peek::Ip => Err(()),
        Peek::Unsure => Ok(false),
    }
}

/// [`admit`] for a packet [`decide_early`] was unsure of. (Its own subprogram, like the other
/// decision steps, so that their stack frames do not add up in the classifier's 512 bytes.)
#[inline(never)]
fn admit_parsed<V: ExprVerdict>(ctx: &TcContext, role: u32, meta: &PacketMeta, verdict: V) -> bool {
    admit(ctx, role, &Tuple::of(meta), verdict)
}

/// The filter, then the role.
#[inline(always)]
fn admit<V: ExprVerdict>(ctx: &TcContext, role: u32, tuple: &Tuple, verdict: V) -> bool {
    // Read-only data: without a tuple filter the verifier drops the call.
    (global_field!(FILTER: FilterConfig, flags) & FILTER_TUPLE == 0 || filter_admits(tuple))
        && role_admits(ctx, role, tuple, verdict)
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
/// interest. With an expression ([`FILTER_EXPR`]), a source hook emits a packet the expression
/// keeps (and remembers its remote end) or one whose remote end the trace follows, and a shared
/// hook admits a packet to a declared endpoint only when the expression keeps it (then the
/// trace follows its other end).
#[inline(never)]
fn role_admits<V: ExprVerdict>(ctx: &TcContext, role: u32, tuple: &Tuple, verdict: V) -> bool {
    // Read-only data: the verifier keeps one of the two.
    if global_field!(FILTER: FilterConfig, flags) & FILTER_EXPR == 0 {
        return match role {
            ROLE_SOURCE_OUT => remember(&remote_key(tuple, true)),
            ROLE_SOURCE_IN => remember(&remote_key(tuple, false)),
            ROLE_SHARED => {
                of_interest(&remote_key(tuple, true)) || of_interest(&remote_key(tuple, false))
            }
            ROLE_ALL => true,
            _ => false,
        };
    }
    match role {
        ROLE_SOURCE_OUT | ROLE_SOURCE_IN => {
            let towards_dst = role == ROLE_SOURCE_OUT;
            if verdict.keeps(ctx) {
                return remember(&remote_key(tuple, towards_dst));
            }
            end_interest(tuple, towards_dst) == INTEREST_FOLLOWED
        }
        ROLE_SHARED => {
            let (to, from) = (end_interest(tuple, true), end_interest(tuple, false));
            if to == INTEREST_FOLLOWED || from == INTEREST_FOLLOWED {
                return true;
            }
            if to == INTEREST_DECLARED && verdict.keeps(ctx) {
                return remember(&remote_key(tuple, false));
            }
            from == INTEREST_DECLARED && verdict.keeps(ctx) && remember(&remote_key(tuple, true))
        }
        ROLE_ALL => verdict.keeps(ctx),
        _ => false,
    }
}

/// Whether the expression keeps the packet: the object's filter subprogram, which userspace
/// fills with the expression's eBPF translation before loading (see `tracer::filter::ebpf`).
#[inline(always)]
fn expr_keeps(ctx: &TcContext) -> bool {
    crate::expr::pathtrace_filter_expr(ctx.skb.skb) != 0
}

/// The far end of the packet: its destination when `towards_dst`, else its source.
#[inline(always)]
pub(crate) fn remote_key(tuple: &Tuple, towards_dst: bool) -> EndpointKey {
    tuple.end(towards_dst)
}

/// Makes `key` an endpoint the trace follows (a declared one stays declared); true, for the
/// callers' `&&`.
#[inline(always)]
fn remember(key: &EndpointKey) -> bool {
    if INTEREST.get_ptr(key).is_none() {
        // The slot first, so that no CPU can find the entry's slot still 0 (only an expression's
        // rejections read the slots, and the verifier drops this store without one).
        if global_field!(FILTER: FilterConfig, flags) & FILTER_EXPR != 0 {
            if let Some(seen) = SEEN.get_ptr_mut(key.seen_slot()) {
                // SAFETY: a `u32` in the map's memory; every writer stores 1, so a racing store
                // cannot undo another.
                unsafe { seen.write_volatile(1) };
            }
        }
        // Insertion can only fail when the key was inserted concurrently by another CPU (fine) or
        // on allocation failure in the LRU, where the worst outcome is a missed shared-hook event,
        // which the per-flow gap accounting in userspace then reports.
        let _ = INTEREST.insert(key, &INTEREST_FOLLOWED, 0);
    }
    true
}

/// The `INTEREST` value of the packet's far end (as [`remote_key`]); 0 when it has none,
/// known from the end's `SEEN` slot, without building its key or looking it up, while that
/// slot is still 0.
#[inline(always)]
fn end_interest(tuple: &Tuple, towards_dst: bool) -> u32 {
    if !seen(tuple.end_slot(towards_dst)) {
        return 0;
    }
    // SAFETY: the value is a `u32` in the map's memory, read once.
    INTEREST
        .get_ptr(&remote_key(tuple, towards_dst))
        .map_or(0, |v| unsafe { *v })
}

/// Whether `SEEN` slot `slot` is set: false proves that no endpoint hashing to it has an
/// `INTEREST` entry.
#[inline(always)]
fn seen(slot: u32) -> bool {
    // SAFETY: a `u32` in the map's memory, read once.
    SEEN.get_ptr(slot)
        .is_some_and(|seen| unsafe { seen.read_volatile() } != 0)
}

#[inline(always)]
pub(crate) fn of_interest(key: &EndpointKey) -> bool {
    INTEREST.get_ptr(key).is_some()
}

/// Sends the packet's event: with its bytes when a capture stores them (snaplen > 0, every
/// packet mode), else the 88-byte head only.
#[inline(always)]
fn emit(ctx: &TcContext, slot: u32, direction: u32, meta: &PacketMeta, why: u32) -> bool {
    if global_field!(FILTER: FilterConfig, snaplen) == 0 {
        emit_head(ctx, slot, direction, meta, why)
    } else {
        emit_full(ctx, slot, direction, meta)
    }
}

#[inline(always)]
fn header(ctx: &TcContext, kind: u16, slot: u32, direction: u32) -> EventHeader {
    EventHeader {
        kind,
        hook: slot as u8,
        direction: direction as u8,
        // SAFETY: the program's context (the verifier rewrites the field access); a helper
        // without arguments.
        ifindex: unsafe { (*ctx.skb.skb).ifindex },
        ktime_ns: unsafe { bpf_ktime_get_ns() },
    }
}

/// Wake the reader only when the ring fills up; it drains on a timer otherwise.
#[inline(always)]
fn wake_flags() -> u64 {
    let flags = if EVENTS.query(u64::from(BPF_RB_AVAIL_DATA)) >= WAKE_BYTES.load() {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    u64::from(flags)
}

// Not inlined, either of them: each is its own subprogram, so that the frame of the one not in
// use does not add to the other's on the deepest call chain (Linux 5.10's verifier counts it).
#[inline(never)]
fn emit_head(ctx: &TcContext, slot: u32, direction: u32, meta: &PacketMeta, why: u32) -> bool {
    let Some(mut entry) = EVENTS.reserve::<PacketHeadEvent>(0) else {
        return false;
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` points at a reserved, exclusively owned ring-buffer record of the right size.
    unsafe {
        (*ev).header = header(ctx, KIND_PACKET_HEAD, slot, direction);
        (*ev).meta = *meta;
        (*ev).pkt_len = ctx.len();
        (*ev).why = why;
    }
    entry.submit(wake_flags());
    true
}

#[inline(never)]
fn emit_full(ctx: &TcContext, slot: u32, direction: u32, meta: &PacketMeta) -> bool {
    let Some(mut entry) = EVENTS.reserve::<PacketEvent>(0) else {
        return false;
    };
    let ev = entry.as_mut_ptr();
    let pkt_len = ctx.len();
    let snaplen = u32::from(global_field!(FILTER: FilterConfig, snaplen));
    // SAFETY: `ev` points at a reserved, exclusively owned ring-buffer record of the right size.
    unsafe {
        (*ev).header = header(ctx, KIND_PACKET, slot, direction);
        (*ev).meta = *meta;
        (*ev).pkt_len = pkt_len;
        (*ev).cap_len = copy_packet(ctx, pkt_len, snaplen, (*ev).data.as_mut_ptr());
    }
    entry.submit(wake_flags());
    true
}
