//! A real containerd 1.6 of the test's own with its CRI plugin, driven over the CRI gRPC API the
//! way a kubelet drives it (no kubelet, no crictl): [`Cri::up`] starts `containerd` with its own
//! config, `root`, `state` and socket under `/var/lib/pathtrace-test-cri-<pid>` and
//! `/run/pathtrace-test-cri-<pid>` (never Docker's containerd), imports an offline pause image
//! (busybox-static plus a `/pause` that exits on SIGTERM, written as an OCI layout) and gives the
//! CRI a private CNI conflist: bridge (`isGateway`, `ipMasq`) + host-local (private `dataDir`) +
//! portmap, on a bridge and a /24 of its own. Pods ([`Cri::run_pod`]) get a netns on that bridge in
//! about a second.
//!
//! Dropping the [`Cri`] (also when a test panics) stops and removes every pod it made (CNI DEL
//! removes their iptables chains and veths), kills containerd and this instance's shims, unmounts
//! what containerd left under its dirs, removes the dirs, the bridge, the FORWARD rules of
//! [`Cri::allow_forward`], and portmap's shared `CNI-HOSTPORT-*` chains when this fixture made them
//! and nothing uses them any more. What it cannot remove, it prints.

use std::{
    collections::HashMap,
    fs,
    hash::{DefaultHasher, Hash as _, Hasher as _},
    os::unix::fs::{symlink, PermissionsExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use k8s_cri::v1::{
    image_service_client::ImageServiceClient, runtime_service_client::RuntimeServiceClient,
    ContainerConfig, ContainerMetadata, CreateContainerRequest, ImageSpec, ImageStatusRequest,
    LinuxContainerConfig, LinuxContainerSecurityContext, LinuxPodSandboxConfig,
    LinuxSandboxSecurityContext, NamespaceMode, NamespaceOption, PodSandboxConfig,
    PodSandboxMetadata, PodSandboxStatusRequest, PortMapping, Protocol, RemovePodSandboxRequest,
    RunPodSandboxRequest, StartContainerRequest, StopPodSandboxRequest, VersionRequest,
};
use tonic::transport::{Channel, Endpoint};

use super::wan::run;

/// The offline image every sandbox and container runs (imported into containerd's `k8s.io`).
pub(crate) const PAUSE_IMAGE: &str = "pathtrace.test/pause:1";

/// The `/pause` of [`PAUSE_IMAGE`]: pid 1 of the pod, which exits at once on SIGTERM (pid 1 would
/// ignore a signal it has no handler for, and the pod's stop would wait for a timeout).
const PAUSE_SCRIPT: &str = "#!/bin/busybox sh\ntrap 'exit 0' TERM INT\n\
                            while :; do /bin/busybox sleep 2147483647 & wait $!; done\n";

/// portmap's chains that every pod with a port mapping shares (it never deletes them).
const HOSTPORT_CHAINS: [&str; 3] = [
    "CNI-HOSTPORT-DNAT",
    "CNI-HOSTPORT-SETMARK",
    "CNI-HOSTPORT-MASQ",
];

/// libcni's cache of results (`results/<network>-<id>-<ifname>`), not configurable in 1.6.
const CNI_CACHE: &str = "/var/lib/cni";

static INSTANCES: AtomicU32 = AtomicU32::new(0);
/// Fixtures alive in this process, and whether portmap's shared chains were there before the
/// first of them came up (the chains stay while a fixture is alive, and when they were there).
static LIVE: Mutex<(u32, bool)> = Mutex::new((0, false));
/// The subnets (`Y` of 10.Y.0.0/24) fixtures of this process hold.
static CLAIMED: Mutex<Vec<u8>> = Mutex::new(Vec::new());

/// A port of the pod published on the host (portmap's DNAT).
#[derive(Debug, Clone, Copy)]
pub(crate) struct PortMap {
    /// TCP, else UDP.
    pub proto_tcp: bool,
    pub container_port: u16,
    pub host_port: u16,
}

impl PortMap {
    pub(crate) fn tcp(container_port: u16, host_port: u16) -> Self {
        Self {
            proto_tcp: true,
            container_port,
            host_port,
        }
    }

    pub(crate) fn udp(container_port: u16, host_port: u16) -> Self {
        Self {
            proto_tcp: false,
            container_port,
            host_port,
        }
    }
}

/// The CNI the pods get.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cni {
    /// The reference bridge plugin (flannel's shape): veths on a bridge of the fixture's own.
    Bridge,
    /// ptp (Calico's shape): routed veths, no bridge; [`Cri::bridge`] is empty.
    Ptp,
}

/// A running pod sandbox, as the CRI reported it.
#[derive(Debug, Clone)]
pub(crate) struct Pod {
    /// The sandbox id (64 hex).
    pub id: String,
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub attempt: u32,
    /// `PodSandboxStatus.network.ip`.
    pub ip: String,
    /// The pod's network namespace (`/var/run/netns/cni-<uuid>`).
    pub netns: PathBuf,
    /// The sandbox's pid 1 (`/pause`) on the host.
    pub pid: u32,
}

/// A pod this fixture made, to remove on drop.
struct PodRecord {
    id: String,
    config: PodSandboxConfig,
    netns: Option<PathBuf>,
    removed: bool,
}

/// A containerd with the CRI plugin of the test's own (see the module's doc).
pub(crate) struct Cri {
    /// `unix:///run/pathtrace-test-cri-<pid>/containerd.sock`.
    pub endpoint: String,
    /// The socket's path.
    pub socket: PathBuf,
    /// The CNI bridge (`ptcni<pid>-<n>`, at most 15 characters).
    pub bridge: String,
    /// `10.Y.0.0/24`, Y in 200..=229, used by no host address or route when it was picked.
    pub subnet: String,
    /// `10.Y.0.1`, the bridge's address.
    pub gateway: String,
    /// The CNI network's name, `pathtrace-test-cri-<pid>[-<n>]-cni` (in ipMasq's and portmap's
    /// rule comments: `name: "<network>" id: "<sandbox id>"`).
    pub network: String,
    /// `/run/pathtrace-test-cri-<pid>[-<n>]`: the socket, containerd's `state`, its log.
    pub run_dir: PathBuf,
    /// `/var/lib/pathtrace-test-cri-<pid>[-<n>]`: containerd's `root`, CNI config and data, pod
    /// logs.
    pub lib_dir: PathBuf,
    /// `pathtrace-test-cri-<pid>[-<n>]`: the comment on this fixture's own iptables rules.
    tag: String,
    /// Y of the subnet, released on drop.
    octet: u8,
    rt: tokio::runtime::Runtime,
    client: Option<RuntimeServiceClient<Channel>>,
    images: Option<ImageServiceClient<Channel>>,
    containerd: Option<Child>,
    pods: Mutex<Vec<PodRecord>>,
    uids: Mutex<HashMap<(String, String), String>>,
    /// FORWARD rules inserted by [`Cri::allow_forward`] (their arguments after the chain).
    forward: Mutex<Vec<Vec<String>>>,
    /// Whether libcni's cache dir (`/var/lib/cni`) existed before this fixture came up.
    cni_cache_existed: bool,
}

impl Cri {
    /// Starts the containerd, waits for the CRI to answer `Version`, imports [`PAUSE_IMAGE`] and
    /// writes the CNI conflist (made before containerd starts: the CRI loads it at start).
    pub(crate) fn up() -> Result<Self> {
        Self::up_with(Cni::Bridge)
    }

    /// [`Cri::up`] with the CNI `cni` says: a bridge, or routed veths (ptp).
    pub(crate) fn up_with(cni: Cni) -> Result<Self> {
        let n = INSTANCES.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let tag = if n == 0 {
            format!("pathtrace-test-cri-{pid}")
        } else {
            format!("pathtrace-test-cri-{pid}-{n}")
        };
        let octet = claim_subnet()?;
        let run_dir = PathBuf::from("/run").join(&tag);
        let lib_dir = PathBuf::from("/var/lib").join(&tag);
        let socket = run_dir.join("containerd.sock");
        let bridge = format!("ptcni{}-{n}", pid % 100_000);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        {
            let mut live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
            if live.0 == 0 {
                live.1 = run("iptables", &["-w", "-t", "nat", "-S", HOSTPORT_CHAINS[0]]).is_ok();
            }
            live.0 += 1;
        }
        // Made before anything else, so a failure below still removes what was made.
        let mut cri = Self {
            endpoint: format!("unix://{}", socket.display()),
            socket,
            bridge,
            subnet: format!("10.{octet}.0.0/24"),
            gateway: format!("10.{octet}.0.1"),
            // Suffixed: no fixture's name is a prefix of another's.
            network: format!("{tag}-cni"),
            run_dir,
            lib_dir,
            tag,
            octet,
            rt,
            client: None,
            images: None,
            containerd: None,
            pods: Mutex::new(Vec::new()),
            uids: Mutex::new(HashMap::new()),
            forward: Mutex::new(Vec::new()),
            cni_cache_existed: Path::new(CNI_CACHE).exists(),
        };
        for d in [&cri.run_dir, &cri.lib_dir] {
            ensure!(
                !d.exists(),
                "{} exists already (a killed run?)",
                d.display()
            );
            fs::create_dir_all(d)?;
        }
        match cni {
            Cni::Bridge => cri.make_bridge()?,
            // ptp gives each host veth the gateway address: no bridge may hold it.
            Cni::Ptp => cri.bridge = String::new(),
        }
        cri.write_cni_config(cni)?;
        let config = cri.write_containerd_config()?;
        cri.start_containerd(&config)?;
        cri.import_pause_image()?;
        Ok(cri)
    }

    /// The bridge, made here (the bridge plugin takes it as it is) so the subnet shows in the
    /// host's routes at once and no other fixture picks it.
    fn make_bridge(&self) -> Result<()> {
        run("ip", &["link", "add", &self.bridge, "type", "bridge"])?;
        run(
            "ip",
            &[
                "addr",
                "add",
                &format!("{}/24", self.gateway),
                "dev",
                &self.bridge,
            ],
        )?;
        run("ip", &["link", "set", &self.bridge, "up"])?;
        Ok(())
    }

    fn cni_conf_dir(&self) -> PathBuf {
        self.lib_dir.join("cni/net.d")
    }

    fn write_cni_config(&self, cni: Cni) -> Result<()> {
        let dir = self.cni_conf_dir();
        fs::create_dir_all(&dir)?;
        let ipam = serde_json::json!({
            "type": "host-local",
            "ranges": [[{ "subnet": self.subnet, "gateway": self.gateway }]],
            "routes": [{ "dst": "0.0.0.0/0" }],
            "dataDir": self.lib_dir.join("cni/ipam"),
        });
        let main = match cni {
            Cni::Bridge => serde_json::json!({
                "type": "bridge",
                "bridge": self.bridge,
                "isGateway": true,
                "ipMasq": true,
                "ipam": ipam,
            }),
            Cni::Ptp => serde_json::json!({ "type": "ptp", "ipMasq": true, "ipam": ipam }),
        };
        let conf = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": self.network,
            "plugins": [
                main,
                { "type": "portmap", "capabilities": { "portMappings": true } },
            ],
        });
        fs::write(
            dir.join("10-pathtrace-test.conflist"),
            serde_json::to_string_pretty(&conf)?,
        )?;
        Ok(())
    }

    fn write_containerd_config(&self) -> Result<PathBuf> {
        let root = self.lib_dir.join("root");
        let state = self.run_dir.join("state");
        let cri = r#"plugins."io.containerd.grpc.v1.cri""#;
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]

