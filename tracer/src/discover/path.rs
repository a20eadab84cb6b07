//! From a traced namespace to its path: the interface inside, its veth peer on the host (peer
//! ifindex over netlink, what `ethtool -S vethX | grep peer_ifindex` shows by hand), the bridge
//! that peer is a port of, and the uplink the route toward the destination leaves by.
//!
//! The path is data: a list of [`PathHop`]s, each a [`Place`] with its interface and namespace.
//! Which hooks a hop gets, with which role and in which order, and where they rank in either
//! direction, the place itself knows (`model::place`); this file only finds the hops. A new kind
//! of hop is one more `Place` and the code here that finds it.

use std::{net::IpAddr, sync::Arc};

use super::{
    netns::{Netns, NetnsError},
    rtnl::{self, Family, IfAddr, Link, RouteQuery, Rtnl, RtnlError},
    uplinks::{self, Exit},
};
use crate::{
    attach::AttachTarget,
    model::{Hook, Orientation, Place},
};

#[derive(Debug, thiserror::Error)]
pub enum PathError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("netlink in {ns}: {source}")]
    Rtnl {
        ns: String,
        #[source]
        source: RtnlError,
    },
    #[error("interface {iface:?} not found in {ns}; list them with `ip -n {ns} link`")]
    NoIface { ns: String, iface: String },
    #[error(
        "{ns} has no default route; name the interface with --iface or the destination with --to"
    )]
    NoDefaultRoute { ns: String },
    #[error("{ns}:{iface} is not a veth (it is {kind}); pathtrace follows veth pairs to the host")]
    NotVeth {
        ns: String,
        iface: String,
        kind: String,
    },
    #[error("{0} is the host's own network namespace: there is no veth to follow; trace host interfaces with --iface")]
    HostNamespace(String),
    #[error("the veth peer of {ns}:{iface} (ifindex {peer}) is not in the host namespace")]
    PeerNotOnHost {
        ns: String,
        iface: String,
        peer: u32,
    },
    #[error("no route from the host to {0}; check `ip route get {0}`")]
    Unroutable(IpAddr),
}

/// One hop of a path: an interface of one kind ([`Place`]) in one namespace.
#[derive(Clone, Debug)]
pub(crate) struct PathHop {
    pub place: Place,
    /// The namespace's label in hook names: the traced side's name, or `host`.
    pub ns_label: String,
    pub netns: Arc<Netns>,
    pub link: Link,
}

/// What discovery found for one traced interface.
#[derive(Clone, Debug)]
pub struct DiscoveredPath {
    pub target_label: String,
    /// In outbound order: the container's interface and the host veth always (only [`discover`]
    /// builds a path), then the bridge (if the veth is a port of one) and the uplink (unless the
    /// destination is on the bridge itself: container to container).
    hops: Vec<PathHop>,
    pub ctr_addrs: Vec<IfAddr>,
    /// Every port of the bridge, the host veth included.
    pub bridge_ports: Vec<Link>,
    pub uplink_addrs: Vec<IfAddr>,
    /// Each uplink's name and why it is one (the route or rule that sends traffic there).
    pub exits: Vec<(String, String)>,
    /// Uplinks that are tunnel devices: the hook label (`host:vx0`) and what the tunnel is
    /// (`vxlan tunnel (VNI 42, remote 10.0.0.2 by eth1, UDP 4789)`).
    pub tunnels: Vec<(String, String)>,
}

/// What to look for.
#[derive(Clone, Debug, Default)]
pub struct PathQuery {
    /// Interface inside the namespace (default: the one with the default route, else `eth0`).
    pub iface: Option<String>,
    /// Destination the uplink is chosen for (default: the default routes the container's
    /// traffic can take, policy rules included).
    pub to: Option<IpAddr>,
    /// More host interfaces to trace as uplinks (`--uplink`).
    pub uplinks: Vec<String>,
}

fn rtnl_err(ns: &str) -> impl Fn(RtnlError) -> PathError + '_ {
    move |source| PathError::Rtnl {
        ns: ns.to_string(),
        source,
    }
}

