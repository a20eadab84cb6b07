//! Privileged: a lab cannot leak. A decoy namespace of the test's own, behind a second host veth,
//! holds a decoy prefix the host routes to. A packet from the lab's container to that prefix is
//! dropped and counted by the lab's FORWARD guard and never reaches the decoy; with the guard
//! taken out (and the forward allowed), the same packet does reach it, so the test can fail.

use std::process::Command;

use crate::support::{hostns::Tcpdump, lab::sh, lab::TestLab, root_or_skip, serial};

/// The decoy: a namespace behind `<p>-dcy0`, addressed 10.251.9.2, with 198.51.100.1
/// (TEST-NET-2) on its loopback; the host routes 198.51.100.0/24 to it. Removed when dropped.
struct Decoy {
    ns: String,
    veth: String,
}

const DECOY_PREFIX: &str = "198.51.100.0/24";
const DECOY_ADDR: &str = "198.51.100.1";

impl Decoy {
    fn up(prefix: &str) -> Self {
        let d = Decoy {
            ns: format!("{prefix}-decoy"),
            veth: format!("{prefix}-dcy0"),
        };
        sh("ip", &["netns", "add", &d.ns]);
        let (ns, veth) = (d.ns.as_str(), d.veth.as_str());
        sh(
            "ip",
            &[
                "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns,
            ],
        );
        sh("ip", &["addr", "add", "10.251.9.1/24", "dev", veth]);
        sh("ip", &["link", "set", veth, "up"]);
        for args in [
            &["addr", "add", "10.251.9.2/24", "dev", "eth0"][..],
            &["addr", "add", "198.51.100.1/32", "dev", "lo"],
            &["link", "set", "eth0", "up"],
            &["link", "set", "lo", "up"],
        ] {
            sh("ip", &[&["-n", ns][..], args].concat());
        }
        sh(
            "ip",
            &[
                "route",
                "add",
                DECOY_PREFIX,
                "via",
                "10.251.9.2",
                "dev",
                veth,
            ],
        );
        d
    }
}

impl Drop for Decoy {
    fn drop(&mut self) {
        // The route goes with the link.
        Command::new("ip")
            .args(["link", "del", &self.veth])
            .output()
            .ok();
        Command::new("ip")
            .args(["netns", "del", &self.ns])
            .output()
            .ok();
    }
}

/// The packet count of the FORWARD rule commented `comment`, 0 when there is none.
fn forward_packets(comment: &str) -> u64 {
    sh("iptables", &["-w", "-L", "FORWARD", "-v", "-x", "-n"])
        .lines()
        .find(|l| l.contains(&format!("/* {comment} */")))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Pings the decoy from the lab's container twice; whether any reply came.
fn ping_decoy(ctr_netns: &str) -> bool {
    Command::new("ip")
        .args([
            "netns", "exec", ctr_netns, "ping", "-c", "2", "-i", "0.2", "-W", "1", DECOY_ADDR,
        ])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// The packets tcpdump printed (one line each).
fn packets(dump: Tcpdump) -> Vec<String> {
    dump.stop()
        .into_iter()
        .filter(|l| l.contains("ICMP"))
        .collect()
}

/// Removes a FORWARD rule when dropped (the test's own temporary ACCEPT).
struct ForwardRule(Vec<String>);

impl Drop for ForwardRule {
    fn drop(&mut self) {
        let mut args = vec!["-w".to_string(), "-D".into(), "FORWARD".into()];
        args.extend(self.0.iter().cloned());
        Command::new("iptables").args(&args).output().ok();
    }
}

#[test]
fn a_lab_packet_for_another_network_is_dropped_at_the_forward_guard() {
    let _serial = serial();
    if !root_or_skip("a_lab_packet_for_another_network_is_dropped_at_the_forward_guard") {
        return;
    }
    let lab_guard = TestLab::up("lg");
    let lab = &lab_guard.0;
    let decoy = Decoy::up(&lab.name);
    let guard = lab.guard_rule_comment();
    // So that only the guard stands in the way (Docker's FORWARD policy is DROP): the test's own
    // ACCEPT for the lab's subnet to the decoy, appended, after the guard.
    let accept: Vec<String> = ["-s", &lab.subnet, "-o", &decoy.veth, "-j", "ACCEPT"]
        .into_iter()
        .map(String::from)
        .collect();
    sh(
        "iptables",
        &[
            &["-w", "-A", "FORWARD"][..],
            &accept.iter().map(String::as_str).collect::<Vec<_>>(),
        ]
        .concat(),
    );
    let _accept = ForwardRule(accept);

    let before = forward_packets(&guard);
    let dump = Tcpdump::start(&decoy.ns, "eth0", &format!("icmp and dst {DECOY_ADDR}"));
    let answered = ping_decoy(&lab.ctr_netns);
    let arrived = packets(dump);
    let dropped = forward_packets(&guard) - before;
    eprintln!(
        "guard {guard}: {dropped} packets dropped; decoy saw {} packets",
        arrived.len()
    );
    assert!(
        !answered,
        "the decoy answered the lab's container through the guard"
    );
    assert!(
        arrived.is_empty(),
        "packets reached the decoy:\n{}",
        arrived.join("\n")
    );
    assert!(
        dropped >= 2,
        "the guard counted {dropped} drops for 2 pings"
    );

    // The control: without the guard the same pings reach the decoy.
    let rule = sh("iptables", &["-w", "-S", "FORWARD"])
        .lines()
        .find(|l| l.contains(&guard))
        .map(|l| l.replacen("-A FORWARD ", "", 1))
        .expect("the guard rule is in FORWARD");
    let rule_args: Vec<&str> = rule.split_whitespace().collect();
    sh(
        "iptables",
        &[&["-w", "-D", "FORWARD"][..], &rule_args].concat(),
    );
    let dump = Tcpdump::start(&decoy.ns, "eth0", &format!("icmp and dst {DECOY_ADDR}"));
    let answered_unguarded = ping_decoy(&lab.ctr_netns);
    let arrived_unguarded = packets(dump);
    // Put the guard back: taking the lab down removes it with the rest.
    sh(
        "iptables",
        &[&["-w", "-I", "FORWARD"][..], &rule_args].concat(),
    );
    assert!(
        !arrived_unguarded.is_empty(),
        "without the guard no packet reached the decoy either: the test shows nothing"
    );
    eprintln!(
        "without the guard: decoy saw {} packets (answered: {answered_unguarded})",
        arrived_unguarded.len()
    );
}
