//! What to attach and how to explain what is seen: from a discovered path (a namespace) or from a
//! runtime's target (every interface of a container), the hooks with their slots, the topology
//! snapshot, the NAT rules in force, and the endpoints of interest known before any packet.
//!
//! Building a plan is split in two so that attaching overlaps the slow part: the hooks first
//! ([`DiscoveredPath::hooks`], [`container_hooks`]), handed to the loading tracer at once; then the
//! NAT ruleset is read ([`Plan::for_path`], [`Plan::for_container`]) while the links are made.

use std::{net::IpAddr, sync::Arc};

use anyhow::Context as _;
use tracer_common::{config::EndpointKey, MAX_HOOKS};

use crate::{
    attach::AttachTarget,
    discover::{
        nat_rules::{self, NatRuleset},
        path::{self, DiscoveredPath},
    },
    model::{family_and_bytes, NatRule, Place, RuleAttributor, Topology},
    runtime::{ContainerRuntime, PublishedPort, Target, TargetPath, Wanted},
};

/// Container-side hooks (its interface and the host veth, both directions) per interface.
const SLOTS_PER_IFACE: u8 = 4;

/// Hooks, topology, NAT rules and endpoints of interest of one trace.
pub(crate) struct Plan {
    pub targets: Vec<AttachTarget>,
    pub topology: Arc<Topology>,
    pub rules: Arc<NatRuleset>,
    /// What attribution reads: `rules`, until a restart reads them again.
    live: Arc<LiveRules>,
    /// Remote endpoints of interest from the start (published ports).
    pub interest: Vec<EndpointKey>,
}

impl Plan {
    /// The plan of one namespace's path; `targets` are its hooks (`found.hooks(0)`). Reads the NAT
    /// ruleset.
    pub(crate) fn for_path(
        found: &DiscoveredPath,
        targets: Vec<AttachTarget>,
    ) -> anyhow::Result<Self> {
        let rules = Arc::new(read_rules()?);
        let topology = Arc::new(found.topology(&targets, rules.rules()));
        Ok(Self {
            targets,
            topology,
            live: LiveRules::new(rules.clone()),
            rules,
            interest: Vec::new(),
        })
    }

    /// The plan of a container's paths; `targets` are their hooks ([`container_hooks`], peers
    /// added). Reads the NAT ruleset.
    pub(crate) fn for_container(
        target: &Target,
        paths: &[TargetPath],
        targets: Vec<AttachTarget>,
    ) -> anyhow::Result<Self> {
        let rules = Arc::new(read_rules()?);
        let topology = container_topology(target, paths, &targets, rules.rules());
        let interest = published_interest(
            &target.published,
            &topology.uplink_addrs,
            &topology.target_addrs,
        );
        Ok(Self {
            targets,
            topology: Arc::new(topology),
            live: LiveRules::new(rules.clone()),
            rules,
            interest,
        })
    }

    /// What names the rule of each NAT step: the ruleset read for this plan, read again when
    /// [`LiveRules::refresh`] is called (a restarted pod has chains of its own).
    pub(crate) fn attributor(&self) -> Arc<LiveRules> {
        self.live.clone()
    }
}

/// The NAT ruleset attribution uses, replaced when the target restarts: the CNI bridge plugin
/// writes a chain per pod sandbox (`CNI-<hash>`), so a restarted pod's NAT is made by rules the
/// first snapshot does not have.
pub(crate) struct LiveRules(std::sync::RwLock<Arc<NatRuleset>>);

impl LiveRules {
    fn new(rules: Arc<NatRuleset>) -> Arc<Self> {
        Arc::new(Self(std::sync::RwLock::new(rules)))
    }

    /// Reads the ruleset again; on failure the old one stays (and is said in the log).
    pub(crate) fn refresh(&self) {
        match read_rules() {
            Ok(rules) => {
                *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(rules);
            }
            Err(e) => tracing::warn!("reading the NAT rules again after a restart: {e:#}"),
        }
    }
}

impl RuleAttributor for LiveRules {
    fn attribute(&self, query: &crate::model::NatQuery<'_>) -> Option<crate::model::Attribution> {
        let rules = self.0.read().unwrap_or_else(|e| e.into_inner()).clone();
        rules.attribute(query)
    }
}

fn read_rules() -> anyhow::Result<NatRuleset> {
    nat_rules::snapshot().context("reading the NAT ruleset")
}

/// Hooks for every interface of a container: interface `i` gets slots `4i..4i+4` for its
/// container-side hooks (kept across restarts), then bridges and uplinks, each once.
pub(crate) fn container_hooks(paths: &[TargetPath]) -> anyhow::Result<Vec<AttachTarget>> {
    let mut own = Vec::new();
    let mut shared: Vec<AttachTarget> = Vec::new();
    for (i, p) in paths.iter().enumerate() {
        let base = u8::try_from(i)
            .ok()
            .and_then(|i| i.checked_mul(SLOTS_PER_IFACE))
            .context("too many interfaces")?;
        for (j, mut t) in p.path.hooks(0).into_iter().enumerate() {
            if t.hook.place.is_source() {
                t.hook.slot = base + j as u8;
                own.push(t);
                continue;
            }
            let dup = shared
                .iter()
                .any(|s| s.hook.ifindex == t.hook.ifindex && s.hook.direction == t.hook.direction);
            if !dup {
                shared.push(t);
            }
        }
    }
    let mut next = u8::try_from(own.len()).context("too many hooks")?;
    for t in &mut shared {
        t.hook.slot = next;
        next += 1;
    }
    anyhow::ensure!(
        usize::from(next) <= MAX_HOOKS,
        "{next} hooks needed, at most {MAX_HOOKS} can be traced at once; name one interface with --iface"
    );
    own.extend(shared);
    Ok(own)
}

