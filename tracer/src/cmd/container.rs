//! `pathtrace --container NAME`: resolve the container through the Docker API, trace every one
//! of its interfaces, and follow it across restarts (new namespace, new veth) by Docker events.

use std::{
    collections::HashMap,
    net::IpAddr,
    process::ExitCode,
    sync::{Arc, Mutex},
};

use anyhow::Context as _;
use futures::StreamExt as _;
use tokio::sync::mpsc;
use tracer_common::config::EndpointKey;

use super::{
    live::{FlowNotes, LiveView, ViewOptions},
    output::Output,
    session::Control,
    trace::{load_in_background, open_capture, runtime, trace_with, Extras},
};
use crate::{
    attach::AttachTarget,
    cli::TraceArgs,
    correlate::{FlowId, FlowReport, Orientation},
    discover::{
        conntrack,
        docker::{ContainerEvent, ContainerInfo, ContainerPath, Docker, PublishedPort},
        nat_rules,
        path::{self, DiscoveredPath},
        rtnl::Rtnl,
    },
    model::{Endpoint, Place, Proto, RuleAttributor, Topology},
};

/// Container-side hooks (its interface and the host veth, both directions) per interface.
const SLOTS_PER_IFACE: u8 = 4;

pub fn run(args: TraceArgs, spec: &str) -> anyhow::Result<ExitCode> {
    let rt = runtime()?;
    // The kernel object loads while the container is resolved.
    let mut tracer = load_in_background(&args, &rt)?;
    let docker = rt.block_on(Docker::connect())?;
    let info = rt.block_on(docker.resolve(spec))?;
    let paths = info.paths(args.to)?;
    let mut targets = container_targets(&paths)?;
    if let Some(to) = args.to {
        let peer = rt.block_on(peer_targets(&docker, &info, &paths, to))?;
        add_shared(&mut targets, peer)?;
    }
    // Attaching starts as soon as the object is loaded; the NAT rules are read meanwhile.
    tracer.attach(targets.clone());
    let rules = Arc::new(nat_rules::snapshot().context("reading the NAT ruleset")?);
    let topology = Arc::new(topology(&info, &paths, &targets, rules.rules()));
    let view_topology = topology.clone();
    let interest = published_interest(
        &info.published,
        &topology.uplink_addrs,
        &topology.target_addrs,
    );
    let attributor: Arc<dyn RuleAttributor> = rules.clone();
    let mut view = LiveView::new(
        topology,
        Some(attributor),
        ViewOptions::live(&args),
        Output::stdout(),
    );
    view.set_flow_notes(ProxyHint::new(&info, &paths).into_notes());
    let (tx, rx) = mpsc::channel(16);
    let follower = rt.spawn(follow(docker, info.clone(), args.to, tx, args.exit_on_stop));
    let capture = open_capture(&args, &view_topology)?;
    let extras = Extras {
        interest,
        control: Some(rx),
        capture,
    };
    let result = trace_with(&rt, tracer, &args, view, extras);
    let removed = if follower.is_finished() {
        rt.block_on(follower).ok().flatten()
    } else {
        follower.abort();
        None
    };
    result?;
    match removed {
        Some(why) => anyhow::bail!(why),
        None => Ok(ExitCode::SUCCESS),
    }
}

