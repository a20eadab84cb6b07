//! Privileged: brings the built-in lab up, sends ICMP/TCP/UDP from the container namespace to the wan
//! host through the bridge and MASQUERADE, and takes it down again, checking nothing is left.
//!
//! Needs root. Without it the tests print a loud notice and pass, except under CI (`CI` set), where
//! they fail: CI must run them.

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
    time::{Duration, Instant},
};

use tracer::lab::{
    traffic::{self, LoopOptions, TrafficLoop, TrafficTargets},
    Lab, LabError, LabSpec, LabTrafficOptions,
};

use crate::support::{lab::sh, root_or_skip};

/// A lab name unique to this process and test (names hold at most 9 characters).
fn unique_name(tag: char) -> String {
    format!("t{}{tag}", std::process::id() % 100_000)
}

/// Takes the lab down when dropped, so a failing assertion still cleans up.
struct LabGuard(Lab);

impl Drop for LabGuard {
    fn drop(&mut self) {
        match Lab::down(&self.0.name) {
            Ok(()) | Err(LabError::NotFound(_)) => {}
            Err(e) => eprintln!("cleanup of lab {} failed: {e}", self.0.name),
        }
    }
}

fn assert_gone(lab: &Lab) {
    for ns in [&lab.ctr_netns, &lab.wan_netns] {
        assert!(
            !Path::new("/var/run/netns").join(ns).exists(),
            "netns {ns} left behind"
        );
    }
    let links = sh("ip", &["-o", "link", "show"]);
    for link in [&lab.bridge, &lab.host_veth, &lab.uplink] {
        assert!(
            !links.contains(&format!(": {link}:")) && !links.contains(&format!(": {link}@")),
            "link {link} left behind:\n{links}"
        );
    }
    let nat = sh("iptables", &["-w", "-t", "nat", "-S"]);
    assert!(!nat.contains(&lab.bridge), "NAT rule left behind:\n{nat}");
    let forward = sh("iptables", &["-w", "-S", "FORWARD"]);
    assert!(
        !forward.contains(&lab.forward_rule_comment) && !forward.contains(&lab.bridge),
        "FORWARD rule left behind:\n{forward}"
    );
    assert!(
        !lab.state_file().exists(),
        "state file {} left behind",
        lab.state_file().display()
    );
    let labs = Lab::list().expect("list labs");
    assert!(labs.iter().all(|l| l.name != lab.name), "lab still listed");
}

