//! Load-time and run-time configuration written by userspace, read by the kernel programs.

/// The in-kernel filter, fixed for the lifetime of a loaded object (it lives in `.rodata`, so the
/// verifier folds away every test that is switched off).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FilterConfig {
    /// Bit set of `FILTER_*` flags saying which of the fields below are in force.
    pub flags: u32,
    /// IP protocol number (6, 17, 1, 58) when `FILTER_PROTO` is set.
    pub proto: u8,
    /// 4 or 6 when `FILTER_ADDR` is set.
    pub family: u8,
    /// Prefix length for `addr` (0..=32 or 0..=128).
    pub prefix_len: u8,
    pub _pad0: u8,
    /// Address (IPv4 in the first four bytes), matched against source or destination.
    pub addr: [u8; 16],
    /// Port matched against source or destination when `FILTER_PORT` is set.
    pub port: u16,
    /// Bytes of each packet copied into its event (clamped to `CAPTURE_MAX`; 0: none, when no
    /// capture file stores them).
    pub snaplen: u16,
}
const _: () = assert!(size_of::<FilterConfig>() == 28);

impl FilterConfig {
    /// No filtering; the default snap length.
    pub const NONE: Self = Self {
        flags: 0,
        proto: 0,
        family: 0,
        prefix_len: 0,
        _pad0: 0,
        addr: [0; 16],
        port: 0,
        snaplen: crate::event::CAPTURE_DEFAULT,
    };
}

pub const FILTER_PROTO: u32 = 1 << 0;
pub const FILTER_ADDR: u32 = 1 << 1;
pub const FILTER_PORT: u32 = 1 << 2;
/// The flags [`FilterConfig::admits`](crate::tuple) tests: with none of them set it admits
/// every tuple, and the kernel does not call it.
pub const FILTER_TUPLE: u32 = FILTER_PROTO | FILTER_ADDR | FILTER_PORT;
/// A pcap-filter expression decides, in the object's filter subprogram (which userspace writes
/// before loading): at the hooks where flows start, a packet it keeps brings in its flow, which
/// every hook then follows through `INTEREST`. The fields above are then not in force.
pub const FILTER_EXPR: u32 = 1 << 3;

/// `INTEREST` value: an endpoint of a flow the trace follows (a source hook saw it, or a shared
/// hook admitted a packet to a declared endpoint).
pub const INTEREST_FOLLOWED: u32 = 1;
/// `INTEREST` value: an endpoint userspace declared up front (a published port on the host).
/// With an expression, a shared hook admits a packet to it only when the expression keeps it.
pub const INTEREST_DECLARED: u32 = 2;

/// Per-slot settings, in the `HOOKS` array map, indexed by slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HookConfig {
    /// `DIR_INGRESS` or `DIR_EGRESS`. A `u32`, not a `bool` or enum: no implicit padding, and any
    /// value the kernel reads is defined.
    pub direction: u32,
    /// One of the `ROLE_*` values: how this hook decides whether a packet belongs to the trace.
    pub role: u32,
    /// `HOOK_ENTRY` when no other hook of the trace can have seen a packet before this one (the
    /// container's `eth0` egress, the uplink's ingress): where aggregate mode picks the first
    /// packets of a flow, and tells the hooks after it through `SELECTED`.
    pub flags: u32,
}
const _: () = assert!(size_of::<HookConfig>() == 12);

/// [`HookConfig::flags`]: the first hook of the trace for every packet it sees.
pub const HOOK_ENTRY: u32 = 1 << 0;

pub const DIR_INGRESS: u32 = 0;
pub const DIR_EGRESS: u32 = 1;

/// Slot not configured: the program counts the packet as seen and emits nothing.
pub const ROLE_UNUSED: u32 = 0;
/// A hook on the traced side carrying packets that leave it (container `eth0` egress, host veth
/// ingress): every packet that passes the filter is emitted and its destination becomes a
/// remote endpoint of interest.
pub const ROLE_SOURCE_OUT: u32 = 1;
/// A hook on the traced side carrying packets towards it (container `eth0` ingress, host veth
/// egress): emitted, and the source becomes an endpoint of interest.
pub const ROLE_SOURCE_IN: u32 = 2;
/// A shared hook (bridge, uplink) that also carries other hosts' traffic: a packet is emitted only
/// when its source or destination endpoint is of interest. NAT rewrites the traced side's address
/// and port, never the remote end's, so this survives MASQUERADE, SNAT and DNAT.
pub const ROLE_SHARED: u32 = 3;
/// Every packet that passes the filter is emitted (no interest bookkeeping).
pub const ROLE_ALL: u32 = 4;

