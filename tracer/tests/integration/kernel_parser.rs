//! The kernel parser, run by the kernel itself (`BPF_PROG_TEST_RUN` through aya's `test_run`) on
//! crafted and malformed frames. For every frame: the verdict is pass-through (`TC_ACT_UNSPEC`),
//! the frame comes out unmodified, and the event (if any) carries exactly what the shared parser
//! computes in userspace — no event for frames that are not IP, never a wrong one.

use aya::programs::{TestRun, TestRunOptions};
use tracer::{
    attach::{LoadOptions, TcMode, Tracer},
    collect::{decode, Event},
    model::{Direction, Hook, Place, Role},
};
use tracer_common::{config::FilterConfig, event::PacketEvent, parse::parse};

mod frames {
    //! Frame builders: Ethernet, optional VLAN tag, IPv4/IPv6, transport.

    pub(super) fn eth(ethertype: u16, vlan: bool) -> Vec<u8> {
        let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
        if vlan {
            f.extend_from_slice(&0x8100u16.to_be_bytes());
            f.extend_from_slice(&0x0064u16.to_be_bytes());
        }
        f.extend_from_slice(&ethertype.to_be_bytes());
        f
    }

    pub(super) fn ipv4(proto: u8, l4: &[u8], options: &[u8]) -> Vec<u8> {
        assert!(options.len().is_multiple_of(4));
        let ihl = 5 + options.len() / 4;
        let total = (ihl * 4 + l4.len()) as u16;
        let mut h = vec![(4 << 4) | ihl as u8, 0];
        h.extend_from_slice(&total.to_be_bytes());
        h.extend_from_slice(&0x1234u16.to_be_bytes()); // id
        h.extend_from_slice(&0x4000u16.to_be_bytes()); // DF
        h.extend_from_slice(&[64, proto, 0, 0]);
        h.extend_from_slice(&[10, 200, 1, 2]);
        h.extend_from_slice(&[10, 200, 2, 2]);
        h.extend_from_slice(options);
        h.extend_from_slice(l4);
        h
    }

    pub(super) fn ipv6(next: u8, rest: &[u8]) -> Vec<u8> {
        let mut h = vec![0x60, 0, 0, 0];
        h.extend_from_slice(&(rest.len() as u16).to_be_bytes());
        h.extend_from_slice(&[next, 64]);
        h.extend_from_slice(&"fd00::2".parse::<std::net::Ipv6Addr>().unwrap().octets());
        h.extend_from_slice(&"fd00:1::2".parse::<std::net::Ipv6Addr>().unwrap().octets());
        h.extend_from_slice(rest);
        h
    }

    pub(super) fn tcp() -> Vec<u8> {
        let mut t = Vec::new();
        t.extend_from_slice(&41234u16.to_be_bytes());
        t.extend_from_slice(&8080u16.to_be_bytes());
        t.extend_from_slice(&0x0102_0304u32.to_be_bytes());
        t.extend_from_slice(&0x0506_0708u32.to_be_bytes());
        t.extend_from_slice(&[0x50, 0x18, 0xfa, 0xf0, 0, 0, 0, 0]);
        t.extend_from_slice(b"hello");
        t
    }

    pub(super) fn udp() -> Vec<u8> {
        let payload = b"ping-payload-123";
        let mut u = Vec::new();
        u.extend_from_slice(&5353u16.to_be_bytes());
        u.extend_from_slice(&53u16.to_be_bytes());
        u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        u.extend_from_slice(&[0, 0]);
        u.extend_from_slice(payload);
        u
    }

    pub(super) fn icmp_echo(ty: u8) -> Vec<u8> {
        let mut i = vec![ty, 0, 0, 0];
        i.extend_from_slice(&0x4242u16.to_be_bytes());
        i.extend_from_slice(&7u16.to_be_bytes());
        i.extend_from_slice(b"timestmp-and-more");
        i
    }

    /// A generic extension header of 8 bytes.
    pub(super) fn ext(next: u8) -> Vec<u8> {
        vec![next, 0, 1, 4, 0, 0, 0, 0]
    }
}