/// Discovers the path from `netns` (labelled `label`) to the host's uplink.
pub fn discover(
    label: &str,
    netns: Arc<Netns>,
    q: &PathQuery,
) -> Result<DiscoveredPath, PathError> {
    let host = Arc::new(Netns::current()?);
    if netns.same_as(&host) {
        return Err(PathError::HostNamespace(label.to_string()));
    }
    let (ctr, ctr_addrs) = netns.run(|| inside(label, q))??;
    if ctr.kind.as_deref() != Some("veth") {
        return Err(PathError::NotVeth {
            ns: label.to_string(),
            iface: ctr.name.clone(),
            kind: ctr
                .kind
                .clone()
                .unwrap_or_else(|| "a device without a kind".into()),
        });
    }
    let peer = ctr.peer_ifindex.ok_or_else(|| PathError::NotVeth {
        ns: label.to_string(),
        iface: ctr.name.clone(),
        kind: "a veth without a peer".into(),
    })?;
    let mut rtnl = Rtnl::open().map_err(rtnl_err("host"))?;
    let links = rtnl.links().map_err(rtnl_err("host"))?;
    // The peer ifindex names an interface in the peer's namespace; check it points back at us.
    let host_veth = links
        .iter()
        .find(|l| {
            l.ifindex == peer
                && l.kind.as_deref() == Some("veth")
                && l.peer_ifindex == Some(ctr.ifindex)
        })
        .cloned()
        .ok_or_else(|| PathError::PeerNotOnHost {
            ns: label.to_string(),
            iface: ctr.name.clone(),
            peer,
        })?;
    let bridge = host_veth
        .master
        .and_then(|m| {
            links
                .iter()
                .find(|l| l.ifindex == m && l.kind.as_deref() == Some("bridge"))
        })
        .cloned();
    let bridge_ports = match &bridge {
        Some(b) => links
            .iter()
            .filter(|l| l.master == Some(b.ifindex))
            .cloned()
            .collect(),
        None => Vec::new(),
    };
    // Where the kernel forwards what arrives from the container: on the bridge, or on the host
    // veth itself when it is routed (no bridge).
    let arrives_on = bridge.as_ref().unwrap_or(&host_veth).clone();
    let exits = exits(&mut rtnl, &ctr_addrs, &arrives_on, q)?;
    let mut uplinks: Vec<(Link, String)> = Vec::new();
    for exit in exits {
        let is_loopback = links
            .iter()
            .any(|l| l.ifindex == exit.oif && l.name == "lo");
        if exit.oif == arrives_on.ifindex || exit.oif == host_veth.ifindex || is_loopback {
            continue;
        }
        if let Some(l) = links.iter().find(|l| l.ifindex == exit.oif) {
            if !uplinks.iter().any(|(u, _)| u.ifindex == l.ifindex) {
                uplinks.push((l.clone(), exit.why));
            }
        }
    }
    for link in named_uplinks(&links, q)? {
        if !uplinks.iter().any(|(u, _)| u.ifindex == link.ifindex) {
            uplinks.push((link.clone(), "--uplink".into()));
        }
    }
    let uplink_addrs = if uplinks.is_empty() {
        Vec::new()
    } else {
        rtnl.addrs()
            .map_err(rtnl_err("host"))?
            .into_iter()
            .filter(|a| uplinks.iter().any(|(u, _)| u.ifindex == a.ifindex))
            .collect()
    };
    for (u, why) in &uplinks {
        tracing::debug!("uplink {}: {why}", u.name);
    }
    let hop = |place, netns: &Arc<Netns>, ns_label: &str, link: Link| PathHop {
        place,
        ns_label: ns_label.to_string(),
        netns: netns.clone(),
        link,
    };
    let mut hops = vec![
        hop(Place::Container, &netns, label, ctr),
        hop(Place::Veth, &host, HOST_LABEL, host_veth),
    ];
    hops.extend(bridge.map(|b| hop(Place::Bridge, &host, HOST_LABEL, b)));
    let exits = uplinks
        .iter()
        .map(|(u, why)| (u.name.clone(), why.clone()))
        .collect();
    let tunnels = tunnels_of(&links, uplinks.iter().map(|(u, _)| u));
    hops.extend(
        uplinks
            .into_iter()
            .map(|(u, _)| hop(Place::Uplink, &host, HOST_LABEL, u)),
    );
    Ok(DiscoveredPath {
        target_label: label.to_string(),
        hops,
        ctr_addrs,
        bridge_ports,
        uplink_addrs,
        exits,
        tunnels,
    })
}

