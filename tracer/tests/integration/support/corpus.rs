//! The ground truth for the pcap-filter implementation: [`frames`], a deterministic corpus of
//! crafted Ethernet frames (every protocol, shape and malformation a filter must get right),
//! [`EXPRESSIONS`], the filters tried on them, and [`tcpdump_verdicts`], what tcpdump (libpcap's
//! compiler, the reference) decides for each frame. [`write_pcap`] hands the corpus to tcpdump as a
//! classic pcap whose timestamps are the frame indices, so its verdicts map back to frames exactly.
//!
//! What libpcap does that a reimplementation easily gets wrong (the self-checks below keep these
//! expressions discriminating): on IPv6, `tcp`, `udp` and `ip6 proto N` see the fixed header's
//! next header and, one level deep, a fragment header's, nothing further (`ip6 protochain` walks
//! the chain); `port` and `icmp6[...]` only right behind the fixed header; `tcp[...]` and
//! `udp[...]` are IPv4 only. On IPv4, `port` looks only at first fragments (`tcp` at all of them)
//! and trusts any IHL, even one under 5. `host` also matches ARP and RARP addresses. Nothing but
//! `vlan` looks behind a VLAN tag, and each `vlan` moves what follows it 4 bytes on. A load past
//! the captured bytes rejects the frame, but `len`, `less` and `greater` test the wire length.
//! Reading a file, the netmask is 0, so `ip broadcast` is 255.255.255.255 or 0.0.0.0.

use std::{
    fs::File,
    io::{self, BufWriter, Write as _},
    iter,
    net::Ipv6Addr,
    path::Path,
    process::Command,
};

/// One crafted frame: its bytes as captured (possibly truncated: `bytes.len()` is the capture
/// length) and the length on the wire.
#[derive(Clone, Debug)]
pub(crate) struct Frame {
    /// The captured bytes; fewer than `wire_len` when the capture was snapped.
    pub bytes: Vec<u8>,
    /// The length on the wire, what `len`, `less` and `greater` test.
    pub wire_len: u32,
    /// What it is, "kind: layers", e.g. "ipv6 extension headers: ipv6 + hop-by-hop + tcp 80>4242 syn".
    pub what: String,
}

/// The shortest frame made: `BPF_PROG_TEST_RUN` refuses anything shorter than an Ethernet header.
const MIN_LEN: usize = 14;

/// How many times each kind of frame is made, each time with other addresses, ports and sizes.
const ROUNDS: usize = 120;

/// At least 2,000 frames: every protocol and shape below, deterministic (a seeded xorshift).
pub(crate) fn frames() -> Vec<Frame> {
    let mut g = Gen {
        state: 0x9e37_79b9_7f4a_7c15,
        round: 0,
    };
    let mut out = Vec::with_capacity(ROUNDS * KINDS.len());
    for round in 0..ROUNDS {
        g.round = round;
        for (kind, make) in KINDS {
            let mut frame = make(&mut g);
            frame.what = format!("{kind}: {}", frame.what);
            out.push(frame);
        }
    }
    out
}

/// The filters the implementation must agree with tcpdump on; each compiles with
/// `tcpdump -d -y EN10MB`, and each matches some frames of the corpus and rejects others.
pub(crate) const EXPRESSIONS: &[&str] = &[
    // IPv4 hosts and nets, with direction qualifiers and inheritance.
    "host 10.0.0.5",
    "host 10.0.0.5 or 10.1.2.3",
    "src host 10.0.0.5",
    "dst host 10.1.2.3",
    "src or dst host 10.1.2.3",
    "src and dst net 10.0.0.0/8",
    "src 10.0.0.5 or dst 192.168.1.1",
    "net 192.168.1.0/24",
    "net 192.168.0.0 mask 255.255.0.0",
    "net 172.16.0.0/12",
    "net 10",
    "src net 10.0.0.0/8 and dst net 192.168.0.0/16",
    "ip host 10.0.0.5 and not arp",
    "arp and host 10.0.0.5",
    // IPv6 hosts and nets.
    "host fd00::1",
    "dst host fd00::2",
    "net fd00::/64",
    "ip6 and src net fd00::/16",
    "ip6 net fe80::/10",
    // Ports.
    "port 80",
    "port 80 or 443",
    "tcp port 443",
    "udp port 53",
    "src port 22",
    "dst port 8080",
    "port 0",
    "portrange 1000-2000",
    "tcp dst portrange 1000-2000",
    "udp src portrange 1-1023",
    "host 10.0.0.5 and (port 22 or 53 or 80)",
    // Protocols.
    "tcp",
    "udp",
    "icmp",
    "icmp6",
    "ip",
    "ip6",
    "arp",
    "rarp",
    "sctp",
    "igmp",
    "stp",
    "ip proto 17",
    "ip6 proto 58",
    "proto \\tcp",
    "ip proto \\gre",
    "ip proto 253",
    "ip6 protochain 6",
    "ip6 protochain 17",
    // VLAN.
    "vlan",
    "vlan 100",
    "vlan 1",
    "vlan 4094",
    "vlan and tcp",
    "vlan 100 and host 10.0.0.5",
    "vlan and vlan",
    "vlan and ip6",
    // Lengths (on the wire).
    "less 100",
    "greater 500",
    "len > 80",
    "len <= 64",
    // Byte tests.
    "tcp[tcpflags] & (tcp-syn|tcp-fin) != 0",
    "tcp[tcpflags] & tcp-syn != 0 and tcp[tcpflags] & tcp-ack = 0",
    "tcp[13] = 18",
    "tcp[tcpflags] & tcp-rst != 0",
    "ip[0] & 0xf > 5",
    "ip[0] & 0xf < 5",
    "ip[0] & 0xf0 != 0x40",
    "ip[6:2] & 0x1fff != 0",
    "ip[6:2] & 0x2000 != 0",
    "icmp[icmptype] = icmp-echo",
    "icmp[icmptype] = icmp-unreach or icmp[icmptype] = icmp-timxceed",
    "icmp6[0] = 128",
    "icmp6[icmp6type] = icmp6-neighborsolicit",
    "udp[4:2] > 100",
    "ether[0] & 1 != 0",
    "ether[12:2] = 0x8100",
    "ip6[6] = 44",
    // Link layer, broadcast and multicast.
    "broadcast",
    "multicast",
    "ip broadcast",
    "ip multicast",
    "ip6 multicast",
    "ether host ff:ff:ff:ff:ff:ff",
    "ether src 02:00:00:00:00:01",
    "ether proto 0x0806",
    "ether proto 0x88cc",
    // Combinations, negations, nesting.
    "tcp port 443 and host 10.0.0.5",
    "udp and not port 53",
    "tcp port 9000 and not host 10.0.0.5",
    "not tcp",
    "not (ip or ip6 or arp)",
    "tcp && !(port 80 || port 443)",
    "not (host 10.0.0.5 or (net 192.168.1.0/24 and not udp))",
    "((tcp and (port 80 or port 443)) or (udp and not (port 53 or port 0))) and not host 10.1.2.3",
    "(ip and (tcp[tcpflags] & tcp-syn != 0 or (udp and (port 53 or portrange 1000-2000)))) \
     or (ip6 and (icmp6 or (tcp and not port 22)))",
];

