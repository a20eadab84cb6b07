//! Docker discovery against the real dockerd: resolving containers, the errors a user meets,
//! networks, bridges and published ports, the container's interfaces and their host veths, and
//! lifecycle events across `docker restart`. Discovery only: no test sends any traffic.
//!
//! Needs root and a running dockerd; without them the tests print a loud notice and pass, except
//! under CI (`CI` set), where they fail.

use std::{net::IpAddr, sync::Arc, time::Duration};

use anyhow::{bail, ensure, Context, Result};
use futures::StreamExt;
use tracer::{
    discover::{
        netns::Netns,
        path::{self, PathQuery},
    },
    model::{Place, Proto},
    runtime::docker::{ContainerEvent, Docker, DockerError, PublishedPort},
};

use crate::support::{
    docker::{docker, ethtool_peer_ifindex, free_port, TestContainer, TestNetwork},
    docker_or_skip as gate,
};

const SLEEP: &[&str] = &["sleep", "3600"];

/// The shortest prefix of `id` no other container id starts with, plus one character.
fn unique_prefix(id: &str) -> Result<String> {
    let all = docker(&["ps", "-aq", "--no-trunc"])?;
    let others: Vec<&str> = all.lines().filter(|l| *l != id).collect();
    let len = (1..=id.len())
        .find(|n| others.iter().all(|o| !o.starts_with(&id[..*n])))
        .context("id is a prefix of another")?;
    Ok(id[..(len + 1).min(id.len())].to_string())
}

fn in_docker0_subnet(ip: Option<IpAddr>) -> bool {
    matches!(ip, Some(IpAddr::V4(v4)) if v4.octets()[..2] == [172, 17])
}

#[tokio::test]
async fn resolves_by_name_id_and_prefix_and_finds_the_host_veth() -> Result<()> {
    if !gate("resolves_by_name_id_and_prefix_and_finds_the_host_veth") {
        return Ok(());
    }
    let c = TestContainer::run("pt-resolve", &[], SLEEP)?;
    let d = Docker::connect().await?;
    let info = d.resolve(&c.name).await?;
    for spec in [format!("/{}", c.name), c.id.clone(), unique_prefix(&c.id)?] {
        let other = d.resolve(&spec).await?;
        ensure!(
            other.id == c.id && other.name == c.name,
            "{spec} resolved to {other:?}"
        );
    }
    ensure!(info.id == c.id && info.name == c.name && info.state == "running");
    ensure!(
        info.pid > 0 && info.pid == c.pid()?,
        "pid {} vs docker's {}",
        info.pid,
        c.pid()?
    );
    ensure!(info.networks.len() == 1, "{:?}", info.networks);
    let net = &info.networks[0];
    ensure!(
        net.network_name == "bridge" && net.bridge_name.as_deref() == Some("docker0"),
        "{net:?}"
    );
    ensure!(in_docker0_subnet(net.ip), "{net:?}");
    ensure!(net.ip.map(|ip| ip.to_string()) == Some(c.inspect("{{.NetworkSettings.IPAddress}}")?));
    ensure!(
        net.gateway.is_some() && net.mac.is_some() && net.prefix_len == 16,
        "{net:?}"
    );

    let ifaces = info.interfaces()?;
    ensure!(
        ifaces.len() == 1 && ifaces[0].ifname == "eth0",
        "{ifaces:?}"
    );

    // The product promise: the host veth found over netlink is the one the kernel pairs with
    // the container's eth0, as `ethtool -S` shows by hand.
    let netns = Arc::new(Netns::of_pid(info.pid)?);
    let q = PathQuery {
        iface: Some("eth0".into()),
        ..PathQuery::default()
    };
    let p = path::discover(&info.name, netns, &q)?;
    ensure!(
        p.ctr().ifindex == ifaces[0].ifindex,
        "{:?} vs {:?}",
        p.ctr(),
        ifaces[0]
    );
    let peer = ethtool_peer_ifindex(&p.host_veth().name)?;
    ensure!(
        peer == p.ctr().ifindex,
        "ethtool: {} peers with {peer}, not eth0 {}",
        p.host_veth().name,
        p.ctr().ifindex
    );
    ensure!(
        p.link(Place::Bridge).map(|b| b.name.as_str()) == Some("docker0"),
        "{:?}",
        p.link(Place::Bridge)
    );
    let paths = info.paths(None)?;
    ensure!(
        paths.len() == 1 && paths[0].path.host_veth() == p.host_veth(),
        "{paths:?}"
    );
    Ok(())
}

