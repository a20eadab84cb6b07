//! `inspect`'s report as text: one block per container, one labelled line per fact.

use std::net::IpAddr;

use crate::analyze::inspect::Report;

/// One block per container, labels aligned.
pub(super) fn text_block(r: &Report) -> String {
    let mut out = r.name.clone();
    if let Some(runtime) = &r.runtime {
        out.push_str(&format!("  ({runtime})"));
    }
    if let (Some(id), Some(pid)) = (&r.id, r.pid) {
        out.push_str(&format!("  id {id}  pid {pid}"));
    }
    out.push_str(&format!("  netns {}\n", r.netns_inode));
    let mut line = |label: &str, text: String| out.push_str(&format!("  {label:<10} {text}\n"));
    let at = |i: Option<u32>| i.map(|i| format!("@if{i}")).unwrap_or_default();
    for i in &r.interfaces {
        let v = &i.host_veth;
        let net = i.network.as_ref().map(|n| format!("  (network {n})"));
        let (ctr, host) = (at(i.peer_ifindex), at(v.peer_ifindex));
        let addrs = i.addrs.join(" ");
        let text = format!("{}{ctr} <-> host {}{host}  {addrs}", i.ifname, v.name);
        line("interface", text + &net.unwrap_or_default());
        let Some(b) = &i.bridge else {
            line("bridge", "none (a routed veth)".into());
            continue;
        };
        let ports = b.ports.iter().map(|p| match &p.container {
            Some(c) => format!("{} ({c})", p.name),
            None => p.name.clone(),
        });
        let ports: Vec<String> = ports.collect();
        match ports.is_empty() {
            true => line("bridge", format!("{}  no other ports", b.name)),
            false => line(
                "bridge",
                format!("{}  other ports: {}", b.name, ports.join(", ")),
            ),
        }
    }
    for p in &r.published {
        let host = match p.host_ip {
            Some(IpAddr::V6(a)) => format!("[{a}]"),
            Some(a) => a.to_string(),
            None => String::new(),
        };
        let (hp, cp, proto) = (p.host_port, p.container_port, &p.proto);
        line("published", format!("{host}:{hp} -> {cp}/{proto}"));
    }
    if r.nat_rules.is_empty() {
        line("nat", "no NAT rule applies".into());
    }
    let width = r
        .nat_rules
        .iter()
        .map(|n| n.source.len())
        .max()
        .unwrap_or(0);
    for n in &r.nat_rules {
        let maybe = n
            .candidate
            .as_ref()
            .map(|why| format!("  (may apply: {why})"))
            .unwrap_or_default();
        line("nat", format!("{:<width$}  {}{maybe}", n.source, n.text));
    }
    let Some(rt) = &r.route else {
        line("route", "no default route on the host".into());
        return out;
    };
    let via = rt.gateway.map(|g| format!(" via {g}")).unwrap_or_default();
    let src = rt.prefsrc.map(|s| format!(" src {s}")).unwrap_or_default();
    line("route", format!("{}{via} dev {}{src}", rt.dst, rt.dev));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyze::inspect::{
        BridgeReport, IfaceReport, PortReport, RouteReport, RuleReport, VethReport,
    };

    #[test]
    fn text_block_reads_at_a_glance() {
        let r = Report {
            id: Some("0123456789ab".into()),
            name: "web".into(),
            runtime: Some("Podman".into()),
            pid: Some(4242),
            netns_inode: 4026532301,
            interfaces: vec![IfaceReport {
                ifname: "eth0".into(),
                ifindex: 7,
                peer_ifindex: Some(8),
                addrs: vec!["172.17.0.2/16".into()],
                host_veth: VethReport {
                    name: "veth1a2b3c4".into(),
                    ifindex: 8,
                    peer_ifindex: Some(7),
                },
                bridge: Some(BridgeReport {
                    name: "docker0".into(),
                    ifindex: 3,
                    ports: vec![PortReport {
                        name: "veth9f8e7d6".into(),
                        container: Some("db".into()),
                    }],
                }),
                network: Some("bridge".into()),
            }],
            nat_rules: vec![RuleReport {
                source: "iptables-nft".into(),
                text: "-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE".into(),
                candidate: None,
            }],
            published: Vec::new(),
            route: Some(RouteReport {
                dst: "default".into(),
                dev: "eth0".into(),
                gateway: Some("10.0.0.1".parse().unwrap()),
                prefsrc: Some("10.0.0.5".parse().unwrap()),
            }),
        };
        assert_eq!(
            text_block(&r),
            "\
web  (Podman)  id 0123456789ab  pid 4242  netns 4026532301
  interface  eth0@if8 <-> host veth1a2b3c4@if7  172.17.0.2/16  (network bridge)
  bridge     docker0  other ports: veth9f8e7d6 (db)
  nat        iptables-nft  -A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE
  route      default via 10.0.0.1 dev eth0 src 10.0.0.5
"
        );
    }
}
