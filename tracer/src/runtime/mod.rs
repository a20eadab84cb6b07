//! The container-runtime seam: a runtime resolves a name to a [`Target`] (its network namespace,
//! its networks and addresses, its published ports) and watches it ([`TargetEvent`]: started
//! again in a new namespace, stopped, removed). Nothing outside a runtime's own module knows
//! which runtime it is; everything else (paths, hooks, the trace, `inspect`) works on `Target`s.
//!
//! Docker and Podman ([`docker`], over the Docker Engine API Podman also serves) and the
//! Kubernetes CRI ([`cri`]: containerd, CRI-O) are the runtimes. [`connect`] finds every one this
//! host runs and [`Runtimes`] looks in each: a name found in one is that runtime's, a name found in
//! two is refused with the candidates. To add one: a module here that implements
//! [`ContainerRuntime`], and its line in [`select`].
//!
//! Which interface inside the namespace carries each network is found by address, the same way
//! for every runtime ([`Target::interfaces`]); from each interface [`Target::paths`] discovers the
//! path to the host's uplink.

pub mod cri;
pub mod docker;
mod select;

pub(crate) use self::select::{connect, Endpoints, RuntimeKind};

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use futures::{future::BoxFuture, stream::BoxStream};
use serde::Serialize;

use crate::{
    correlate::FlowReport,
    discover::{
        netns::{Netns, NetnsError},
        path::{self, DiscoveredPath, PathError, PathQuery},
        rtnl::{Rtnl, RtnlError},
    },
    model::Proto,
};

/// Why a runtime could not answer: the runtime's own error, whose message names the problem and
/// the fix in that runtime's terms (`docker ps -a`, "is dockerd running?").
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub(crate) struct RuntimeError(Box<dyn std::error::Error + Send + Sync + 'static>);

impl RuntimeError {
    pub(crate) fn new(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self(Box::new(e))
    }

    /// The container uses the host's network, when that is why it could not be resolved.
    pub(crate) fn host_network(&self) -> Option<&HostNetwork> {
        self.0.downcast_ref()
    }

    /// The runtime knows nothing by that name, when that is why it could not be resolved.
    pub(crate) fn unknown(&self) -> Option<&Unknown> {
        self.0.downcast_ref()
    }
}

/// What the user asked for: `--container NAME` (a name, an id or an id prefix, in any runtime;
/// with `-n` only Kubernetes containers of that namespace) or `--pod NAME [-n NS]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Wanted {
    pub name: String,
    pub pod: bool,
    /// `-n`: the Kubernetes namespace (for a pod, `default` when not given, as kubectl does).
    pub namespace: Option<String>,
}

impl Wanted {
    /// A container by name or id.
    pub(crate) fn container(name: &str) -> Self {
        Self {
            name: name.to_string(),
            pod: false,
            namespace: None,
        }
    }

    /// The namespace a pod is looked for in.
    pub(crate) fn pod_namespace(&self) -> &str {
        self.namespace.as_deref().unwrap_or("default")
    }

    /// `container named 'web'`, `pod named 'web' in namespace shop`.
    pub(crate) fn describe(&self) -> String {
        match (self.pod, &self.namespace) {
            (true, _) => format!(
                "pod named '{}' in namespace {}",
                self.name,
                self.pod_namespace()
            ),
            (false, Some(ns)) => format!("container named '{}' in namespace {ns}", self.name),
            (false, None) => format!("container named '{}'", self.name),
        }
    }

    /// This runtime's [`Unknown`] for it.
    pub(crate) fn unknown(&self, runtime: &str, suggestions: Vec<String>) -> RuntimeError {
        RuntimeError::new(Unknown {
            what: self.describe(),
            runtime: runtime.to_string(),
            suggestions,
            hints: Vec::new(),
        })
    }
}

/// A runtime does not know what was asked for: the names it has that are close, and what else
/// it can say (a pod of that name in another namespace).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("no {what} in {runtime}{}{}", did_you_mean(.suggestions), hint_text(.hints))]
pub(crate) struct Unknown {
    /// [`Wanted::describe`].
    pub what: String,
    /// Which runtimes were asked (`Docker`, `Docker, Podman or containerd (CRI)`).
    pub runtime: String,
    pub suggestions: Vec<String>,
    pub hints: Vec<String>,
}

fn did_you_mean(suggestions: &[String]) -> String {
    match suggestions {
        [] => String::new(),
        s => format!("; did you mean: {}?", s.join(", ")),
    }
}

fn hint_text(hints: &[String]) -> String {
    hints.iter().map(|h| format!("; {h}")).collect()
}

