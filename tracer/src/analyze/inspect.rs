//! What `pathtrace inspect` finds: the static path of each container (or of one namespace), what
//! `veth.sh`, `brctl show`, `iptables -t nat -S` and `netstat -rn` show between them: each
//! interface's veth pair, the bridge and whose its other ports are, the NAT rules that apply,
//! published ports, the route out. Reads only; sends no packet. `render` prints the [`Report`]s.

use std::{
    collections::{hash_map::Entry, HashMap},
    net::IpAddr,
    sync::Arc,
};

use anyhow::Context as _;
use serde::Serialize;

use crate::{
    discover::{
        nat_rules::{self, NatRuleset},
        netns::Netns,
        path::{self, DiscoveredPath, PathQuery},
        rtnl::{Family, Rtnl},
    },
    model::{Endpoint, NatKind, NatQuery, Place, Proto, RuleConfidence},
    runtime::{self, ContainerRuntime, Endpoints, PublishedPort, Target, Wanted},
};

/// One container (or namespace), as printed.
#[derive(Debug, Serialize)]
pub(crate) struct Report {
    /// The first 12 characters of the container id; `null` for `--netns`.
    pub id: Option<String>,
    pub name: String,
    /// Docker, Podman, `containerd (CRI)`; `null` for `--netns`.
    pub runtime: Option<String>,
    pub pid: Option<u32>,
    pub netns_inode: u64,
    pub interfaces: Vec<IfaceReport>,
    pub nat_rules: Vec<RuleReport>,
    pub published: Vec<PublishedPort>,
    pub route: Option<RouteReport>,
}

#[derive(Debug, Serialize)]
pub(crate) struct IfaceReport {
    pub ifname: String,
    pub ifindex: u32,
    /// The host veth's ifindex (`eth0@if<N>`).
    pub peer_ifindex: Option<u32>,
    pub addrs: Vec<String>,
    pub host_veth: VethReport,
    pub bridge: Option<BridgeReport>,
    /// The runtime's network this interface carries.
    pub network: Option<String>,
}

#[derive(Debug, Serialize)]
pub(crate) struct VethReport {
    pub name: String,
    pub ifindex: u32,
    /// The container interface's ifindex: what `ethtool -S <veth>` shows as `peer_ifindex`.
    pub peer_ifindex: Option<u32>,
}

#[derive(Debug, Serialize)]
pub(crate) struct BridgeReport {
    pub name: String,
    pub ifindex: u32,
    /// The bridge's other ports.
    pub ports: Vec<PortReport>,
}