/// The interfaces the kernel can forward the traced side's packets out of (arriving on
/// `arrives_on`), the one most of them take first (see [`super::uplinks`]).
fn exits(
    rtnl: &mut Rtnl,
    ctr_addrs: &[IfAddr],
    arrives_on: &Link,
    q: &PathQuery,
) -> Result<Vec<Exit>, PathError> {
    let host_err = rtnl_err(HOST_LABEL);
    let src_of = |family: Family| {
        ctr_addrs
            .iter()
            .map(|a| a.addr)
            .find(|a| Family::of(*a) == family)
    };
    let names = |links: &[Link], i: u32| {
        links
            .iter()
            .find(|l| l.ifindex == i)
            .map_or_else(|| format!("if{i}"), |l| l.name.clone())
    };
    let Some(to) = q.to else {
        let mut families: Vec<Family> = ctr_addrs.iter().map(|a| Family::of(a.addr)).collect();
        families.dedup();
        if families.is_empty() {
            families.push(Family::V4);
        }
        let mut out: Vec<Exit> = Vec::new();
        for family in families {
            let (rules, routes) = (
                rtnl.rules(family).map_err(&host_err)?,
                rtnl.routes(family).map_err(&host_err)?,
            );
            let found = match src_of(family) {
                Some(src) => uplinks::default_exits(&rules, &routes, src, &arrives_on.name),
                None => rtnl::lowest_metric_default(&routes)
                    .and_then(|r| {
                        r.oif.map(|oif| Exit {
                            oif,
                            why: uplinks::describe_route(r),
                        })
                    })
                    .into_iter()
                    .collect(),
            };
            for e in found {
                if !out.iter().any(|o| o.oif == e.oif) {
                    out.push(e);
                }
            }
        }
        if out.is_empty() {
            return Err(PathError::NoDefaultRoute { ns: "host".into() });
        }
        return Ok(out);
    };
    let links = rtnl.links().map_err(&host_err)?;
    let src = src_of(Family::of(to));
    let forwarded = RouteQuery {
        dst: to,
        src,
        iif: src.map(|_| arrives_on.ifindex),
        mark: None,
    };
    // The kernel's route for the container's packet as it forwards it; where it refuses that
    // lookup (forwarding off, a source it would not accept), the host's own route, as `ip route
    // get` gives it.
    let (query, info) = match rtnl.route_lookup(&forwarded) {
        Ok(info) => (forwarded, info),
        Err(e) => {
            tracing::debug!(
                "route for {to} from {src:?} arriving on {}: {e}",
                arrives_on.name
            );
            let plain = RouteQuery::to(to);
            let info = rtnl.route_lookup(&plain).map_err(|e| match e {
                RtnlError::NoRoute(a) => PathError::Unroutable(a),
                other => host_err(other),
            })?;
            (plain, info)
        }
    };
    let mut out = vec![Exit {
        oif: info.oif,
        why: uplinks::describe_lookup(&query, &info, |i| names(&links, i)),
    }];
    // A rule by firewall mark may send the packet elsewhere: the packet's mark is not known
    // here, so every mark a rule looks for is tried.
    if let (Some(src), Some(_)) = (src, query.iif) {
        let rules = rtnl.rules(Family::of(to)).map_err(&host_err)?;
        for mark in uplinks::marks_that_matter(&rules, src, &arrives_on.name, to) {
            let marked = RouteQuery {
                mark: Some(mark),
                ..query
            };
            if let Ok(info) = rtnl.route_lookup(&marked) {
                if !out.iter().any(|e| e.oif == info.oif) {
                    out.push(Exit {
                        oif: info.oif,
                        why: uplinks::describe_lookup(&marked, &info, |i| names(&links, i)),
                    });
                }
            }
        }
    }
    Ok(out)
}