[grpc]
  address = "{socket}"

[ttrpc]
  address = "{socket}.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{lib}/opt"

[{cri}]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false

[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.runc.options]
  Root = "{state}/runc"
  SystemdCgroup = false

[{cri}.cni]
  bin_dir = "/usr/lib/cni"
  conf_dir = "{conf_dir}"
  max_conf_num = 1
"#,
            root = root.display(),
            state = state.display(),
            socket = self.socket.display(),
            lib = self.lib_dir.display(),
            conf_dir = self.cni_conf_dir().display(),
        );
        let path = self.lib_dir.join("containerd.toml");
        fs::write(&path, config)?;
        Ok(path)
    }

    fn log_path(&self) -> PathBuf {
        self.run_dir.join("containerd.log")
    }

    /// The last lines of containerd's log, for an error message.
    fn log_tail(&self) -> String {
        let log = fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    fn start_containerd(&mut self, config: &Path) -> Result<()> {
        let log = fs::File::create(self.log_path())?;
        let child = Command::new("containerd")
            .arg("--config")
            .arg(config)
            .arg("--log-level")
            .arg("info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot run containerd (apt-get install containerd)")?;
        self.containerd = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(child) = self.containerd.as_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!("containerd exited ({status}):\n{}", self.log_tail());
                }
            }
            if self.socket.exists() {
                match self.connect() {
                    Ok(()) => return Ok(()),
                    // containerd answers, without the CRI: its plugin failed to load.
                    Err(e)
                        if e.downcast_ref::<tonic::Status>().map(tonic::Status::code)
                            == Some(tonic::Code::Unimplemented) =>
                    {
                        bail!("no CRI ({e:#}):\n{}", self.log_tail())
                    }
                    Err(e) if Instant::now() > deadline => {
                        bail!("the CRI does not answer ({e:#}):\n{}", self.log_tail())
                    }
                    Err(_) => {}
                }
            } else if Instant::now() > deadline {
                bail!(
                    "no {} after 30 s:\n{}",
                    self.socket.display(),
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Connects to the socket and asks the CRI its `Version`.
    fn connect(&mut self) -> Result<()> {
        let path = self.socket.clone();
        let channel = self.rt.block_on(async move {
            Endpoint::try_from("http://[::]:50051")?
                .timeout(Duration::from_secs(60))
                .connect_with_connector(tower::service_fn(move |_| {
                    let p = path.clone();
                    async move {
                        Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                            tokio::net::UnixStream::connect(p).await?,
                        ))
                    }
                }))
                .await
        })?;
        let mut client = RuntimeServiceClient::new(channel.clone());
        let version = self
            .rt
            .block_on(client.version(VersionRequest {
                version: "v1".into(),
            }))?
            .into_inner();
        ensure!(
            version.runtime_api_version == "v1",
            "the CRI answers {version:?}"
        );
        self.client = Some(client);
        self.images = Some(ImageServiceClient::new(channel));
        Ok(())
    }

    fn client(&self) -> Result<RuntimeServiceClient<Channel>> {
        self.client.clone().context("the CRI is not connected")
    }

    /// [`PAUSE_IMAGE`] as an OCI layout, imported with `ctr -n k8s.io images import`; then waits
    /// for the CRI to know it.
    fn import_pause_image(&self) -> Result<()> {
        let dir = self.lib_dir.join("image");
        let tar = write_pause_image(&dir)?;
        let address = self.socket.to_str().context("socket path is not UTF-8")?;
        let tar = tar.to_str().context("image path is not UTF-8")?;
        run(
            "ctr",
            &[
                "--address",
                address,
                "-n",
                "k8s.io",
                "images",
                "import",
                tar,
            ],
        )?;
        fs::remove_dir_all(&dir)?;
        let mut images = self.images.clone().context("the CRI is not connected")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let status = self
                .rt
                .block_on(images.image_status(ImageStatusRequest {
                    image: Some(ImageSpec {
                        image: PAUSE_IMAGE.into(),
                        ..Default::default()
                    }),
                    verbose: false,
                }))?
                .into_inner();
            if status.image.is_some() {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "the CRI does not see the imported {PAUSE_IMAGE}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The pod's uid: the same for every attempt of `namespace/name` in this fixture (as the
    /// kubelet keeps it across sandbox restarts), shaped like a UUID.
    fn uid(&self, name: &str, namespace: &str) -> String {
        let mut uids = self.uids.lock().unwrap_or_else(|e| e.into_inner());
        uids.entry((namespace.to_string(), name.to_string()))
            .or_insert_with(|| {
                let mut h = DefaultHasher::new();
                (&self.tag, namespace, name).hash(&mut h);
                let a = h.finish();
                (a, 1u8).hash(&mut h);
                let b = h.finish();
                format!(
                    "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
                    a >> 32,
                    (a >> 16) & 0xffff,
                    a & 0xfff,
                    b >> 52,
                    b & 0xffff_ffff_ffff
                )
            })
            .clone()
    }

    /// `RunPodSandbox` the way the kubelet asks for it (labels `io.kubernetes.pod.*`, pod network
    /// namespace, a private log directory), then its status: id, IP, netns, pid. A restart is
    /// `run_pod` with the same name and namespace (so the same uid) and `attempt + 1`, then
    /// [`Cri::stop_pod`] and [`Cri::remove_pod`] of the old sandbox.
    pub(crate) fn run_pod(
        &self,
        name: &str,
        namespace: &str,
        attempt: u32,
        ports: &[PortMap],
    ) -> Result<Pod> {
        let (id, uid) = self.start_pod(name, namespace, attempt, ports, NamespaceMode::Pod)?;
        let mut client = self.client()?;
        let status = self
            .rt
            .block_on(client.pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: id.clone(),
                verbose: true,
            }))?
            .into_inner();
        let ip = status
            .status
            .as_ref()
            .and_then(|s| s.network.as_ref())
            .map(|n| n.ip.clone())
            .unwrap_or_default();
        ensure!(!ip.is_empty(), "pod {id} has no IP: {status:?}");
        let info = parse_info(&status.info);
        let netns = netns_of(&info).with_context(|| format!("no netns for pod {id}: {info}"))?;
        let pid = info["info"]["pid"]
            .as_u64()
            .and_then(|p| u32::try_from(p).ok())
            .with_context(|| format!("no pid for pod {id}"))?;
        if let Some(r) = self
            .pods
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter_mut()
            .find(|r| r.id == id)
        {
            r.netns = Some(netns.clone());
        }
        Ok(Pod {
            id,
            name: name.into(),
            namespace: namespace.into(),
            uid,
            attempt,
            ip,
            netns,
            pid,
        })
    }

    /// A pod with `hostNetwork: true` (network namespace mode NODE): its sandbox id.
    pub(crate) fn run_pod_host_network(&self, name: &str, namespace: &str) -> Result<String> {
        Ok(self
            .start_pod(name, namespace, 0, &[], NamespaceMode::Node)?
            .0)
    }

    /// `RunPodSandbox`, recorded for the drop: the sandbox id and the pod's uid.
    fn start_pod(
        &self,
        name: &str,
        namespace: &str,
        attempt: u32,
        ports: &[PortMap],
        network: NamespaceMode,
    ) -> Result<(String, String)> {
        let uid = self.uid(name, namespace);
        let log_directory = self
            .lib_dir
            .join("pods")
            .join(format!("{namespace}_{name}_{uid}"));
        fs::create_dir_all(&log_directory)?;
        let labels = HashMap::from([
            ("io.kubernetes.pod.name".to_string(), name.to_string()),
            (
                "io.kubernetes.pod.namespace".to_string(),
                namespace.to_string(),
            ),
            ("io.kubernetes.pod.uid".to_string(), uid.clone()),
            ("pathtrace-test".to_string(), "1".to_string()),
        ]);
        let config = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.into(),
                uid: uid.clone(),
                namespace: namespace.into(),
                attempt,
            }),
            // A host-network pod keeps the node's UTS namespace: runc cannot set its hostname.
            hostname: match network {
                NamespaceMode::Node => String::new(),
                _ => name.chars().take(63).collect(),
            },
            log_directory: log_directory.to_string_lossy().into_owned(),
            port_mappings: ports
                .iter()
                .map(|p| PortMapping {
                    protocol: if p.proto_tcp {
                        Protocol::Tcp
                    } else {
                        Protocol::Udp
                    }
                    .into(),
                    container_port: p.container_port.into(),
                    host_port: p.host_port.into(),
                    host_ip: String::new(),
                })
                .collect(),
            labels,
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: String::new(),
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(NamespaceOption {
                        network: network.into(),
                        pid: NamespaceMode::Pod.into(),
                        ipc: NamespaceMode::Pod.into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut client = self.client()?;
        let id = self
            .rt
            .block_on(client.run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: String::new(),
            }))
            .with_context(|| {
                format!(
                    "RunPodSandbox {namespace}/{name} attempt {attempt}:\n{}",
                    self.log_tail()
                )
            })?
            .into_inner()
            .pod_sandbox_id;
        self.pods
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(PodRecord {
                id: id.clone(),
                config,
                netns: None,
                removed: false,
            });
        Ok((id, uid))
    }

    /// `StopPodSandbox`: its containers are killed, CNI DEL runs, the netns goes.
    pub(crate) fn stop_pod(&self, id: &str) -> Result<()> {
        let mut client = self.client()?;
        self.rt
            .block_on(client.stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: id.into(),
            }))
            .with_context(|| format!("StopPodSandbox {id}"))?;
        Ok(())
    }

    /// `RemovePodSandbox` (after [`Cri::stop_pod`]).
    pub(crate) fn remove_pod(&self, id: &str) -> Result<()> {
        let mut client = self.client()?;
        self.rt
            .block_on(client.remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: id.into(),
            }))
            .with_context(|| format!("RemovePodSandbox {id}"))?;
        if let Some(r) = self
            .pods
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter_mut()
            .find(|r| r.id == id)
        {
            r.removed = true;
        }
        Ok(())
    }

    /// A started container `name` in the pod: `/bin/busybox sleep 2147483647` of [`PAUSE_IMAGE`]
    /// (its own pid namespace, the pod's network and ipc, as the kubelet asks). Its id.
    pub(crate) fn run_container(&self, pod: &Pod, name: &str) -> Result<String> {
        let sandbox_config = self
            .pods
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|r| r.id == pod.id)
            .map(|r| r.config.clone())
            .with_context(|| format!("pod {} was not made by this fixture", pod.id))?;
        let config = ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: name.into(),
                attempt: 0,
            }),
            image: Some(ImageSpec {
                image: PAUSE_IMAGE.into(),
                ..Default::default()
            }),
            command: vec!["/bin/busybox".into(), "sleep".into(), "2147483647".into()],
            log_path: format!("{name}/0.log"),
            labels: HashMap::from([("io.kubernetes.container.name".to_string(), name.to_string())]),
            linux: Some(LinuxContainerConfig {
                security_context: Some(LinuxContainerSecurityContext {
                    namespace_options: Some(NamespaceOption {
                        network: NamespaceMode::Pod.into(),
                        pid: NamespaceMode::Container.into(),
                        ipc: NamespaceMode::Pod.into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut client = self.client()?;
        let id = self
            .rt
            .block_on(client.create_container(CreateContainerRequest {
                pod_sandbox_id: pod.id.clone(),
                config: Some(config),
                sandbox_config: Some(sandbox_config),
            }))
            .with_context(|| format!("CreateContainer {name} in {}", pod.id))?
            .into_inner()
            .container_id;
        self.rt
            .block_on(client.start_container(StartContainerRequest {
                container_id: id.clone(),
            }))
            .with_context(|| format!("StartContainer {name} ({id})"))?;
        Ok(id)
    }

    /// `PodSandboxStatus` with `verbose: true`: the whole `info` map, each value parsed as JSON
    /// when it is JSON (containerd 1.6 has one key, `info`).
    pub(crate) fn pod_status_verbose(&self, id: &str) -> Result<serde_json::Value> {
        let mut client = self.client()?;
        let status = self
            .rt
            .block_on(client.pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: id.into(),
                verbose: true,
            }))
            .with_context(|| format!("PodSandboxStatus {id}"))?
            .into_inner();
        Ok(parse_info(&status.info))
    }

    /// The whole `PodSandboxStatusResponse` (verbose), for printing.
    pub(crate) fn pod_status_debug(&self, id: &str) -> Result<String> {
        let mut client = self.client()?;
        let status = self
            .rt
            .block_on(client.pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: id.into(),
                verbose: true,
            }))?
            .into_inner();
        Ok(format!("{:#?}", status.status))
    }

    /// Lets the pods' traffic through Docker's FORWARD policy DROP, to and from `uplink`: two
    /// `iptables -I FORWARD ... -j ACCEPT` rules, removed on drop.
    pub(crate) fn allow_forward(&self, uplink: &str) -> Result<()> {
        // By the pods' subnet: a bridge CNI's and a routed one's alike.
        for (a, b) in [("-s", "-o"), ("-d", "-i")] {
            let rule: Vec<String> = [
                a,
                &self.subnet,
                b,
                uplink,
                "-m",
                "comment",
                "--comment",
                &self.tag,
                "-j",
                "ACCEPT",
            ]
            .into_iter()
            .map(String::from)
            .collect();
            let mut args = vec!["-w", "-I", "FORWARD"];
            args.extend(rule.iter().map(String::as_str));
            run("iptables", &args)?;
            self.forward
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(rule);
        }
        Ok(())
    }

    /// Each cleanup step; what failed, to print.
    fn teardown(&mut self) -> Vec<String> {
        let mut failed = Vec::new();
        let pods: Vec<(String, bool, Option<PathBuf>)> = self
            .pods
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|r| (r.id.clone(), r.removed, r.netns.clone()))
            .collect();
        if self.client.is_some() {
            for (id, removed, _) in &pods {
                if !removed {
                    if let Err(e) = self.stop_pod(id).and_then(|()| self.remove_pod(id)) {
                        failed.push(format!("pod {id}: {e:#}"));
                    }
                }
            }
        }
        for rule in self
            .forward
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            let mut args = vec!["-w", "-D", "FORWARD"];
            args.extend(rule.iter().map(String::as_str));
            if let Err(e) = run("iptables", &args) {
                failed.push(format!("{e:#}"));
            }
        }
        self.client = None;
        self.images = None;
        if let Some(mut child) = self.containerd.take() {
            if let Err(e) = stop_child(&mut child) {
                failed.push(format!("containerd: {e:#}"));
            }
        }
        // What would outlive containerd: its shims, and anything whose root is under its dirs.
        let dirs = [self.run_dir.clone(), self.lib_dir.clone()];
        let socket = self.socket.to_string_lossy().into_owned();
        for pid in processes(|cmdline, root| {
            (cmdline.contains("containerd-shim") && cmdline.contains(&socket))
                || dirs.iter().any(|d| root.starts_with(d))
        }) {
            failed.push(format!("killed leftover process {pid}"));
            if let Err(e) = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            ) {
                failed.push(format!("kill {pid}: {e}"));
            }
        }
        // Pods CNI DEL never ran for: their netns (its veth goes with it) and iptables rules.
        for (_, _, netns) in &pods {
            if let Some(ns) = netns.as_ref().filter(|ns| ns.exists()) {
                failed.push(format!("netns {} was left", ns.display()));
                run("umount", &["-l", &ns.to_string_lossy()]).ok();
                if let Err(e) = fs::remove_file(ns) {
                    failed.push(format!("{}: {e}", ns.display()));
                }
            }
        }
        failed.extend(self.remove_cni_rules());
        for dir in [&self.run_dir, &self.lib_dir] {
            failed.extend(unmount_under(dir));
            if dir.exists() {
                if let Err(e) = fs::remove_dir_all(dir) {
                    failed.push(format!("{}: {e}", dir.display()));
                }
            }
        }
        if !self.bridge.is_empty() && Path::new("/sys/class/net").join(&self.bridge).exists() {
            if let Err(e) = run("ip", &["link", "del", &self.bridge]) {
                failed.push(format!("{e:#}"));
            }
        }
        // libcni's result cache, should CNI DEL not have run.
        let results = Path::new(CNI_CACHE).join("results");
        if let Ok(entries) = fs::read_dir(&results) {
            for e in entries.flatten() {
                if e.file_name()
                    .to_string_lossy()
                    .starts_with(&format!("{}-", self.network))
                {
                    failed.push(format!("removed {}", e.path().display()));
                    fs::remove_file(e.path()).ok();
                }
            }
        }
        // The cache dir itself, when this fixture made it and nothing else is in it.
        if !self.cni_cache_existed {
            fs::remove_dir(&results).ok();
            fs::remove_dir(CNI_CACHE).ok();
        }
        failed
    }

    /// Any nat rule naming this fixture's CNI network (CNI DEL did not run), with the chains it
    /// jumps to; then portmap's shared chains, when this fixture made them, no other fixture of
    /// this process is alive, and no DNAT is left in them.
    fn remove_cni_rules(&self) -> Vec<String> {
        let mut failed = Vec::new();
        let Ok(rules) = run("iptables", &["-w", "-t", "nat", "-S"]) else {
            return vec!["cannot list the nat table".into()];
        };
        let mut chains = Vec::new();
        let named = format!(r#"name: \"{}\""#, self.network);
        for line in rules.lines().filter(|l| l.contains(&named)) {
            let words = shell_words(line);
            if words.first().map(String::as_str) != Some("-A") {
                continue;
            }
            if let Some(target) = words
                .iter()
                .skip_while(|w| *w != "-j")
                .nth(1)
                .filter(|t| t.starts_with("CNI-") && !HOSTPORT_CHAINS.contains(&t.as_str()))
            {
                chains.push(target.clone());
            }
            let mut args = vec!["-w", "-t", "nat", "-D"];
            args.extend(words[1..].iter().map(String::as_str));
            failed.push(format!("removed the nat rule {line}"));
            if let Err(e) = run("iptables", &args) {
                failed.push(format!("{e:#}"));
            }
        }
        for chain in chains {
            for op in ["-F", "-X"] {
                if let Err(e) = run("iptables", &["-w", "-t", "nat", op, &chain]) {
                    failed.push(format!("{e:#}"));
                }
            }
        }
        // Held to the end, so no other fixture comes up or goes meanwhile.
        let live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
        let (others_alive, existed) = (live.0 > 1, live.1);
        let dnat_rules = run("iptables", &["-w", "-t", "nat", "-S", HOSTPORT_CHAINS[0]]);
        let unused = dnat_rules.is_ok_and(|r| !r.lines().any(|l| l.starts_with("-A")));
        if !existed && !others_alive && unused {
            let rules = run("iptables", &["-w", "-t", "nat", "-S"]).unwrap_or_default();
            for line in rules.lines().filter(|l| l.starts_with("-A")) {
                let words = shell_words(line);
                let jumps_to_shared = words
                    .iter()
                    .skip_while(|w| *w != "-j")
                    .nth(1)
                    .is_some_and(|t| HOSTPORT_CHAINS.contains(&t.as_str()));
                if jumps_to_shared {
                    let mut args = vec!["-w", "-t", "nat", "-D"];
                    args.extend(words[1..].iter().map(String::as_str));
                    if let Err(e) = run("iptables", &args) {
                        failed.push(format!("{e:#}"));
                    }
                }
            }
            for op in ["-F", "-X"] {
                for chain in HOSTPORT_CHAINS {
                    if rules.contains(&format!("-N {chain}")) {
                        if let Err(e) = run("iptables", &["-w", "-t", "nat", op, chain]) {
                            failed.push(format!("{e:#}"));
                        }
                    }
                }
            }
        }
        failed
    }
}

