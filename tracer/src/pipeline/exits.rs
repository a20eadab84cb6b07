//! Packets that were last seen where the host routes them (the bridge's ingress hook, or the host
//! veth's when there is no bridge) and never at a traced uplink: the kernel is asked where it
//! forwards such a packet (`ip route get DST from SRC iif DEV`, policy rules included). When that
//! is an interface no hook watches, the packets left by it as far as the host's routes tell, and
//! the report says so instead of calling them lost ([`StopCause::UntracedExit`]).
//!
//! Marks cannot be seen from here: when a rule by firewall mark could send the packet out of an
//! untraced interface, the report names that route and the mark it depends on.

use std::{collections::HashMap, net::IpAddr, sync::Arc};

use crate::{
    correlate::{FlowReport, Leg, Stop, StopCause},
    discover::{
        rtnl::{Family, Link, RouteQuery, Rtnl},
        uplinks,
    },
    model::{Direction, Hook, Orientation, Place, Topology},
};

use super::annotate::Annotator;

/// Route answers kept at most (one per source, destination and arrival interface).
const MAX_CACHED: usize = 1024;

/// Where an untraced exit goes: the interface and the route, as the report prints them.
type Exit = Option<(String, String)>;

/// The annotator (see the module's doc). Opens its netlink socket on first use, on the thread
/// that annotates (in the host's namespace).
pub(crate) struct UntracedExits {
    topology: Arc<Topology>,
    rtnl: Option<Rtnl>,
    links: Vec<Link>,
    /// Marks policy rules look for, per family, read once.
    marks: HashMap<bool, Vec<u32>>,
    cache: HashMap<RouteQuery, Exit>,
}

impl UntracedExits {
    pub(crate) fn new(topology: Arc<Topology>) -> Self {
        Self {
            topology,
            rtnl: None,
            links: Vec::new(),
            marks: HashMap::new(),
            cache: HashMap::new(),
        }
    }

    /// The hook packets were last seen at, if it is where the host routes them.
    fn routing_hook(&self, label: &str, dir: Direction) -> Option<&Hook> {
        let hooks = &self.topology.hooks;
        let hook = hooks
            .iter()
            .find(|h| h.direction == dir && h.label() == label)?;
        let bridged = hooks.iter().any(|h| h.place == Place::Bridge);
        let routes_here = dir == Direction::Ingress
            && (hook.place == Place::Bridge || (hook.place == Place::Veth && !bridged));
        routes_here.then_some(hook)
    }

    fn traced_egress(&self, oif: u32) -> bool {
        self.topology
            .hooks
            .iter()
            .any(|h| h.ifindex == oif && h.direction == Direction::Egress && !h.place.is_source())
    }

    fn name(&mut self, ifindex: u32) -> String {
        if !self.links.iter().any(|l| l.ifindex == ifindex) {
            if let Some(links) = self.rtnl.as_mut().and_then(|r| r.links().ok()) {
                self.links = links;
            }
        }
        self.links
            .iter()
            .find(|l| l.ifindex == ifindex)
            .map_or_else(|| format!("if{ifindex}"), |l| l.name.clone())
    }

    /// The untraced interface and route a packet from `src` to `dst` arriving on `iif` leaves
    /// by, if it does.
    fn exit(&mut self, src: IpAddr, dst: IpAddr, iif: u32) -> Exit {
        let plain = RouteQuery {
            dst,
            src: Some(src),
            iif: Some(iif),
            mark: None,
        };
        if let Some(known) = self.cache.get(&plain) {
            return known.clone();
        }
        if self.rtnl.is_none() {
            match Rtnl::open() {
                Ok(r) => self.rtnl = Some(r),
                Err(e) => {
                    tracing::debug!("route lookups: {e}");
                    return None;
                }
            }
        }
        let mut found = self.lookup(&plain, iif);
        if found.is_none() {
            // A rule by mark may send the packet elsewhere; its mark is not visible here.
            for mark in self.marks(src) {
                let marked = RouteQuery {
                    mark: Some(mark),
                    ..plain
                };
                if let Some((via, route)) = self.lookup(&marked, iif) {
                    found = Some((
                        via,
                        format!("{route}, if the packet carries mark {mark:#x}, which pathtrace cannot see"),
                    ));
                    break;
                }
            }
        }
        if self.cache.len() >= MAX_CACHED {
            self.cache.clear();
        }
        self.cache.insert(plain, found.clone());
        found
    }

