//! Docker, over its Engine API (bollard): which container a name means, the process whose
//! network namespace it runs in, its networks (address, bridge) and published ports, a stream of
//! lifecycle events for re-discovery ([`events`]), and the notes only Docker can give about a
//! flow ([`proxy`]: connections its userland proxy carries). The only module that names bollard.
//!
//! The API calls are async (callers run inside a tokio runtime); the namespace look-ups
//! ([`ContainerInfo::interfaces`], [`ContainerInfo::paths`]) are short blocking netlink dumps.

mod events;
mod proxy;
#[cfg(test)]
mod tests;

use std::{collections::HashMap, net::IpAddr, time::Duration};

use bollard::{
    container::{InspectContainerOptions, ListContainersOptions},
    errors::Error as ApiError,
    models::{ContainerInspectResponse, PortMap},
    network::InspectNetworkOptions,
    API_DEFAULT_VERSION,
};
use futures::{future::BoxFuture, stream::BoxStream, StreamExt as _};
use serde::Serialize;

pub use self::events::ContainerEvent;
use super::{
    ContainerRuntime, FlowNotes, Listed, RuntimeError, Target, TargetError, TargetEvent,
    TargetPath, Wanted,
};
pub use super::{
    NetworkAttachment, PublishedPort, TargetIface as ContainerIface, TargetPath as ContainerPath,
};
use crate::{discover::netns::Netns, model::Proto};

/// Where Docker listens when `DOCKER_HOST` is not set.
pub(crate) const DEFAULT_HOST: &str = "unix:///var/run/docker.sock";
/// How long one API request may take to answer (connecting included).
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// `--network container:A` where A itself uses `container:B`: how far the chain is followed.
const MAX_SHARED_DEPTH: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("cannot reach Docker at {endpoint}: {why}; is dockerd running? (set DOCKER_HOST for another socket)")]
    Unreachable { endpoint: String, why: String },
    #[error("permission denied on the Docker socket {endpoint}: run pathtrace as root (eBPF needs it anyway) or join the docker group")]
    PermissionDenied { endpoint: String },
    #[error("DOCKER_HOST={0:?} is not supported: use unix:///path/to/docker.sock or tcp://host:port (no TLS, no ssh)")]
    UnsupportedHost(String),
    #[error("no container named '{name}'{}", did_you_mean(.suggestions))]
    UnknownContainer {
        name: String,
        suggestions: Vec<String>,
    },
    #[error("container id prefix '{prefix}' is ambiguous, it matches: {}; give more characters", .matches.join(", "))]
    AmbiguousId {
        prefix: String,
        matches: Vec<String>,
    },
    #[error("container {name} is {state}; start it with `{cli} start {name}`")]
    NotRunning {
        name: String,
        state: String,
        /// `docker` or `podman`.
        cli: &'static str,
    },
    #[error(transparent)]
    HostNetwork(super::HostNetwork),
    #[error("container {0} has no network (--network none)")]
    NoNetwork(String),
    #[error("container {name} shares the network of container {owner}, which cannot be inspected: {source}")]
    SharedNetns {
        name: String,
        owner: String,
        source: Box<DockerError>,
    },
    #[error("Docker at {endpoint} failed while {what}: {source}")]
    Api {
        endpoint: String,
        what: &'static str,
        source: ApiError,
    },
}

fn did_you_mean(suggestions: &[String]) -> String {
    if suggestions.is_empty() {
        "; list them with `docker ps -a`".to_string()
    } else {
        format!("; did you mean: {}?", suggestions.join(", "))
    }
}

/// A running container, resolved.
#[derive(Clone, Debug, Serialize)]
pub struct ContainerInfo {
    pub id: String,
    /// Without Docker's leading '/'.
    pub name: String,
    pub image: String,
    /// Its main process: `/proc/<pid>/ns/net` is the container's network namespace.
    pub pid: u32,
    pub state: String,
    /// `HostConfig.NetworkMode`: `default`, `bridge`, a network name, or `container:<id>`.
    pub network_mode: String,
    /// With `--network container:<id>`: the name of the container whose namespace this one
    /// shares; `networks` and `published` are then that container's.
    pub netns_owner: Option<String>,
    /// Sorted by network name.
    pub networks: Vec<NetworkAttachment>,
    pub published: Vec<PublishedPort>,
    /// RFC 3339, as Docker reports it.
    pub started_at: String,
}

