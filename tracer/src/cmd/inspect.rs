//! `pathtrace inspect`: the static path of a container, what `veth.sh`, `brctl show`,
//! `iptables -t nat -S` and `netstat -rn` show between them: each interface's veth pair, the
//! bridge and whose its other ports are, the NAT rules that apply, published ports, the route out.
//! Reads only; sends no packet.

use std::{
    collections::{hash_map::Entry, HashMap},
    net::IpAddr,
    process::ExitCode,
    sync::Arc,
};

use anyhow::Context as _;
use serde::Serialize;

use super::trace::runtime;
use crate::{
    cli::InspectArgs,
    discover::{
        docker::{ContainerInfo, Docker, PublishedPort},
        nat_rules::{self, NatRuleset},
        netns::Netns,
        path::{self, DiscoveredPath, PathQuery},
        rtnl::{Family, Rtnl},
    },
    model::{Endpoint, NatKind, NatQuery, Place, Proto, RuleAttributor},
};

/// One container (or namespace), as printed.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The first 12 characters of the container id; `null` for `--netns`.
    pub id: Option<String>,
    pub name: String,
    pub pid: Option<u32>,
    pub netns_inode: u64,
    pub interfaces: Vec<IfaceReport>,
    pub nat_rules: Vec<RuleReport>,
    pub published: Vec<PublishedPort>,
    pub route: Option<RouteReport>,
}