/// Hooks for every interface of the container: interface `i` gets slots `4i..4i+4` for its
/// container-side hooks (kept across restarts), then bridges and uplinks, each once.
pub fn container_targets(paths: &[ContainerPath]) -> anyhow::Result<Vec<AttachTarget>> {
    let mut own = Vec::new();
    let mut shared: Vec<AttachTarget> = Vec::new();
    for (i, p) in paths.iter().enumerate() {
        let base = u8::try_from(i)
            .ok()
            .and_then(|i| i.checked_mul(SLOTS_PER_IFACE))
            .context("too many interfaces")?;
        for (j, mut t) in p.path.hooks(0).into_iter().enumerate() {
            match t.hook.place {
                place if place.is_source() => {
                    t.hook.slot = base + j as u8;
                    own.push(t);
                }
                _ => {
                    let dup = shared.iter().any(|s| {
                        s.hook.ifindex == t.hook.ifindex && s.hook.direction == t.hook.direction
                    });
                    if !dup {
                        shared.push(t);
                    }
                }
            }
        }
    }
    let mut next = u8::try_from(own.len()).context("too many hooks")?;
    for t in &mut shared {
        t.hook.slot = next;
        next += 1;
    }
    anyhow::ensure!(
        usize::from(next) <= tracer_common::MAX_HOOKS,
        "{} hooks needed, at most {} can be traced at once; name one interface with --iface",
        next,
        tracer_common::MAX_HOOKS
    );
    own.extend(shared);
    Ok(own)
}

/// Appends shared hooks after those of [`container_targets`], on the next free slots.
fn add_shared(targets: &mut Vec<AttachTarget>, more: Vec<AttachTarget>) -> anyhow::Result<()> {
    let mut next = targets.iter().map(|t| t.hook.slot + 1).max().unwrap_or(0);
    for mut t in more {
        t.hook.slot = next;
        next += 1;
        targets.push(t);
    }
    anyhow::ensure!(
        usize::from(next) <= tracer_common::MAX_HOOKS,
        "{next} hooks needed, at most {} can be traced at once",
        tracer_common::MAX_HOOKS
    );
    Ok(())
}

/// With `--to` another container on one of the traced container's bridges: that container's
/// host veth and interface. Bridged traffic never crosses the bridge device's own tc hooks, so
/// these are where it shows on the far side. Empty when no other running container holds `to`.
async fn peer_targets(
    docker: &Docker,
    info: &ContainerInfo,
    paths: &[ContainerPath],
    to: IpAddr,
) -> anyhow::Result<Vec<AttachTarget>> {
    let bridged = paths
        .iter()
        .any(|p| p.path.hop(Place::Bridge).is_some() && p.path.hop(Place::Uplink).is_none());
    if !bridged {
        return Ok(Vec::new());
    }
    for c in docker.list_running().await? {
        if c.id == info.id {
            continue;
        }
        let peer = match docker.resolve(&c.id).await {
            Ok(peer) => peer,
            // Stopped meanwhile, host network, shared namespace, ...: not a peer to attach to.
            Err(e) => {
                tracing::debug!("container {}: {e}", c.name);
                continue;
            }
        };
        if peer.pid == info.pid || !peer.networks.iter().any(|n| n.ip == Some(to)) {
            continue;
        }
        let paths = peer.paths(Some(to))?;
        if let Some(p) = paths.iter().find(|p| p.iface.network.ip == Some(to)) {
            return Ok(peer_hooks(&p.path));
        }
    }
    Ok(Vec::new())
}

/// The peer container's host veth and interface, both directions, labelled with its name. Shared:
/// they emit packets to and from the traced container's endpoints of interest only.
fn peer_hooks(path: &DiscoveredPath) -> Vec<AttachTarget> {
    path::hooks_of(&path.as_peer(), 0)
}

/// The note for connections to a published port that docker-proxy (the userland proxy) opened
/// from the host: the container sees them come from the bridge's own address, and no DNAT step
/// exists to show, so the path alone would mislead.
pub const PROXY_NOTE: &str = "carried by docker-proxy (userland proxy) from the host, not by DNAT";

/// Recognises docker-proxy's connections: from an address of the container's bridge to a
/// published container port, with no DNAT in their conntrack entry (a host process connecting to
/// the bridge address is DNATed in OUTPUT and also comes from there).
struct ProxyHint {
    bridge_addrs: Vec<IpAddr>,
    published: Vec<PublishedPort>,
    /// Verdicts per flow, once conntrack answered.
    seen: Mutex<HashMap<FlowId, Option<String>>>,
}