/// All the well-formed frames, with a name for failure messages.
fn good_frames() -> Vec<(&'static str, Vec<u8>)> {
    use frames::*;
    let cat = |a: Vec<u8>, b: Vec<u8>| [a, b].concat();
    vec![
        ("ipv4 tcp", cat(eth(0x0800, false), ipv4(6, &tcp(), &[]))),
        ("ipv4 udp", cat(eth(0x0800, false), ipv4(17, &udp(), &[]))),
        (
            "ipv4 icmp echo",
            cat(eth(0x0800, false), ipv4(1, &icmp_echo(8), &[])),
        ),
        (
            "ipv4 icmp other",
            cat(eth(0x0800, false), ipv4(1, &[3, 1, 0, 0, 0, 0, 0, 0], &[])),
        ),
        (
            "vlan ipv4 tcp",
            cat(eth(0x0800, true), ipv4(6, &tcp(), &[])),
        ),
        (
            "ipv4 options udp",
            cat(
                eth(0x0800, false),
                ipv4(17, &udp(), &[1, 1, 1, 0, 7, 7, 4, 0]),
            ),
        ),
        ("ipv6 tcp", cat(eth(0x86dd, false), ipv6(6, &tcp()))),
        (
            "ipv6 hbh+dstopts udp",
            cat(
                eth(0x86dd, false),
                ipv6(0, &[ext(60), ext(17), udp()].concat()),
            ),
        ),
        (
            "ipv6 routing tcp",
            cat(eth(0x86dd, false), ipv6(43, &[ext(6), tcp()].concat())),
        ),
        (
            "ipv6 fragment first",
            cat(
                eth(0x86dd, false),
                ipv6(44, &[vec![17, 0, 0, 1, 0, 0, 0, 9], udp()].concat()),
            ),
        ),
        (
            "ipv6 fragment later",
            cat(
                eth(0x86dd, false),
                ipv6(44, &[vec![17, 0, 0x05, 0x01, 0, 0, 0, 9], udp()].concat()),
            ),
        ),
        (
            "icmpv6 echo",
            cat(eth(0x86dd, false), ipv6(58, &icmp_echo(128))),
        ),
        ("vlan ipv6 udp", cat(eth(0x86dd, true), ipv6(17, &udp()))),
        ("arp", cat(eth(0x0806, false), vec![0; 28])),
    ]
}

fn load() -> (Tracer, u8) {
    let opts = LoadOptions {
        filter: FilterConfig {
            snaplen: 256,
            ..FilterConfig::NONE
        },
        ring_bytes: 1 << 20,
        kernel_log: false,
        drop_reasons: false,
        mode: tracer_common::config::ModeConfig::EVERY_PACKET,
        expression: None,
    };
    let mut tracer = Tracer::load(&opts, TcMode::Auto).expect("load kernel object");
    let hook = Hook {
        slot: 5,
        ns_label: "test".into(),
        ifname: "lo".into(),
        ifindex: 1,
        direction: Direction::Egress,
        place: Place::Container,
        role: Role::All,
    };
    tracer.prepare_slot(&hook).expect("prepare slot");
    (tracer, hook.slot)
}

/// Ethernet + VLAN tag + IPv6 header: below this the kernel may refuse a test run.
const MIN_RUNNABLE: usize = 14 + 4 + 40;

/// Runs the slot's program on `frame`; returns the verdict, or None when the kernel refused to
/// run it (frames of at most an Ethernet header).
fn run(tracer: &mut Tracer, slot: u8, frame: &[u8]) -> Option<i32> {
    let prog = tracer
        .prepare_slot(&Hook {
            slot,
            ns_label: "test".into(),
            ifname: "lo".into(),
            ifindex: 1,
            direction: Direction::Egress,
            place: Place::Container,
            role: Role::All,
        })
        .expect("slot");
    let mut out = vec![0u8; frame.len() + 64];
    let opts = TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        ..TestRunOptions::default()
    };
    match prog.test_run(opts) {
        Ok(res) => {
            assert_eq!(
                &out[..res.data_size_out as usize],
                frame,
                "the program modified the frame"
            );
            Some(res.return_value as i32)
        }
        // The kernel refuses (EINVAL) to build a test skb from a frame whose L3 header is cut
        // short (it inspects the IP header itself): nothing of ours ran, so nothing to check.
        // Longer truncations (inside the transport header and beyond) do run and are checked.
        Err(_) if frame.len() < MIN_RUNNABLE => None,
        Err(e) => panic!(
            "test_run failed on a {}-byte frame: {e} ({:?})",
            frame.len(),
            std::error::Error::source(&e)
        ),
    }
}