/// Writes `frames` as a classic pcap (LINKTYPE_ETHERNET, snaplen 65535), frame i with timestamp
/// i seconds + 0 µs, caplen = `bytes.len()`, len = `wire_len`.
pub(crate) fn write_pcap(path: &Path, frames: &[Frame]) -> io::Result<()> {
    let mut w = BufWriter::new(File::create(path)?);
    // Magic, version 2.4, GMT offset, timestamp accuracy, snaplen, LINKTYPE_ETHERNET.
    w.write_all(&0xa1b2_c3d4_u32.to_le_bytes())?;
    w.write_all(&2_u16.to_le_bytes())?;
    w.write_all(&4_u16.to_le_bytes())?;
    for field in [0, 0, 65_535, 1_u32] {
        w.write_all(&field.to_le_bytes())?;
    }
    for (i, f) in frames.iter().enumerate() {
        let seconds = u32::try_from(i).map_err(io::Error::other)?;
        let caplen = u32::try_from(f.bytes.len()).map_err(io::Error::other)?;
        for field in [seconds, 0, caplen, f.wire_len] {
            w.write_all(&field.to_le_bytes())?;
        }
        w.write_all(&f.bytes)?;
    }
    w.flush()
}

/// tcpdump's verdict on every frame of the pcap at `path` (one [`write_pcap`] wrote) for `expr`.
/// Panics with tcpdump's stderr if it fails.
pub(crate) fn tcpdump_verdicts(path: &Path, expr: &str, n_frames: usize) -> Vec<bool> {
    // The packets it keeps, written back as a pcap rather than printed: their timestamps are
    // the frame indices, whatever its printers make of a malformed frame.
    let out = Command::new("tcpdump")
        .args(["-n", "-r"])
        .arg(path)
        .args(["-w", "-", "--", expr])
        .output()
        .expect("cannot run tcpdump (apt-get install tcpdump)");
    assert!(
        out.status.success(),
        "tcpdump -r {} -- {expr:?} failed: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut verdicts = vec![false; n_frames];
    for i in pcap_seconds(&out.stdout) {
        assert!(
            i < n_frames,
            "{expr:?}: tcpdump kept frame {i} of {n_frames}"
        );
        verdicts[i] = true;
    }
    verdicts
}

/// The seconds of every record's timestamp in a classic pcap of either byte order.
fn pcap_seconds(pcap: &[u8]) -> Vec<usize> {
    let le = match pcap.get(..4) {
        Some([0xd4, 0xc3, 0xb2, 0xa1]) => true,
        Some([0xa1, 0xb2, 0xc3, 0xd4]) => false,
        other => panic!("not a microsecond pcap: magic {other:02x?}"),
    };
    let word = |at: usize| {
        let b: [u8; 4] = pcap
            .get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .unwrap_or_else(|| panic!("pcap cut at byte {at} of {}", pcap.len()));
        (if le {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        }) as usize
    };
    let (mut at, mut seconds) = (24, Vec::new());
    while at < pcap.len() {
        seconds.push(word(at));
        at += 16 + word(at + 8);
    }
    seconds
}

// ---------------------------------------------------------------------------------------------
// The kinds of frame, each made once a round.

/// A kind of frame: its name (the start of [`Frame::what`]) and how to make one.
type Kind = (&'static str, fn(&mut Gen) -> Frame);

/// Every kind, in the order each round makes them.
const KINDS: &[Kind] = &[
    ("ipv4 tcp", ipv4_tcp),
    ("ipv4 udp", ipv4_udp),
    ("ipv4 icmp", ipv4_icmp),
    ("ipv4 icmp error", ipv4_icmp_error),
    ("ipv4 other protocol", ipv4_other),
    ("ipv4 options", ipv4_options),
    ("ipv4 fragment", ipv4_fragment),
    ("ipv6 tcp", ipv6_tcp),
    ("ipv6 udp", ipv6_udp),
    ("ipv6 icmp6", ipv6_icmp6),
    ("ipv6 extension headers", ipv6_ext),
    ("arp", arp),
    ("vlan", vlan),
    ("truncated", truncated),
    ("snapped", snapped),
    ("bogus ip", bogus_ip),
    ("broadcast/multicast", broadcast_multicast),
    ("other link", other_link),
];

const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const PSH: u8 = 0x08;
const ACK: u8 = 0x10;
const URG: u8 = 0x20;
const ECE: u8 = 0x40;
const CWR: u8 = 0x80;

/// The flag combinations that matter, the common ones twice.
const TCP_FLAGS: &[u8] = &[
    SYN,
    SYN | ACK,
    ACK,
    FIN | ACK,
    RST,
    RST | ACK,
    PSH | ACK,
    FIN,
    FIN | PSH | URG,
    0,
    SYN | FIN,
    SYN | ECE | CWR,
    ACK,
    PSH | ACK,
];

const BROADCAST: Mac = [0xff; 6];
const ETHERTYPE_ARP: u16 = 0x0806;
const ETHERTYPE_RARP: u16 = 0x8035;

fn eth(g: &mut Gen) -> FrameBuilder {
    FrameBuilder::eth(g.mac(), g.mac())
}

fn eth_v4(g: &mut Gen) -> FrameBuilder {
    eth(g).ipv4(V4::new(g.v4(), g.v4()))
}

fn eth_v6(g: &mut Gen) -> FrameBuilder {
    eth(g).ipv6(g.v6(), g.v6())
}

/// TCP (any flags) or UDP, one in two, with a service port on one side, then a payload.
fn transport(g: &mut Gen, b: FrameBuilder) -> FrameBuilder {
    let ((sport, dport), payload) = (g.ports(), g.payload());
    if g.below(2) == 0 {
        b.tcp(sport, dport, g.pick(TCP_FLAGS))
    } else {
        b.udp(sport, dport)
    }
    .payload(&payload)
}

/// IPv4 or IPv6, one in two, between addresses of the pools, carrying TCP or UDP.
fn any_ip(g: &mut Gen, b: FrameBuilder) -> FrameBuilder {
    let b = if g.below(2) == 0 {
        b.ipv4(V4::new(g.v4(), g.v4()))
    } else {
        b.ipv6(g.v6(), g.v6())
    };
    transport(g, b)
}

fn ipv4_tcp(g: &mut Gen) -> Frame {
    let ((sport, dport), flags, payload) = (g.ports(), g.cycle(TCP_FLAGS), g.payload());
    eth_v4(g).tcp(sport, dport, flags).payload(&payload).build()
}

fn ipv4_udp(g: &mut Gen) -> Frame {
    let (sport, dport) = if g.round.is_multiple_of(8) {
        (g.client(), 0)
    } else {
        g.ports()
    };
    let payload = g.payload();
    eth_v4(g).udp(sport, dport).payload(&payload).build()
}

fn ipv4_icmp(g: &mut Gen) -> Frame {
    // Echo, echo reply, timestamp, timestamp reply.
    let (ty, id_seq, payload) = (g.cycle(&[8, 0, 8, 0, 13, 14]), g.u32(), g.payload());
    eth_v4(g).icmp(ty, 0, id_seq).payload(&payload).build()
}

/// Unreachable (net, host, port, needs fragmentation), time exceeded (in transit, in
/// reassembly), parameter problem, redirect.
const ICMP_ERRORS: [[u8; 2]; 8] = [
    [3, 0],
    [3, 1],
    [3, 3],
    [3, 4],
    [11, 0],
    [11, 1],
    [12, 0],
    [5, 1],
];

/// ICMP errors, each quoting the packet it is about.
fn ipv4_icmp_error(g: &mut Gen) -> Frame {
    let [ty, code] = g.cycle(&ICMP_ERRORS);
    let (host, peer, (sport, dport)) = (g.v4(), g.v4(), g.ports());
    let quoted = eth(g)
        .ipv4(V4::new(g.v4(), host))
        .icmp(ty, code, 0)
        .ipv4(V4::new(host, peer));
    if g.below(2) == 0 {
        quoted.udp(sport, dport)
    } else {
        quoted.tcp(sport, dport, SYN)
    }
    .build()
}

fn ipv4_other(g: &mut Gen) -> Frame {
    let ((sport, dport), payload) = (g.ports(), g.payload());
    let b = match g.round % 5 {
        0 => {
            // Ports, verification tag, checksum.
            let sctp: Vec<u8> = [sport, dport, 0xcafe, 0, 0, 0]
                .iter()
                .flat_map(|w| w.to_be_bytes())
                .collect();
            eth_v4(g).l4(132, &sctp, "sctp")
        }
        1 => eth_v4(g)
            .gre()
            .ipv4(V4::new(g.v4(), g.v4()))
            .tcp(sport, dport, PSH | ACK),
        2 => {
            let group = [239, 1, 2, g.byte()];
            let report = [[0x16, 0, 0, 0], group].concat();
            FrameBuilder::eth(multicast_mac(group), g.mac())
                .ipv4(V4 {
                    ttl: 1,
                    ..V4::new(g.v4(), group)
                })
                .l4(2, &report, "igmp v2 report")
        }
        3 => eth_v4(g).ipv4(V4::new(g.v4(), g.v4())).udp(sport, dport),
        _ => {
            let protocol = g.pick(&[253, 254, 99, 143]);
            eth_v4(g).l4(protocol, &[], &format!("protocol {protocol}"))
        }
    };
    b.payload(&payload).build()
}

fn ipv4_options(g: &mut Gen) -> Frame {
    let ihl = 6 + (g.round % 10) as u8;
    let b = eth(g).ipv4(V4 {
        ihl,
        ..V4::new(g.v4(), g.v4())
    });
    transport(g, b).build()
}

fn ipv4_fragment(g: &mut Gen) -> Frame {
    const MF: u16 = 0x2000;
    let offset = g.u16_in(1, 400);
    let frag = [MF, MF | offset, offset][g.round % 3];
    let b = eth(g).ipv4(V4 {
        frag,
        ..V4::new(g.v4(), g.v4())
    });
    if frag & 0x1fff == 0 {
        return transport(g, b).build();
    }
    // A later fragment: the protocol says TCP or UDP, but its first bytes are data, not ports.
    let (protocol, n) = (g.pick(&[6, 17]), 8 + g.below(600));
    b.data(protocol, &g.bytes(n)).build()
}

fn ipv6_tcp(g: &mut Gen) -> Frame {
    let ((sport, dport), flags, payload) = (g.ports(), g.cycle(TCP_FLAGS), g.payload());
    eth_v6(g).tcp(sport, dport, flags).payload(&payload).build()
}

fn ipv6_udp(g: &mut Gen) -> Frame {
    let ((sport, dport), payload) = (g.ports(), g.payload());
    eth_v6(g).udp(sport, dport).payload(&payload).build()
}

fn ipv6_icmp6(g: &mut Gen) -> Frame {
    let (src, dst, target, (sport, dport)) = (g.v6(), g.v6(), g.v6(), g.ports());
    let (id_seq, payload) = (g.u32(), g.payload());
    match g.round % 6 {
        0 => eth(g)
            .ipv6(src, dst)
            .icmp6(128, 0, id_seq)
            .payload(&payload),
        1 => eth(g)
            .ipv6(src, dst)
            .icmp6(129, 0, id_seq)
            .payload(&payload),
        2 => {
            let group = solicited_node(target);
            FrameBuilder::eth(multicast_mac6(group), g.mac())
                .ipv6(src, group)
                .icmp6(135, 0, 0)
                .payload(&target)
        }
        // Solicited, override.
        3 => eth(g)
            .ipv6(target, dst)
            .icmp6(136, 0, 0x6000_0000)
            .payload(&target),
        4 => eth(g)
            .ipv6(src, dst)
            .icmp6(1, 4, 0)
            .ipv6(dst, src)
            .udp(sport, dport),
        _ => eth(g)
            .ipv6(src, dst)
            .icmp6(3, 0, 0)
            .ipv6(dst, g.v6())
            .tcp(sport, dport, SYN),
    }
    .build()
}

/// An IPv6 extension header, as [`ipv6_ext`] chains them.
#[derive(Clone, Copy)]
enum Ext {
    HopByHop,
    Routing,
    DestOpts,
    /// Offset 0, more fragments.
    FragFirst,
    /// A later fragment: no upper-layer header follows, only data.
    FragLater,
    /// Offset 0, no more fragments (RFC 6946).
    FragAtomic,
}

const CHAINS: &[&[Ext]] = {
    use Ext::*;
    &[
        &[HopByHop],
        &[Routing],
        &[DestOpts],
        &[FragFirst],
        &[FragLater],
        &[FragAtomic],
        &[HopByHop, DestOpts],
        &[HopByHop, Routing],
        &[HopByHop, FragFirst],
        &[DestOpts, FragLater],
        &[HopByHop, Routing, DestOpts],
        &[HopByHop, DestOpts, FragFirst],
        &[Routing, DestOpts, FragLater],
    ]
};

fn ipv6_ext(g: &mut Gen) -> Frame {
    let chain = g.cycle(CHAINS);
    let mut b = eth_v6(g);
    for ext in chain {
        let len8 = g.below(3) as u8;
        b = match ext {
            Ext::HopByHop => b.ext6(0, len8),
            Ext::Routing => b.ext6(43, len8),
            Ext::DestOpts => b.ext6(60, len8),
            Ext::FragFirst => b.frag6(0, true),
            Ext::FragLater => b.frag6(g.u16_in(1, 400), g.below(2) == 0),
            Ext::FragAtomic => b.frag6(0, false),
        };
    }
    if matches!(chain.last(), Some(Ext::FragLater)) {
        let (protocol, n) = (g.pick(&[6, 17, 58]), 8 + g.below(600));
        return b.data(protocol, &g.bytes(n)).build();
    }
    match g.below(3) {
        0 | 1 => transport(g, b),
        _ => b.icmp6(128, 0, g.u32()),
    }
    .build()
}

fn arp(g: &mut Gen) -> Frame {
    let (sha, spa, tpa) = (g.mac(), g.v4(), g.v4());
    match g.round % 4 {
        0 | 1 => FrameBuilder::eth(BROADCAST, sha).arp(ETHERTYPE_ARP, 1, (sha, spa), ([0; 6], tpa)),
        2 => {
            let tha = g.mac();
            FrameBuilder::eth(tha, sha).arp(ETHERTYPE_ARP, 2, (sha, spa), (tha, tpa))
        }
        // Gratuitous: asks for its own address.
        _ => FrameBuilder::eth(BROADCAST, sha).arp(ETHERTYPE_ARP, 1, (sha, spa), ([0; 6], spa)),
    }
    .build()
}

fn vlan(g: &mut Gen) -> Frame {
    const TAGS: &[&[u16]] = &[&[0x8100], &[0x88a8, 0x8100], &[0x8100], &[0x8100, 0x8100]];
    let mut b = eth(g);
    for &tpid in g.cycle(TAGS) {
        let any = g.u16_in(2, 4093);
        b = b.vlan(tpid, g.pick(&[1, 100, 100, 4094, any]));
    }
    if g.below(6) == 0 {
        let (sha, spa, tpa) = (g.mac(), g.v4(), g.v4());
        return b.arp(ETHERTYPE_ARP, 1, (sha, spa), ([0; 6], tpa)).build();
    }
    any_ip(g, b).build()
}

/// Frames that end early: caplen = wire_len, but a header says there is more.
fn truncated(g: &mut Gen) -> Frame {
    let ((sport, dport), flags) = (g.ports(), g.pick(TCP_FLAGS));
    let tcp = |b: FrameBuilder| b.tcp(sport, dport, flags);
    let (b, lo, hi, inside) = match g.round % 8 {
        0 => (tcp(eth_v4(g)), 14, 14, "right after the ethernet header"),
        1 => (tcp(eth_v4(g)), 15, 33, "inside the ipv4 header"),
        2 => (tcp(eth_v4(g)), 35, 53, "inside the tcp header"),
        3 => (eth_v4(g).udp(sport, dport), 35, 41, "inside the udp header"),
        4 => (tcp(eth_v6(g)), 15, 53, "inside the ipv6 header"),
        5 => (tcp(eth_v6(g)), 55, 73, "inside the tcp header"),
        6 => {
            let b = eth(g).vlan(0x8100, 100).ipv4(V4::new(g.v4(), g.v4()));
            (tcp(b), 19, 37, "inside the ipv4 header, behind a vlan tag")
        }
        _ => (
            tcp(eth_v6(g).ext6(0, 0)),
            55,
            61,
            "inside the hop-by-hop header",
        ),
    };
    let len = g.u16_in(lo, hi);
    b.build().cut(usize::from(len), inside)
}

/// Captures shorter than the frames on the wire (caplen < wire_len), at the usual snaplens and at
/// header boundaries.
fn snapped(g: &mut Gen) -> Frame {
    let caplen = g.cycle(&[14, 20, 34, 38, 42, 54, 58, 64, 68, 74, 96, 128]);
    let b = if g.below(4) == 0 {
        eth(g).vlan(0x8100, 100)
    } else {
        eth(g)
    };
    let tail = g.bytes(200);
    any_ip(g, b).payload(&tail).build().snap(caplen)
}

/// IPv4 headers with a version other than 4 or an IHL under 5, and IPv6 headers that are not.
fn bogus_ip(g: &mut Gen) -> Frame {
    // Version 0, 1, 5, 6, 7, 15; IHL 0 to 4.
    const V4_FIRST: &[u8] = &[
        0x05, 0x15, 0x55, 0x65, 0x75, 0xf5, 0x40, 0x41, 0x42, 0x43, 0x44,
    ];
    // An IPv4 header; version 0.
    const V6_FIRST: &[u8] = &[0x45, 0x05];
    let (b, first) = match g.round % 6 {
        5 => (eth_v6(g), g.pick(V6_FIRST)),
        _ => (eth_v4(g), g.cycle(V4_FIRST)),
    };
    let mut f = transport(g, b).build();
    f.bytes[14] = first; // the IP header's version and IHL
    f.what = format!("{} (first byte {first:#04x})", f.what);
    f
}

fn broadcast_multicast(g: &mut Gen) -> Frame {
    let (mac, host, client, payload) = (g.mac(), [192, 168, 1, g.byte()], g.client(), g.payload());
    let all_nodes = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1).octets();
    let mdns6 = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0xfb).octets();
    let b = match g.round % 10 {
        // DHCP discover and offer.
        0 => FrameBuilder::eth(BROADCAST, mac)
            .ipv4(V4::new([0; 4], [255; 4]))
            .udp(68, 67),
        1 => FrameBuilder::eth(BROADCAST, mac)
            .ipv4(V4::new([192, 168, 1, 1], [255; 4]))
            .udp(67, 68),
        // NetBIOS datagrams to the subnet's broadcast address.
        2 => FrameBuilder::eth(BROADCAST, mac)
            .ipv4(V4::new(host, [192, 168, 1, 255]))
            .udp(138, 138),
        3 => FrameBuilder::eth(multicast_mac([224, 0, 0, 251]), mac)
            .ipv4(V4::new(host, [224, 0, 0, 251]))
            .udp(5353, 5353),
        4 => FrameBuilder::eth(multicast_mac([239, 255, 255, 250]), mac)
            .ipv4(V4::new(host, [239, 255, 255, 250]))
            .udp(client, 1900),
        // A router advertisement to all nodes.
        5 => FrameBuilder::eth(multicast_mac6(all_nodes), mac)
            .ipv6(g.v6(), all_nodes)
            .icmp6(134, 0, 0x4000_0708),
        6 => FrameBuilder::eth(multicast_mac6(mdns6), mac)
            .ipv6(g.v6(), mdns6)
            .udp(5353, 5353),
        // The link and the network disagree.
        7 => FrameBuilder::eth(BROADCAST, mac)
            .ipv4(V4::new(g.v4(), [10, 0, 0, 5]))
            .tcp(client, 80, SYN),
        8 => eth(g).ipv4(V4::new(g.v4(), [224, 0, 0, 1])).icmp(8, 0, 1),
        _ => FrameBuilder::eth(BROADCAST, mac)
            .ipv4(V4::new(g.v4(), [0; 4]))
            .udp(client, 9),
    };
    b.payload(&payload).build()
}