impl Drop for Cri {
    fn drop(&mut self) {
        for what in self.teardown() {
            eprintln!("cri cleanup ({}): {what}", self.tag);
        }
        CLAIMED
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|y| *y != self.octet);
        let mut live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
        live.0 = live.0.saturating_sub(1);
    }
}

/// Y of a 10.Y.0.0/24 (Y in 200..=229) no host address or route uses and no fixture of this
/// process holds.
fn claim_subnet() -> Result<u8> {
    let used = run("ip", &["-4", "addr"])? + &run("ip", &["-4", "route"])?;
    let mut claimed = CLAIMED.lock().unwrap_or_else(|e| e.into_inner());
    let y = (200..=229u8)
        .find(|y| !claimed.contains(y) && !used.contains(&format!("10.{y}.")))
        .context("no free 10.Y.0.0/24 with Y in 200..=229")?;
    claimed.push(y);
    Ok(y)
}

/// The `info` map of a verbose status, each value parsed as JSON when it is JSON.
fn parse_info(info: &HashMap<String, String>) -> serde_json::Value {
    info.iter()
        .map(|(k, v)| {
            let value = serde_json::from_str(v).unwrap_or_else(|_| v.clone().into());
            (k.clone(), value)
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// `info.runtimeSpec.linux.namespaces[type=network].path` of a parsed verbose `info`.
pub(crate) fn netns_of(info: &serde_json::Value) -> Option<PathBuf> {
    info["info"]["runtimeSpec"]["linux"]["namespaces"]
        .as_array()?
        .iter()
        .find(|n| n["type"] == "network")?["path"]
        .as_str()
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
}

/// SIGTERM, up to 10 s, then SIGKILL; reaped.
fn stop_child(child: &mut Child) -> Result<()> {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id())?);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if child.try_wait()?.is_some() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill()?;
    child.wait()?;
    bail!("did not stop on SIGTERM in 10 s; killed")
}

/// Pids of the processes `pick(cmdline, root)` chooses (the cmdline's words joined by spaces).
fn processes(pick: impl Fn(&str, &Path) -> bool) -> Vec<i32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = fs::read(e.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            let root = fs::read_link(e.path().join("root")).unwrap_or_default();
            (pid != i32::try_from(std::process::id()).ok()? && pick(&cmdline, &root)).then_some(pid)
        })
        .collect()
}