#[tokio::test]
async fn unknown_stopped_host_and_none_containers_get_clear_errors() -> Result<()> {
    if !gate("unknown_stopped_host_and_none_containers_get_clear_errors") {
        return Ok(());
    }
    let d = Docker::connect().await?;
    let c = TestContainer::run("pt-suggest", &[], SLEEP)?;
    let typo: String = c
        .name
        .chars()
        .enumerate()
        .filter(|(i, _)| *i != 1)
        .map(|(_, ch)| ch)
        .collect();
    let e = match d.resolve(&typo).await {
        Err(e) => e,
        Ok(info) => bail!("{typo} resolved to {info:?}"),
    };
    let DockerError::UnknownContainer { suggestions, .. } = &e else {
        bail!("{typo}: expected UnknownContainer, got {e:?}");
    };
    ensure!(suggestions.contains(&c.name), "{e}");
    ensure!(e.to_string().contains("; did you mean: "), "{e}");

    let stopped = TestContainer::run("pt-stopped", &[], SLEEP)?;
    docker(&["stop", "-t", "0", &stopped.name])?;
    let created = TestContainer::create("pt-created", &[], SLEEP)?;
    for (c, state) in [(&stopped, "exited"), (&created, "created")] {
        match d.resolve(&c.name).await {
            Err(e @ DockerError::NotRunning { .. }) => {
                ensure!(
                    e.to_string()
                        == format!(
                            "container {} is {state}; start it with `docker start {}`",
                            c.name, c.name
                        ),
                    "{e}"
                );
            }
            other => bail!("{}: expected NotRunning, got {other:?}", c.name),
        }
    }

    let host = TestContainer::run("pt-hostnet", &["--network", "host"], SLEEP)?;
    let r = d.resolve(&host.name).await;
    ensure!(matches!(r, Err(DockerError::HostNetwork(_))), "{r:?}");
    let none = TestContainer::run("pt-nonet", &["--network", "none"], SLEEP)?;
    let r = d.resolve(&none.name).await;
    ensure!(matches!(r, Err(DockerError::NoNetwork(_))), "{r:?}");
    Ok(())
}

