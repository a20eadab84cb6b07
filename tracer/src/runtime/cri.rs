//! Kubernetes pods through the CRI, the gRPC API the kubelet drives the container runtime with
//! (containerd's `cri` plugin, CRI-O), over the runtime's unix socket: no API server is needed.
//! A pod is its sandbox: the sandbox's metadata gives its name and namespace, its verbose status
//! the network namespace (the runtime spec's `network` namespace path, else the sandbox
//! process's), its address and port mappings. The only module that names `k8s_cri` or tonic.
//!
//! CRI v1 as containerd 1.6 serves it has no event stream, so a watched pod is polled every
//! [`POLL`]: a new ready sandbox of the same namespace and name (the kubelet recreates the
//! sandbox when a pod restarts) is a start, no ready one a stop, none at all a removal.

use std::{collections::HashMap, net::IpAddr, path::PathBuf, time::Duration};

use futures::{future::BoxFuture, stream::BoxStream, StreamExt as _};
use k8s_cri::v1::{
    runtime_service_client::RuntimeServiceClient, Container, ContainerState, ListContainersRequest,
    ListPodSandboxRequest, NamespaceMode, PodSandbox, PodSandboxState, PodSandboxStatusRequest,
    VersionRequest,
};
use tonic::transport::{Channel, Endpoint};

use super::{
    ContainerRuntime, Listed, NetworkAttachment, PublishedPort, RuntimeError, Target, TargetEvent,
    Wanted,
};
use crate::model::Proto;

/// The sockets the kubelet's runtimes listen on, tried in this order when none is given.
pub(crate) const DEFAULT_ENDPOINTS: &[&str] = &[
    "unix:///run/containerd/containerd.sock",
    "unix:///var/run/crio/crio.sock",
];
/// How often a watched pod's sandboxes are listed.
pub(crate) const POLL: Duration = Duration::from_secs(1);
/// How long one CRI call may take (connecting included).
const TIMEOUT: Duration = Duration::from_secs(5);
/// Failed polls in a row after which the watch ends.
const POLL_FAILURES: u32 = 5;

#[derive(Debug, thiserror::Error)]
pub enum CriError {
    #[error("no CRI socket at {path}: is the container runtime (containerd, CRI-O) running? give its socket with --runtime-endpoint unix:///PATH")]
    NoSocket { path: String },
    #[error("permission denied on the CRI socket {path}: run pathtrace as root")]
    PermissionDenied { path: String },
    #[error("cannot reach the CRI at {endpoint}: {why}")]
    Unreachable { endpoint: String, why: String },
    #[error("the runtime at {endpoint} does not serve the CRI ({why}); is its cri plugin disabled (Docker's own containerd)?")]
    NotCri { endpoint: String, why: String },
    #[error("the CRI at {endpoint} failed while {what}: {why}")]
    Api {
        endpoint: String,
        what: &'static str,
        why: String,
    },
    #[error("pod {name} is not ready (its sandbox is stopped); `kubectl get pod` says why")]
    NotReady { name: String },
    #[error("pod {name} uses the host network (hostNetwork: true): it has no network namespace of its own, so there is no path between namespaces to trace")]
    HostNetwork { name: String },
    #[error("pod {name}: the runtime reports no address for it (is its CNI plugin working?)")]
    NoAddress { name: String },
    #[error("pod {name}: the runtime's status names no network namespace and no sandbox process")]
    NoNetns { name: String },
    #[error("container name '{name}' is ambiguous, it runs in: {}; narrow it with -n NAMESPACE or use --pod", .matches.join(", "))]
    Ambiguous { name: String, matches: Vec<String> },
}

/// A CRI client.
#[derive(Clone, Debug)]
pub struct Cri {
    client: RuntimeServiceClient<Channel>,
    endpoint: String,
    /// `containerd (CRI)`, `CRI-O`.
    label: String,
}

/// A pod sandbox's identity across restarts: the kubelet makes a new sandbox (new id, new
/// namespace) with the same metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
struct PodKey {
    namespace: String,
    name: String,
    /// Set when the target is one container of the pod (`--container`).
    container: Option<String>,
}