#[derive(Debug, Serialize)]
pub struct IfaceReport {
    pub ifname: String,
    pub ifindex: u32,
    /// The host veth's ifindex (`eth0@if<N>`).
    pub peer_ifindex: Option<u32>,
    pub addrs: Vec<String>,
    pub host_veth: VethReport,
    pub bridge: Option<BridgeReport>,
    /// The Docker network this interface carries.
    pub network: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct VethReport {
    pub name: String,
    pub ifindex: u32,
    /// The container interface's ifindex: what `ethtool -S <veth>` shows as `peer_ifindex`.
    pub peer_ifindex: Option<u32>,
}

#[derive(Debug, Serialize)]
pub struct BridgeReport {
    pub name: String,
    pub ifindex: u32,
    /// The bridge's other ports.
    pub ports: Vec<PortReport>,
}

#[derive(Debug, Serialize)]
pub struct PortReport {
    pub name: String,
    /// The container whose host veth it is, when known.
    pub container: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RuleReport {
    /// `iptables-nft`, `iptables-legacy`, `nftables`, ...
    pub source: String,
    pub text: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct RouteReport {
    /// `default`, or the `--to` address.
    pub dst: String,
    pub dev: String,
    pub gateway: Option<IpAddr>,
    pub prefsrc: Option<IpAddr>,
}

/// One container (or namespace) before NAT rules and the route are added.
struct Target {
    id: Option<String>,
    name: String,
    pid: Option<u32>,
    netns_inode: u64,
    /// (Docker network, path) per interface.
    paths: Vec<(Option<String>, DiscoveredPath)>,
    published: Vec<PublishedPort>,
}

type Runtime = tokio::runtime::Runtime;

pub fn run(args: InspectArgs) -> anyhow::Result<ExitCode> {
    let rt = runtime()?;
    let (targets, owners) = match &args.netns {
        Some(spec) => {
            let target = netns_target(spec, args.to)?;
            // Best effort: without Docker, bridge ports are shown without their containers.
            let all = match rt.block_on(Docker::connect()) {
                Ok(d) => discover_all(&rt, &d, args.to),
                Err(e) => {
                    tracing::debug!("no Docker to name bridge ports with: {e}");
                    Vec::new()
                }
            };
            (vec![target], port_owners(&all))
        }
        None => docker_targets(&rt, &args)?,
    };
    if targets.is_empty() {
        // stdout stays JSON lines (none) with --json.
        match args.json {
            true => eprintln!("no running containers"),
            false => println!("no running containers"),
        }
        return Ok(ExitCode::SUCCESS);
    }
    let rules = nat_rules::snapshot().context("reading the NAT ruleset")?;
    let mut routes: HashMap<bool, Option<RouteReport>> = HashMap::new();
    let mut blocks = Vec::new();
    for t in targets {
        let v6 = args.to.map_or_else(|| t.is_v6(), |a| a.is_ipv6());
        let route = match routes.entry(v6) {
            Entry::Occupied(e) => e.get().clone(),
            Entry::Vacant(e) => e.insert(host_route(args.to, v6)?).clone(),
        };
        let report = build_report(t, &owners, &rules, route, args.to);
        if args.json {
            println!("{}", serde_json::to_string(&report)?);
        } else {
            blocks.push(render_text(&report));
        }
    }
    print!("{}", blocks.join("\n"));
    Ok(ExitCode::SUCCESS)
}

type Discovered = Vec<Result<(ContainerInfo, Paths), (String, String)>>;
type Paths = Vec<(Option<String>, DiscoveredPath)>;

/// The containers to show (one, or every running one) and who owns each host veth.
fn docker_targets(
    rt: &Runtime,
    args: &InspectArgs,
) -> anyhow::Result<(Vec<Target>, HashMap<u32, String>)> {
    let docker = rt.block_on(Docker::connect())?;
    // Resolved first: an unknown name is the error to report, whatever else is running.
    let wanted = match &args.container {
        Some(spec) => Some(rt.block_on(docker.resolve(spec))?),
        None => None,
    };
    let all = discover_all(rt, &docker, args.to);
    let owners = port_owners(&all);
    let mut targets = Vec::new();
    if let Some(info) = wanted {
        let paths = container_paths(&info, args.to)?;
        targets.push(container_target(&info, paths)?);
        return Ok((targets, owners));
    }
    for found in all {
        let target = found.and_then(|(info, paths)| {
            container_target(&info, paths).map_err(|e| (info.name, super::one_line(&e)))
        });
        match target {
            Ok(t) => targets.push(t),
            Err((name, why)) => eprintln!("pathtrace: skipping {name}: {why}"),
        }
    }
    Ok((targets, owners))
}

/// Every running container Docker lists, with its paths, or why it cannot be followed (host
/// network, exited meanwhile).
fn discover_all(rt: &Runtime, docker: &Docker, to: Option<IpAddr>) -> Discovered {
    let running = match rt.block_on(docker.list_running()) {
        Ok(r) => r,
        Err(e) => return vec![Err(("the container list".into(), e.to_string()))],
    };
    running
        .into_iter()
        .map(|c| {
            rt.block_on(docker.resolve(&c.id))
                .map_err(anyhow::Error::from)
                .and_then(|info| Ok((container_paths(&info, to)?, info)))
                .map(|(paths, info)| (info, paths))
                .map_err(|e| (c.name, super::one_line(&e)))
        })
        .collect()
}

fn container_paths(info: &ContainerInfo, to: Option<IpAddr>) -> anyhow::Result<Paths> {
    Ok(info
        .paths(to)?
        .into_iter()
        .map(|p| (Some(p.iface.network.network_name), p.path))
        .collect())
}

fn container_target(info: &ContainerInfo, paths: Paths) -> anyhow::Result<Target> {
    Ok(Target {
        id: Some(info.id.chars().take(12).collect()),
        name: info.name.clone(),
        pid: Some(info.pid),
        netns_inode: info.netns()?.inode(),
        paths,
        published: info.published.clone(),
    })
}

/// Host veth ifindex -> the container it belongs to.
fn port_owners(all: &Discovered) -> HashMap<u32, String> {
    let mut owners = HashMap::new();
    for (info, paths) in all.iter().flatten() {
        for (_, p) in paths {
            owners.insert(p.host_veth().ifindex, info.name.clone());
        }
    }
    owners
}

/// Every veth of a namespace whose peer is on the host.
fn netns_target(spec: &str, to: Option<IpAddr>) -> anyhow::Result<Target> {
    let netns = Arc::new(Netns::by_name_or_path(spec)?);
    let label = spec.rsplit('/').next().unwrap_or(spec).to_string();
    let links = netns
        .run(|| Rtnl::open().and_then(|mut r| r.links()))?
        .with_context(|| format!("listing the interfaces of {label}"))?;
    let mut paths = Vec::new();
    let mut first_err = None;
    for l in links.iter().filter(|l| l.kind.as_deref() == Some("veth")) {
        let q = PathQuery {
            iface: Some(l.name.clone()),
            to,
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
    Ok(Target {
        id: None,
        name: label,
        pid: None,
        netns_inode: netns.inode(),
        paths,
        published: Vec::new(),
    })
}

impl Target {
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
    t: Target,
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
    nat.dedup();
    let parsed = rules.parsed();
    let nat_rules = nat.into_iter().map(|i| RuleReport {
        source: parsed[i].source.clone(),
        text: parsed[i].full_text(),
    });
    Report {
        id: t.id,
        name: t.name,
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

/// Indices (into `rules.parsed()`) of the rules netfilter would apply to connections of `ip`:
/// SNAT/MASQUERADE of outgoing TCP, UDP and ICMP, DNAT of each published port, and the hairpin
/// MASQUERADE of a published port reached from its own bridge. Asks the ruleset's own chain walk
/// ([`RuleAttributor::attribute`]), as the live view does for an observed rewrite.
fn rules_for(rules: &NatRuleset, c: &NatContext<'_>, ip: IpAddr) -> Vec<usize> {
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
        let text = rules.attribute(&q);
        found.extend(text.and_then(|t| rules.parsed().iter().position(|r| r.full_text() == t)));
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

/// One block per container, labels aligned.
pub fn render_text(r: &Report) -> String {
    let mut out = r.name.clone();
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
        line("nat", format!("{:<width$}  {}", n.source, n.text));
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
    use crate::discover::nat_rules::{parse_iptables_save, Family, SOURCE_IPTABLES_NFT};

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
            Family::Ip,
            DOCKER_NAT,
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
            .map(|i| rules.parsed()[i].text.clone())
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

    #[test]
    fn text_block_reads_at_a_glance() {
        let r = Report {
            id: Some("0123456789ab".into()),
            name: "web".into(),
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
            render_text(&r),
            "\
web  id 0123456789ab  pid 4242  netns 4026532301
  interface  eth0@if8 <-> host veth1a2b3c4@if7  172.17.0.2/16  (network bridge)
  bridge     docker0  other ports: veth9f8e7d6 (db)
  nat        iptables-nft  -A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE
  route      default via 10.0.0.1 dev eth0 src 10.0.0.5
"
        );
    }
}