#[tokio::test]
async fn an_ambiguous_id_prefix_lists_the_matches() -> Result<()> {
    if !gate("an_ambiguous_id_prefix_lists_the_matches") {
        return Ok(());
    }
    let d = Docker::connect().await?;
    // Ids are hex: among 17 containers two share their first character.
    let mut made: Vec<TestContainer> = Vec::new();
    let (a, b) = loop {
        let c = TestContainer::create("pt-ambig", &[], SLEEP)?;
        if let Some(i) = made.iter().position(|m| m.id[..1] == c.id[..1]) {
            break (i, c);
        }
        ensure!(
            made.len() < 17,
            "17 hex ids without a shared first character"
        );
        made.push(c);
    };
    match d.resolve(&b.id[..1]).await {
        Err(DockerError::AmbiguousId { matches, .. }) => {
            for c in [&made[a], &b] {
                ensure!(
                    matches.iter().any(|m| m.starts_with(&c.name)),
                    "{c:?} not in {matches:?}"
                );
            }
        }
        other => bail!("expected AmbiguousId, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn user_networks_bridges_interfaces_and_published_ports() -> Result<()> {
    if !gate("user_networks_bridges_interfaces_and_published_ports") {
        return Ok(());
    }
    // Networks first: dropped after the containers on them.
    let net = TestNetwork::create("pt-neta")?;
    let net2 = TestNetwork::create("pt-netb")?;
    let port = free_port()?;
    let publish = format!("127.0.0.1:{port}:80");
    let c = TestContainer::run("pt-multi", &["--network", &net.name, "-p", &publish], SLEEP)?;
    docker(&["network", "connect", &net2.name, &c.name])?;
    let d = Docker::connect().await?;
    let info = d.resolve(&c.name).await?;
    ensure!(info.networks.len() == 2, "{:?}", info.networks);
    for n in [&net, &net2] {
        let att = info
            .networks
            .iter()
            .find(|a| a.network_name == n.name)
            .context("network missing")?;
        ensure!(att.network_id == n.id, "{att:?}");
        ensure!(
            att.bridge_name == Some(format!("br-{}", &n.id[..12])),
            "{att:?}"
        );
        ensure!(
            att.ip.is_some_and(|ip| n.contains(ip)),
            "{att:?} not in {}",
            n.subnet
        );
    }
    let want = PublishedPort {
        proto: Proto::Tcp,
        host_ip: Some([127, 0, 0, 1].into()),
        host_port: port,
        container_port: 80,
    };
    ensure!(info.published == vec![want], "{:?}", info.published);

    // One interface per network, in the order they were attached.
    let ifaces = info.interfaces()?;
    let pairs: Vec<(&str, &str)> = ifaces
        .iter()
        .map(|i| (i.ifname.as_str(), i.network.network_name.as_str()))
        .collect();
    ensure!(
        pairs == [("eth0", net.name.as_str()), ("eth1", net2.name.as_str())],
        "{pairs:?}"
    );
    for p in info.paths(None)? {
        let bridge = p.path.link(Place::Bridge).map(|b| b.name.clone());
        ensure!(
            bridge == p.iface.network.bridge_name,
            "{} -> {bridge:?}",
            p.iface.ifname
        );
        ensure!(ethtool_peer_ifindex(&p.path.host_veth().name)? == p.iface.ifindex);
    }

    // A container sharing this one's namespace resolves to its networks.
    let mode = format!("container:{}", c.id);
    let shared = TestContainer::run("pt-shared", &["--network", &mode], SLEEP)?;
    let s = d.resolve(&shared.name).await?;
    ensure!(
        s.netns_owner.as_deref() == Some(c.name.as_str()) && s.pid == shared.pid()?,
        "{s:?}"
    );
    ensure!(
        s.networks == info.networks && s.published == info.published,
        "{s:?}"
    );
    ensure!(s.netns()?.same_as(&info.netns()?), "not the same namespace");
    Ok(())
}

#[tokio::test]
async fn restart_gives_died_then_started_with_a_new_pid() -> Result<()> {
    if !gate("restart_gives_died_then_started_with_a_new_pid") {
        return Ok(());
    }
    let mut c = Some(TestContainer::run("pt-events", &[], SLEEP)?);
    let name = c.as_ref().map(|c| c.name.clone()).unwrap_or_default();
    let d = Docker::connect().await?;
    let before = d.resolve(&name).await?;
    let mut events = Box::pin(d.watch(&before.id));
    docker(&["restart", "-t", "0", &name])?;
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let new_pid = loop {
        let ev = tokio::time::timeout_at(deadline, events.next()).await;
        let ev = ev.with_context(|| format!("no Started+Restarted within 10 s; saw {seen:?}"))?;
        let ev = ev.context("event stream ended")?;
        seen.push(ev.clone());
        let started = seen.iter().find_map(|e| match e {
            ContainerEvent::Started { pid } => Some(*pid),
            _ => None,
        });
        if let (Some(pid), true) = (started, seen.contains(&ContainerEvent::Restarted)) {
            break pid;
        }
    };
    let died = seen
        .iter()
        .position(|e| matches!(e, ContainerEvent::Died { .. }));
    let started = seen
        .iter()
        .position(|e| matches!(e, ContainerEvent::Started { .. }));
    ensure!(died.is_some() && died < started, "order: {seen:?}");
    ensure!(new_pid != before.pid, "pid did not change: {seen:?}");
    ensure!(
        d.resolve(&name).await?.pid == new_pid,
        "resolve disagrees with the event"
    );

    drop(c.take()); // docker rm -f
    let tail = tokio::time::timeout(Duration::from_secs(10), async {
        let mut tail = Vec::new();
        while let Some(ev) = events.next().await {
            let done = ev == ContainerEvent::Destroyed;
            tail.push(ev);
            if done {
                break;
            }
        }
        tail
    })
    .await
    .context("no Destroyed within 10 s of docker rm -f")?;
    ensure!(tail.last() == Some(&ContainerEvent::Destroyed), "{tail:?}");
    ensure!(
        tail.iter()
            .any(|e| matches!(e, ContainerEvent::Died { .. })),
        "{tail:?}"
    );
    Ok(())
}