    /// One lookup: the untraced interface and the route text, or `None` when the route is to a
    /// traced interface, back where it came from, to the host itself, or there is none.
    fn lookup(&mut self, q: &RouteQuery, iif: u32) -> Exit {
        let info = match self.rtnl.as_mut()?.route_lookup(q) {
            Ok(info) => info,
            Err(e) => {
                tracing::debug!("route for {q:?}: {e}");
                return None;
            }
        };
        let via = self.name(info.oif);
        if info.oif == iif || via == "lo" || self.traced_egress(info.oif) {
            return None;
        }
        let links = self.links.clone();
        let names = |i: u32| {
            links
                .iter()
                .find(|l| l.ifindex == i)
                .map_or_else(|| format!("if{i}"), |l| l.name.clone())
        };
        Some((via, uplinks::describe_lookup(q, &info, names)))
    }

    fn marks(&mut self, src: IpAddr) -> Vec<u32> {
        let v4 = src.is_ipv4();
        if let Some(m) = self.marks.get(&v4) {
            return m.clone();
        }
        let family = if v4 { Family::V4 } else { Family::V6 };
        let mut marks: Vec<u32> = self
            .rtnl
            .as_mut()
            .and_then(|r| r.rules(family).ok())
            .unwrap_or_default()
            .iter()
            .filter(|r| r.table.is_some())
            .filter_map(|r| r.fwmark.map(|(mark, _)| mark))
            .collect();
        marks.dedup();
        self.marks.insert(v4, marks.clone());
        marks
    }
}

impl Annotator for UntracedExits {
    fn annotate(&mut self, flow: &mut FlowReport) {
        let (src, dst) = (flow.src.addr, flow.dst.addr);
        // The leg that carries the traced side's packets out, and their addresses as they
        // arrive where the host routes them.
        let (leg, from, to) = match flow.origin {
            Orientation::Outbound => (Leg::Out, src, dst),
            Orientation::Inbound => (Leg::Back, dst, src),
        };
        for i in 0..flow.stops.len() {
            let stop = &flow.stops[i];
            if stop.leg != leg || stop.cause != StopCause::NotSeen || stop.reason.is_some() {
                continue;
            }
            let Some(iif) = self
                .routing_hook(&stop.after_hook, stop.after_dir)
                .map(|h| h.ifindex)
            else {
                continue;
            };
            if let Some((via, route)) = self.exit(from, to, iif) {
                flow.stops[i].cause = StopCause::UntracedExit { via, route };
            }
        }
        // A leg whose every packet ends where the host routes it (answered, so no stop was
        // reported): the path ends there only if the host kept them.
        let hops = match leg {
            Leg::Out => &flow.hops,
            Leg::Back => &flow.hops_back,
        };
        let Some(last) = hops.last() else {
            return;
        };
        let stopped_there = flow
            .stops
            .iter()
            .any(|s| s.leg == leg && s.after_hook == last.hook && s.after_dir == last.dir);
        if stopped_there {
            return;
        }
        let (hook, dir, packets) = (last.hook.clone(), last.dir, last.packets);
        let Some(iif) = self.routing_hook(&hook, dir).map(|h| h.ifindex) else {
            return;
        };
        if let Some((via, route)) = self.exit(from, to, iif) {
            flow.stops.push(Stop {
                leg,
                after_hook: hook,
                after_dir: dir,
                count: packets,
                reason: None,
                cause: StopCause::UntracedExit { via, route },
            });
        }
    }
}
