//! `deploy/daemonset.yaml` and `deploy/Containerfile`, checked for what pathtrace needs on a node:
//! the privileges and mounts the DaemonSet must have, and that the image carries the release
//! binary. No cluster runs here: the manifest is parsed, not applied. The check lists everything
//! missing, and the mutation test shows it fails when each requirement is taken away.

use serde::Deserialize as _;
use serde_yaml::{Mapping, Value};

const IMAGE: &str = "ghcr.io/pathtrace/pathtrace:latest";

/// A hostPath volume the pod must mount, and how.
struct Mount {
    host_path: &'static str,
    mount_path: &'static str,
    read_only: bool,
    propagation: Option<&'static str>,
}

const MOUNTS: &[Mount] = &[
    // containerd's CRI socket, /run/containerd/containerd.sock.
    Mount {
        host_path: "/run/containerd",
        mount_path: "/run/containerd",
        read_only: false,
        propagation: None,
    },
    // CRI-O's, /var/run/crio/crio.sock.
    Mount {
        host_path: "/var/run/crio",
        mount_path: "/var/run/crio",
        read_only: false,
        propagation: None,
    },
    // The CRI's bind mounts of pod network namespaces; pods started later must show up too.
    Mount {
        host_path: "/run/netns",
        mount_path: "/run/netns",
        read_only: false,
        propagation: Some("HostToContainer"),
    },
    Mount {
        host_path: "/sys/fs/bpf",
        mount_path: "/sys/fs/bpf",
        read_only: false,
        propagation: None,
    },
    Mount {
        host_path: "/sys/kernel/btf",
        mount_path: "/sys/kernel/btf",
        read_only: true,
        propagation: None,
    },
    Mount {
        host_path: "/proc",
        mount_path: "/host/proc",
        read_only: true,
        propagation: None,
    },
    Mount {
        host_path: "/lib/modules",
        mount_path: "/lib/modules",
        read_only: true,
        propagation: None,
    },
];

fn deploy_file(name: &str) -> String {
    let path = format!("{}/../deploy/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

/// Every document of the multi-document manifest.
fn documents(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|doc| Value::deserialize(doc).expect("deploy/daemonset.yaml is valid YAML"))
        .collect()
}

fn kind(doc: &Value) -> Option<&str> {
    doc.get("kind").and_then(Value::as_str)
}

fn the_daemonset(docs: &[Value]) -> Value {
    let found: Vec<&Value> = docs
        .iter()
        .filter(|d| kind(d) == Some("DaemonSet"))
        .collect();
    assert_eq!(found.len(), 1, "one DaemonSet in deploy/daemonset.yaml");
    found[0].clone()
}

fn str_at<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

fn is_true(v: &Value, key: &str) -> bool {
    v.get(key).and_then(Value::as_bool) == Some(true)
}

fn seq<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key)
        .and_then(Value::as_sequence)
        .map_or(&[], Vec::as_slice)
}

/// What the DaemonSet lacks, all of it, or `Ok`.
fn check_daemonset(ds: &Value) -> Result<(), String> {
    let mut missing = Vec::new();
    if kind(ds) != Some("DaemonSet") {
        missing.push("kind: DaemonSet".to_string());
    }
    let meta = &ds["metadata"];
    if str_at(meta, "namespace") != Some("pathtrace") {
        missing.push("metadata.namespace: pathtrace".to_string());
    }
    if meta["labels"]["app.kubernetes.io/name"].as_str() != Some("pathtrace") {
        missing.push("metadata.labels app.kubernetes.io/name: pathtrace".to_string());
    }
    let spec = &ds["spec"]["template"]["spec"];
    if !spec.is_mapping() {
        return Err("spec.template.spec".to_string());
    }
    for key in ["hostNetwork", "hostPID"] {
        if !is_true(spec, key) {
            missing.push(format!("{key}: true"));
        }
    }
    if str_at(spec, "dnsPolicy") != Some("ClusterFirstWithHostNet") {
        missing.push("dnsPolicy: ClusterFirstWithHostNet".to_string());
    }
    // A toleration with no key and operator Exists tolerates every taint: every node.
    let everywhere = seq(spec, "tolerations")
        .iter()
        .any(|t| str_at(t, "operator") == Some("Exists") && t.get("key").is_none());
    if !everywhere {
        missing.push("tolerations: - operator: Exists (no key)".to_string());
    }

    let volumes: Vec<(&str, Option<&str>)> = seq(spec, "volumes")
        .iter()
        .filter_map(|v| Some((str_at(v, "name")?, str_at(&v["hostPath"], "path"))))
        .collect();

    let containers = seq(spec, "containers");
    let Some(container) = containers
        .iter()
        .find(|c| str_at(c, "image") == Some(IMAGE))
    else {
        missing.push(format!("a container with image {IMAGE}"));
        return Err(missing.join("; "));
    };
    if str_at(container, "imagePullPolicy") != Some("IfNotPresent") {
        missing.push("imagePullPolicy: IfNotPresent".to_string());
    }
    let command: Vec<&str> = seq(container, "command")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    if command != ["sleep", "infinity"] {
        missing.push(format!(
            "command: [sleep, infinity] (idle, for kubectl exec), not {command:?}"
        ));
    }
    if !is_true(&container["securityContext"], "privileged") {
        missing.push("securityContext.privileged: true".to_string());
    }
    if container["resources"]["limits"]["memory"]
        .as_str()
        .is_none()
    {
        missing.push("resources.limits.memory".to_string());
    }

    let mounts = seq(container, "volumeMounts");
    for m in mounts {
        let name = str_at(m, "name").unwrap_or("");
        if !volumes.iter().any(|(v, _)| *v == name) {
            missing.push(format!("a volume named {name:?} (a volumeMount uses it)"));
        }
    }
    for want in MOUNTS {
        let Some((volume, _)) = volumes
            .iter()
            .find(|(_, host)| *host == Some(want.host_path))
        else {
            missing.push(format!("a hostPath volume for {}", want.host_path));
            continue;
        };
        let Some(mount) = mounts.iter().find(|m| {
            str_at(m, "name") == Some(volume) && str_at(m, "mountPath") == Some(want.mount_path)
        }) else {
            missing.push(format!(
                "a volumeMount of {} at {}",
                want.host_path, want.mount_path
            ));
            continue;
        };
        if want.read_only && !is_true(mount, "readOnly") {
            missing.push(format!("{} mounted readOnly", want.mount_path));
        }
        if let Some(propagation) = want.propagation {
            if str_at(mount, "mountPropagation") != Some(propagation) {
                missing.push(format!(
                    "{} with mountPropagation: {propagation}",
                    want.mount_path
                ));
            }
        }
    }
    match missing.is_empty() {
        true => Ok(()),
        false => Err(missing.join("; ")),
    }
}

