//! Privileged: drop reasons end to end. Two network namespaces of our own joined by a veth; the
//! receiver's interface is traced at ingress; an iptables rule in the receiver drops UDP to one
//! port. Every traced datagram to that port must come back as a drop with the kernel's reason
//! `NETFILTER_DROP` and the packet's own fingerprint; datagrams to a port with a listening socket
//! (freed as consumed, not dropped) must not.
//!
//! Needs root and the kernel object (PATHTRACE_BUILD_EBPF=1). Without them the test prints a loud
//! notice and passes, except under CI (`CI` set), where it fails.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

use tracer::{
    attach::{AttachTarget, DropSupport, LoadOptions, TcMode, Tracer, DROP_PROGRAM},
    collect::{decode, Event},
    discover::netns::Netns,
    model::{Direction, DropRecord, Hook, Place, Role},
};
use tracer_common::config::FilterConfig;

const DROPPED_PORT: u16 = 40999;
const OPEN_PORT: u16 = 41000;
const DATAGRAMS: usize = 5;

/// Runs a command; panics with its stderr when it fails.
fn run(args: &[&str]) {
    crate::support::lab::sh(args[0], &args[1..]);
}

/// Two namespaces and the veth between them, named after this process; removed on drop (the
/// veth and the iptables rules go with the namespaces).
struct Pair {
    sender: String,
    receiver: String,
    /// The receiver's end of the veth.
    rx_if: String,
    rx_addr: Ipv4Addr,
}

impl Pair {
    fn up() -> Self {
        let id = std::process::id() % 100_000;
        let pair = Self {
            sender: format!("ptdrop{id}s"),
            receiver: format!("ptdrop{id}r"),
            rx_if: format!("ptd{id}r"),
            rx_addr: Ipv4Addr::new(10, 254, 77, 2),
        };
        let tx_if = format!("ptd{id}s");
        // Built as the guard first, so whatever fails below is still cleaned up.
        run(&["ip", "netns", "add", &pair.sender]);
        run(&["ip", "netns", "add", &pair.receiver]);
        let (s, r) = (pair.sender.as_str(), pair.receiver.as_str());
        run(&[
            "ip",
            "-n",
            s,
            "link",
            "add",
            &tx_if,
            "type",
            "veth",
            "peer",
            "name",
            &pair.rx_if,
            "netns",
            r,
        ]);
        run(&[
            "ip",
            "-n",
            s,
            "addr",
            "add",
            "10.254.77.1/30",
            "dev",
            &tx_if,
        ]);
        run(&[
            "ip",
            "-n",
            r,
            "addr",
            "add",
            "10.254.77.2/30",
            "dev",
            &pair.rx_if,
        ]);
        for (ns, dev) in [(s, tx_if.as_str()), (r, pair.rx_if.as_str())] {
            run(&["ip", "-n", ns, "link", "set", "lo", "up"]);
            run(&["ip", "-n", ns, "link", "set", dev, "up"]);
        }
        run(&[
            "ip",
            "netns",
            "exec",
            r,
            "iptables",
            "-A",
            "INPUT",
            "-p",
            "udp",
            "--dport",
            &DROPPED_PORT.to_string(),
            "-j",
            "DROP",
        ]);
        pair
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for ns in [&self.sender, &self.receiver] {
            match Command::new("ip").args(["netns", "del", ns]).status() {
                Ok(s) if s.success() => {}
                other => eprintln!("removing netns {ns}: {other:?}"),
            }
        }
    }
}

fn our_drop_programs() -> usize {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| p.name_as_str() == Some(DROP_PROGRAM))
        .count()
}

