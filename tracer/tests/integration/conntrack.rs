//! Privileged: conntrack lookups and the NAT ruleset snapshot against the kernel, over a topology
//! this test builds in namespaces of its own (client -- router -- server, MASQUERADE in the router).
//! Traffic goes only between those namespaces. Skipped loudly when not root; fails then under CI.

use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use nix::sys::{
    socket::{
        bind, getsockname, recv, sendto, setsockopt, socket, sockopt::ReceiveTimeout,
        AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, SockaddrIn,
    },
    time::TimeVal,
};
use tracer::{
    discover::{conntrack, nat_rules, netns::Netns},
    model::{Endpoint, NatKind, NatQuery, NatStep, Proto, RuleAttributor},
};

use crate::support::root_or_skip;

const CLIENT_IP: &str = "10.251.1.2";
const ROUTER_CLIENT_SIDE: &str = "10.251.1.1";
const ROUTER_SERVER_SIDE: &str = "10.251.2.1";
const SERVER_IP: &str = "10.251.2.2";
const MASQUERADE: &str = "-A POSTROUTING -s 10.251.1.0/24 -o r1 -j MASQUERADE";
const TIMEOUT: Duration = Duration::from_secs(5);

fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs a command inside a namespace made by this test.
fn sh_in(ns: &str, args: &[&str]) {
    sh(&[&["ip", "netns", "exec", ns], args].concat());
}

/// Three namespaces of unique names; dropping the guard deletes them (and so their veths, routes
/// and rules), also when the test fails.
struct Lab {
    client: String,
    router: String,
    server: String,
}