#[derive(Debug, Serialize)]
pub(crate) struct PortReport {
    pub name: String,
    /// The container whose host veth it is, when known.
    pub container: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct RuleReport {
    /// `iptables-nft`, `iptables-legacy`, `nftables`, ...
    pub source: String,
    pub text: String,
    /// Set when the rule may apply but pathtrace cannot tell: why (a firewall mark, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub candidate: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct RouteReport {
    /// `default`, or the `--to` address.
    pub dst: String,
    pub dev: String,
    pub gateway: Option<IpAddr>,
    pub prefsrc: Option<IpAddr>,
}

/// One container (or namespace) before NAT rules and the route are added.
struct Inspected {
    id: Option<String>,
    name: String,
    runtime: Option<String>,
    pid: Option<u32>,
    netns_inode: u64,
    /// (network, path) per interface.
    paths: Paths,
    published: Vec<PublishedPort>,
}

/// What to inspect: one container, one namespace, or (neither) every running container.
#[derive(Clone, Debug, Default)]
pub(crate) struct Query {
    pub wanted: Option<Wanted>,
    /// Which runtimes to look in.
    pub endpoints: Endpoints,
    pub netns: Option<String>,
    /// The host's route toward it (default: the default route).
    pub to: Option<IpAddr>,
}

/// The reports, and the containers that could not be shown with why (host network, exited
/// meanwhile).
pub(crate) struct Inspection {
    pub reports: Vec<Report>,
    pub skipped: Vec<(String, String)>,
}

/// Inspects what `q` asks for.
pub(crate) fn inspect(rt: &tokio::runtime::Runtime, q: &Query) -> anyhow::Result<Inspection> {
    let mut skipped = Vec::new();
    let (targets, owners) = match &q.netns {
        Some(spec) => {
            let target = netns_target(spec, q.to)?;
            // Best effort: without a runtime, bridge ports are shown without their containers.
            let all = match rt.block_on(runtime::connect(&q.endpoints)) {
                Ok(r) => discover_all(rt, &r, q.to),
                Err(e) => {
                    tracing::debug!("no container runtime to name bridge ports with: {e}");
                    Vec::new()
                }
            };
            (vec![target], port_owners(&all))
        }
        None => runtime_targets(rt, q, &mut skipped)?,
    };
    if targets.is_empty() {
        return Ok(Inspection {
            reports: Vec::new(),
            skipped,
        });
    }
    let rules = nat_rules::snapshot().context("reading the NAT ruleset")?;
    let mut routes: HashMap<bool, Option<RouteReport>> = HashMap::new();
    let mut reports = Vec::new();
    for t in targets {
        let v6 = q.to.map_or_else(|| t.is_v6(), |a| a.is_ipv6());
        let route = match routes.entry(v6) {
            Entry::Occupied(e) => e.get().clone(),
            Entry::Vacant(e) => e.insert(host_route(q.to, v6)?).clone(),
        };
        reports.push(build_report(t, &owners, &rules, route, q.to));
    }
    Ok(Inspection { reports, skipped })
}

type Discovered = Vec<Result<(Target, Paths), (String, String)>>;
type Paths = Vec<(Option<String>, DiscoveredPath)>;

/// The containers to show (one, or every running one) and who owns each host veth.
fn runtime_targets(
    rt: &tokio::runtime::Runtime,
    q: &Query,
    skipped: &mut Vec<(String, String)>,
) -> anyhow::Result<(Vec<Inspected>, HashMap<u32, String>)> {
    let runtime = rt.block_on(runtime::connect(&q.endpoints))?;
    // Resolved first: an unknown name is the error to report, whatever else is running.
    let wanted = match &q.wanted {
        Some(w) => Some(rt.block_on(runtime.resolve(w))?),
        None => None,
    };
    let all = discover_all(rt, &runtime, q.to);
    let owners = port_owners(&all);
    let mut targets = Vec::new();
    if let Some(target) = wanted {
        let paths = container_paths(&target, q.to)?;
        targets.push(inspected(&target, paths)?);
        return Ok((targets, owners));
    }
    for found in all {
        let target = found.and_then(|(target, paths)| {
            inspected(&target, paths).map_err(|e| (target.name, crate::one_line(&e)))
        });
        match target {
            Ok(t) => targets.push(t),
            Err(skip) => skipped.push(skip),
        }
    }
    Ok((targets, owners))
}

/// Every running container the runtime lists, with its paths, or why it cannot be followed (host
/// network, exited meanwhile).
fn discover_all(
    rt: &tokio::runtime::Runtime,
    runtime: &dyn ContainerRuntime,
    to: Option<IpAddr>,
) -> Discovered {
    let running = match rt.block_on(runtime.list_running()) {
        Ok(r) => r,
        Err(e) => return vec![Err(("the container list".into(), e.to_string()))],
    };
    running
        .into_iter()
        .map(|c| {
            rt.block_on(runtime.resolve(&Wanted::container(&c.id)))
                .map_err(anyhow::Error::from)
                .and_then(|target| Ok((container_paths(&target, to)?, target)))
                .map(|(paths, target)| (target, paths))
                .map_err(|e| (c.name, crate::one_line(&e)))
        })
        .collect()
}

fn container_paths(target: &Target, to: Option<IpAddr>) -> anyhow::Result<Paths> {
    Ok(target
        .paths(to, &[])?
        .into_iter()
        .map(|p| (Some(p.iface.network.network_name), p.path))
        .collect())
}

fn inspected(target: &Target, paths: Paths) -> anyhow::Result<Inspected> {
    Ok(Inspected {
        id: Some(target.id.chars().take(12).collect()),
        name: target.name.clone(),
        runtime: Some(target.runtime.clone()),
        pid: target.pid,
        netns_inode: target.open_netns()?.inode(),
        paths,
        published: target.published.clone(),
    })
}

/// Host veth ifindex -> the container it belongs to: the one whose namespace holds it, never
/// one that only shares that namespace (`--network container:NAME`).
fn port_owners(all: &Discovered) -> HashMap<u32, String> {
    let mut owners = HashMap::new();
    for (target, paths) in all.iter().flatten() {
        for (_, p) in paths {
            let veth = p.host_veth().ifindex;
            match &target.netns_owner {
                None => {
                    owners.insert(veth, target.name.clone());
                }
                Some(owner) => {
                    owners.entry(veth).or_insert_with(|| owner.clone());
                }
            }
        }
    }
    owners
}

/// Every veth of a namespace whose peer is on the host.
fn netns_target(spec: &str, to: Option<IpAddr>) -> anyhow::Result<Inspected> {
    let netns = Arc::new(Netns::by_name_or_path(spec)?);
    let label = crate::config::TargetSpec::netns_label(spec);
    let links = netns
        .run(|| Rtnl::open().and_then(|mut r| r.links()))?
        .with_context(|| format!("listing the interfaces of {label}"))?;
    let mut paths = Vec::new();
    let mut first_err = None;
    for l in links.iter().filter(|l| l.kind.as_deref() == Some("veth")) {
        let q = PathQuery {
            iface: Some(l.name.clone()),
            to,
            uplinks: Vec::new(),
        };
        match path::discover(&label, netns.clone(), &q) {
            Ok(p) => paths.push((None, p)),
            Err(e) => {
                tracing::info!("{label}:{}: {e}", l.name);
                first_err.get_or_insert(e);
            }
        }
    }
    if let (true, Some(e)) = (paths.is_empty(), first_err) {
        return Err(e.into());
    }
    anyhow::ensure!(
        !paths.is_empty(),
        "{label} has no veth: nothing leads to the host"
    );
    Ok(Inspected {
        id: None,
        runtime: None,
        name: label,
        pid: None,
        netns_inode: netns.inode(),
        paths,
        published: Vec::new(),
    })
}

impl Inspected {
    fn is_v6(&self) -> bool {
        let first = self
            .paths
            .iter()
            .flat_map(|(_, p)| p.ctr_addrs.first())
            .next();
        first.is_some_and(|a| a.addr.is_ipv6())
    }
}

fn build_report(
    t: Inspected,
    owners: &HashMap<u32, String>,
    rules: &NatRuleset,
    route: Option<RouteReport>,
    to: Option<IpAddr>,
) -> Report {
    let mut nat = Vec::new();
    let mut interfaces = Vec::new();
    for (network, p) in &t.paths {
        let ctx = NatContext {
            bridge: p.link(Place::Bridge).map(|b| b.name.as_str()),
            uplink: p.link(Place::Uplink).map(|u| u.name.as_str()),
            uplink_addr: route.as_ref().and_then(|r| r.prefsrc),
            peer: to,
            published: &t.published,
        };
        for a in &p.ctr_addrs {
            nat.extend(rules_for(rules, &ctx, a.addr));
        }
        interfaces.push(iface_report(network.clone(), p, owners));
    }
    nat.sort_unstable();
    // A rule decided for one query and a candidate for another is listed once, as decided.
    nat.dedup_by(|later, first| {
        let same = later.0 == first.0;
        if same && later.1.is_none() {
            first.1 = None;
        }
        same
    });
    let parsed = rules.parsed();
    let nat_rules = nat.into_iter().map(|(i, why)| RuleReport {
        source: parsed[i].source.clone(),
        text: parsed[i].full_text(),
        candidate: why,
    });
    Report {
        id: t.id,
        name: t.name,
        runtime: t.runtime,
        pid: t.pid,
        netns_inode: t.netns_inode,
        interfaces,
        nat_rules: nat_rules.collect(),
        published: t.published,
        route,
    }
}

fn iface_report(
    network: Option<String>,
    p: &DiscoveredPath,
    owners: &HashMap<u32, String>,
) -> IfaceReport {
    let ports = p
        .bridge_ports
        .iter()
        .filter(|l| l.ifindex != p.host_veth().ifindex);
    let bridge = p.link(Place::Bridge).map(|b| BridgeReport {
        name: b.name.clone(),
        ifindex: b.ifindex,
        ports: ports
            .map(|l| PortReport {
                name: l.name.clone(),
                container: owners.get(&l.ifindex).cloned(),
            })
            .collect(),
    });
    let addrs = p
        .ctr_addrs
        .iter()
        .map(|a| format!("{}/{}", a.addr, a.prefix_len));
    IfaceReport {
        ifname: p.ctr().name.clone(),
        ifindex: p.ctr().ifindex,
        peer_ifindex: p.ctr().peer_ifindex,
        addrs: addrs.collect(),
        host_veth: VethReport {
            name: p.host_veth().name.clone(),
            ifindex: p.host_veth().ifindex,
            peer_ifindex: p.host_veth().peer_ifindex,
        },
        bridge,
        network,
    }
}

/// What the NAT queries of one container interface need to know.
struct NatContext<'a> {
    bridge: Option<&'a str>,
    uplink: Option<&'a str>,
    /// The address MASQUERADE would pick (the route's prefsrc).
    uplink_addr: Option<IpAddr>,
    /// `--to`; without it, a documentation address stands for "somewhere outside".
    peer: Option<IpAddr>,
    published: &'a [PublishedPort],
}

