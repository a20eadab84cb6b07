//! `pathtrace --container NAME`: resolve the container through the Docker API, trace every one
//! of its interfaces, and follow it across restarts (new namespace, new veth) by Docker events.

use std::{net::IpAddr, process::ExitCode, sync::Arc};

use anyhow::Context as _;
use futures::StreamExt as _;
use tokio::sync::{mpsc, Notify};
use tracer_common::config::EndpointKey;

use super::{
    filter::filter_config,
    live::{LiveView, ViewOptions},
    output::Output,
    session::{self, Control, SessionSpec},
    trace::{ring_bytes, runtime},
};
use crate::{
    attach::{AttachTarget, LoadOptions},
    cli::TraceArgs,
    discover::{
        docker::{ContainerEvent, ContainerInfo, ContainerPath, Docker, PublishedPort},
        nat_rules,
    },
    model::{Place, RuleAttributor, Topology},
    render::Format,
};

/// Container-side hooks (its interface and the host veth, both directions) per interface.
const SLOTS_PER_IFACE: u8 = 4;

pub fn run(args: TraceArgs, spec: &str) -> anyhow::Result<ExitCode> {
    let filter = filter_config(&args)?;
    let rt = runtime()?;
    let docker = rt.block_on(Docker::connect())?;
    let info = rt.block_on(docker.resolve(spec))?;
    let paths = info.paths(args.to)?;
    let targets = container_targets(&paths)?;
    let rules = Arc::new(nat_rules::snapshot().context("reading the NAT ruleset")?);
    let topology = Arc::new(topology(&info, &paths, &targets, rules.rules()));
    let interest = published_interest(&info.published, &topology.uplink_addrs);
    let attributor: Arc<dyn RuleAttributor> = rules.clone();
    let mut view = LiveView::new(
        topology,
        Some(attributor),
        ViewOptions {
            format: if args.json {
                Format::Json
            } else {
                Format::Text
            },
            max_flows: args.max_flows,
            confirm_conntrack: true,
            updates: true,
        },
        Output::stdout(),
    );
    let (tx, rx) = mpsc::channel(16);
    let follower = rt.spawn(follow(docker, info.clone(), args.to, tx, args.exit_on_stop));
    let session = SessionSpec {
        targets,
        load: LoadOptions {
            filter,
            ring_bytes: ring_bytes(args.ring_size)?,
            kernel_log: args.kernel_log,
        },
        mode: args.tc_mode,
        duration: args.duration,
        count: args.count,
        interest,
        control: Some(rx),
    };
    let result = rt.block_on(session::run(session, &mut view, Arc::new(Notify::new())));
    follower.abort();
    result?;
    view.finish_output();
    Ok(ExitCode::SUCCESS)
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
                Place::Container | Place::Veth => {
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

fn topology(
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

/// The host ends of published ports: shared hooks emit packets to them from the first SYN on,
/// before the container has answered anything.
pub fn published_interest(
    published: &[PublishedPort],
    uplink_addrs: &[IpAddr],
) -> Vec<EndpointKey> {
    let mut keys = Vec::new();
    for p in published {
        let proto = match p.proto.as_str() {
            "tcp" => 6,
            "udp" => 17,
            _ => continue,
        };
        let addrs: Vec<IpAddr> = match p.host_ip {
            Some(ip) if !ip.is_unspecified() => vec![ip],
            _ => uplink_addrs.to_vec(),
        };
        for addr in addrs {
            let mut key = EndpointKey {
                port: p.host_port,
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
            keys.push(key);
        }
    }
    keys
}

/// Follows the container's lifecycle: re-attaches after a restart, reports stops.
async fn follow(
    docker: Docker,
    info: ContainerInfo,
    to: Option<IpAddr>,
    tx: mpsc::Sender<Control>,
    exit_on_stop: bool,
) {
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
                if exit_on_stop {
                    Control::Stop(format!("container {name} was removed; exiting"))
                } else {
                    Control::Note(format!("container {name} was removed"))
                }
            }
            ContainerEvent::WatchEnded { reason } => Control::Note(format!("Docker event stream ended ({reason}); restarts of {name} are no longer followed")),
            ContainerEvent::Killed { .. } | ContainerEvent::Stopped | ContainerEvent::Restarted => continue,
        };
        let stop = matches!(msg, Control::Stop(_));
        if tx.send(msg).await.is_err() || stop {
            return;
        }
    }
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
        .filter(|t| matches!(t.hook.place, Place::Container | Place::Veth))
        .collect();
    let slots = own.iter().map(|t| t.hook.slot).collect();
    let addrs = paths
        .iter()
        .flat_map(|p| p.path.ctr_addrs.iter().map(|a| a.addr))
        .collect();
    Ok((own, addrs, slots))
}