/// The path of a container that uses the host's network (labelled `label`): the host's uplinks
/// only, toward `q.to` (the host's own route) or the host's default routes, and `q.uplinks`.
/// Its packets are told apart there by their sockets (see [`super::sockets`]); the "traced
/// side's addresses" are the host's own.
pub(crate) fn host_path(label: &str, q: &PathQuery) -> Result<DiscoveredPath, PathError> {
    let host = Arc::new(Netns::current()?);
    let mut rtnl = Rtnl::open().map_err(rtnl_err(HOST_LABEL))?;
    let links = rtnl.links().map_err(rtnl_err(HOST_LABEL))?;
    let addrs = rtnl.addrs().map_err(rtnl_err(HOST_LABEL))?;
    let mut oifs: Vec<u32> = Vec::new();
    match q.to {
        Some(to) => {
            let r = rtnl.route_get(to).map_err(|e| match e {
                RtnlError::NoRoute(a) => PathError::Unroutable(a),
                other => rtnl_err(HOST_LABEL)(other),
            })?;
            oifs.push(r.oif);
        }
        None => {
            for family in [Family::V4, Family::V6] {
                let route = rtnl.default_route(family).map_err(rtnl_err(HOST_LABEL))?;
                oifs.extend(route.and_then(|r| r.oif));
            }
        }
    }
    oifs.extend(named_uplinks(&links, q)?.iter().map(|l| l.ifindex));
    oifs.dedup();
    let uplinks: Vec<Link> = oifs
        .iter()
        .filter_map(|i| links.iter().find(|l| l.ifindex == *i && l.name != "lo"))
        .cloned()
        .collect();
    if uplinks.is_empty() {
        return Err(PathError::NoDefaultRoute {
            ns: HOST_LABEL.into(),
        });
    }
    let tunnels = tunnels_of(&links, uplinks.iter());
    let uplink_addrs = addrs
        .iter()
        .filter(|a| uplinks.iter().any(|u| u.ifindex == a.ifindex))
        .copied()
        .collect();
    let host_addrs = addrs
        .into_iter()
        .filter(|a| !a.addr.is_loopback() && !is_link_local(a.addr))
        .collect();
    let hops = uplinks
        .into_iter()
        .map(|link| PathHop {
            place: Place::Uplink,
            ns_label: HOST_LABEL.to_string(),
            netns: host.clone(),
            link,
        })
        .collect();
    Ok(DiscoveredPath {
        target_label: label.to_string(),
        hops,
        ctr_addrs: host_addrs,
        bridge_ports: Vec::new(),
        uplink_addrs,
        exits: Vec::new(),
        tunnels,
    })
}

/// The tunnel devices among `uplinks`: their hook label and what they are.
fn tunnels_of<'l>(
    links: &[Link],
    uplinks: impl Iterator<Item = &'l Link>,
) -> Vec<(String, String)> {
    let name_of = |i: u32| {
        links
            .iter()
            .find(|l| l.ifindex == i)
            .map_or_else(|| format!("if{i}"), |l| l.name.clone())
    };
    uplinks
        .filter_map(|u| {
            Some((
                format!("{HOST_LABEL}:{}", u.name),
                u.tunnel.as_ref()?.describe(name_of),
            ))
        })
        .collect()
}

/// The host interfaces `--uplink` names.
fn named_uplinks<'l>(links: &'l [Link], q: &PathQuery) -> Result<Vec<&'l Link>, PathError> {
    q.uplinks
        .iter()
        .map(|name| {
            links
                .iter()
                .find(|l| &l.name == name)
                .ok_or_else(|| PathError::NoIface {
                    ns: HOST_LABEL.into(),
                    iface: name.clone(),
                })
        })
        .collect()
}

/// The label of the host's namespace in hook names (`host:docker0`).
pub(crate) const HOST_LABEL: &str = "host";

/// Runs inside the traced namespace: picks the interface and reads its addresses.
fn inside(label: &str, q: &PathQuery) -> Result<(Link, Vec<IfAddr>), PathError> {
    let mut rtnl = Rtnl::open().map_err(rtnl_err(label))?;
    let links = rtnl.links().map_err(rtnl_err(label))?;
    let ifindex = match (&q.iface, q.to) {
        (Some(name), _) => links
            .iter()
            .find(|l| &l.name == name)
            .map(|l| l.ifindex)
            .ok_or_else(|| PathError::NoIface {
                ns: label.into(),
                iface: name.clone(),
            })?,
        (None, Some(to)) => match rtnl.route_get(to) {
            Ok(r) => r.oif,
            Err(_) => default_or_eth0(&mut rtnl, &links, label)?,
        },
        (None, None) => default_or_eth0(&mut rtnl, &links, label)?,
    };
    let link = links
        .into_iter()
        .find(|l| l.ifindex == ifindex)
        .ok_or_else(|| PathError::NoIface {
            ns: label.into(),
            iface: format!("ifindex {ifindex}"),
        })?;
    let addrs = rtnl
        .addrs()
        .map_err(rtnl_err(label))?
        .into_iter()
        .filter(|a| a.ifindex == link.ifindex && !is_link_local(a.addr))
        .collect();
    Ok((link, addrs))
}