/// Indices (into `rules.parsed()`) of the rules netfilter would apply to connections of `ip`
/// (with why, for a rule that only may):
/// SNAT/MASQUERADE of outgoing TCP, UDP and ICMP, DNAT of each published port, and the hairpin
/// MASQUERADE of a published port reached from its own bridge. Asks the ruleset's own chain walk
/// ([`NatRuleset::attribute_rules`]), as the live view does for an observed rewrite.
fn rules_for(rules: &NatRuleset, c: &NatContext<'_>, ip: IpAddr) -> Vec<(usize, Option<String>)> {
    let v6 = ip.is_ipv6();
    let elsewhere: IpAddr = match v6 {
        true => IpAddr::V6(std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
        false => IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1)),
    };
    let same_family = |a: Option<IpAddr>| a.filter(|a| a.is_ipv6() == v6);
    let peer = same_family(c.peer).unwrap_or(elsewhere);
    let out_addr = same_family(c.uplink_addr).unwrap_or(elsewhere);
    let ep = Endpoint::new;
    let mut found = Vec::new();
    let mut ask = |q: NatQuery<'_>| {
        let Some((a, indices, chosen)) = rules.attribute_rules(&q) else {
            return;
        };
        let why = match a.confidence {
            RuleConfidence::Evaluated => None,
            _ => a.why.clone(),
        };
        // The rule that surely matches is a candidate only because one before it may take the
        // packet first: said so, not given that rule's reason as its own.
        let why_of = |i: usize| match (&why, chosen == Some(i)) {
            (Some(w), true) => Some(format!(
                "applies unless a rule before it takes the packet ({w})"
            )),
            (w, _) => w.clone(),
        };
        found.extend(indices.into_iter().map(|i| (i, why_of(i))));
    };
    let icmp = if v6 { Proto::Icmpv6 } else { Proto::Icmp };
    for (proto, sport, dport) in [
        (Proto::Tcp, 40000, 443),
        (Proto::Udp, 40000, 53),
        (icmp, 0, 0),
    ] {
        ask(NatQuery {
            kind: NatKind::Snat,
            proto,
            before: ep(ip, sport),
            after: ep(out_addr, sport),
            peer: ep(peer, dport),
            in_iface: c.bridge,
            out_iface: c.uplink,
        });
    }
    for p in c.published {
        let proto = p.proto;
        // Docker 20.10 lists `::` next to `0.0.0.0`; only the container's family has DNAT.
        if p.host_ip.is_some_and(|a| a.is_ipv6() != v6) {
            continue;
        }
        let host_ip = p
            .host_ip
            .filter(|a| !a.is_unspecified())
            .unwrap_or(out_addr);
        let inside = ep(ip, p.container_port);
        ask(NatQuery {
            kind: NatKind::Dnat,
            proto,
            before: ep(host_ip, p.host_port),
            after: inside,
            peer: ep(peer, 50000),
            in_iface: c.uplink,
            out_iface: None,
        });
        ask(NatQuery {
            kind: NatKind::Snat,
            proto,
            before: ep(ip, 50000),
            after: ep(ip, 50000),
            peer: inside,
            in_iface: c.bridge,
            out_iface: c.bridge,
        });
    }
    found
}