impl PodKey {
    /// `shop/web`, or `shop/web/app` for a container.
    fn label(&self) -> String {
        match &self.container {
            Some(c) => format!("{}/{}/{c}", self.namespace, self.name),
            None => format!("{}/{}", self.namespace, self.name),
        }
    }

    fn of_label(label: &str) -> Option<Self> {
        let mut parts = label.splitn(3, '/');
        let (namespace, name) = (parts.next()?, parts.next()?);
        Some(Self {
            namespace: namespace.to_string(),
            name: name.to_string(),
            container: parts.next().map(str::to_string),
        })
    }

    fn matches(&self, s: &PodSandbox) -> bool {
        s.metadata
            .as_ref()
            .is_some_and(|m| m.namespace == self.namespace && m.name == self.name)
    }
}

impl Cri {
    /// Connects to `endpoint` (`unix:///path` or a plain path) and asks the runtime's version,
    /// which also checks that it serves the CRI.
    pub async fn connect(endpoint: &str) -> Result<Self, CriError> {
        let path = endpoint
            .strip_prefix("unix://")
            .unwrap_or(endpoint)
            .to_string();
        match std::fs::metadata(&path) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                return Err(CriError::PermissionDenied { path })
            }
            Err(_) => return Err(CriError::NoSocket { path }),
        }
        let endpoint = format!("unix://{path}");
        let socket = path.clone();
        let channel = Endpoint::from_static("http://cri.invalid")
            .connect_timeout(TIMEOUT)
            .timeout(TIMEOUT)
            .connect_with_connector(tower::service_fn(move |_| {
                let socket = socket.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(socket).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                }
            }))
            .await
            .map_err(|e| connect_error(&path, &endpoint, &e))?;
        let mut client = RuntimeServiceClient::new(channel);
        let version = client
            .version(VersionRequest::default())
            .await
            .map_err(|s| match s.code() {
                tonic::Code::Unimplemented | tonic::Code::Unknown => CriError::NotCri {
                    endpoint: endpoint.clone(),
                    why: s.message().to_string(),
                },
                _ => CriError::Unreachable {
                    endpoint: endpoint.clone(),
                    why: status_text(&s),
                },
            })?
            .into_inner();
        let label = match version.runtime_name.as_str() {
            "cri-o" => "CRI-O".to_string(),
            "" => "CRI".to_string(),
            other => format!("{other} (CRI)"),
        };
        Ok(Self {
            client,
            endpoint,
            label,
        })
    }

    fn api(&self, what: &'static str) -> impl Fn(tonic::Status) -> CriError + '_ {
        move |s| CriError::Api {
            endpoint: self.endpoint.clone(),
            what,
            why: status_text(&s),
        }
    }

    /// Every pod sandbox, ready or not.
    async fn sandboxes(&self) -> Result<Vec<PodSandbox>, CriError> {
        Ok(self
            .client
            .clone()
            .list_pod_sandbox(ListPodSandboxRequest::default())
            .await
            .map_err(self.api("listing pod sandboxes"))?
            .into_inner()
            .items)
    }

    /// Every container.
    async fn containers(&self) -> Result<Vec<Container>, CriError> {
        Ok(self
            .client
            .clone()
            .list_containers(ListContainersRequest::default())
            .await
            .map_err(self.api("listing containers"))?
            .into_inner()
            .containers)
    }

    /// The newest ready sandbox of `key`, if any, and whether any sandbox of it exists.
    fn newest_ready<'a>(key: &PodKey, all: &'a [PodSandbox]) -> (Option<&'a PodSandbox>, bool) {
        let mine: Vec<&PodSandbox> = all.iter().filter(|s| key.matches(s)).collect();
        let ready = mine
            .iter()
            .copied()
            .filter(|s| s.state == PodSandboxState::SandboxReady as i32)
            .max_by_key(|s| s.created_at);
        (ready, !mine.is_empty())
    }

    /// The pod `wanted` names: the newest ready sandbox with that name in its namespace.
    async fn resolve_pod(&self, wanted: &Wanted) -> Result<Target, RuntimeError> {
        let key = PodKey {
            namespace: wanted.pod_namespace().to_string(),
            name: wanted.name.clone(),
            container: None,
        };
        let all = self.sandboxes().await.map_err(RuntimeError::new)?;
        match Self::newest_ready(&key, &all) {
            (Some(s), _) => self.target(&key, &s.id).await.map_err(RuntimeError::new),
            (None, true) => Err(RuntimeError::new(CriError::NotReady { name: key.label() })),
            (None, false) => Err(self.unknown_pod(wanted, &all)),
        }
    }

    /// No such pod: the close names in its namespace, and the namespaces that have one by that
    /// name.
    fn unknown_pod(&self, wanted: &Wanted, all: &[PodSandbox]) -> RuntimeError {
        let ns = wanted.pod_namespace();
        let names: Vec<String> = all
            .iter()
            .filter_map(|s| s.metadata.as_ref())
            .filter(|m| m.namespace == ns)
            .map(|m| m.name.clone())
            .collect();
        let mut elsewhere: Vec<String> = all
            .iter()
            .filter_map(|s| s.metadata.as_ref())
            .filter(|m| m.name == wanted.name && m.namespace != ns)
            .map(|m| m.namespace.clone())
            .collect();
        elsewhere.sort();
        elsewhere.dedup();
        let mut e = super::Unknown {
            what: wanted.describe(),
            runtime: self.label.clone(),
            suggestions: super::docker::suggest(&wanted.name, &names),
            hints: Vec::new(),
        };
        if !elsewhere.is_empty() {
            e.hints.push(format!(
                "there is a pod {} in namespace {}: give -n {}",
                wanted.name,
                elsewhere.join(", "),
                elsewhere[0]
            ));
        }
        RuntimeError::new(e)
    }

    /// A container by its name within a pod (`-n` narrowing the namespace), or a sandbox or
    /// container by id or id prefix.
    async fn resolve_container(&self, wanted: &Wanted) -> Result<Target, RuntimeError> {
        let (sandboxes, containers) =
            futures::try_join!(self.sandboxes(), self.containers()).map_err(RuntimeError::new)?;
        let by_id: HashMap<&str, &PodSandbox> =
            sandboxes.iter().map(|s| (s.id.as_str(), s)).collect();
        let key_of = |s: &PodSandbox, container: Option<String>| {
            s.metadata.as_ref().map(|m| PodKey {
                namespace: m.namespace.clone(),
                name: m.name.clone(),
                container,
            })
        };
        // An id: what `list_running` gives back, and what a user may paste from crictl.
        let spec = wanted.name.as_str();
        if wanted.namespace.is_none() && spec.len() >= 12 {
            if let Some(s) = sandboxes.iter().find(|s| s.id.starts_with(spec)) {
                if let Some(key) = key_of(s, None) {
                    return self.ready_target(&key, s).await;
                }
            }
        }
        let running = |c: &&Container| c.state == ContainerState::ContainerRunning as i32;
        let in_ns = |c: &Container| match &wanted.namespace {
            None => true,
            Some(ns) => by_id
                .get(c.pod_sandbox_id.as_str())
                .and_then(|s| s.metadata.as_ref())
                .is_some_and(|m| &m.namespace == ns),
        };
        let named: Vec<(&Container, PodKey)> = containers
            .iter()
            .filter(running)
            .filter(|c| in_ns(c))
            .filter(|c| {
                c.metadata.as_ref().is_some_and(|m| m.name == spec)
                    || (spec.len() >= 12 && c.id.starts_with(spec))
            })
            .filter_map(|c| {
                let s = by_id.get(c.pod_sandbox_id.as_str())?;
                let name = c.metadata.as_ref().map(|m| m.name.clone())?;
                Some((c, key_of(s, Some(name))?))
            })
            .collect();
        match named.as_slice() {
            [(c, key)] => {
                let s = by_id[c.pod_sandbox_id.as_str()];
                self.ready_target(key, s).await
            }
            [] => {
                let names: Vec<String> = containers
                    .iter()
                    .filter(|c| in_ns(c))
                    .filter_map(|c| c.metadata.as_ref().map(|m| m.name.clone()))
                    .collect();
                Err(wanted.unknown(&self.label, super::docker::suggest(spec, &names)))
            }
            many => Err(RuntimeError::new(CriError::Ambiguous {
                name: spec.to_string(),
                matches: many.iter().map(|(_, k)| k.label()).collect(),
            })),
        }
    }

    async fn ready_target(&self, key: &PodKey, s: &PodSandbox) -> Result<Target, RuntimeError> {
        if s.state != PodSandboxState::SandboxReady as i32 {
            return Err(RuntimeError::new(CriError::NotReady { name: key.label() }));
        }
        self.target(key, &s.id).await.map_err(RuntimeError::new)
    }

    /// The sandbox `id` as a [`Target`] named by `key`.
    async fn target(&self, key: &PodKey, id: &str) -> Result<Target, CriError> {
        let resp = self
            .client
            .clone()
            .pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: id.to_string(),
                verbose: true,
            })
            .await
            .map_err(self.api("asking a pod sandbox's status"))?
            .into_inner();
        let name = key.label();
        let status = resp.status.unwrap_or_default();
        let network_mode = status
            .linux
            .as_ref()
            .and_then(|l| l.namespaces.as_ref())
            .and_then(|n| n.options.as_ref())
            .map_or(NamespaceMode::Pod as i32, |o| o.network);
        if network_mode == NamespaceMode::Node as i32 {
            return Err(CriError::HostNetwork { name });
        }
        if status.state != PodSandboxState::SandboxReady as i32 {
            return Err(CriError::NotReady { name });
        }
        let info = SandboxInfo::parse(&resp.info);
        let netns = info
            .netns
            .clone()
            .or_else(|| info.pid.map(super::netns_of_pid))
            .ok_or_else(|| CriError::NoNetns { name: name.clone() })?;
        let net = status.network.unwrap_or_default();
        let mut ips: Vec<IpAddr> = std::iter::once(net.ip.as_str())
            .chain(net.additional_ips.iter().map(|p| p.ip.as_str()))
            .filter_map(|ip| ip.parse().ok())
            .collect();
        ips.dedup();
        if ips.is_empty() {
            return Err(CriError::NoAddress { name });
        }
        let network_name = info.network.clone().unwrap_or_else(|| "pod".to_string());
        let networks = ips
            .iter()
            .map(|ip| NetworkAttachment {
                network_name: network_name.clone(),
                network_id: String::new(),
                ip: Some(*ip),
                prefix_len: 0,
                gateway: info
                    .gateways
                    .iter()
                    .copied()
                    .find(|g| g.is_ipv4() == ip.is_ipv4()),
                mac: info.mac.clone(),
                bridge_name: None,
            })
            // One attachment per family: the first address of each.
            .fold(Vec::<NetworkAttachment>::new(), |mut acc, n| {
                let v4 = n.ip.is_some_and(|i| i.is_ipv4());
                if !acc.iter().any(|a| a.ip.is_some_and(|i| i.is_ipv4()) == v4) {
                    acc.push(n);
                }
                acc
            });
        Ok(Target {
            runtime: self.label.clone(),
            id: id.to_string(),
            name,
            pid: info.pid,
            netns,
            networks,
            published: info.published,
            netns_owner: None,
        })
    }

    /// One poll of a watched pod: what changed since `current` (the sandbox id traced now).
    async fn poll(&self, key: &PodKey, current: &str, stopped: bool) -> Poll {
        let all = match self.sandboxes().await {
            Ok(all) => all,
            Err(e) => return Poll::Failed(e.to_string()),
        };
        match Self::newest_ready(key, &all) {
            (Some(s), _) if s.id == current => Poll::Same,
            (Some(s), _) => {
                let event = match self.target(key, &s.id).await {
                    Ok(t) => TargetEvent::Started(t),
                    Err(e) => TargetEvent::StartedUnresolved {
                        pid: None,
                        why: e.to_string(),
                    },
                };
                Poll::New(s.id.clone(), event)
            }
            (None, true) if stopped => Poll::Same,
            (None, true) => Poll::Stopped,
            (None, false) => Poll::Removed,
        }
    }
}