/// Appends shared hooks after those of [`container_hooks`], on the next free slots.
pub(crate) fn add_shared(
    targets: &mut Vec<AttachTarget>,
    more: Vec<AttachTarget>,
) -> anyhow::Result<()> {
    let mut next = targets.iter().map(|t| t.hook.slot + 1).max().unwrap_or(0);
    for mut t in more {
        t.hook.slot = next;
        next += 1;
        targets.push(t);
    }
    anyhow::ensure!(
        usize::from(next) <= MAX_HOOKS,
        "{next} hooks needed, at most {MAX_HOOKS} can be traced at once"
    );
    Ok(())
}

/// With `--to` another container on one of the traced container's bridges: that container's
/// host veth and interface, both directions, shared (they emit packets to and from the traced
/// container's endpoints of interest only). Bridged traffic never crosses the bridge device's
/// own tc hooks, so these are where it shows on the far side. Empty when no other running
/// container holds `to`.
pub(crate) async fn peer_hooks(
    runtime: &dyn ContainerRuntime,
    target: &Target,
    paths: &[TargetPath],
    to: IpAddr,
) -> anyhow::Result<Vec<AttachTarget>> {
    let bridged = paths
        .iter()
        .any(|p| p.path.hop(Place::Bridge).is_some() && p.path.hop(Place::Uplink).is_none());
    if !bridged {
        return Ok(Vec::new());
    }
    for c in runtime.list_running().await? {
        if c.id == target.id {
            continue;
        }
        let peer = match runtime.resolve(&Wanted::container(&c.id)).await {
            Ok(peer) => peer,
            // Stopped meanwhile, host network, shared namespace, ...: not a peer to attach to.
            Err(e) => {
                tracing::debug!("container {}: {e}", c.name);
                continue;
            }
        };
        if peer.netns == target.netns || !peer.networks.iter().any(|n| n.ip == Some(to)) {
            continue;
        }
        let paths = peer.paths(Some(to), &[])?;
        if let Some(p) = paths.iter().find(|p| p.iface.network.ip == Some(to)) {
            return Ok(path::hooks_of(&p.path.as_peer(), 0));
        }
    }
    Ok(Vec::new())
}

/// The topology snapshot of a container's paths.
pub(crate) fn container_topology(
    target: &Target,
    paths: &[TargetPath],
    hooks: &[AttachTarget],
    nat_rules: Vec<NatRule>,
) -> Topology {
    let mut uplink_addrs: Vec<IpAddr> = Vec::new();
    for p in paths {
        for a in &p.path.uplink_addrs {
            if !uplink_addrs.contains(&a.addr) {
                uplink_addrs.push(a.addr);
            }
        }
    }
    Topology {
        target: target.name.clone(),
        hooks: hooks.iter().map(|t| t.hook.clone()).collect(),
        target_addrs: target_addrs(paths),
        uplink_addrs,
        nat_rules,
    }
}

/// The container's own addresses on all its paths.
pub(crate) fn target_addrs(paths: &[TargetPath]) -> Vec<IpAddr> {
    paths
        .iter()
        .flat_map(|p| p.path.ctr_addrs.iter().map(|a| a.addr))
        .collect()
}

/// The endpoints of published ports: their host ends, so that shared hooks emit packets to them
/// from the first SYN on, before the container has answered anything; and their container ends,
/// so that the bridge's egress hook sees that SYN after DNAT too (its client becomes of interest
/// only at the container's own hooks, one hop later).
pub(crate) fn published_interest(
    published: &[PublishedPort],
    uplink_addrs: &[IpAddr],
    ctr_addrs: &[IpAddr],
) -> Vec<EndpointKey> {
    let mut keys = Vec::new();
    for p in published {
        if !p.proto.has_ports() {
            continue;
        }
        let host: Vec<IpAddr> = match p.host_ip {
            Some(ip) if !ip.is_unspecified() => vec![ip],
            _ => uplink_addrs.to_vec(),
        };
        let host = host.into_iter().map(|a| (a, p.host_port));
        let ctr = ctr_addrs.iter().map(|a| (*a, p.container_port));
        for (addr, port) in host.chain(ctr) {
            keys.push(endpoint_key(addr, port, p.proto.number()));
        }
    }
    keys
}

fn endpoint_key(addr: IpAddr, port: u16, proto: u8) -> EndpointKey {
    let (family, addr) = family_and_bytes(addr);
    EndpointKey {
        family,
        addr,
        port,
        proto,
    }
}