#[test]
fn netfilter_drops_of_traced_packets_come_back_with_their_reason() {
    if !crate::support::privileged("drops") {
        return;
    }
    let pair = Pair::up();
    let rx_ns = Arc::new(Netns::by_name_or_path(&pair.receiver).expect("receiver netns"));
    let tx_ns = Netns::by_name_or_path(&pair.sender).expect("sender netns");
    let ifindex = rx_ns
        .run(|| nix::net::if_::if_nametoindex(pair.rx_if.as_str()))
        .expect("enter receiver netns")
        .expect("receiver ifindex");

    let opts = LoadOptions {
        filter: FilterConfig::NONE,
        ring_bytes: 1 << 20,
        kernel_log: false,
        drop_reasons: true,
        mode: tracer_common::config::ModeConfig::EVERY_PACKET,
        expression: None,
    };
    let mut tracer = Tracer::load(&opts, TcMode::Auto).expect("load kernel object");
    let namer = match tracer.enable_drop_reasons().expect("enable drop reasons") {
        DropSupport::Enabled(namer) => namer,
        DropSupport::Unavailable(why) => panic!("drop reasons unavailable on this kernel: {why}"),
    };
    assert_eq!(our_drop_programs(), 1, "{DROP_PROGRAM} is not loaded");
    if let Some(info) = tracer
        .ebpf_mut()
        .program(DROP_PROGRAM)
        .and_then(|p| p.info().ok())
    {
        eprintln!(
            "drops: {DROP_PROGRAM} verified {:?} instructions, {:?} bytes translated",
            info.verified_instruction_count(),
            info.size_translated()
        );
    }
    let nf_drop = (0..1024)
        .find(|&r| tracer.reason_name(r).as_deref() == Some("NETFILTER_DROP"))
        .expect("NETFILTER_DROP in the kernel's BTF");
    tracer
        .attach(AttachTarget {
            hook: Hook {
                slot: 0,
                ns_label: pair.receiver.clone(),
                ifname: pair.rx_if.clone(),
                ifindex,
                direction: Direction::Ingress,
                place: Place::Container,
                role: Role::All,
            },
            netns: rx_ns.clone(),
        })
        .expect("attach at the receiver's ingress");
    let mut ring = tracer.take_events().expect("ring buffer");

    // A listener on the open port, so those datagrams are consumed rather than dropped.
    let listener = rx_ns
        .run(|| UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, OPEN_PORT)))
        .expect("enter receiver netns")
        .expect("bind listener");
    let sender = tx_ns
        .run(|| UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)))
        .expect("enter sender netns")
        .expect("bind sender");
    for i in 0..DATAGRAMS {
        for port in [DROPPED_PORT, OPEN_PORT] {
            let payload = format!("pathtrace drop test {port} #{i}");
            sender
                .send_to(payload.as_bytes(), SocketAddrV4::new(pair.rx_addr, port))
                .expect("send");
        }
    }

    // Packets seen at the hook (fingerprint -> destination port) and drops.
    let mut packets: BTreeMap<u64, u16> = BTreeMap::new();
    let mut drops: Vec<DropRecord> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let mut batch = Vec::new();
        while let Some(item) = ring.next() {
            batch.push(decode(&item).expect("decodable event"));
        }
        namer.fill_events(&mut batch);
        for ev in batch {
            match ev {
                Event::Packet(p) if p.dst.port == DROPPED_PORT || p.dst.port == OPEN_PORT => {
                    packets.insert(p.fingerprint, p.dst.port);
                }
                Event::Packet(_) | Event::Counts(_) => {}
                Event::Drop(d) => drops.push(d),
            }
        }
        let dropped_seen = drops
            .iter()
            .filter(|d| packets.get(&d.fingerprint) == Some(&DROPPED_PORT))
            .count();
        if packets.len() >= 2 * DATAGRAMS && dropped_seen >= DATAGRAMS {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut buf = [0u8; 128];
    listener
        .set_read_timeout(Some(Duration::from_secs(1)))
        .expect("timeout");
    listener.recv(&mut buf).expect("the open port received");

    let traced_dropped: BTreeSet<u64> = packets
        .iter()
        .filter(|(_, &port)| port == DROPPED_PORT)
        .map(|(&fp, _)| fp)
        .collect();
    let traced_open: BTreeSet<u64> = packets
        .iter()
        .filter(|(_, &port)| port == OPEN_PORT)
        .map(|(&fp, _)| fp)
        .collect();
    assert_eq!(
        traced_dropped.len(),
        DATAGRAMS,
        "traced datagrams to the dropped port"
    );
    assert_eq!(
        traced_open.len(),
        DATAGRAMS,
        "traced datagrams to the open port"
    );
    let dropped: BTreeSet<u64> = drops
        .iter()
        .filter(|d| traced_dropped.contains(&d.fingerprint))
        .map(|d| d.fingerprint)
        .collect();
    assert_eq!(
        dropped, traced_dropped,
        "a drop for every traced datagram; drops: {drops:#?}"
    );
    for d in drops
        .iter()
        .filter(|d| traced_dropped.contains(&d.fingerprint))
    {
        assert_eq!(d.reason, nf_drop, "{d:?}");
        assert_eq!(d.reason_name.as_deref(), Some("NETFILTER_DROP"), "{d:?}");
    }
    assert!(
        drops.iter().all(|d| !traced_open.contains(&d.fingerprint)),
        "a datagram that reached its socket was reported dropped: {drops:#?}"
    );
    let counters = tracer.drop_counters().expect("drop counters");
    assert!(counters.emitted >= DATAGRAMS as u64, "{counters:?}");
    eprintln!(
        "drops: {} traced datagrams dropped with NETFILTER_DROP ({nf_drop}); drop program {counters:?}",
        dropped.len()
    );

    drop(ring);
    drop(tracer);
    // The kernel frees a detached tracing program after an RCU grace period: allow a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    while our_drop_programs() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        our_drop_programs(),
        0,
        "{DROP_PROGRAM} still loaded after the tracer went"
    );
    drop(pair);
}