#[test]
fn lab_carries_masqueraded_traffic_and_goes_away() {
    if !root_or_skip("lab_carries_masqueraded_traffic_and_goes_away") {
        return;
    }
    let name = unique_name('a');
    let spec = LabSpec {
        name: Some(name.clone()),
    };
    let guard = LabGuard(Lab::up(&spec).expect("lab up"));
    let lab = guard.0.clone();
    assert_eq!(lab.name, name);
    assert_eq!(Lab::load(&name).expect("load state"), lab);
    assert!(Lab::list().expect("list").contains(&lab));

    // The NAT rule, exactly as iptables prints it.
    let nat = sh("iptables", &["-w", "-t", "nat", "-S"]);
    assert!(
        nat.lines().any(|l| l == lab.masquerade_rule_text),
        "{:?} not in\n{nat}",
        lab.masquerade_rule_text
    );
    assert!(lab.masquerade_rule_installed().expect("check rule"));
    // A second lab with the same name is refused, and the first stays intact.
    assert!(matches!(Lab::up(&spec), Err(LabError::NameInUse(_))));

    let ctr = lab.ctr_ns().expect("ctr netns");
    let wan = lab.wan_ns().expect("wan netns");
    let tcp = traffic::tcp_server(&wan, 0).expect("tcp server");
    let udp = traffic::udp_echo_server(&wan, 0).expect("udp server");
    let tcp_dst = SocketAddr::new(lab.wan_addr.into(), tcp.local_addr().port());
    let udp_dst = SocketAddr::new(lab.wan_addr.into(), udp.local_addr().port());

    let ping =
        traffic::icmp_echo(&ctr, lab.wan_addr.into(), 3, Duration::from_millis(50)).expect("ping");
    assert_eq!((ping.sent, ping.replies.len()), (3, 3), "{ping:?}");

    let t = traffic::tcp_exchange(&ctr, tcp_dst, 5, b"pathtrace tcp").expect("tcp exchange");
    assert_eq!((t.sent, t.received), (5, 5));
    assert_eq!(
        t.local.ip(),
        IpAddr::from(lab.ctr_addr),
        "source before NAT"
    );

    let u = traffic::udp_exchange(&ctr, udp_dst, 5, b"pathtrace udp").expect("udp exchange");
    assert_eq!((u.sent, u.received), (5, 5));

    // The wan host saw the masqueraded source, the uplink address, never the container's.
    let tcp_stats = tcp.stop();
    let udp_stats = udp.stop();
    for stats in [&tcp_stats, &udp_stats] {
        assert!(!stats.peers.is_empty());
        assert!(
            stats
                .peers
                .iter()
                .all(|p| p.ip() == IpAddr::from(lab.uplink_addr)),
            "peers {:?} are not {} (MASQUERADE)",
            stats.peers,
            lab.uplink_addr
        );
    }
    assert_eq!(tcp_stats.bytes_received, 5 * 13);

    // The traffic loop, as the demo runs it, through the lab's own helper.
    let running = lab
        .start_traffic(&LabTrafficOptions {
            tcp_port: 0,
            udp_port: 0,
            traffic: LoopOptions {
                interval: Duration::from_millis(50),
                ..LoopOptions::default()
            },
        })
        .expect("start traffic");
    std::thread::sleep(Duration::from_millis(400));
    let report = running.stop();
    let r = &report.rounds;
    assert!(r.rounds >= 2, "{r:?}");
    assert_eq!(r.tcp_exchanges_failed, 0, "{r:?}");
    assert!(
        r.tcp_exchanges_ok >= 2 && r.icmp_replies >= 2 && r.udp_received >= 2,
        "{r:?}"
    );
    assert_eq!(r.icmp_replies, r.icmp_sent, "{r:?}");
    assert_eq!(r.udp_received, r.udp_sent, "{r:?}");
    assert_eq!(
        report.tcp_server.peers[0].ip(),
        IpAddr::from(lab.uplink_addr)
    );

    // A loop with a round bound ends by itself.
    let bounded = TrafficLoop::start(
        &ctr,
        TrafficTargets {
            icmp: Some(lab.wan_addr.into()),
            ..TrafficTargets::default()
        },
        LoopOptions {
            interval: Duration::from_millis(1),
            max_rounds: 2,
            ..LoopOptions::default()
        },
    )
    .expect("bounded loop");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !bounded.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(bounded.is_finished(), "max_rounds did not end the loop");
    assert_eq!(bounded.stop().rounds, 2);

    drop((ctr, wan));
    drop(guard);
    assert_gone(&lab);
}

#[test]
fn down_tolerates_pieces_already_gone() {
    if !root_or_skip("down_tolerates_pieces_already_gone") {
        return;
    }
    // No name: the first free pt<N>.
    let lab = Lab::up(&LabSpec::default()).expect("lab up");
    let guard = LabGuard(lab.clone());
    assert!(lab.name.starts_with("pt"), "{}", lab.name);

    // Remove pieces by hand: the wan namespace (and with it the uplink veth) and the NAT rule.
    sh("ip", &["netns", "del", &lab.wan_netns]);
    let mut del = vec!["-w", "-t", "nat", "-D"];
    // "-A POSTROUTING -s ..." without the "-A".
    del.extend(lab.masquerade_rule_text.split(' ').skip(1));
    sh("iptables", &del);

    Lab::down(&lab.name).expect("down with pieces missing");
    assert!(matches!(Lab::down(&lab.name), Err(LabError::NotFound(_))));
    drop(guard);
    assert_gone(&lab);
}