enum Poll {
    Same,
    New(String, TargetEvent),
    Stopped,
    Removed,
    Failed(String),
}

/// What a sandbox's verbose status info holds (containerd: `info["info"]`, a JSON document
/// with `pid`, `runtimeSpec`, `config`, `cniResult`).
#[derive(Debug, Default, PartialEq)]
struct SandboxInfo {
    pid: Option<u32>,
    netns: Option<PathBuf>,
    published: Vec<PublishedPort>,
    network: Option<String>,
    gateways: Vec<IpAddr>,
    mac: Option<String>,
}

impl SandboxInfo {
    fn parse(info: &HashMap<String, String>) -> Self {
        let Some(doc) = info
            .get("info")
            .and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok())
        else {
            return Self::default();
        };
        let pid = doc["pid"]
            .as_u64()
            .and_then(|p| u32::try_from(p).ok())
            .filter(|p| *p != 0);
        let netns = doc["runtimeSpec"]["linux"]["namespaces"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|n| n["type"] == "network")
            .and_then(|n| n["path"].as_str())
            .filter(|p| !p.is_empty())
            .map(PathBuf::from);
        let published = doc["config"]["port_mappings"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(port_mapping)
            .collect();
        // The pod's interface of the CNI result (the one with a sandbox path), its gateways.
        let mut gateways = Vec::new();
        let mut mac = None;
        if let Some(ifaces) = doc["cniResult"]["Interfaces"].as_object() {
            for (name, iface) in ifaces {
                if name == "lo" || iface["Sandbox"].as_str().is_none_or(str::is_empty) {
                    continue;
                }
                mac = iface["Mac"].as_str().map(str::to_string);
                gateways.extend(
                    iface["IPConfigs"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|c| c["Gateway"].as_str()?.parse::<IpAddr>().ok()),
                );
            }
        }
        // The CNI network's name is not in a sandbox's status; the runtime's own status has it.
        let network = None;
        Self {
            pid,
            netns,
            published,
            network,
            gateways,
            mac,
        }
    }
}