/// A container that uses the host's network namespace: no veth, no bridge, nothing between it
/// and the host. Its traffic is told apart on the host's uplinks by its sockets.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("container {name} uses the host network: it has no namespace of its own; `pathtrace --container {name}` traces its sockets' traffic on the host's uplinks")]
pub struct HostNetwork {
    pub name: String,
    /// The runtime's id: what its processes' cgroup paths hold.
    pub id: String,
    pub pid: u32,
}

/// One network a container is attached to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NetworkAttachment {
    pub network_name: String,
    pub network_id: String,
    /// The IPv4 address, or the global IPv6 one on an IPv6-only network.
    pub ip: Option<IpAddr>,
    pub prefix_len: u8,
    pub gateway: Option<IpAddr>,
    pub mac: Option<String>,
    /// The host bridge of a bridge network (Docker: `docker0` for "bridge", `br-<id[..12]>` for
    /// user-defined ones, or the name set in the network's options). `None` for other drivers
    /// (macvlan, ipvlan, overlay).
    pub bridge_name: Option<String>,
}

/// A `-p host_ip:host_port:container_port/proto` mapping.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct PublishedPort {
    pub proto: Proto,
    /// As the runtime reports it (`0.0.0.0` and `::` are the wildcards); `None` when it reports
    /// none.
    pub host_ip: Option<IpAddr>,
    pub host_port: u16,
    pub container_port: u16,
}

/// A running container, as every runtime describes it.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Target {
    /// The runtime that knows it, as [`ContainerRuntime::name`] says.
    pub runtime: String,
    pub id: String,
    /// How the runtime names it (without Docker's leading '/'); a Kubernetes pod is
    /// `namespace/name`, a container of one `namespace/pod/container`.
    pub name: String,
    /// Its main process, when the runtime has one.
    pub pid: Option<u32>,
    /// Its network namespace: `/proc/<pid>/ns/net` or a bind mount the runtime keeps.
    pub netns: PathBuf,
    /// Sorted by network name.
    pub networks: Vec<NetworkAttachment>,
    pub published: Vec<PublishedPort>,
    /// When it shares another container's network namespace (`--network container:NAME`):
    /// that container's name. Its veths are that container's.
    pub netns_owner: Option<String>,
}

/// A line of the runtime's list of running containers.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Listed {
    pub id: String,
    pub name: String,
    /// [`ContainerRuntime::name`].
    pub runtime: String,
}

/// What happens to a watched target.
#[derive(Clone, Debug)]
pub(crate) enum TargetEvent {
    /// It started again, in a new network namespace; resolved anew.
    Started(Target),
    /// It started again but could not be resolved (gone again, no network): why.
    StartedUnresolved { pid: Option<u32>, why: String },
    /// Its networks changed (`docker network connect` / `disconnect`): the target as it is now,
    /// and what changed, in the runtime's words.
    NetworksChanged { target: Target, what: String },
    /// Its networks changed but it could not be resolved after (no network left, ...).
    NetworksChangedUnresolved { what: String, why: String },
    /// It stopped; its namespace and veths are gone. It may start again.
    Stopped { exit_code: Option<i64> },
    /// It was removed: nothing more will come.
    Removed,
    /// The runtime's event stream ended or failed; this is the last event.
    WatchEnded { reason: String },
}

/// A container runtime.
pub(crate) trait ContainerRuntime: Send + Sync {
    /// `Docker`, `Podman`, `containerd (CRI)`: how messages name the runtime.
    fn name(&self) -> &str;

    /// Where it answers (`unix:///var/run/docker.sock`).
    fn endpoint(&self) -> &str;

    /// The running container or pod `wanted` names; [`Unknown`] when this runtime has none.
    fn resolve<'a>(&'a self, wanted: &'a Wanted) -> BoxFuture<'a, Result<Target, RuntimeError>>;

    /// The running containers.
    fn list_running(&self) -> BoxFuture<'_, Result<Vec<Listed>, RuntimeError>>;

    /// What happens to `target` from now on, until it is removed or the stream ends.
    fn watch(&self, target: &Target) -> BoxStream<'static, TargetEvent>;

    /// Notes the runtime can add to a traced flow of `target` that the path alone does not tell
    /// (Docker: a connection carried by its userland proxy); `None` when it has nothing to add.
    fn flow_notes(&self, _target: &Target, _paths: &[TargetPath]) -> Option<Box<dyn FlowNotes>> {
        None
    }
}

/// Adds runtime knowledge to a flow report. Runs on the annotation thread, where it may block on
/// a kernel lookup.
pub(crate) trait FlowNotes: Send {
    fn notes(&mut self, flow: &FlowReport) -> Vec<String>;
}