/// Lazily unmounts every mount point under `dir`, deepest first. What failed.
fn unmount_under(dir: &Path) -> Vec<String> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<String> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mount_path)
        .filter(|p| Path::new(p).starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    points.dedup();
    points
        .iter()
        .filter_map(|p| run("umount", &["-l", p]).err().map(|e| format!("{e:#}")))
        .collect()
}

/// mountinfo's octal escapes (`\040` for a space).
fn unescape_mount_path(p: &str) -> String {
    let mut out = Vec::new();
    let bytes = p.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|o| bytes[i] == b'\\' && o.iter().all(|b| (b'0'..=b'7').contains(b)))
            .and_then(|o| u8::from_str_radix(std::str::from_utf8(o).ok()?, 8).ok());
        if let Some(b) = octal {
            out.push(b);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The words of an `iptables -S` line, double quotes and backslash escapes undone.
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let (mut quoted, mut in_word) = (false, false);
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                word.extend(chars.next());
                in_word = true;
            }
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            ' ' if !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                }
                in_word = false;
            }
            c => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

/// The sha256 of `path` (`sha256sum`), hex.
fn sha256(path: &Path) -> Result<String> {
    let out = run("sha256sum", &[path.to_str().context("path is not UTF-8")?])?;
    out.split_whitespace()
        .next()
        .map(String::from)
        .context("sha256sum printed nothing")
}