/// A CRI `PortMapping` as containerd's JSON gives it (`protocol` 0 TCP, 1 UDP, 2 SCTP).
fn port_mapping(m: &serde_json::Value) -> Option<PublishedPort> {
    let proto = match m["protocol"].as_u64().unwrap_or(0) {
        0 => Proto::Tcp,
        1 => Proto::Udp,
        _ => return None,
    };
    let host_port = u16::try_from(m["host_port"].as_u64()?).ok()?;
    let container_port = u16::try_from(m["container_port"].as_u64()?).ok()?;
    Some(PublishedPort {
        proto,
        host_ip: m["host_ip"].as_str().and_then(|s| s.parse().ok()),
        host_port,
        container_port,
    })
}

fn status_text(s: &tonic::Status) -> String {
    match s.message() {
        "" => format!("{:?}", s.code()),
        m => m.to_string(),
    }
}

fn connect_error(path: &str, endpoint: &str, e: &tonic::transport::Error) -> CriError {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::PermissionDenied {
                return CriError::PermissionDenied {
                    path: path.to_string(),
                };
            }
            return CriError::Unreachable {
                endpoint: endpoint.to_string(),
                why: io.to_string(),
            };
        }
        cause = c.source();
    }
    CriError::Unreachable {
        endpoint: endpoint.to_string(),
        why: e.to_string(),
    }
}

