//! Issue #10, item 5: an encapsulating uplink is named as a tunnel, with its underlay and remote,
//! and the flows that cross it say the encapsulated packets are not followed. A namespace plays
//! the host (`support::hostns`): the default route leaves by a VXLAN device over the underlay u1.
//! The ground truth: `ip -d link show` (the device) and tcpdump on the underlay (the
//! encapsulated packets). This kernel has no geneve, ipip, gre or wireguard modules; their
//! attributes are read by the same code, unit-tested in `discover::rtnl`.

use serde_json::Value;

use crate::support::{
    hostns::{HostNs, Tcpdump},
    privileged, serial,
};

const REMOTE: &str = "10.99.0.1";

#[test]
fn a_vxlan_uplink_is_named_as_a_tunnel_and_not_followed() {
    let _serial = serial();
    if !privileged("a_vxlan_uplink_is_named_as_a_tunnel_and_not_followed") {
        return;
    }
    let mut ns = HostNs::new("tv");
    let t = ns.tag.clone();
    ns.uplink(1, &[REMOTE]);
    let (vx, w1) = (format!("{t}vx"), format!("{t}-w1"));
    ns.ip(&format!(
        "link add {vx} type vxlan id 42 remote 10.77.2.2 dev {t}u1 dstport 4789"
    ));
    ns.ip(&format!("addr add 10.88.0.1/24 dev {vx}"));
    ns.ip(&format!("link set {vx} up"));
    let wip = |cmd: &str| {
        let mut args = vec!["-n", w1.as_str()];
        args.extend(cmd.split_whitespace());
        crate::support::lab::sh("ip", &args);
    };
    wip("link add vx0 type vxlan id 42 remote 10.77.2.1 dev eth0 dstport 4789");
    wip("addr add 10.88.0.2/24 dev vx0");
    wip("link set vx0 up");
    ns.ip(&format!("route add default via 10.88.0.2 dev {vx}"));
    let shown = ns.ip(&format!("-d link show {vx}"));
    assert!(
        shown.contains(&format!("vxlan id 42 remote 10.77.2.2 dev {t}u1")),
        "ground truth: {shown}"
    );

    let host = ns.host_ns();
    let underlay = Tcpdump::start(&host, &format!("{t}u1"), "udp port 4789");
    let lines = ns.trace(&[], "3", || {
        ns.in_ctr(&["ping", "-c", "2", "-i", "0.2", "-W", "1", REMOTE]);
    });
    let encapsulated = underlay.stop();
    let out: Vec<&String> = encapsulated
        .iter()
        // tcpdump prints each VXLAN packet's inner packet on the next line.
        .filter(|l| l.contains(&format!("IP 10.88.0.1 > {REMOTE}: ICMP echo request")))
        .collect();
    let outer = encapsulated
        .iter()
        .filter(|l| l.contains("IP 10.77.2.1.") && l.contains("> 10.77.2.2.4789: VXLAN"))
        .count();
    assert!(
        outer >= 2,
        "the encapsulated packets on the underlay: {encapsulated:?}"
    );
    assert_eq!(
        out.len(),
        2,
        "ground truth: the pings left encapsulated: {encapsulated:?}"
    );

    let flow = lines
        .iter()
        .rev()
        .find(|l| l["type"] == "flow" && l["proto"] == "icmp" && l["origin"] == "outbound")
        .expect("the ping's flow");
    let hops = flow["hops"].as_array().expect("hops");
    let last = hops.last().expect("a hop");
    assert_eq!(
        (last["hook"].as_str(), last["dir"].as_str()),
        (Some(format!("host:{vx}").as_str()), Some("egress")),
        "{flow}"
    );
    assert_eq!(flow["stops"], Value::Array(Vec::new()), "{flow}");
    let notes: Vec<&str> = flow["notes"]
        .as_array()
        .map(|n| n.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let want = format!(
        "host:{vx} is a vxlan tunnel (VNI 42, remote 10.77.2.2 by {t}u1, UDP 4789): pathtrace sees the packets there before encapsulation"
    );
    assert!(notes.iter().any(|n| n.starts_with(&want)), "{notes:?}");
    assert!(notes
        .iter()
        .any(|n| n.contains("does not follow the encapsulated packets")));
}