impl ProxyHint {
    fn new(info: &ContainerInfo, paths: &[ContainerPath]) -> Self {
        let bridges: Vec<u32> = paths
            .iter()
            .filter_map(|p| p.path.link(Place::Bridge).map(|b| b.ifindex))
            .collect();
        let mut bridge_addrs: Vec<IpAddr> = info
            .networks
            .iter()
            .filter(|n| n.bridge_name.is_some())
            .filter_map(|n| n.gateway)
            .collect();
        match Rtnl::open().and_then(|mut r| r.addrs()) {
            Ok(addrs) => bridge_addrs.extend(
                addrs
                    .into_iter()
                    .filter(|a| bridges.contains(&a.ifindex))
                    .map(|a| a.addr),
            ),
            Err(e) => tracing::debug!("bridge addresses: {e}"),
        }
        Self {
            bridge_addrs,
            published: info.published.clone(),
            seen: Mutex::new(HashMap::new()),
        }
    }

    fn into_notes(self) -> FlowNotes {
        Box::new(move |f| self.notes(f))
    }

    fn notes(&self, f: &FlowReport) -> Vec<String> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(known) = seen.get(&f.id) {
            return known.iter().cloned().collect();
        }
        let (client, server) = match f.origin {
            Orientation::Inbound => (f.src, f.dst),
            Orientation::Outbound => (f.dst, f.src),
        };
        let Some(port) = self.published_port(f.proto, client, server) else {
            seen.insert(f.id, None);
            return Vec::new();
        };
        let note = format!(
            "{PROXY_NOTE}: a client of host port {}/{} reached docker-proxy, which connected to \
             the container from the bridge address {}",
            port.host_port, port.proto, client.addr
        );
        match conntrack::lookup(f.proto, client, server) {
            // No entry with this original tuple: DNATed (its original destination was the
            // host port), or gone already; ask again on the next update when it was gone.
            Ok(None) => match conntrack::lookup_reply(f.proto, server, client) {
                Ok(Some(_)) => {
                    seen.insert(f.id, None);
                    Vec::new()
                }
                _ => vec![note],
            },
            Ok(Some(_)) => {
                seen.insert(f.id, Some(note.clone()));
                vec![note]
            }
            Err(e) => {
                tracing::debug!("conntrack: {e}");
                vec![note]
            }
        }
    }

    /// The published port `server` is the container end of, when `client` is the bridge.
    fn published_port(
        &self,
        proto: Proto,
        client: Endpoint,
        server: Endpoint,
    ) -> Option<&PublishedPort> {
        if !self.bridge_addrs.contains(&client.addr) {
            return None;
        }
        self.published
            .iter()
            .find(|p| p.container_port == server.port && p.proto == proto)
    }
}

pub fn topology(
    info: &ContainerInfo,
    paths: &[ContainerPath],
    targets: &[AttachTarget],
    nat_rules: Vec<crate::model::NatRule>,
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
        target: info.name.clone(),
        hooks: targets.iter().map(|t| t.hook.clone()).collect(),
        target_addrs: paths
            .iter()
            .flat_map(|p| p.path.ctr_addrs.iter().map(|a| a.addr))
            .collect(),
        uplink_addrs,
        nat_rules,
    }
}

/// The endpoints of published ports: their host ends, so that shared hooks emit packets to them
/// from the first SYN on, before the container has answered anything; and their container ends,
/// so that the bridge's egress hook sees that SYN after DNAT too (its client becomes of interest
/// only at the container's own hooks, one hop later).
pub fn published_interest(
    published: &[PublishedPort],
    uplink_addrs: &[IpAddr],
    ctr_addrs: &[IpAddr],
) -> Vec<EndpointKey> {
    let mut keys = Vec::new();
    for p in published {
        if !p.proto.has_ports() {
            continue;
        }
        let proto = p.proto.number();
        let host: Vec<IpAddr> = match p.host_ip {
            Some(ip) if !ip.is_unspecified() => vec![ip],
            _ => uplink_addrs.to_vec(),
        };
        let host = host.into_iter().map(|a| (a, p.host_port));
        let ctr = ctr_addrs.iter().map(|a| (*a, p.container_port));
        for (addr, port) in host.chain(ctr) {
            keys.push(endpoint_key(addr, port, proto));
        }
    }
    keys
}