fn other_link(g: &mut Gen) -> Frame {
    let (src, n) = (g.mac(), 20 + g.below(100));
    let payload = g.bytes(n);
    let b = match g.round % 6 {
        0 => FrameBuilder::eth([0x01, 0x80, 0xc2, 0, 0, 0x0e], src).ethertype(0x88cc),
        // Spanning tree: an 802.3 length, then LLC (DSAP and SSAP 0x42, UI).
        1 => FrameBuilder::eth([0x01, 0x80, 0xc2, 0, 0, 0], src)
            .ethertype(u16::try_from(3 + n).expect("short"))
            .payload(&[0x42, 0x42, 0x03])
            .note("llc stp"),
        // PPPoE discovery.
        2 => FrameBuilder::eth(BROADCAST, src).ethertype(0x8863),
        // A RARP reply: the target learns its address.
        3 => {
            let (server, tha) = (g.v4(), g.mac());
            FrameBuilder::eth(tha, src).arp(ETHERTYPE_RARP, 4, (src, server), (tha, g.v4()))
        }
        // EAPOL.
        4 => eth(g).ethertype(0x888e),
        // One MPLS label (bottom of stack), then IPv4.
        _ => eth(g)
            .ethertype(0x8847)
            .payload(&[0x00, 0x01, 0x01, 0x40])
            .note("mpls label 16")
            .ipv4(V4::new(g.v4(), g.v4()))
            .udp(g.client(), 53),
    };
    b.payload(&payload).build()
}