impl ContainerRuntime for Cri {
    fn name(&self) -> &str {
        &self.label
    }

    fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn resolve<'a>(&'a self, wanted: &'a Wanted) -> BoxFuture<'a, Result<Target, RuntimeError>> {
        Box::pin(async move {
            if wanted.pod {
                self.resolve_pod(wanted).await
            } else {
                self.resolve_container(wanted).await
            }
        })
    }

    fn list_running(&self) -> BoxFuture<'_, Result<Vec<Listed>, RuntimeError>> {
        Box::pin(async move {
            let all = self.sandboxes().await.map_err(RuntimeError::new)?;
            let mut out: Vec<Listed> = all
                .iter()
                .filter(|s| s.state == PodSandboxState::SandboxReady as i32)
                .filter_map(|s| {
                    let m = s.metadata.as_ref()?;
                    Some(Listed {
                        id: s.id.clone(),
                        name: format!("{}/{}", m.namespace, m.name),
                        runtime: self.label.clone(),
                    })
                })
                .collect();
            out.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(out)
        })
    }

    fn watch(&self, target: &Target) -> BoxStream<'static, TargetEvent> {
        let Some(key) = PodKey::of_label(&target.name) else {
            return futures::stream::once(async {
                TargetEvent::WatchEnded {
                    reason: "not a pod's name".to_string(),
                }
            })
            .boxed();
        };
        struct State {
            cri: Cri,
            key: PodKey,
            current: String,
            stopped: bool,
            failures: u32,
            done: bool,
        }
        let state = State {
            cri: self.clone(),
            key,
            current: target.id.clone(),
            stopped: false,
            failures: 0,
            done: false,
        };
        futures::stream::unfold(state, |mut st| async move {
            loop {
                if st.done {
                    return None;
                }
                tokio::time::sleep(POLL).await;
                match st.cri.poll(&st.key, &st.current, st.stopped).await {
                    Poll::Same => st.failures = 0,
                    Poll::New(id, event) => {
                        st.current = id;
                        st.stopped = false;
                        st.failures = 0;
                        return Some((event, st));
                    }
                    Poll::Stopped => {
                        st.stopped = true;
                        return Some((TargetEvent::Stopped { exit_code: None }, st));
                    }
                    Poll::Removed => {
                        st.done = true;
                        return Some((TargetEvent::Removed, st));
                    }
                    Poll::Failed(why) => {
                        st.failures += 1;
                        if st.failures >= POLL_FAILURES {
                            st.done = true;
                            let reason = format!("{POLL_FAILURES} polls failed in a row: {why}");
                            return Some((TargetEvent::WatchEnded { reason }, st));
                        }
                    }
                }
            }
        })
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_info_of_containerd() {
        let doc = serde_json::json!({
            "pid": 4242,
            "runtimeSpec": {"linux": {"namespaces": [
                {"type": "pid"},
                {"type": "network", "path": "/var/run/netns/cni-1234"}
            ]}},
            "config": {"port_mappings": [
                {"container_port": 80, "host_port": 18080},
                {"protocol": 1, "container_port": 53, "host_port": 5353, "host_ip": "127.0.0.1"}
            ]},
            "cniResult": {"Interfaces": {
                "cni0": {"IPConfigs": null, "Mac": "aa", "Sandbox": ""},
                "lo": {"IPConfigs": [{"IP": "127.0.0.1", "Gateway": ""}],
                       "Mac": "00:00:00:00:00:00", "Sandbox": "/var/run/netns/cni-1234"},
                "eth0": {"IPConfigs": [{"IP": "10.22.0.5", "Gateway": "10.22.0.1"}],
                         "Mac": "0a:58:0a:16:00:05", "Sandbox": "/var/run/netns/cni-1234"}
            }}
        });
        let info = HashMap::from([("info".to_string(), doc.to_string())]);
        let got = SandboxInfo::parse(&info);
        assert_eq!(got.pid, Some(4242));
        assert_eq!(got.netns, Some(PathBuf::from("/var/run/netns/cni-1234")));
        assert_eq!(got.gateways, vec!["10.22.0.1".parse::<IpAddr>().unwrap()]);
        assert_eq!(got.mac.as_deref(), Some("0a:58:0a:16:00:05"));
        assert_eq!(
            got.published,
            vec![
                PublishedPort {
                    proto: Proto::Tcp,
                    host_ip: None,
                    host_port: 18080,
                    container_port: 80
                },
                PublishedPort {
                    proto: Proto::Udp,
                    host_ip: Some("127.0.0.1".parse().unwrap()),
                    host_port: 5353,
                    container_port: 53
                },
            ]
        );
        assert_eq!(SandboxInfo::parse(&HashMap::new()), SandboxInfo::default());
    }

    #[test]
    fn pod_keys_round_trip() {
        let k = PodKey::of_label("shop/web/app").unwrap();
        assert_eq!(k.container.as_deref(), Some("app"));
        assert_eq!(k.label(), "shop/web/app");
        assert_eq!(PodKey::of_label("shop/web").unwrap().label(), "shop/web");
        assert!(PodKey::of_label("web").is_none());
    }
}