#[test]
fn manifest_has_privileges_and_mounts() {
    let docs = documents(&deploy_file("daemonset.yaml"));
    let namespace = docs
        .iter()
        .find(|d| kind(d) == Some("Namespace"))
        .expect("a Namespace object in deploy/daemonset.yaml");
    assert_eq!(str_at(&namespace["metadata"], "name"), Some("pathtrace"));
    let ds = the_daemonset(&docs);
    if let Err(missing) = check_daemonset(&ds) {
        panic!("deploy/daemonset.yaml lacks: {missing}");
    }
}

/// The parsed DaemonSet's pod spec, to change a copy of it.
fn pod_spec(ds: &mut Value) -> &mut Mapping {
    ds["spec"]["template"]["spec"]
        .as_mapping_mut()
        .expect("a pod spec")
}

fn container(ds: &mut Value) -> &mut Mapping {
    pod_spec(ds)
        .get_mut("containers")
        .and_then(|c| c.get_mut(0))
        .and_then(Value::as_mapping_mut)
        .expect("a container")
}

fn mount_named<'a>(ds: &'a mut Value, path: &str) -> &'a mut Mapping {
    container(ds)
        .get_mut("volumeMounts")
        .and_then(Value::as_sequence_mut)
        .expect("volumeMounts")
        .iter_mut()
        .find(|m| str_at(m, "mountPath") == Some(path))
        .and_then(Value::as_mapping_mut)
        .unwrap_or_else(|| panic!("a mount at {path}"))
}

#[test]
fn check_reports_what_is_taken_away() {
    let original = the_daemonset(&documents(&deploy_file("daemonset.yaml")));
    type Mutation = fn(&mut Value);
    let cases: &[(&str, Mutation)] = &[
        ("hostPID", |ds| {
            pod_spec(ds).remove("hostPID");
        }),
        ("hostNetwork", |ds| {
            pod_spec(ds).insert("hostNetwork".into(), false.into());
        }),
        ("privileged", |ds| {
            container(ds).remove("securityContext");
        }),
        ("operator: Exists", |ds| {
            pod_spec(ds).remove("tolerations");
        }),
        ("mountPropagation: HostToContainer", |ds| {
            mount_named(ds, "/run/netns").remove("mountPropagation");
        }),
        ("/host/proc mounted readOnly", |ds| {
            mount_named(ds, "/host/proc").remove("readOnly");
        }),
        ("a volume named \"nowhere\"", |ds| {
            mount_named(ds, "/sys/fs/bpf").insert("name".into(), "nowhere".into());
        }),
        ("a hostPath volume for /var/run/crio", |ds| {
            let volumes = pod_spec(ds)
                .get_mut("volumes")
                .and_then(Value::as_sequence_mut)
                .expect("volumes");
            volumes.retain(|v| str_at(&v["hostPath"], "path") != Some("/var/run/crio"));
        }),
        ("a volumeMount of /run/containerd", |ds| {
            let mounts = container(ds)
                .get_mut("volumeMounts")
                .and_then(Value::as_sequence_mut)
                .expect("volumeMounts");
            mounts.retain(|m| str_at(m, "mountPath") != Some("/run/containerd"));
        }),
        ("a container with image", |ds| {
            container(ds).insert("image".into(), "pathtrace:dev".into());
        }),
    ];
    for (expected, mutate) in cases {
        let mut ds = original.clone();
        mutate(&mut ds);
        let err = check_daemonset(&ds).expect_err(&format!("the check misses {expected}"));
        assert!(
            err.contains(expected),
            "taking {expected} away reports {err:?}"
        );
    }
}

#[test]
fn containerfile_copies_the_release_binary() {
    let file = deploy_file("Containerfile");
    let lines: Vec<&str> = file
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect();
    assert!(
        lines.iter().any(|l| l.starts_with("FROM debian:")),
        "the image is Debian's: {lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("COPY ") && l.contains("target/release/pathtrace")),
        "deploy/Containerfile copies target/release/pathtrace: {lines:?}"
    );
    for tool in ["iptables", "nftables", "conntrack", "iproute2"] {
        assert!(
            lines
                .iter()
                .any(|l| l.split_whitespace().any(|w| w == tool)),
            "deploy/Containerfile installs {tool}"
        );
    }
}