/// Checks one frame; returns whether the kernel ran the program on it.
fn check_frame(
    tracer: &mut Tracer,
    ring: &mut aya::maps::RingBuf<aya::maps::MapData>,
    slot: u8,
    name: &str,
    frame: &[u8],
) -> bool {
    let Some(verdict) = run(tracer, slot, frame) else {
        assert!(
            ring.next().is_none(),
            "{name}: event for a frame the kernel refused"
        );
        return false;
    };
    assert_eq!(
        verdict, -1,
        "{name}: verdict must be TC_ACT_UNSPEC (pass-through)"
    );
    let want = parse(frame);
    let event = ring.next().map(|item| item.to_vec());
    match (want.family, event) {
        (0, None) => {}
        (0, Some(_)) => panic!(
            "{name} ({} bytes): event for a frame that is not IP",
            frame.len()
        ),
        (_, None) => panic!("{name} ({} bytes): no event for an IP frame", frame.len()),
        (_, Some(raw)) => {
            assert!(raw.len() >= size_of::<PacketEvent>());
            // SAFETY: length checked; plain old data.
            let ev: PacketEvent = unsafe { std::ptr::read_unaligned(raw.as_ptr().cast()) };
            assert_eq!(
                ev.meta,
                want,
                "{name} ({} bytes): kernel and userspace parsers disagree",
                frame.len()
            );
            assert_eq!(ev.header.hook, slot);
            assert_eq!(ev.pkt_len as usize, frame.len());
            assert_eq!(
                &ev.data[..ev.cap_len as usize],
                &frame[..frame.len().min(256)]
            );
            let Ok(Event::Packet(rec)) = decode(&raw) else {
                panic!("{name}: event does not decode");
            };
            assert_eq!(rec.fingerprint, want.fingerprint);
        }
    }
    assert!(
        ring.next().is_none(),
        "{name}: more than one event for one frame"
    );
    true
}

#[test]
fn kernel_parser_matches_userspace_on_crafted_and_malformed_frames() {
    if !crate::support::privileged("kernel_parser") {
        return;
    }
    let (mut tracer, slot) = load();
    let mut ring = tracer.take_events().expect("ring buffer");
    let (mut ran, mut refused) = (0, 0);
    for (name, frame) in good_frames() {
        assert!(
            check_frame(&mut tracer, &mut ring, slot, name, &frame),
            "{name}: kernel refused a whole frame"
        );
        // Truncated at every length: never a wrong event, always pass-through.
        for len in 0..frame.len() {
            if check_frame(&mut tracer, &mut ring, slot, name, &frame[..len]) {
                ran += 1;
            } else {
                refused += 1;
            }
        }
    }
    // Bogus IHL (< 5), wrong IP version, IHL pointing past the end.
    let mut bogus_ihl = [
        frames::eth(0x0800, false),
        frames::ipv4(6, &frames::tcp(), &[]),
    ]
    .concat();
    bogus_ihl[14] = 0x43;
    check_frame(&mut tracer, &mut ring, slot, "bogus ihl", &bogus_ihl);
    let mut wrong_version = bogus_ihl.clone();
    wrong_version[14] = 0x65;
    check_frame(
        &mut tracer,
        &mut ring,
        slot,
        "ipv4 ethertype, version 6",
        &wrong_version,
    );
    let mut long_ihl = bogus_ihl.clone();
    long_ihl[14] = 0x4f;
    check_frame(&mut tracer, &mut ring, slot, "ihl past the end", &long_ihl);
    eprintln!("kernel_parser: {} whole frames, {ran} truncations run, {refused} refused by the kernel, 3 malformed", good_frames().len());
    assert!(ran > 200, "too few truncated frames were run ({ran})");
}