/// `ip route get <to>`, else the main table's default route (lowest metric: the one `trace`
/// attaches to), with the source address the kernel would pick.
fn host_route(to: Option<IpAddr>, v6: bool) -> anyhow::Result<Option<RouteReport>> {
    let mut rtnl = Rtnl::open().context("rtnetlink on the host")?;
    let links = rtnl.links().context("listing host interfaces")?;
    let dev = |oif: u32| match links.iter().find(|l| l.ifindex == oif) {
        Some(l) => l.name.clone(),
        None => format!("if{oif}"),
    };
    if let Some(to) = to {
        let r = rtnl
            .route_get(to)
            .with_context(|| format!("the host's route to {to}"))?;
        let (dst, dev) = (to.to_string(), dev(r.oif));
        let (gateway, prefsrc) = (r.gateway, r.prefsrc);
        return Ok(Some(RouteReport {
            dst,
            dev,
            gateway,
            prefsrc,
        }));
    }
    let family = if v6 { Family::V6 } else { Family::V4 };
    let route = rtnl
        .default_route(family)
        .context("dumping the host's routes")?;
    let Some((Some(oif), gateway, prefsrc)) = route.map(|r| (r.oif, r.gateway, r.prefsrc)) else {
        return Ok(None);
    };
    // DHCP routes carry `src`; static ones do not: ask the kernel for the way to the gateway.
    let prefsrc = match (prefsrc, gateway) {
        (None, Some(gw)) => rtnl.route_get(gw).ok().and_then(|r| r.prefsrc),
        (p, _) => p,
    };
    let (dst, dev) = ("default".to_string(), dev(oif));
    Ok(Some(RouteReport {
        dst,
        dev,
        gateway,
        prefsrc,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discover::nat_rules::{self, parse_iptables_save, SOURCE_IPTABLES_NFT};

    /// `iptables -t nat -S` on a Docker 20.10 host with `-p 127.0.0.1:18080:80` on 172.17.0.2.
    const DOCKER_NAT: &str = "\
-P PREROUTING ACCEPT
-P INPUT ACCEPT
-P OUTPUT ACCEPT
-P POSTROUTING ACCEPT
-N DOCKER
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER
-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE
-A POSTROUTING -s 10.213.5.0/24 ! -o br-0123456789ab -j MASQUERADE
-A POSTROUTING -s 172.17.0.2/32 -d 172.17.0.2/32 -p tcp -m tcp --dport 80 -j MASQUERADE
-A DOCKER -i docker0 -j RETURN
-A DOCKER -d 127.0.0.1/32 ! -i docker0 -p tcp -m tcp --dport 18080 -j DNAT --to-destination 172.17.0.2:80
-A DOCKER ! -i docker0 -p tcp -m tcp --dport 18081 -j DNAT --to-destination 172.17.0.3:80
";

    fn texts(ip: &str, published: &[PublishedPort]) -> Vec<String> {
        let rules = NatRuleset::new(parse_iptables_save(
            SOURCE_IPTABLES_NFT,
            nat_rules::Family::Ip,
            DOCKER_NAT,
            &nat_rules::Sets::default(),
        ));
        let ctx = NatContext {
            bridge: Some("docker0"),
            uplink: Some("eth0"),
            uplink_addr: Some("10.0.0.5".parse().unwrap()),
            peer: None,
            published,
        };
        let mut idx = rules_for(&rules, &ctx, ip.parse().unwrap());
        idx.sort_unstable();
        idx.dedup();
        idx.into_iter()
            .map(|(i, _)| rules.parsed()[i].text.clone())
            .collect()
    }

    #[test]
    fn picks_the_masquerade_of_the_subnet_and_the_dnat_of_published_ports() {
        let published = [PublishedPort {
            proto: Proto::Tcp,
            host_ip: Some("127.0.0.1".parse().unwrap()),
            host_port: 18080,
            container_port: 80,
        }];
        assert_eq!(
            texts("172.17.0.2", &published),
            [
                "-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE",
                "-A POSTROUTING -s 172.17.0.2/32 -d 172.17.0.2/32 -p tcp -m tcp --dport 80 -j MASQUERADE",
                "-A DOCKER -d 127.0.0.1/32 ! -i docker0 -p tcp -m tcp --dport 18080 -j DNAT --to-destination 172.17.0.2:80",
            ]
        );
        // Another container of the subnet: its MASQUERADE only, not the neighbour's DNAT.
        assert_eq!(
            texts("172.17.0.4", &[]),
            ["-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE"]
        );
        assert!(texts("192.168.9.9", &[]).is_empty());
    }
}
