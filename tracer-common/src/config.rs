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

/// Per-slot settings, in the `HOOKS` array map, indexed by slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HookConfig {
    /// `DIR_INGRESS` or `DIR_EGRESS`. A `u32`, not a `bool` or enum: no implicit padding, and any
    /// value the kernel reads is defined.
    pub direction: u32,
    /// One of the `ROLE_*` values: how this hook decides whether a packet belongs to the trace.
    pub role: u32,
}
const _: () = assert!(size_of::<HookConfig>() == 8);

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
#[repr(C)]
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

/// Per-hook counters, one per CPU per slot in the `COUNTERS` per-CPU array. For every hook,
/// `seen == filtered + emitted + lost`.
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
}
const _: () = assert!(size_of::<HookCounters>() == 32);

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
}