fn default_or_eth0(rtnl: &mut Rtnl, links: &[Link], label: &str) -> Result<u32, PathError> {
    if let Some(oif) = rtnl
        .default_route(Family::V4)
        .map_err(rtnl_err(label))?
        .and_then(|r| r.oif)
    {
        return Ok(oif);
    }
    links
        .iter()
        .find(|l| l.name == "eth0")
        .map(|l| l.ifindex)
        .ok_or_else(|| PathError::NoDefaultRoute { ns: label.into() })
}

fn is_link_local(a: IpAddr) -> bool {
    match a {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

impl DiscoveredPath {
    /// The traced interface, inside the traced namespace.
    pub fn ctr(&self) -> &Link {
        &self.hops[0].link
    }

    /// The host end of the traced interface's veth pair.
    pub fn host_veth(&self) -> &Link {
        &self.hops[1].link
    }

    /// The hop at `place`, if the path has one.
    pub(crate) fn hop(&self, place: Place) -> Option<&PathHop> {
        self.hops.iter().find(|h| h.place == place)
    }

    /// The interface of the hop at `place`, if the path has one.
    pub fn link(&self, place: Place) -> Option<&Link> {
        self.hop(place).map(|h| &h.link)
    }

    /// The hooks of this path, slots numbered from `first_slot` (see [`hooks_of`]).
    pub(crate) fn hooks(&self, first_slot: u8) -> Vec<AttachTarget> {
        hooks_of(&self.hops, first_slot)
    }

    /// This path's own hops (the container's interface and its host veth) as seen from another
    /// container on the same bridge: that container's peer hops.
    pub(crate) fn as_peer(&self) -> Vec<PathHop> {
        let peer = |place| match place {
            Place::Container => Some(Place::PeerContainer),
            Place::Veth => Some(Place::PeerVeth),
            _ => None,
        };
        let mut hops: Vec<PathHop> = self
            .hops
            .iter()
            .filter_map(|h| peer(h.place).map(|place| PathHop { place, ..h.clone() }))
            .collect();
        // In path order: a packet from the traced side meets the peer's veth first.
        hops.sort_by_key(|h| Orientation::Outbound.rank(h.place, h.place.directions()[0]));
        hops
    }

    /// The topology snapshot for correlation, rendering and captures.
    pub(crate) fn topology(
        &self,
        targets: &[AttachTarget],
        nat_rules: Vec<crate::model::NatRule>,
    ) -> crate::model::Topology {
        crate::model::Topology {
            target: self.target_label.clone(),
            hooks: targets.iter().map(|t| t.hook.clone()).collect(),
            target_addrs: self.ctr_addrs.iter().map(|a| a.addr).collect(),
            uplink_addrs: self.uplink_addrs.iter().map(|a| a.addr).collect(),
            nat_rules,
        }
    }
}

/// The hooks of `hops`, slots numbered from `first_slot`: each hop's two directions, in the order
/// and with the roles its place gives (8 hooks for container, veth, bridge and uplink).
pub(crate) fn hooks_of(hops: &[PathHop], first_slot: u8) -> Vec<AttachTarget> {
    let directions = hops
        .iter()
        .flat_map(|hop| hop.place.directions().map(|d| (hop, d)));
    directions
        .zip(first_slot..)
        .map(|((hop, direction), slot)| AttachTarget {
            hook: Hook {
                slot,
                ns_label: hop.ns_label.clone(),
                ifname: hop.link.name.clone(),
                ifindex: hop.link.ifindex,
                direction,
                place: hop.place,
                role: hop.place.role(direction),
            },
            netns: hop.netns.clone(),
        })
        .collect()
}