/// Key of the `INTEREST` LRU map: one remote endpoint the traced side talks to.
///
/// 4-byte aligned (its size stays 20), so that the kernel copies one and hashes its address
/// ([`EndpointKey::seen_slot`]) a word at a time rather than byte by byte.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct EndpointKey {
    pub addr: [u8; 16],
    /// Port for TCP and UDP; 0 for ICMP and other protocols.
    pub port: u16,
    pub proto: u8,
    pub family: u8,
}
const _: () = assert!(size_of::<EndpointKey>() == 20);

/// Capacity of the `INTEREST` map (oldest endpoints are evicted by the kernel's LRU).
pub const INTEREST_MAX: u32 = 8192;

/// Slots of the `SEEN` array: a slot is 1 once any endpoint hashing to it
/// ([`EndpointKey::seen_slot`]) was put in `INTEREST`, by the kernel or by userspace, and is
/// never cleared. A 0 proves the endpoint has no `INTEREST` entry, so a packet a filter
/// expression rejects is turned away with one inlined array read instead of a hash lookup; a 1
/// (a real entry, an evicted one, or another endpoint's hash) only sends it to the lookup.
pub const SEEN_SLOTS: u32 = 1 << 16;

impl EndpointKey {
    /// The key's slot in the `SEEN` array: [`seen_slot_of`] its address and port.
    #[inline(always)]
    pub fn seen_slot(&self) -> u32 {
        seen_slot_of(&self.addr, self.port, self.proto, self.family)
    }
}

/// The `SEEN` slot of the endpoint `addr`, `port`, `proto`, `family`: a multiplicative hash of
/// five 32-bit words, computed the same way on both sides of the kernel boundary (and from a
/// [`Tuple`](crate::tuple::Tuple)'s end without building its key, `Tuple::end_slot`).
#[inline(always)]
pub fn seen_slot_of(addr: &[u8; 16], port: u16, proto: u8, family: u8) -> u32 {
    let a = addr;
    let words = [
        u32::from_le_bytes([a[0], a[1], a[2], a[3]]),
        u32::from_le_bytes([a[4], a[5], a[6], a[7]]),
        u32::from_le_bytes([a[8], a[9], a[10], a[11]]),
        u32::from_le_bytes([a[12], a[13], a[14], a[15]]),
        u32::from(port) | u32::from(proto) << 16 | u32::from(family) << 24,
    ];
    let mut h: u32 = 0x811c_9dc5;
    for w in words {
        h = (h ^ w).wrapping_mul(0x9e37_79b1);
    }
    (h >> 16) & (SEEN_SLOTS - 1)
}

/// Per-hook counters, one per CPU per slot in the `COUNTERS` per-CPU array. For every hook,
/// `seen == filtered + emitted + lost + aggregated`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HookCounters {
    /// Packets the program ran on.
    pub seen: u64,
    /// Packets not emitted because they failed the filter, were not IP, or were not of interest.
    pub filtered: u64,
    /// Events written into the ring buffer.
    pub emitted: u64,
    /// Events lost because the ring buffer was full.
    pub lost: u64,
    /// Aggregate mode: packets counted in `FLOW_STATS` without an event of their own.
    pub aggregated: u64,
    /// Aggregate mode: packets `FLOW_STATS` had no room for (each then went out as an event
    /// marked [`crate::event::WHY_UNCOUNTED`], or, with the ring buffer full too, was lost).
    pub overflow: u64,
}
const _: () = assert!(size_of::<HookCounters>() == 48);