fn multicast_mac(group: [u8; 4]) -> Mac {
    [0x01, 0x00, 0x5e, group[1] & 0x7f, group[2], group[3]]
}

fn multicast_mac6(group: [u8; 16]) -> Mac {
    [0x33, 0x33, group[12], group[13], group[14], group[15]]
}

/// ff02::1:ffXX:XXXX, where a neighbour solicitation for `target` goes.
fn solicited_node(target: [u8; 16]) -> [u8; 16] {
    let mut group = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff00, 0).octets();
    group[13..].copy_from_slice(&target[13..]);
    group
}

fn flag_names(flags: u8) -> String {
    const NAMES: [&str; 8] = ["fin", "syn", "rst", "psh", "ack", "urg", "ece", "cwr"];
    let set: Vec<&str> = (0..8)
        .filter(|&i| flags & (1 << i) != 0)
        .map(|i| NAMES[i])
        .collect();
    if set.is_empty() {
        "none".to_string()
    } else {
        set.join("|")
    }
}

// ---------------------------------------------------------------------------------------------
// Randomness, addresses and ports.

/// The corpus's only source of variety: an xorshift64 with a fixed seed, and the round, which
/// [`Gen::cycle`] turns into every entry of a list whatever the draws.
struct Gen {
    state: u64,
    round: usize,
}