fn endpoint_key(addr: IpAddr, port: u16, proto: u8) -> EndpointKey {
    let mut key = EndpointKey {
        port,
        proto,
        ..EndpointKey::default()
    };
    match addr {
        IpAddr::V4(a) => {
            key.family = 4;
            key.addr[..4].copy_from_slice(&a.octets());
        }
        IpAddr::V6(a) => {
            key.family = 6;
            key.addr = a.octets();
        }
    }
    key
}

/// Follows the container's lifecycle: re-attaches after a restart, reports stops. Returns
/// `Some(why)` when the container was removed, which ends the trace as an error.
async fn follow(
    docker: Docker,
    info: ContainerInfo,
    to: Option<IpAddr>,
    tx: mpsc::Sender<Control>,
    exit_on_stop: bool,
) -> Option<String> {
    let name = info.name.clone();
    let mut events = Box::pin(docker.watch(&info.id));
    while let Some(ev) = events.next().await {
        let msg = match ev {
            ContainerEvent::Started { pid } => match reattach(&docker, &info.id, to).await {
                Ok((attach, target_addrs, detach_slots)) => {
                    let veths: Vec<String> = attach.iter().filter(|t| t.hook.place == Place::Veth).map(|t| t.hook.ifname.clone()).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
                    Control::Replace {
                        detach_slots,
                        attach,
                        target_addrs,
                        note: format!("container {name} started again (pid {pid}, new network namespace); following it on host {}", veths.join(", ")),
                    }
                }
                Err(e) => Control::Note(format!("container {name} started again (pid {pid}) but could not be re-attached: {e:#}")),
            },
            ContainerEvent::Died { exit_code } => {
                let code = exit_code.map(|c| format!(" (exit code {c})")).unwrap_or_default();
                if exit_on_stop {
                    Control::Stop(format!("container {name} stopped{code}; exiting (--exit-on-stop)"))
                } else {
                    Control::Note(format!("container {name} stopped{code}; what was seen is kept, waiting for it to start again"))
                }
            }
            ContainerEvent::Destroyed => {
                // Nothing can bring this container back: stop, and say so as an error.
                // The session may be gone already; then there is nobody left to tell.
                tx.send(Control::Stop(format!("container {name} was removed"))).await.ok();
                return Some(format!(
                    "container {name} was removed while being traced (what was seen is above); trace its replacement with --container <new name>"
                ));
            }
            ContainerEvent::WatchEnded { reason } => Control::Note(format!("Docker event stream ended ({reason}); restarts of {name} are no longer followed")),
            ContainerEvent::Killed { .. } | ContainerEvent::Stopped | ContainerEvent::Restarted => continue,
        };
        let stop = matches!(msg, Control::Stop(_));
        if tx.send(msg).await.is_err() || stop {
            return None;
        }
    }
    None
}

async fn reattach(
    docker: &Docker,
    id: &str,
    to: Option<IpAddr>,
) -> anyhow::Result<(Vec<AttachTarget>, Vec<IpAddr>, Vec<u8>)> {
    let info = docker.resolve(id).await?;
    let paths = info.paths(to)?;
    let targets = container_targets(&paths)?;
    let own: Vec<AttachTarget> = targets
        .into_iter()
        .filter(|t| t.hook.place.is_source())
        .collect();
    let slots = own.iter().map(|t| t.hook.slot).collect();
    let addrs = paths
        .iter()
        .flat_map(|p| p.path.ctr_addrs.iter().map(|a| a.addr))
        .collect();
    Ok((own, addrs, slots))
}