/// Why a target's interfaces or paths could not be found.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("container {name}: network {network} gave it no IP address; pathtrace finds its interface by address")]
    Unaddressed { name: String, network: String },
    #[error("container {name}: address {ip} of network {network} is on no interface in its namespace (did it just restart? try again)")]
    AddressNotFound {
        name: String,
        network: String,
        ip: IpAddr,
    },
    #[error("container {name}: {source}")]
    Netns { name: String, source: NetnsError },
    #[error("container {name}: netlink in its namespace: {source}")]
    Netlink { name: String, source: RtnlError },
    #[error("container {name}: {source}")]
    Path { name: String, source: PathError },
}

/// A network of the container and the interface that carries it inside its namespace.
#[derive(Clone, Debug, Serialize)]
pub struct TargetIface {
    pub ifname: String,
    pub ifindex: u32,
    pub network: NetworkAttachment,
}

/// The discovered path of one container interface.
#[derive(Clone, Debug)]
pub struct TargetPath {
    pub iface: TargetIface,
    pub path: DiscoveredPath,
}

impl Target {
    /// The container's network namespace.
    pub(crate) fn open_netns(&self) -> Result<Netns, TargetError> {
        Netns::open(&self.netns).map_err(|source| TargetError::Netns {
            name: self.name.clone(),
            source,
        })
    }

    /// One (interface, network) pair per network, found by address inside the container's
    /// namespace (`eth0`, `eth1`, ...), sorted by interface name.
    pub(crate) fn interfaces(&self) -> Result<Vec<TargetIface>, TargetError> {
        interfaces_in(&self.name, &self.networks, &self.open_netns()?)
    }

    /// [`path::discover`] for every interface of the container, labelled with its name; `to`
    /// picks the uplink (default: the default routes its traffic can take), `uplinks` adds more.
    pub(crate) fn paths(
        &self,
        to: Option<IpAddr>,
        uplinks: &[String],
    ) -> Result<Vec<TargetPath>, TargetError> {
        let netns = Arc::new(self.open_netns()?);
        paths_of(&self.name, &self.networks, netns, to, uplinks)
    }
}

/// [`Target::interfaces`] for a container named `name` with `networks`, in `netns`.
pub(crate) fn interfaces_in(
    name: &str,
    networks: &[NetworkAttachment],
    netns: &Netns,
) -> Result<Vec<TargetIface>, TargetError> {
    let dump = netns
        .run(|| -> Result<_, RtnlError> {
            let mut rtnl = Rtnl::open()?;
            Ok((rtnl.links()?, rtnl.addrs()?))
        })
        .map_err(|source| TargetError::Netns {
            name: name.to_string(),
            source,
        })?;
    let (links, addrs) = dump.map_err(|source| TargetError::Netlink {
        name: name.to_string(),
        source,
    })?;
    let mut out = Vec::new();
    for network in networks {
        let ip = network.ip.ok_or_else(|| TargetError::Unaddressed {
            name: name.to_string(),
            network: network.network_name.clone(),
        })?;
        let link = addrs
            .iter()
            .find(|a| a.addr == ip)
            .and_then(|a| links.iter().find(|l| l.ifindex == a.ifindex))
            .ok_or_else(|| TargetError::AddressNotFound {
                name: name.to_string(),
                network: network.network_name.clone(),
                ip,
            })?;
        out.push(TargetIface {
            ifname: link.name.clone(),
            ifindex: link.ifindex,
            network: network.clone(),
        });
    }
    out.sort_by(|a, b| a.ifname.cmp(&b.ifname));
    Ok(out)
}

/// [`Target::paths`] for a container named `name` with `networks`, in `netns`.
pub(crate) fn paths_of(
    name: &str,
    networks: &[NetworkAttachment],
    netns: Arc<Netns>,
    to: Option<IpAddr>,
    uplinks: &[String],
) -> Result<Vec<TargetPath>, TargetError> {
    interfaces_in(name, networks, &netns)?
        .into_iter()
        .map(|iface| {
            let q = PathQuery {
                iface: Some(iface.ifname.clone()),
                to,
                uplinks: uplinks.to_vec(),
            };
            let path =
                path::discover(name, netns.clone(), &q).map_err(|source| TargetError::Path {
                    name: name.to_string(),
                    source,
                })?;
            Ok(TargetPath { iface, path })
        })
        .collect()
}

/// `/proc/<pid>/ns/net`.
pub(crate) fn netns_of_pid(pid: u32) -> PathBuf {
    Path::new("/proc").join(pid.to_string()).join("ns/net")
}