impl Gen {
    fn u64(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.state = x;
        x
    }

    fn u32(&mut self) -> u32 {
        (self.u64() >> 32) as u32
    }

    fn byte(&mut self) -> u8 {
        (self.u64() >> 56) as u8
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }

    fn below(&mut self, n: usize) -> usize {
        (self.u64() % n as u64) as usize
    }

    fn u16_in(&mut self, lo: u16, hi: u16) -> u16 {
        lo + (self.u64() % (u64::from(hi - lo) + 1)) as u16
    }

    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len())]
    }

    /// `xs[round % xs.len()]`: over the rounds every entry comes up.
    fn cycle<T: Copy>(&self, xs: &[T]) -> T {
        xs[self.round % xs.len()]
    }

    /// One in four 02:00:00:00:00:01, else another locally administered unicast address.
    fn mac(&mut self) -> Mac {
        match self.below(4) {
            0 => [0x02, 0, 0, 0, 0, 0x01],
            _ => [0x02, 0, 0, 0x10, self.byte(), self.byte()],
        }
    }

    /// 10.0.0.5, 10.1.2.3 and 192.168.1.0/24 often, else elsewhere in 10/8, 192.168/16,
    /// 172.16/12, or outside them all.
    fn v4(&mut self) -> [u8; 4] {
        let [a, b, c] = [self.byte(), self.byte(), self.byte()];
        match self.below(12) {
            0..=2 => [10, 0, 0, 5],
            3 | 4 => [10, 1, 2, 3],
            5..=7 => [192, 168, 1, c],
            8 => [10, a, b, c],
            9 => [192, 168, b, c],
            10 => [172, 16 | (a & 15), b, c],
            _ => self.pick(&[
                [172, 32, b, c],
                [203, 0, 113, c],
                [8, 8, 8, 8],
                [100, 64, b, c],
            ]),
        }
    }

    /// fd00::1 and fd00::2 often, else elsewhere in fd00::/64, in fd00::/16 but outside
    /// fd00::/64, link-local, or documentation space.
    fn v6(&mut self) -> [u8; 16] {
        let r = u16::from_be_bytes([self.byte(), self.byte()]);
        let segments = match self.below(8) {
            0..=2 => [0xfd00, 0, 0, 0, 0, 0, 0, 1],
            3 => [0xfd00, 0, 0, 0, 0, 0, 0, 2],
            4 => [0xfd00, 0, 0, 0, 0, 0, 0, r],
            5 => [0xfd00, r | 1, 0, 0, 0, 0, 0, 5],
            6 => [0xfe80, 0, 0, 0, 0x00ff, 0xfe00, 0, r],
            _ => [0x2001, 0xdb8, 0, 0, 0, 0, 0, r],
        };
        Ipv6Addr::from(segments).octets()
    }

    /// A well-known or registered port: 22, 53, 80, 443, 1000-2000, 8080, 9000, or any.
    fn service(&mut self) -> u16 {
        match self.below(12) {
            0 => 22,
            1 | 2 => 53,
            3 | 4 => 80,
            5 | 6 => 443,
            7 | 8 => self.u16_in(1000, 2000),
            9 => 8080,
            10 => 9000,
            _ => self.u16_in(1, 65_535),
        }
    }

    fn client(&mut self) -> u16 {
        self.u16_in(1024, 65_535)
    }

    /// (source, destination): a client and a service, in either order (a request or a reply).
    fn ports(&mut self) -> (u16, u16) {
        let (client, service) = (self.client(), self.service());
        if self.below(2) == 0 {
            (client, service)
        } else {
            (service, client)
        }
    }

    /// Empty, short, medium or long (up to 1,400 bytes), so `less` and `greater` split the corpus.
    fn payload(&mut self) -> Vec<u8> {
        let n = match self.below(8) {
            0 | 1 => 0,
            2 | 3 => self.below(40),
            4 | 5 => 40 + self.below(160),
            _ => 400 + self.below(1000),
        };
        self.bytes(n)
    }
}