/// Where the drop program finds the `struct sk_buff` fields it reads, in this kernel.
///
/// Rust eBPF programs get no CO-RE field relocations, so userspace reads the offsets from the
/// kernel's BTF and writes them into the read-only `SKB_OFFSETS` global at load time. Offsets are
/// in bytes from the start of `struct sk_buff`; the field sizes the program assumes (8-byte
/// pointers `head` and `data`, `u32` `len` and `data_len`, `u16` `network_header` and
/// `protocol`) are checked against BTF before `valid` is set.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SkbOffsets {
    /// 1 when the offsets below are usable and drop reasons are wanted. A `u32`, not a `bool`: no
    /// implicit padding, and any value the kernel reads is defined. While it is 0 the verifier
    /// folds the drop program down to an immediate return and the tc programs skip `TRACED`.
    pub valid: u32,
    /// `unsigned char *head`: start of the linear buffer.
    pub head: u32,
    /// `unsigned char *data`: start of the packet data in the linear buffer.
    pub data: u32,
    /// `unsigned int len`: bytes of packet data, linear and paged.
    pub len: u32,
    /// `unsigned int data_len`: the paged part of `len` (the linear part is `len - data_len`).
    pub data_len: u32,
    /// `__u16 network_header`: the L3 header's offset from `head`.
    pub network_header: u32,
    /// `__be16 protocol`: the L3 protocol (an ethertype), network byte order.
    pub protocol: u32,
    /// Not an offset: the value of `SKB_CONSUMED` in this kernel's `enum skb_drop_reason` (a
    /// normal free, not a drop), which the program skips like `SKB_NOT_DROPPED_YET` (0).
    pub consumed_reason: u32,
}
const _: () = assert!(size_of::<SkbOffsets>() == 32);

impl SkbOffsets {
    /// Drop reasons off.
    pub const NONE: Self = Self {
        valid: 0,
        head: 0,
        data: 0,
        len: 0,
        data_len: 0,
        network_header: 0,
        protocol: 0,
        consumed_reason: 0,
    };
}

/// Slots of the `TRACED` map: fingerprints of packets the tc programs emitted recently, which the
/// drop program reports on. A direct-mapped set (a new fingerprint overwrites the one in its
/// slot), so it is sized well above the packets in flight: 512 KiB of kernel memory. A power of
/// two.
pub const TRACED_MAX: u32 = 1 << 16;

/// How the hook programs report, fixed at load time (read-only data).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ModeConfig {
    /// 0: one event per packet per hook (`--every-packet`); 1: aggregate in `FLOW_STATS`, events
    /// only for the packets [`crate::sample`] and the first-packet rule pick.
    pub aggregate: u32,
    /// [`crate::sample::sampled`]'s threshold for `--sample 1/N`.
    pub sample_below: u32,
    /// Packets of each flow an entry hook emits in full in each epoch (per CPU) before it only
    /// counts them.
    pub first_n: u32,
    /// 1: time the counts with `bpf_ktime_get_coarse_ns` (Linux >= 5.11; the clock's tick, a
    /// few ms, is enough for first and last times, and it costs a fraction of a clock read).
    pub coarse_clock: u32,
}
const _: () = assert!(size_of::<ModeConfig>() == 16);

impl ModeConfig {
    /// Every packet an event (the object's default until the loader says otherwise).
    pub const EVERY_PACKET: Self = Self {
        aggregate: 0,
        sample_below: u32::MAX,
        first_n: 0,
        coarse_clock: 0,
    };
}

/// Key of `FLOW_STATS`: a flow's tuple as one hook sees it
/// (before or after NAT), the hook's slot, and the epoch userspace drains by. 40 bytes without
/// padding: every byte is defined. 8-byte aligned, so that it is built and hashed in words.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// TCP/UDP ports, else 0.
    pub sport: u16,
    pub dport: u16,
    pub family: u8,
    pub proto: u8,
    pub slot: u8,
    /// 0 or 1: the `EPOCH` the packet was counted in.
    pub epoch: u8,
}
const _: () = assert!(size_of::<FlowKey>() == 40);

// SAFETY: `repr(C, align(8))`, 40 bytes of integers and byte arrays: all zero is valid.
unsafe impl crate::words::ZeroWords for FlowKey {}

impl FlowKey {
    /// Makes this the key of `tuple`'s flow at `slot`, counted in `epoch`: written in place,
    /// field by field (a key built elsewhere and copied takes another 40 bytes of BPF stack).
    #[inline(always)]
    pub fn set(&mut self, tuple: &crate::tuple::Tuple, slot: u8, epoch: u8) {
        self.saddr = tuple.saddr;
        self.daddr = tuple.daddr;
        self.sport = tuple.sport;
        self.dport = tuple.dport;
        self.family = tuple.family;
        self.proto = tuple.proto;
        self.slot = slot;
        self.epoch = epoch;
    }