/// Writes `bytes` as a blob of the layout in `dir`: its `sha256:<hex>` digest and size.
fn blob(dir: &Path, bytes: &[u8]) -> Result<(String, usize)> {
    let tmp = dir.join("blob.tmp");
    fs::write(&tmp, bytes)?;
    let hex = sha256(&tmp)?;
    fs::rename(&tmp, dir.join("blobs/sha256").join(&hex))?;
    Ok((format!("sha256:{hex}"), bytes.len()))
}

/// [`PAUSE_IMAGE`] as a tar of an OCI image layout, written under `dir`: one uncompressed layer of
/// busybox-static with its applets, `/pause`, `/etc/passwd`; entrypoint `/pause`. The tar's path.
fn write_pause_image(dir: &Path) -> Result<PathBuf> {
    let busybox = Path::new("/bin/busybox");
    ensure!(
        busybox.exists(),
        "no /bin/busybox (apt-get install busybox-static)"
    );
    let root = dir.join("rootfs");
    for d in ["bin", "etc", "tmp", "root", "proc", "sys", "dev"] {
        fs::create_dir_all(root.join(d))?;
    }
    fs::copy(busybox, root.join("bin/busybox"))?;
    fs::set_permissions(root.join("bin/busybox"), fs::Permissions::from_mode(0o755))?;
    let list = run("/bin/busybox", &["--list"])?;
    for applet in list.lines() {
        if !applet.is_empty() && applet != "busybox" && !applet.contains('/') {
            symlink("busybox", root.join("bin").join(applet))?;
        }
    }
    fs::write(root.join("pause"), PAUSE_SCRIPT)?;
    fs::set_permissions(root.join("pause"), fs::Permissions::from_mode(0o755))?;
    fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )?;
    fs::write(root.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n")?;
    let layout = dir.join("layout");
    fs::create_dir_all(layout.join("blobs/sha256"))?;
    let layer = dir.join("layer.tar");
    let (root_s, layer_s) = (
        root.to_str().context("path is not UTF-8")?,
        layer.to_str().context("path is not UTF-8")?,
    );
    run(
        "tar",
        &[
            "--numeric-owner",
            "--owner=0",
            "--group=0",
            "--sort=name",
            "-C",
            root_s,
            "-cf",
            layer_s,
            ".",
        ],
    )?;
    let (layer_digest, layer_size) = blob(&layout, &fs::read(&layer)?)?;
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Entrypoint": ["/pause"],
            "Env": ["PATH=/bin"],
            "WorkingDir": "/",
        },
        "rootfs": { "type": "layers", "diff_ids": [layer_digest] },
        "history": [{ "created_by": "pathtrace integration tests" }],
    });
    let (config_digest, config_size) = blob(&layout, &serde_json::to_vec(&config)?)?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config_size,
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": layer_digest,
            "size": layer_size,
        }],
    });
    let (manifest_digest, manifest_size) = blob(&layout, &serde_json::to_vec(&manifest)?)?;
    let tag = PAUSE_IMAGE.rsplit(':').next().unwrap_or("latest");
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest_size,
            "platform": { "architecture": "amd64", "os": "linux" },
            "annotations": {
                "io.containerd.image.name": PAUSE_IMAGE,
                "org.opencontainers.image.ref.name": tag,
            },
        }],
    });
    fs::write(layout.join("index.json"), serde_json::to_vec(&index)?)?;
    fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    let tar = dir.join("pause.tar");
    run(
        "tar",
        &[
            "-C",
            layout.to_str().context("path is not UTF-8")?,
            "-cf",
            tar.to_str().context("path is not UTF-8")?,
            "oci-layout",
            "index.json",
            "blobs",
        ],
    )?;
    Ok(tar)
}