// ---------------------------------------------------------------------------------------------
// The frame builder.

type Mac = [u8; 6];

/// An IPv4 header's variable fields.
#[derive(Clone, Copy)]
struct V4 {
    src: [u8; 4],
    dst: [u8; 4],
    /// Above 5, the extra words are options (a router alert, then no-ops).
    ihl: u8,
    /// Flags and fragment offset (in 8-byte units).
    frag: u16,
    ttl: u8,
}

impl V4 {
    /// No options, don't fragment, TTL 64.
    fn new(src: [u8; 4], dst: [u8; 4]) -> Self {
        Self {
            src,
            dst,
            ihl: 5,
            frag: 0x4000,
            ttl: 64,
        }
    }
}

/// Where the next layer names itself: the type field of the layer before it.
#[derive(Clone, Copy, Debug)]
enum Slot {
    Ethertype(usize),
    Protocol(usize),
    /// The layer before has no type field (TCP, UDP, ICMP, ...): what follows is its payload,
    /// e.g. the packet an ICMP error quotes.
    Nothing,
}

/// A frame built outermost layer first. Each layer writes its ethertype or protocol number into
/// the type field the layer before left open; the length fields are filled in by `build`.
struct FrameBuilder {
    bytes: Vec<u8>,
    slot: Slot,
    /// (where a 16-bit length field is, the offset it counts from).
    lengths: Vec<(usize, usize)>,
    what: Vec<String>,
}

impl FrameBuilder {
    fn eth(dst: Mac, src: Mac) -> Self {
        let mut b = Self {
            bytes: [dst, src].concat(),
            slot: Slot::Nothing,
            lengths: Vec::new(),
            what: Vec::new(),
        };
        b.open_ethertype();
        b
    }

    /// Writes this layer's number into the open type field, `ethertype` into an ethertype,
    /// `protocol` into an IP protocol or next header.
    fn name(&mut self, ethertype: Option<u16>, protocol: Option<u8>) {
        match (self.slot, ethertype, protocol) {
            (Slot::Ethertype(at), Some(t), _) => {
                self.bytes[at..at + 2].copy_from_slice(&t.to_be_bytes());
            }
            (Slot::Protocol(at), _, Some(p)) => self.bytes[at] = p,
            (Slot::Nothing, ..) => {}
            (slot, ..) => panic!("{ethertype:?}/{protocol:?} cannot follow {slot:?}"),
        }
    }

    fn open_ethertype(&mut self) {
        self.slot = Slot::Ethertype(self.bytes.len());
        self.bytes.extend([0, 0]);
    }

    fn vlan(mut self, tpid: u16, vid: u16) -> Self {
        self.name(Some(tpid), None);
        self.bytes.extend(vid.to_be_bytes());
        self.open_ethertype();
        self.what.push(match tpid {
            0x8100 => format!("vlan {vid}"),
            _ => format!("vlan {vid} (tpid {tpid:#06x})"),
        });
        self
    }

    /// A raw ethertype (or 802.3 length); what follows is payload.
    fn ethertype(mut self, ethertype: u16) -> Self {
        self.name(Some(ethertype), None);
        self.slot = Slot::Nothing;
        self.what.push(match ethertype {
            0..0x0600 => format!("802.3 length {ethertype}"),
            _ => format!("ethertype {ethertype:#06x}"),
        });
        self
    }

    fn ipv4(mut self, h: V4) -> Self {
        self.name(Some(0x0800), Some(4));
        let at = self.bytes.len();
        self.bytes.extend([0x40 | h.ihl, 0, 0, 0, 0x12, 0x34]);
        self.bytes.extend(h.frag.to_be_bytes());
        self.bytes.extend([h.ttl, 0, 0, 0]);
        self.bytes.extend(h.src.into_iter().chain(h.dst));
        let options = usize::from(h.ihl.saturating_sub(5)) * 4;
        self.bytes.extend(
            [0x94, 0x04, 0, 0]
                .into_iter()
                .chain(iter::repeat(1))
                .take(options),
        );
        self.slot = Slot::Protocol(at + 9);
        self.lengths.push((at + 2, at));
        let mut what = "ipv4".to_string();
        if h.ihl != 5 {
            what += &format!(" ihl {}", h.ihl);
        }
        if h.frag & 0x3fff != 0 {
            let more = if h.frag & 0x2000 != 0 { " mf" } else { "" };
            what += &format!(" fragment offset {}{more}", h.frag & 0x1fff);
        }
        self.what.push(what);
        self
    }

    fn ipv6(mut self, src: [u8; 16], dst: [u8; 16]) -> Self {
        self.name(Some(0x86dd), Some(41));
        let at = self.bytes.len();
        self.bytes.extend([0x60, 0, 0, 0, 0, 0, 0, 64]);
        self.bytes.extend(src.into_iter().chain(dst));
        self.slot = Slot::Protocol(at + 6);
        self.lengths.push((at + 4, at + 40));
        self.what.push("ipv6".to_string());
        self
    }