    /// Writes the tuple the key holds into `tuple`, field by field: its padding stays as it was
    /// (zero, from [`ZeroWords::zero_in`](crate::words::ZeroWords::zero_in), for the kernel
    /// programs, whose verifier refuses reads of stack bytes never written).
    #[inline(always)]
    pub fn tuple_into(&self, tuple: &mut crate::tuple::Tuple) {
        tuple.saddr = self.saddr;
        tuple.daddr = self.daddr;
        tuple.sport = self.sport;
        tuple.dport = self.dport;
        tuple.family = self.family;
        tuple.proto = self.proto;
    }
}

/// One CPU's counts of one `FLOW_STATS` key. Userspace sums the CPUs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowCounts {
    pub packets: u64,
    /// `skb->len` summed.
    pub bytes: u64,
    /// `bpf_ktime_get_ns()` (or the coarse clock) of the first and the last packet counted.
    pub first_ns: u64,
    pub last_ns: u64,
    /// Kernel-side only: this CPU's `packets` before the last TCP SYN (without ACK) counted, so
    /// that a connection's first packets are counted from its own start when a new connection
    /// reuses the tuple. Not a count: [`FlowCounts::merge`] leaves it out.
    pub syn_at: u64,
}
const _: () = assert!(size_of::<FlowCounts>() == 40);

impl FlowCounts {
    /// Adds another CPU's (or epoch's) counts: sums, and the earliest first and latest last
    /// time among those that counted anything.
    pub fn merge(&mut self, other: &Self) {
        if other.packets == 0 {
            return;
        }
        self.first_ns = if self.packets == 0 {
            other.first_ns
        } else {
            self.first_ns.min(other.first_ns)
        };
        self.last_ns = self.last_ns.max(other.last_ns);
        self.packets += other.packets;
        self.bytes += other.bytes;
    }
}

/// Aggregate mode's per-CPU, per-slot, per-epoch write-back cache of the flow a hook counted
/// last (in `FLOW_CACHE`, index `slot * 2 + epoch`): a flood of one flow is counted here with
/// array accesses only, where each `FLOW_STATS` lookup costs a hash of the key. `FLOW_STATS`
/// always has an entry for the cached key; the packets counted here since (`delta`) are added
/// to it when another flow takes the cache, or by userspace when it drains the epoch.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowCache {
    pub key: FlowKey,
    /// Counted here and not yet in `FLOW_STATS` (its `syn_at` in the numbering of `base`).
    pub delta: FlowCounts,
    /// This CPU's packets of the key in `FLOW_STATS` when the cache took it (at least 1; 0: the
    /// cache is empty): with `delta.packets`, the flow's count at this hook in this epoch on
    /// this CPU.
    pub base: u64,
}
const _: () = assert!(size_of::<FlowCache>() == 88);

/// Entries of `FLOW_STATS` at most (the loader may lower it on hosts with many CPUs: every
/// entry holds one [`FlowCounts`] per possible CPU).
pub const FLOW_STATS_MAX: u32 = 1 << 16;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: each type is `#[repr(C)]`, made of integers and byte arrays only, with no implicit
    // padding (asserted by the size checks above), so every bit pattern is valid.
    unsafe impl aya::Pod for super::FilterConfig {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::HookConfig {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::EndpointKey {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::HookCounters {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::SkbOffsets {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::ModeConfig {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::FlowKey {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::FlowCounts {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::FlowCache {}
}

#[cfg(test)]
mod tests {
    use super::FlowKey;
    use crate::tuple::Tuple;

    #[test]
    fn a_flow_key_holds_its_tuple_whole() {
        let tuple = Tuple {
            saddr: [10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            daddr: [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7],
            sport: 40000,
            dport: 443,
            family: 6,
            proto: 17,
        };
        let mut key = FlowKey::default();
        key.set(&tuple, 3, 1);
        assert_eq!((key.slot, key.epoch), (3, 1));
        let mut back = Tuple::default();
        key.tuple_into(&mut back);
        assert_eq!(back, tuple);
    }
}