impl Lab {
    fn build() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let base = format!(
            "ptct-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let lab = Self {
            client: format!("{base}-c"),
            router: format!("{base}-r"),
            server: format!("{base}-s"),
        };
        // Each namespace is deleted by Drop, whatever step below fails.
        for ns in lab.names() {
            sh(&["ip", "netns", "add", ns]);
        }
        let (c, r, s) = (&lab.client, &lab.router, &lab.server);
        // Both ends are created directly inside the namespaces: nothing appears on the host.
        sh(&[
            "ip", "link", "add", "c0", "netns", c, "type", "veth", "peer", "name", "r0", "netns", r,
        ]);
        sh(&[
            "ip", "link", "add", "r1", "netns", r, "type", "veth", "peer", "name", "s0", "netns", s,
        ]);
        for (ns, dev, addr) in [
            (c, "c0", format!("{CLIENT_IP}/24")),
            (r, "r0", format!("{ROUTER_CLIENT_SIDE}/24")),
            (r, "r1", format!("{ROUTER_SERVER_SIDE}/24")),
            (s, "s0", format!("{SERVER_IP}/24")),
        ] {
            sh(&["ip", "-n", ns, "addr", "add", &addr, "dev", dev]);
            sh(&["ip", "-n", ns, "link", "set", dev, "up"]);
        }
        for ns in lab.names() {
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        // Only the client routes beyond its subnet, and only to the router. The server has no
        // route back to the client subnet: replies arrive only thanks to MASQUERADE.
        sh_in(
            c,
            &[
                "ip",
                "route",
                "add",
                "10.251.2.0/24",
                "via",
                ROUTER_CLIENT_SIDE,
            ],
        );
        sh_in(r, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        sh_in(c, &["sysctl", "-qw", "net.ipv4.ping_group_range=0 0"]);
        let mut rule = vec!["iptables", "-t", "nat"];
        rule.extend(MASQUERADE.split_whitespace());
        sh_in(r, &rule);
        lab
    }

    fn names(&self) -> [&str; 3] {
        [&self.client, &self.router, &self.server]
    }

    fn ns(&self, name: &str) -> Netns {
        Netns::by_name_or_path(name).unwrap_or_else(|e| panic!("{e}"))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in self.names() {
            match Command::new("ip").args(["netns", "del", ns]).output() {
                Ok(out) if out.status.success() => {}
                Ok(out) => eprintln!(
                    "cleanup: ip netns del {ns}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
                Err(e) => eprintln!("cleanup: ip netns del {ns}: {e}"),
            }
        }
    }
}

fn addr(s: &str) -> IpAddr {
    s.parse().expect("address literal")
}

fn endpoint(sa: SocketAddr) -> Endpoint {
    Endpoint::new(sa.ip(), sa.port())
}

/// A TCP connection client -> server, left open; its ends as the client and the server see them.
struct Tcp {
    client: Endpoint,
    seen: Endpoint,
    server: Endpoint,
    _streams: (TcpStream, TcpStream),
}

fn tcp_exchange(lab: &Lab) -> Tcp {
    let listener = lab
        .ns(&lab.server)
        .run(|| TcpListener::bind((addr(SERVER_IP), 0)))
        .expect("enter server ns")
        .expect("listen");
    let server_addr = listener.local_addr().expect("listener address");
    let mut client = lab
        .ns(&lab.client)
        .run(|| TcpStream::connect_timeout(&server_addr, TIMEOUT))
        .expect("enter client ns")
        .expect("connect through the router");
    let (mut accepted, seen) = listener.accept().expect("accept");
    for s in [&client, &accepted] {
        s.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    }
    client.write_all(b"ping").expect("client write");
    let mut buf = [0u8; 4];
    accepted.read_exact(&mut buf).expect("server read");
    accepted.write_all(b"pong").expect("server write");
    client.read_exact(&mut buf).expect("client read");
    Tcp {
        client: endpoint(client.local_addr().expect("client address")),
        seen: endpoint(seen),
        server: endpoint(server_addr),
        _streams: (client, accepted),
    }
}

/// A UDP request and reply; returns (client's end, server's view of the client, server's end).
fn udp_exchange(lab: &Lab) -> (Endpoint, Endpoint, Endpoint) {
    let server = lab
        .ns(&lab.server)
        .run(|| UdpSocket::bind((addr(SERVER_IP), 0)))
        .expect("enter server ns")
        .expect("bind server");
    let client = lab
        .ns(&lab.client)
        .run(|| UdpSocket::bind((addr(CLIENT_IP), 0)))
        .expect("enter client ns")
        .expect("bind client");
    for s in [&client, &server] {
        s.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    }
    let server_addr = server.local_addr().expect("server address");
    client.send_to(b"hello", server_addr).expect("client send");
    let mut buf = [0u8; 16];
    let (_, seen) = server.recv_from(&mut buf).expect("server receive");
    server.send_to(b"hi", seen).expect("server reply");
    client
        .recv_from(&mut buf)
        .expect("client receives the reply");
    (
        endpoint(client.local_addr().expect("client address")),
        endpoint(seen),
        endpoint(server_addr),
    )
}

/// An ICMP echo from a ping socket in the client; returns the echo id the client used.
fn icmp_echo(lab: &Lab) -> u16 {
    lab.ns(&lab.client)
        .run(|| {
            let fd = socket(
                AddressFamily::Inet,
                SockType::Datagram,
                SockFlag::empty(),
                SockProtocol::Icmp,
            )
            .expect("ping socket (net.ipv4.ping_group_range)");
            let raw = fd.as_raw_fd();
            bind(raw, &SockaddrIn::new(10, 251, 1, 2, 0)).expect("bind ping socket");
            setsockopt(&fd, ReceiveTimeout, &TimeVal::new(5, 0)).expect("timeout");
            let id = getsockname::<SockaddrIn>(raw)
                .expect("ping socket name")
                .port();
            // Echo request, id and checksum filled in by the kernel, sequence 1.
            let request = [8u8, 0, 0, 0, 0, 0, 0, 1];
            let to = SockaddrIn::new(10, 251, 2, 2, 0);
            sendto(raw, &request, &to, MsgFlags::empty()).expect("send echo request");
            let mut reply = [0u8; 64];
            recv(raw, &mut reply, MsgFlags::empty()).expect("echo reply");
            id
        })
        .expect("enter client ns")
}

#[test]
fn conntrack_shows_masquerade() {
    if !root_or_skip("conntrack_shows_masquerade") {
        return;
    }
    let lab = Lab::build();
    let masq = addr(ROUTER_SERVER_SIDE);
    let tcp = tcp_exchange(&lab);
    assert_eq!(
        tcp.seen.addr, masq,
        "the server must see the masqueraded source"
    );
    let (udp_client, udp_seen, udp_server) = udp_exchange(&lab);
    assert_eq!(udp_seen.addr, masq);
    let echo_id = icmp_echo(&lab);
    let icmp_client = Endpoint::new(addr(CLIENT_IP), echo_id);
    let icmp_server = Endpoint::new(addr(SERVER_IP), 0);

    let snat = |after: Endpoint| NatStep {
        kind: NatKind::Snat,
        before: tcp.client,
        after,
        between: ("client:c0".into(), "router:r1".into()),
        rule: None,
        rule_confidence: None,
        candidates: Vec::new(),
        why: None,
        conntrack: None,
    };
    // The reply's de-NAT on its way back to the client.
    let denat = NatStep {
        kind: NatKind::Dnat,
        before: tcp.seen,
        after: tcp.client,
        between: ("router:r1".into(), "client:c0".into()),
        rule: None,
        rule_confidence: None,
        candidates: Vec::new(),
        why: None,
        conntrack: None,
    };
    let wrong_after = Endpoint::new(addr(ROUTER_CLIENT_SIDE), tcp.seen.port);

    // Every lookup from a thread inside the router namespace, where the NAT happened.
    let (tcp_entry, by_reply, confirmed, refuted, reverse, udp_entry, icmp_entry, unused) = lab
        .ns(&lab.router)
        .run(|| {
            (
                conntrack::lookup(Proto::Tcp, tcp.client, tcp.server),
                conntrack::lookup_reply(Proto::Tcp, tcp.server, tcp.seen),
                conntrack::confirms(&snat(tcp.seen), tcp.server, Proto::Tcp),
                conntrack::confirms(&snat(wrong_after), tcp.server, Proto::Tcp),
                conntrack::confirms(&denat, tcp.server, Proto::Tcp),
                conntrack::lookup(Proto::Udp, udp_client, udp_server),
                conntrack::lookup(Proto::Icmp, icmp_client, icmp_server),
                // A tuple nobody used.
                conntrack::lookup(
                    Proto::Udp,
                    Endpoint::new(addr(CLIENT_IP), 1),
                    Endpoint::new(addr(SERVER_IP), 1),
                ),
            )
        })
        .expect("enter router ns");

    let tcp_entry = tcp_entry.expect("tcp lookup").expect("tcp entry exists");
    assert_eq!(tcp_entry.proto, Proto::Tcp);
    assert_eq!(
        (tcp_entry.orig_src, tcp_entry.orig_dst),
        (tcp.client, tcp.server)
    );
    assert_eq!(tcp_entry.reply_src, tcp.server);
    assert_eq!(
        tcp_entry.reply_dst, tcp.seen,
        "reply tuple shows the masqueraded source"
    );
    assert_eq!(by_reply.expect("lookup by reply tuple"), Some(tcp_entry));
    assert_eq!(confirmed.expect("confirms"), Some(true));
    assert_eq!(refuted.expect("confirms"), Some(false));
    assert_eq!(reverse.expect("confirms the reply's de-NAT"), Some(true));

    let udp_entry = udp_entry.expect("udp lookup").expect("udp entry exists");
    assert_eq!(
        (udp_entry.orig_src, udp_entry.orig_dst),
        (udp_client, udp_server)
    );
    assert_eq!(udp_entry.reply_src, udp_server);
    assert_eq!(
        udp_entry.reply_dst, udp_seen,
        "reply tuple shows the masqueraded source"
    );

    let icmp_entry = icmp_entry.expect("icmp lookup").expect("icmp entry exists");
    assert_eq!(icmp_entry.orig_src, icmp_client);
    assert_eq!(icmp_entry.reply_dst.addr, masq);

    assert_eq!(unused.expect("lookup of an unused tuple"), None);

    // The server namespace did no NAT and tracks the connection under its masqueraded tuple.
    let in_server = lab
        .ns(&lab.server)
        .run(|| conntrack::lookup(Proto::Tcp, tcp.client, tcp.server))
        .expect("enter server ns")
        .expect("lookup in the server ns");
    assert_eq!(in_server, None);
}

#[test]
fn snapshot_reads_and_attributes_the_lab_rule() {
    if !root_or_skip("snapshot_reads_and_attributes_the_lab_rule") {
        return;
    }
    let lab = Lab::build();
    // A native nftables NAT table beside iptables-nft's (no traffic is sent to it).
    let r = lab.router.as_str();
    sh_in(r, &["nft", "add table ip ptlab"]);
    sh_in(
        r,
        &[
            "nft",
            "add chain ip ptlab pre { type nat hook prerouting priority dstnat; }",
        ],
    );
    sh_in(
        r,
        &[
            "nft",
            "add rule ip ptlab pre iifname r1 tcp dport 9999 dnat to 10.251.1.2:80",
        ],
    );
    let ruleset = lab
        .ns(&lab.router)
        .run(nat_rules::snapshot)
        .expect("enter router ns")
        .expect("snapshot");
    let rules = ruleset.rules();
    let masq: Vec<_> = rules
        .iter()
        .filter(|r| r.text.contains("masquerade") || r.text.contains("MASQUERADE"))
        .collect();
    assert_eq!(masq.len(), 1, "listed once: {rules:#?}");
    assert_eq!(masq[0].text, MASQUERADE);
    assert_eq!(masq[0].source, nat_rules::SOURCE_IPTABLES_NFT);
    let dnat: Vec<_> = rules.iter().filter(|r| r.text.contains("dnat")).collect();
    assert_eq!(dnat.len(), 1, "{rules:#?}");
    assert_eq!(dnat[0].source, nat_rules::SOURCE_NFTABLES);
    assert!(
        dnat[0]
            .text
            .starts_with("table ip ptlab chain pre: iifname \"r1\" tcp dport 9999"),
        "{}",
        dnat[0].text
    );

    let q = NatQuery {
        kind: NatKind::Snat,
        proto: Proto::Tcp,
        before: Endpoint::new(addr(CLIENT_IP), 40000),
        after: Endpoint::new(addr(ROUTER_SERVER_SIDE), 40000),
        peer: Endpoint::new(addr(SERVER_IP), 80),
        in_iface: Some("r0"),
        out_iface: Some("r1"),
    };
    let rule = |rs: &nat_rules::NatRuleset, q: &NatQuery<'_>| rs.attribute(q).and_then(|a| a.rule);
    assert_eq!(rule(&ruleset, &q).as_deref(), Some(MASQUERADE));
    let replayed = nat_rules::NatRuleset::from_rules(&rules);
    assert_eq!(rule(&replayed, &q).as_deref(), Some(MASQUERADE));
    let q = NatQuery {
        kind: NatKind::Dnat,
        before: Endpoint::new(addr(ROUTER_SERVER_SIDE), 9999),
        after: Endpoint::new(addr(CLIENT_IP), 80),
        peer: Endpoint::new(addr(SERVER_IP), 5000),
        in_iface: Some("r1"),
        out_iface: None,
        ..q
    };
    assert!(rule(&replayed, &q).is_some_and(|t| t.contains("dport 9999")));
}