    /// Hop-by-hop options (0), routing (43) or destination options (60), `len8` 8-byte units
    /// past the first 8: options are one PadN, a routing header has no segments left.
    fn ext6(mut self, kind: u8, len8: u8) -> Self {
        self.name(None, Some(kind));
        let at = self.bytes.len();
        let size = (usize::from(len8) + 1) * 8;
        self.bytes.extend([0, len8]);
        match kind {
            43 => self.bytes.extend([4, 0]),
            _ => self
                .bytes
                .extend([1, u8::try_from(size - 4).expect("small")]),
        }
        self.bytes.resize(at + size, 0);
        self.slot = Slot::Protocol(at);
        self.what.push(
            match kind {
                0 => "hop-by-hop",
                43 => "routing",
                _ => "destination options",
            }
            .to_string(),
        );
        self
    }

    /// A fragment header, `offset` in 8-byte units.
    fn frag6(mut self, offset: u16, more: bool) -> Self {
        self.name(None, Some(44));
        let at = self.bytes.len();
        self.bytes.extend([0, 0]);
        self.bytes
            .extend((offset << 3 | u16::from(more)).to_be_bytes());
        self.bytes.extend(0x0bad_cafe_u32.to_be_bytes());
        self.slot = Slot::Protocol(at);
        let more = if more { " mf" } else { "" };
        self.what.push(format!("fragment offset {offset}{more}"));
        self
    }

    fn tcp(mut self, sport: u16, dport: u16, flags: u8) -> Self {
        self.name(None, Some(6));
        self.bytes
            .extend(sport.to_be_bytes().into_iter().chain(dport.to_be_bytes()));
        self.bytes.extend([
            0x01, 0x02, 0x03, 0x04, 0, 0, 0, 0, 0x50, flags, 0xfa, 0xf0, 0, 0, 0, 0,
        ]);
        self.slot = Slot::Nothing;
        self.what
            .push(format!("tcp {sport}>{dport} {}", flag_names(flags)));
        self
    }

    fn udp(mut self, sport: u16, dport: u16) -> Self {
        self.name(None, Some(17));
        let at = self.bytes.len();
        self.bytes
            .extend(sport.to_be_bytes().into_iter().chain(dport.to_be_bytes()));
        self.bytes.extend([0, 0, 0, 0]);
        self.slot = Slot::Nothing;
        self.lengths.push((at + 4, at));
        self.what.push(format!("udp {sport}>{dport}"));
        self
    }

    /// ICMP: type, code, and the header's last four bytes (identifier and sequence, or unused).
    fn icmp(self, ty: u8, code: u8, rest: u32) -> Self {
        self.icmp_header(1, "icmp", [ty, code], rest)
    }

    fn icmp6(self, ty: u8, code: u8, rest: u32) -> Self {
        self.icmp_header(58, "icmp6", [ty, code], rest)
    }

    fn icmp_header(self, protocol: u8, name: &str, [ty, code]: [u8; 2], rest: u32) -> Self {
        let header = [[ty, code, 0, 0], rest.to_be_bytes()].concat();
        self.l4(protocol, &header, &format!("{name} {ty}/{code}"))
    }

    /// Any other IP payload: its protocol number and header bytes.
    fn l4(mut self, protocol: u8, header: &[u8], what: &str) -> Self {
        self.name(None, Some(protocol));
        self.bytes.extend(header);
        self.slot = Slot::Nothing;
        self.what.push(what.to_string());
        self
    }

    /// A later fragment's share of a `protocol` packet: data, no header.
    fn data(self, protocol: u8, bytes: &[u8]) -> Self {
        let name = match protocol {
            6 => "tcp",
            17 => "udp",
            _ => "icmp6",
        };
        self.l4(protocol, &[], &format!("{name} data"))
            .payload(bytes)
    }

    /// GRE without options; the ethertype of what it carries is left open.
    fn gre(mut self) -> Self {
        self.name(None, Some(47));
        self.bytes.extend([0, 0]);
        self.open_ethertype();
        self.what.push("gre".to_string());
        self
    }

    /// ARP or RARP (`ethertype`) for IPv4 over Ethernet: operation, (sender MAC, sender IP),
    /// (target MAC, target IP).
    fn arp(
        mut self,
        ethertype: u16,
        op: u16,
        sender: (Mac, [u8; 4]),
        target: (Mac, [u8; 4]),
    ) -> Self {
        self.name(Some(ethertype), None);
        self.bytes.extend([0, 1, 0x08, 0x00, 6, 4]);
        self.bytes.extend(op.to_be_bytes());
        for (mac, ip) in [sender, target] {
            self.bytes.extend(mac.into_iter().chain(ip));
        }
        self.slot = Slot::Nothing;
        let name = if ethertype == ETHERTYPE_RARP {
            "rarp"
        } else {
            "arp"
        };
        let op_name = if op % 2 == 1 { "request" } else { "reply" };
        self.what.push(format!("{name} {op_name}"));
        self
    }

    /// Says what the bytes that follow are, where no layer method does.
    fn note(mut self, what: &str) -> Self {
        self.what.push(what.to_string());
        self
    }

    fn payload(mut self, bytes: &[u8]) -> Self {
        self.bytes.extend(bytes);
        self
    }

    fn build(mut self) -> Frame {
        let len = self.bytes.len();
        for (at, from) in self.lengths {
            let value = u16::try_from(len - from).expect("frames fit 16-bit lengths");
            self.bytes[at..at + 2].copy_from_slice(&value.to_be_bytes());
        }
        assert!(len >= MIN_LEN, "{len}-byte frame: {:?}", self.what);
        Frame {
            wire_len: u32::try_from(len).expect("frames are short"),
            bytes: self.bytes,
            what: self.what.join(" + "),
        }
    }
}

impl Frame {
    /// The frame itself ends at `len` (caplen = wire_len): the headers promise more than there is.
    fn cut(mut self, len: usize, inside: &str) -> Self {
        assert!(
            (MIN_LEN..self.bytes.len()).contains(&len),
            "cut at {len}: {}",
            self.what
        );
        self.what = format!(
            "{} (cut at {len} of {}, {inside})",
            self.what,
            self.bytes.len()
        );
        self.bytes.truncate(len);
        self.wire_len = u32::try_from(len).expect("frames are short");
        self
    }

    /// Only the first `caplen` bytes captured; the wire length stays.
    fn snap(mut self, caplen: usize) -> Self {
        assert!(
            (MIN_LEN..self.bytes.len()).contains(&caplen),
            "snap at {caplen}: {}",
            self.what
        );
        self.what = format!("{} (snapped to {caplen} of {})", self.what, self.wire_len);
        self.bytes.truncate(caplen);
        self
    }
}

/// The corpus checked against itself and against tcpdump. They need tcpdump, not root.
mod selfcheck {
    use std::{
        collections::{BTreeMap, BTreeSet},
        path::PathBuf,
        process::Command,
    };

    use tracer::capture::testframes::TempDir;

