//! Unit tests without a Docker daemon: naming, parsing, event mapping, error wording.

use std::collections::HashMap;

use bollard::models::PortBinding;

use super::{events::map_action, *};

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[test]
fn edit_distance() {
    assert_eq!(levenshtein("mnio", "minio"), 1);
    assert_eq!(levenshtein("", "abc"), 3);
    assert_eq!(levenshtein("kitten", "sitting"), 3);
    assert_eq!(levenshtein("same", "same"), 0);
}

#[test]
fn suggestions_are_close_names_best_first_at_most_three() {
    let all = names(&[
        "minio",
        "mongo",
        "redis",
        "minio-2",
        "web",
        "minio_old",
        "mini",
    ]);
    assert_eq!(suggest("mnio", &all), names(&["minio", "mini", "mongo"]));
    assert_eq!(suggest("redsi", &all), names(&["redis"]));
    assert!(suggest("postgres", &all).is_empty());
    // Names starting with the key count too, after the closer ones.
    assert_eq!(suggest("web-", &all), names(&["web"]));
    assert_eq!(
        suggest("redis", &names(&["redis-cache-primary"])),
        names(&["redis-cache-primary"])
    );
}

#[test]
fn unknown_container_message_names_the_fix() {
    let e = DockerError::UnknownContainer {
        name: "mnio".into(),
        suggestions: names(&["minio"]),
    };
    assert_eq!(
        e.to_string(),
        "no container named 'mnio'; did you mean: minio?"
    );
    let e = DockerError::UnknownContainer {
        name: "x".into(),
        suggestions: vec![],
    };
    assert_eq!(
        e.to_string(),
        "no container named 'x'; list them with `docker ps -a`"
    );
    let e = DockerError::NotRunning {
        name: "db".into(),
        state: "exited".into(),
        cli: "docker",
    };
    assert_eq!(
        e.to_string(),
        "container db is exited; start it with `docker start db`"
    );
}

#[test]
fn bridge_names() {
    let id = "0123456789abcdef0123";
    assert_eq!(
        bridge_name_of("bridge", id, Some("bridge"), None).as_deref(),
        Some("docker0")
    );
    assert_eq!(
        bridge_name_of("mynet", id, Some("bridge"), None).as_deref(),
        Some("br-0123456789ab")
    );
    let opts = HashMap::from([(
        "com.docker.network.bridge.name".to_string(),
        "custom0".to_string(),
    )]);
    assert_eq!(
        bridge_name_of("mynet", id, Some("bridge"), Some(&opts)).as_deref(),
        Some("custom0")
    );
    assert_eq!(bridge_name_of("mv", id, Some("macvlan"), None), None);
}

#[test]
fn published_ports_one_per_binding_exposed_only_skipped() {
    let bind = |ip: &str, port: &str| PortBinding {
        host_ip: Some(ip.into()),
        host_port: Some(port.into()),
    };
    let map: PortMap = HashMap::from([
        (
            "80/tcp".to_string(),
            Some(vec![bind("0.0.0.0", "18080"), bind("::", "18080")]),
        ),
        ("53/udp".to_string(), Some(vec![bind("127.0.0.1", "5353")])),
        ("443/tcp".to_string(), None),
    ]);
    let got = published_ports(&map);
    let port = |proto: &str, ip: &str, host_port, container_port| PublishedPort {
        proto: proto.parse().unwrap_or(Proto::Other(0)),
        host_ip: ip.parse().ok(),
        host_port,
        container_port,
    };
    assert_eq!(
        got,
        vec![
            port("tcp", "0.0.0.0", 18080, 80),
            port("tcp", "::", 18080, 80),
            port("udp", "127.0.0.1", 5353, 53),
        ]
    );
}

#[test]
fn docker_actions_map_to_events() {
    let attrs = HashMap::from([
        ("exitCode".to_string(), "137".to_string()),
        ("signal".to_string(), "9".to_string()),
    ]);
    assert_eq!(
        map_action("die", &attrs),
        Some(ContainerEvent::Died {
            exit_code: Some(137)
        })
    );
    assert_eq!(
        map_action("kill", &attrs),
        Some(ContainerEvent::Killed { signal: Some(9) })
    );
    assert_eq!(map_action("stop", &attrs), Some(ContainerEvent::Stopped));
    assert_eq!(
        map_action("restart", &attrs),
        Some(ContainerEvent::Restarted)
    );
    assert_eq!(
        map_action("destroy", &attrs),
        Some(ContainerEvent::Destroyed)
    );
    assert_eq!(
        map_action("die", &HashMap::new()),
        Some(ContainerEvent::Died { exit_code: None })
    );
    assert_eq!(map_action("pause", &attrs), None);
    assert_eq!(map_action("exec_start: sh", &attrs), None);
}

#[test]
fn io_errors_sort_into_unreachable_and_permission() {
    let e = io_problem(
        "unix:///s",
        &std::io::Error::from(std::io::ErrorKind::PermissionDenied),
    );
    assert!(matches!(e, DockerError::PermissionDenied { .. }), "{e}");
    let e = io_problem(
        "unix:///s",
        &std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
    );
    assert!(matches!(e, DockerError::Unreachable { .. }), "{e}");
    assert!(
        e.to_string()
            .starts_with("cannot reach Docker at unix:///s: "),
        "{e}"
    );
    assert!(
        e.to_string()
            .ends_with("is dockerd running? (set DOCKER_HOST for another socket)"),
        "{e}"
    );
}

#[tokio::test]
async fn missing_socket_is_unreachable() {
    let path =
        std::env::temp_dir().join(format!("pathtrace-no-docker-{}.sock", std::process::id()));
    let host = format!("unix://{}", path.display());
    let err = Docker::connect_to(&host, DEFAULT_TIMEOUT).await.err();
    assert!(
        matches!(err, Some(DockerError::Unreachable { .. })),
        "{err:?}"
    );
}

#[tokio::test]
async fn dead_socket_is_unreachable() {
    let dir = std::env::temp_dir().join(format!("pathtrace-dead-docker-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("docker.sock");
    // Bound, then closed: the file stays, connecting is refused.
    drop(std::os::unix::net::UnixListener::bind(&path).expect("bind a unix socket"));
    let err = Docker::connect_to(&format!("unix://{}", path.display()), DEFAULT_TIMEOUT)
        .await
        .err();
    std::fs::remove_dir_all(&dir).expect("remove temp dir");
    match err {
        Some(DockerError::Unreachable { why, .. }) => assert!(why.contains("refused"), "{why}"),
        other => panic!("expected Unreachable, got {other:?}"),
    }
}

#[tokio::test]
async fn unsupported_scheme_is_named() {
    let err = Docker::connect_to("ssh://me@host", DEFAULT_TIMEOUT)
        .await
        .err();
    assert!(
        matches!(err, Some(DockerError::UnsupportedHost(_))),
        "{err:?}"
    );
}