/// A line of `docker ps`.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct RunningContainer {
    pub id: String,
    pub name: String,
    pub image: String,
    pub status: String,
    pub network_mode: String,
}

/// Who answers the Docker Engine API: dockerd, or Podman's `podman system service`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    Docker,
    Podman,
}

impl Flavor {
    /// How messages name it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Docker => "Docker",
            Self::Podman => "Podman",
        }
    }

    /// Its command-line tool.
    pub fn cli(self) -> &'static str {
        match self {
            Self::Docker => "docker",
            Self::Podman => "podman",
        }
    }
}

/// A Docker Engine API client (dockerd, or Podman's compatible service).
#[derive(Clone, Debug)]
pub struct Docker {
    api: bollard::Docker,
    endpoint: String,
    flavor: Flavor,
}

impl Docker {
    /// Connects to `DOCKER_HOST` (`unix://` or `tcp://`), else to [`DEFAULT_HOST`], and agrees on
    /// an API version with the daemon (which also checks it answers).
    pub async fn connect() -> Result<Self, DockerError> {
        let host = std::env::var("DOCKER_HOST")
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| DEFAULT_HOST.to_string());
        Self::connect_to(&host, DEFAULT_TIMEOUT).await
    }

    /// Connects to `host` (`unix:///path`, a plain `/path`, `tcp://h:p` or `http://h:p`).
    pub(crate) async fn connect_to(host: &str, timeout: Duration) -> Result<Self, DockerError> {
        let secs = timeout.as_secs().max(1);
        let endpoint = if host.starts_with('/') {
            format!("unix://{host}")
        } else {
            host.to_string()
        };
        let api = if endpoint.starts_with("unix://") {
            bollard::Docker::connect_with_unix(&endpoint, secs, API_DEFAULT_VERSION)
        } else if endpoint.starts_with("tcp://") || endpoint.starts_with("http://") {
            bollard::Docker::connect_with_http(&endpoint, secs, API_DEFAULT_VERSION)
        } else {
            return Err(DockerError::UnsupportedHost(host.to_string()));
        }
        .map_err(|e| api_error(&endpoint, "connecting", e))?;
        // bollard speaks API 1.47 by default; dockerd 20.10 answers 1.41 at most.
        let api = api
            .negotiate_version()
            .await
            .map_err(|e| api_error(&endpoint, "asking its version", e))?;
        // Podman's service says who it is in its version's components (`Podman Engine`).
        let version = api
            .version()
            .await
            .map_err(|e| api_error(&endpoint, "asking its version", e))?;
        let podman = version
            .components
            .iter()
            .flatten()
            .any(|c| c.name.to_ascii_lowercase().contains("podman"));
        let flavor = if podman {
            Flavor::Podman
        } else {
            Flavor::Docker
        };
        Ok(Self {
            api,
            endpoint,
            flavor,
        })
    }

    /// Dockerd or Podman.
    pub fn flavor(&self) -> Flavor {
        self.flavor
    }

    fn err(&self, what: &'static str) -> impl Fn(ApiError) -> DockerError + '_ {
        move |e| api_error(&self.endpoint, what, e)
    }

    /// Resolves `spec` like `docker inspect` does: full id, exact name (with or without the
    /// leading '/'), or unique id prefix.
    pub async fn resolve(&self, spec: &str) -> Result<ContainerInfo, DockerError> {
        let key = spec.trim().trim_start_matches('/');
        if key.is_empty() {
            return Err(DockerError::UnknownContainer {
                name: spec.to_string(),
                suggestions: Vec::new(),
            });
        }
        let c = self.inspect(key).await?;
        let name = c
            .name
            .as_deref()
            .unwrap_or(key)
            .trim_start_matches('/')
            .to_string();
        let state = c.state.clone().unwrap_or_default();
        let status = state
            .status
            .map(|s| s.to_string())
            .unwrap_or_else(|| "unknown".into());
        let pid = u32::try_from(state.pid.unwrap_or(0)).unwrap_or(0);
        if state.running != Some(true) || state.restarting == Some(true) || pid == 0 {
            let state = if state.restarting == Some(true) {
                "restarting".into()
            } else {
                status
            };
            return Err(DockerError::NotRunning {
                name,
                state,
                cli: self.flavor.cli(),
            });
        }
        let network_mode = network_mode_of(&c);
        let (netns_owner, net) = self.network_source(&name, c.clone()).await?;
        match network_mode_of(&net).as_str() {
            "host" => {
                return Err(DockerError::HostNetwork(super::HostNetwork {
                    name,
                    id: c.id.unwrap_or_default(),
                    pid,
                }))
            }
            "none" => return Err(DockerError::NoNetwork(name)),
            _ => {}
        }
        let settings = net.network_settings.unwrap_or_default();
        let mut networks = Vec::new();
        for (net_name, ep) in settings.networks.unwrap_or_default() {
            let network_id = ep.network_id.unwrap_or_default();
            let bridge_name = self.bridge_name(&net_name, &network_id).await?;
            let v4 = parse_ip(ep.ip_address.as_deref());
            let v6 = parse_ip(ep.global_ipv6_address.as_deref());
            let prefix = if v4.is_some() {
                ep.ip_prefix_len
            } else {
                ep.global_ipv6_prefix_len
            };
            networks.push(NetworkAttachment {
                network_name: net_name,
                network_id,
                ip: v4.or(v6),
                prefix_len: u8::try_from(prefix.unwrap_or(0)).unwrap_or(0),
                gateway: parse_ip(ep.gateway.as_deref()).or(parse_ip(ep.ipv6_gateway.as_deref())),
                mac: ep.mac_address.filter(|m| !m.is_empty()),
                bridge_name,
            });
        }
        if networks.is_empty() {
            return Err(DockerError::NoNetwork(name));
        }
        networks.sort_by(|a, b| a.network_name.cmp(&b.network_name));
        Ok(ContainerInfo {
            id: c.id.unwrap_or_default(),
            image: c.config.and_then(|cfg| cfg.image).unwrap_or_default(),
            name,
            pid,
            state: "running".into(),
            network_mode,
            netns_owner,
            networks,
            published: settings
                .ports
                .as_ref()
                .map(published_ports)
                .unwrap_or_default(),
            started_at: state.started_at.unwrap_or_default(),
        })
    }

    /// The running containers, by name (what `pathtrace inspect` lists without a name).
    pub(crate) async fn list_running(&self) -> Result<Vec<RunningContainer>, DockerError> {
        let list = self
            .api
            .list_containers(None::<ListContainersOptions<String>>)
            .await
            .map_err(self.err("listing containers"))?;
        let mut out: Vec<RunningContainer> = list
            .into_iter()
            .map(|c| RunningContainer {
                id: c.id.unwrap_or_default(),
                name: first_name(c.names.as_deref()),
                image: c.image.unwrap_or_default(),
                status: c.status.unwrap_or_default(),
                network_mode: c
                    .host_config
                    .and_then(|h| h.network_mode)
                    .unwrap_or_default(),
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Inspects `key`; when Docker does not know it, says why (ambiguous prefix or unknown name,
    /// with the closest names).
    async fn inspect(&self, key: &str) -> Result<ContainerInspectResponse, DockerError> {
        match self
            .api
            .inspect_container(key, None::<InspectContainerOptions>)
            .await
        {
            Ok(c) => return Ok(c),
            // Unknown: 404. Ambiguous prefix: 400 on newer daemons, 500 on 20.10.
            Err(ApiError::DockerResponseServerError {
                status_code,
                message,
            }) if status_code == 404
                || message.to_ascii_lowercase().contains("multiple ids found") => {}
            Err(e) => return Err(self.err("inspecting a container")(e)),
        }
        let all = self
            .api
            .list_containers(Some(ListContainersOptions::<String> {
                all: true,
                ..Default::default()
            }))
            .await
            .map_err(self.err("listing containers"))?;
        let prefix = key.to_ascii_lowercase();
        let by_prefix: Vec<String> = all
            .iter()
            .filter_map(|c| {
                let id = c.id.as_deref()?;
                id.starts_with(&prefix).then(|| {
                    let short = id.get(..12).unwrap_or(id);
                    format!("{} ({short})", first_name(c.names.as_deref()))
                })
            })
            .collect();
        if by_prefix.len() > 1 {
            return Err(DockerError::AmbiguousId {
                prefix: key.to_string(),
                matches: by_prefix,
            });
        }
        let names: Vec<String> = all.iter().map(|c| first_name(c.names.as_deref())).collect();
        Err(DockerError::UnknownContainer {
            name: key.to_string(),
            suggestions: suggest(key, &names),
        })
    }

    /// With `--network container:<id>`, the container whose namespace is shared (and its name).
    async fn network_source(
        &self,
        name: &str,
        mut c: ContainerInspectResponse,
    ) -> Result<(Option<String>, ContainerInspectResponse), DockerError> {
        let mut owner_name = None;
        for _ in 0..MAX_SHARED_DEPTH {
            let mode = network_mode_of(&c);
            let Some(owner) = mode.strip_prefix("container:") else {
                return Ok((owner_name, c));
            };
            c = self
                .inspect(owner)
                .await
                .map_err(|e| DockerError::SharedNetns {
                    name: name.to_string(),
                    owner: owner.to_string(),
                    source: Box::new(e),
                })?;
            owner_name = c
                .name
                .as_deref()
                .map(|n| n.trim_start_matches('/').to_string());
        }
        Ok((owner_name, c))
    }

    async fn bridge_name(&self, name: &str, id: &str) -> Result<Option<String>, DockerError> {
        let key = if id.is_empty() { name } else { id };
        match self
            .api
            .inspect_network(key, None::<InspectNetworkOptions<String>>)
            .await
        {
            Ok(n) => Ok(bridge_name_of(
                name,
                id,
                n.driver.as_deref(),
                n.options.as_ref(),
            )),
            // Removed meanwhile (a race with `docker network rm`): no bridge to name.
            Err(ApiError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(e) => Err(self.err("inspecting a network")(e)),
        }
    }
}

/// Sorts a bollard error into "cannot reach", "permission denied" or an API failure.
fn api_error(endpoint: &str, what: &'static str, e: ApiError) -> DockerError {
    let unreachable = |why: String| DockerError::Unreachable {
        endpoint: endpoint.to_string(),
        why,
    };
    match e {
        ApiError::SocketNotFoundError(path) => unreachable(format!("no socket at {path}")),
        ApiError::RequestTimeoutError => unreachable("no answer in time".to_string()),
        ApiError::IOError { err } => io_problem(endpoint, &err),
        ApiError::HyperLegacyError { err } if err.is_connect() => {
            let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&err);
            while let Some(c) = cause {
                if let Some(io) = c.downcast_ref::<std::io::Error>() {
                    return io_problem(endpoint, io);
                }
                cause = c.source();
            }
            unreachable(err.to_string())
        }
        source => DockerError::Api {
            endpoint: endpoint.to_string(),
            what,
            source,
        },
    }
}

fn io_problem(endpoint: &str, io: &std::io::Error) -> DockerError {
    match io.kind() {
        std::io::ErrorKind::PermissionDenied => DockerError::PermissionDenied {
            endpoint: endpoint.to_string(),
        },
        _ => DockerError::Unreachable {
            endpoint: endpoint.to_string(),
            why: io.to_string(),
        },
    }
}

fn network_mode_of(c: &ContainerInspectResponse) -> String {
    c.host_config
        .as_ref()
        .and_then(|h| h.network_mode.clone())
        .unwrap_or_default()
}

fn first_name(names: Option<&[String]>) -> String {
    names
        .and_then(|n| n.first())
        .map(|n| n.trim_start_matches('/').to_string())
        .unwrap_or_default()
}

fn parse_ip(s: Option<&str>) -> Option<IpAddr> {
    s.filter(|s| !s.is_empty()).and_then(|s| s.parse().ok())
}

fn bridge_name_of(
    name: &str,
    id: &str,
    driver: Option<&str>,
    options: Option<&HashMap<String, String>>,
) -> Option<String> {
    if driver != Some("bridge") {
        return None;
    }
    let set = options
        .and_then(|o| o.get("com.docker.network.bridge.name"))
        .filter(|n| !n.is_empty());
    Some(match set {
        Some(n) => n.clone(),
        None if name == "bridge" => "docker0".to_string(),
        None => format!("br-{}", id.get(..12).unwrap_or(id)),
    })
}

/// `"80/tcp" -> [{0.0.0.0, 18080}]` into one entry per binding; exposed-only ports are skipped.
fn published_ports(ports: &PortMap) -> Vec<PublishedPort> {
    let mut out = Vec::new();
    for (key, bindings) in ports {
        let (port, proto) = key.split_once('/').unwrap_or((key, "tcp"));
        let (Ok(container_port), Ok(proto)) = (port.parse::<u16>(), proto.parse::<Proto>()) else {
            tracing::debug!("published port {key:?}: not PORT/PROTO");
            continue;
        };
        for b in bindings.iter().flatten() {
            let Some(host_port) = b.host_port.as_deref().and_then(|p| p.parse().ok()) else {
                continue;
            };
            out.push(PublishedPort {
                proto,
                host_ip: parse_ip(b.host_ip.as_deref()),
                host_port,
                container_port,
            });
        }
    }
    out.sort();
    out
}

/// Up to three names close to `key`: by edit distance (at most a third of its length, at least
/// 2), or starting with it.
pub(super) fn suggest(key: &str, names: &[String]) -> Vec<String> {
    let limit = (key.chars().count() / 3).max(2);
    let mut scored: Vec<(usize, &String)> = names
        .iter()
        .filter(|n| !n.is_empty())
        .map(|n| (levenshtein(key, n), n))
        .filter(|(d, n)| *d <= limit || n.starts_with(key))
        .collect();
    scored.sort();
    scored.dedup_by(|a, b| a.1 == b.1);
    scored.into_iter().take(3).map(|(_, n)| n.clone()).collect()
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diag = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (diag + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(row[j + 1] + 1);
            diag = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

impl ContainerInfo {
    /// The runtime-neutral view of this container.
    pub(crate) fn target(&self) -> Target {
        Target {
            runtime: "Docker".to_string(),
            id: self.id.clone(),
            name: self.name.clone(),
            pid: Some(self.pid),
            netns: super::netns_of_pid(self.pid),
            networks: self.networks.clone(),
            published: self.published.clone(),
            netns_owner: self.netns_owner.clone(),
        }
    }

    /// The container's network namespace (through its main process).
    pub fn netns(&self) -> Result<Netns, TargetError> {
        self.target().open_netns()
    }

    /// See [`Target::interfaces`].
    pub fn interfaces(&self) -> Result<Vec<ContainerIface>, TargetError> {
        self.target().interfaces()
    }

    /// See [`Target::paths`].
    pub fn paths(&self, to: Option<IpAddr>) -> Result<Vec<ContainerPath>, TargetError> {
        self.target().paths(to, &[])
    }
}

impl ContainerRuntime for Docker {
    fn name(&self) -> &str {
        self.flavor.name()
    }

    fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn resolve<'a>(&'a self, wanted: &'a Wanted) -> BoxFuture<'a, Result<Target, RuntimeError>> {
        Box::pin(async move {
            // Pods, and containers of a Kubernetes namespace, are the CRI's: not looked for
            // here (an empty runtime name leaves it out of the message).
            if wanted.pod || wanted.namespace.is_some() {
                return Err(wanted.unknown("", Vec::new()));
            }
            let info = Docker::resolve(self, &wanted.name)
                .await
                .map_err(|e| match e {
                    DockerError::HostNetwork(h) => RuntimeError::new(h),
                    DockerError::UnknownContainer { suggestions, .. } => {
                        wanted.unknown(self.flavor.name(), suggestions)
                    }
                    other => RuntimeError::new(other),
                })?;
            Ok(self.target_of(&info))
        })
    }

    fn list_running(&self) -> BoxFuture<'_, Result<Vec<Listed>, RuntimeError>> {
        Box::pin(async move {
            let list = Docker::list_running(self)
                .await
                .map_err(RuntimeError::new)?;
            Ok(list
                .into_iter()
                .map(|c| Listed {
                    id: c.id,
                    name: c.name,
                    runtime: self.flavor.name().to_string(),
                })
                .collect())
        })
    }

    fn watch(&self, target: &Target) -> BoxStream<'static, TargetEvent> {
        let docker = self.clone();
        let id = target.id.clone();
        let events = Docker::watch(self, &target.id);
        events
            .filter_map(move |ev| {
                let (docker, id) = (docker.clone(), id.clone());
                async move { docker.target_event(&id, ev).await }
            })
            .boxed()
    }

    fn flow_notes(&self, target: &Target, paths: &[TargetPath]) -> Option<Box<dyn FlowNotes>> {
        // Rootful Podman publishes ports by netavark's DNAT alone: no userland proxy.
        if self.flavor == Flavor::Podman {
            return None;
        }
        proxy::ProxyHint::new(target, paths).map(|h| Box::new(h) as Box<dyn FlowNotes>)
    }
}

impl Docker {
    /// [`ContainerInfo::target`], labelled with this runtime.
    fn target_of(&self, info: &ContainerInfo) -> Target {
        Target {
            runtime: self.flavor.name().to_string(),
            ..info.target()
        }
    }
}

impl Docker {
    /// The container as it is after a network change; `None` while it is not running (a
    /// stop or a restart disconnects its networks: its start is the event that counts).
    async fn networks_changed(&self, id: &str, what: String) -> Option<TargetEvent> {
        match Docker::resolve(self, id).await {
            Ok(info) => Some(TargetEvent::NetworksChanged {
                target: self.target_of(&info),
                what,
            }),
            Err(DockerError::NotRunning { .. }) => None,
            Err(e) => Some(TargetEvent::NetworksChangedUnresolved {
                what,
                why: e.to_string(),
            }),
        }
    }

    /// A Docker event as the seam's [`TargetEvent`]: a start is resolved anew (new pid, new
    /// namespace); kill, stop and restart say nothing a trace needs beyond `die` and `start`.
    async fn target_event(&self, id: &str, ev: ContainerEvent) -> Option<TargetEvent> {
        Some(match ev {
            ContainerEvent::Started { pid } => match Docker::resolve(self, id).await {
                Ok(info) => TargetEvent::Started(self.target_of(&info)),
                Err(e) => TargetEvent::StartedUnresolved {
                    pid: Some(pid),
                    why: e.to_string(),
                },
            },
            ContainerEvent::NetworkConnected { network } => {
                return self
                    .networks_changed(id, format!("connected to network {network}"))
                    .await
            }
            ContainerEvent::NetworkDisconnected { network } => {
                return self
                    .networks_changed(id, format!("disconnected from network {network}"))
                    .await
            }
            ContainerEvent::Died { exit_code } => TargetEvent::Stopped { exit_code },
            ContainerEvent::Destroyed => TargetEvent::Removed,
            ContainerEvent::WatchEnded { reason } => TargetEvent::WatchEnded { reason },
            ContainerEvent::Killed { .. } | ContainerEvent::Stopped | ContainerEvent::Restarted => {
                return None
            }
        })
    }
}