    use super::{frames, tcpdump_verdicts, write_pcap, Frame, EXPRESSIONS, MIN_LEN};

    /// tcpdump is the reference: without it nothing here can be checked (a loud skip, a failure
    /// under CI).
    fn tcpdump_or_skip(test: &str) -> bool {
        let missing = Command::new("tcpdump").arg("--version").output().is_err();
        crate::support::gate(
            test,
            missing.then(|| "tcpdump is not installed (apt-get install tcpdump)".to_string()),
        )
    }

    /// The corpus, and the pcap of it in a directory removed on drop.
    fn corpus_pcap(name: &str) -> (TempDir, PathBuf, Vec<Frame>) {
        let (dir, frames) = (TempDir::new(name), frames());
        let path = dir.path("corpus.pcap");
        write_pcap(&path, &frames).expect("write the corpus pcap");
        (dir, path, frames)
    }

    #[test]
    fn frames_are_many_long_enough_and_the_same_every_time() {
        let frames = frames();
        assert!(frames.len() >= 2_000, "only {} frames", frames.len());
        for (i, f) in frames.iter().enumerate() {
            assert!(
                f.bytes.len() >= MIN_LEN,
                "frame {i} is {} bytes: {}",
                f.bytes.len(),
                f.what
            );
            assert!(
                f.wire_len as usize >= f.bytes.len(),
                "frame {i}: caplen > len: {}",
                f.what
            );
        }
        let again = super::frames();
        assert!(frames
            .iter()
            .zip(&again)
            .all(|(a, b)| a.bytes == b.bytes && a.what == b.what));
        let mut kinds = BTreeMap::<&str, usize>::new();
        for f in &frames {
            *kinds
                .entry(f.what.split(':').next().unwrap_or(""))
                .or_default() += 1;
        }
        let snapped = frames
            .iter()
            .filter(|f| f.wire_len as usize > f.bytes.len())
            .count();
        eprintln!(
            "{} frames, {snapped} with caplen < len: {kinds:#?}",
            frames.len()
        );
    }

    #[test]
    fn tcpdump_reads_every_frame_back() {
        if !tcpdump_or_skip("tcpdump_reads_every_frame_back") {
            return;
        }
        let (_dir, path, frames) = corpus_pcap("corpus-read");
        let out = Command::new("tcpdump")
            .args(["-n", "-tt", "-r"])
            .arg(&path)
            .output()
            .expect("run tcpdump");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "tcpdump -r failed: {stderr}");
        // One line per packet, each starting with its timestamp: the frame's index.
        let seconds: Vec<usize> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|line| {
                line.split_once(".000000 ")
                    .and_then(|(s, _)| s.parse().ok())
                    .unwrap_or_else(|| panic!("not a packet line: {line:?}"))
            })
            .collect();
        assert_eq!(seconds, (0..frames.len()).collect::<Vec<_>>());
    }

    #[test]
    fn every_expression_compiles() {
        if !tcpdump_or_skip("every_expression_compiles") {
            return;
        }
        assert!(
            EXPRESSIONS.len() >= 60,
            "only {} expressions",
            EXPRESSIONS.len()
        );
        let unique: BTreeSet<_> = EXPRESSIONS.iter().collect();
        assert_eq!(
            unique.len(),
            EXPRESSIONS.len(),
            "an expression is listed twice"
        );
        for expr in EXPRESSIONS {
            let out = Command::new("tcpdump")
                .args(["-d", "-y", "EN10MB", "--", expr])
                .output()
                .expect("run tcpdump");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{expr:?} does not compile: {stderr}");
        }
    }

    #[test]
    fn every_expression_matches_some_frames_and_rejects_others() {
        if !tcpdump_or_skip("every_expression_matches_some_frames_and_rejects_others") {
            return;
        }
        let (_dir, path, frames) = corpus_pcap("corpus-discriminates");
        let n = frames.len();
        let mut table = String::new();
        let mut useless = Vec::new();
        for expr in EXPRESSIONS {
            let matched = tcpdump_verdicts(&path, expr, n)
                .iter()
                .filter(|&&v| v)
                .count();
            table += &format!("{matched:>5} / {n}  {expr}\n");
            if matched == 0 || matched == n {
                useless.push(*expr);
            }
        }
        eprintln!("expression → frames tcpdump matches:\n{table}");
        assert!(
            useless.is_empty(),
            "these do not discriminate: {useless:?}\n{table}"
        );
    }

    /// What a frame should make of an expression, worked out by hand.
    type Predicate = fn(&Frame) -> bool;

    /// `host 10.0.0.5` as libpcap compiles it: IPv4 source or destination, ARP and RARP sender or
    /// target, each only when captured (a load past the capture rejects the frame).
    fn host_10_0_0_5(f: &Frame) -> bool {
        let at = |i: usize| f.bytes.get(i..i + 4) == Some(&[10, 0, 0, 5][..]);
        match f.bytes[12..14] {
            [0x08, 0x00] => at(26) || at(30),
            [0x08, 0x06] | [0x80, 0x35] => at(28) || at(38),
            _ => false,
        }
    }

    #[test]
    fn verdicts_agree_with_hand_counts() {
        if !tcpdump_or_skip("verdicts_agree_with_hand_counts") {
            return;
        }
        let (_dir, path, frames) = corpus_pcap("corpus-hand");
        let by_hand: &[(&str, Predicate)] = &[
            ("ether proto 0x0806", |f| f.bytes[12..14] == [0x08, 0x06]),
            ("ether[0] & 1 != 0", |f| f.bytes[0] & 1 != 0),
            ("vlan", |f| {
                matches!(f.bytes[12..14], [0x81, 0] | [0x88, 0xa8] | [0x91, 0])
            }),
            ("less 100", |f| f.wire_len <= 100),
            ("greater 500", |f| f.wire_len >= 500),
            ("host 10.0.0.5", host_10_0_0_5),
        ];
        for (expr, predicate) in by_hand {
            let tcpdump = tcpdump_verdicts(&path, expr, frames.len());
            let wrong: Vec<String> = frames
                .iter()
                .zip(&tcpdump)
                .enumerate()
                .filter(|(_, (f, &v))| predicate(f) != v)
                .map(|(i, (f, v))| format!("frame {i} ({}): tcpdump says {v}", f.what))
                .collect();
            let matched = tcpdump.iter().filter(|&&v| v).count();
            assert!(
                wrong.is_empty(),
                "{expr:?}: {} disagree:\n{}",
                wrong.len(),
                wrong.join("\n")
            );
            eprintln!(
                "{expr:?}: tcpdump and the hand count agree on {matched} of {}",
                frames.len()
            );
        }
    }
}
