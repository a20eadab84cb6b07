//! Podman containers, found through Podman's Docker-compatible API (`CONTAINER_HOST`), traced
//! end to end with the real binary: outbound MASQUERADE by netavark's chain (conntrack
//! agreeing), a published port's DNAT through `NETAVARK-DN-`, `inspect` of Docker, Podman and
//! CRI targets side by side, and the errors of several runtimes (the same name in two, Podman
//! installed without its API socket).
//!
//! Traffic goes only between the test's containers and its wan namespace; everything is removed
//! on drop.

use std::{net::SocketAddr, sync::MutexGuard};

use anyhow::{ensure, Context, Result};
use serde_json::Value;

use crate::{
    docker_trace::{
        assert_no_programs_left, ensure_empty, ensure_hops, flow_where, one_nat, pathtrace, text,
    },
    support::{
        cri::Cri,
        docker::{ethtool_peer_ifindex, free_port, host_veths_peering, TestContainer},
        docker_or_skip,
        podman::{Podman, PodmanContainer},
        privileged, serial,
        wan::{run, Wan, TCP_PORT},
    },
};

const SLEEP: &[&str] = &["sleep", "3600"];
/// A TCP echo server on :80 that keeps accepting (busybox nc).
const ECHO_80: &[&str] = &["nc", "-ll", "-p", "80", "-e", "cat"];

fn begin(test: &str) -> Option<MutexGuard<'static, ()>> {
    let serial = serial();
    (docker_or_skip(test) && privileged(test)).then_some(serial)
}

fn exec(podman: &Podman, c: &PodmanContainer, cmd: &str) -> Result<String> {
    podman.podman(&["exec", &c.name, "sh", "-c", cmd])
}

/// The host veth whose `ethtool -S` peer_ifindex is the container's eth0.
fn host_veth(podman: &Podman, c: &PodmanContainer) -> Result<String> {
    let ifindex: u32 = exec(podman, c, "cat /sys/class/net/eth0/ifindex")?.parse()?;
    match &host_veths_peering(ifindex)?[..] {
        [veth] => Ok(veth.clone()),
        other => anyhow::bail!("not one host veth peers with {}'s eth0: {other:?}", c.name),
    }
}

/// `pathtrace ARGS` with Podman's socket in `CONTAINER_HOST`, traffic once it is attached.
fn trace(
    podman: &Podman,
    args: &[&str],
    traffic: impl FnOnce() -> Result<()>,
) -> Result<Vec<Value>> {
    let argv = [args, &["--json", "--duration", "5"]].concat();
    let child = pathtrace(&argv)
        .env("CONTAINER_HOST", &podman.endpoint)
        .spawn()?;
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let traffic = traffic();
    let out = child.wait_with_output()?;
    traffic.context("generating traffic")?;
    ensure!(
        out.status.success(),
        "pathtrace failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(crate::support::lab::json_lines(&out.stdout))
}

fn nat_lines() -> Result<Vec<String>> {
    Ok(run("iptables", &["-w", "-t", "nat", "-S"])?
        .lines()
        .map(str::to_string)
        .collect())
}

/// The MASQUERADE line of the `NETAVARK-<hash>` chain POSTROUTING jumps to for `subnet`.
fn netavark_masquerade_rule() -> Result<String> {
    let lines = nat_lines()?;
    let chains: Vec<&str> = lines
        .iter()
        .filter(|l| l.starts_with("-A POSTROUTING ") && l.contains("-j NETAVARK-"))
        .filter_map(|l| l.rsplit("-j ").next())
        .map(str::trim)
        .collect();
    lines
        .iter()
        .find(|l| {
            chains.iter().any(|c| l.starts_with(&format!("-A {c} ")))
                && l.ends_with("-j MASQUERADE")
        })
        .cloned()
        .with_context(|| format!("no netavark MASQUERADE: {lines:#?}"))
}

fn netavark_dnat_rule(to: &str) -> Result<String> {
    let lines = nat_lines()?;
    lines
        .iter()
        .find(|l| {
            l.starts_with("-A NETAVARK-DN-")
                && l.contains("-j DNAT")
                && l.ends_with(&format!("--to-destination {to}"))
        })
        .cloned()
        .with_context(|| format!("no NETAVARK-DN- DNAT to {to}: {lines:#?}"))
}

#[test]
fn podman_masquerade_published_port_and_inspect() -> Result<()> {
    let Some(_serial) = begin("podman_masquerade_published_port_and_inspect") else {
        return Ok(());
    };
    let wan = Wan::up()?;
    let podman = Podman::up()?;
    let port = free_port()?;
    let c = podman.run("pt-podman", &["-p", &format!("{port}:80")], ECHO_80)?;
    let (veth, up, bridge) = (host_veth(&podman, &c)?, &wan.uplink, &podman.bridge);
    let eth0 = format!("{}:eth0", c.name);

    let lines = trace(
        &podman,
        &["--container", &c.name, "--to", &wan.wan_ip],
        || {
            let back = exec(
                &podman,
                &c,
                &format!("echo hello | nc -w 2 {} {TCP_PORT}", wan.wan_ip),
            )?;
            ensure!(back == "hello", "TCP echo from the wan: {back:?}");
            Ok(())
        },
    )?;
    let flow = flow_where(&lines, "TCP flow from the Podman container", |f| {
        f["proto"] == "tcp"
            && text(&f["src"]).starts_with(&format!("{}:", c.ip))
            && f["packets_back"].as_u64() > Some(0)
    })?;
    ensure_hops(
        flow,
        "hops",
        &format!(
            "{eth0} egress -> host:{veth} ingress -> host:{bridge} ingress -> host:{up} egress"
        ),
    )?;
    let snat = one_nat(flow, "nat")?;
    let rule = netavark_masquerade_rule()?;
    eprintln!("iptables: {rule}");
    ensure!(
        snat["kind"] == "snat"
            && snat["rule"] == rule.as_str()
            && text(&snat["after"]).starts_with(&format!("{}:", wan.host_ip)),
        "SNAT step {snat}, iptables says {rule}"
    );
    let ct = run(
        "conntrack",
        &["-L", "-p", "tcp", "-s", &c.ip, "-d", &wan.wan_ip],
    )?;
    ensure!(
        ct.lines()
            .any(|l| l.contains(&format!("dst={} sport={TCP_PORT}", wan.host_ip))),
        "conntrack does not show the rewrite to {}: {ct}",
        wan.host_ip
    );
    ensure_empty(flow, &["stops"])?;

    // The published port from the wan: netavark's DNAT.
    let public: SocketAddr = format!("{}:{port}", wan.host_ip).parse()?;
    let private = format!("{}:80", c.ip);
    let lines = trace(
        &podman,
        &["--container", &c.name, "--to", &wan.wan_ip],
        || (0..3).try_for_each(|_| wan.exchange(public)),
    )?;
    let flow = flow_where(&lines, "inbound TCP flow with replies", |f| {
        f["proto"] == "tcp" && f["dst"] == private.as_str() && f["packets_back"].as_u64() > Some(0)
    })?;
    ensure_hops(
        flow,
        "hops",
        &format!(
            "host:{up} ingress -> host:{bridge} egress -> host:{veth} egress -> {eth0} ingress"
        ),
    )?;
    let dnat = one_nat(flow, "nat")?;
    let rule = netavark_dnat_rule(&private)?;
    ensure!(
        dnat["kind"] == "dnat"
            && dnat["after"] == private.as_str()
            && dnat["rule"] == rule.as_str(),
        "DNAT step {dnat}, iptables says {rule}"
    );

    // inspect: the Podman container with its veth pair, bridge and NAT rules.
    let out = pathtrace(&["inspect", "--container", &c.name, "--json"])
        .env("CONTAINER_HOST", &podman.endpoint)
        .output()?;
    ensure!(
        out.status.success(),
        "inspect: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reports = crate::support::lab::json_lines(&out.stdout);
    let r = reports.first().context("no inspect line")?;
    ensure!(
        r["runtime"] == "Podman" && r["name"] == c.name.as_str(),
        "{r}"
    );
    ensure!(
        r["interfaces"][0]["host_veth"]["name"] == veth.as_str(),
        "{r}"
    );
    ensure!(
        r["interfaces"][0]["bridge"]["name"] == bridge.as_str(),
        "{r}"
    );
    let masq = netavark_masquerade_rule()?;
    ensure!(
        r["nat_rules"]
            .as_array()
            .is_some_and(|n| n.iter().any(|x| x["text"] == masq.as_str())),
        "inspect's NAT rules lack {masq}: {r}"
    );
    assert_no_programs_left("after the Podman traces")
}

/// An inspect report against the kernel: its host veth is the one the container's eth0 links to
/// (`iflink`), and `ethtool -S` on it names the container's eth0 (`peer_ifindex`).
fn check_report(r: &Value, runtime: &str, bridge: &str, eth0: (u32, u32)) -> Result<()> {
    let (ifindex, iflink) = eth0;
    ensure!(r["runtime"] == runtime, "{r}");
    let iface = &r["interfaces"][0];
    let veth = text(&iface["host_veth"]["name"]);
    ensure!(
        iface["host_veth"]["ifindex"] == iflink,
        "eth0 links to {iflink}: {r}"
    );
    let peer = ethtool_peer_ifindex(veth)?;
    ensure!(
        peer == ifindex,
        "ethtool -S {veth}: peer_ifindex {peer}, eth0 is {ifindex}: {r}"
    );
    ensure!(iface["bridge"]["name"] == bridge, "{r}");
    ensure!(
        r["nat_rules"]
            .as_array()
            .is_some_and(|n| n.iter().any(|x| text(&x["text"]).contains("MASQUERADE"))),
        "no MASQUERADE among its NAT rules: {r}"
    );
    Ok(())
}

/// `ifindex` and `iflink` of eth0 in a namespace, by `ip -o link` (`2: eth0@if7: ...`).
fn eth0_in(netns: &str) -> Result<(u32, u32)> {
    let line = run("ip", &["-n", netns, "-o", "link", "show", "eth0"])?;
    let (index, rest) = line.split_once(':').context("ip -o link")?;
    let link = rest
        .split(':')
        .next()
        .and_then(|n| n.trim().strip_prefix("eth0@if"))
        .context("no @if")?;
    Ok((index.trim().parse()?, link.parse()?))
}

/// [`eth0_in`] for a container's main process (a named netns for it, removed after).
fn eth0_of_pid(pid: u32) -> Result<(u32, u32)> {
    let name = format!("pt-side-{pid}");
    run("ip", &["netns", "attach", &name, &pid.to_string()])?;
    let got = eth0_in(&name);
    run("ip", &["netns", "delete", &name])?;
    got
}

#[test]
fn inspect_lists_docker_podman_and_cri_side_by_side() -> Result<()> {
    let Some(_serial) = begin("inspect_lists_docker_podman_and_cri_side_by_side") else {
        return Ok(());
    };
    let d = TestContainer::run("pt-side-docker", &[], SLEEP)?;
    let podman = Podman::up()?;
    let p = podman.run("pt-side-podman", &[], SLEEP)?;
    let cri = Cri::up()?;
    let pod = cri.run_pod("web", "side", 0, &[])?;
    let out = pathtrace(&["inspect", "--json", "--runtime-endpoint", &cri.endpoint])
        .env("CONTAINER_HOST", &podman.endpoint)
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.success(), "inspect: {stderr}");
    let reports = crate::support::lab::json_lines(&out.stdout);
    let find = |name: &str| {
        reports
            .iter()
            .find(|r| r["name"] == name)
            .with_context(|| format!("{name} not listed: {reports:#?}\n{stderr}"))
    };
    check_report(find(&d.name)?, "Docker", "docker0", eth0_of_pid(d.pid()?)?)?;
    check_report(
        find(&p.name)?,
        "Podman",
        &podman.bridge,
        eth0_of_pid(p.pid)?,
    )?;
    let pod_ns = pod.netns.file_name().context("netns")?.to_string_lossy();
    check_report(
        find("side/web")?,
        "containerd (CRI)",
        &cri.bridge,
        eth0_in(&pod_ns)?,
    )?;
    // Text: one block each, the runtime in its header.
    let out = pathtrace(&["inspect", "--runtime-endpoint", &cri.endpoint])
        .env("CONTAINER_HOST", &podman.endpoint)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text}");
    for (name, runtime) in [
        (d.name.as_str(), "Docker"),
        (p.name.as_str(), "Podman"),
        ("side/web", "containerd (CRI)"),
    ] {
        ensure!(
            text.lines()
                .any(|l| l.starts_with(&format!("{name}  ({runtime})"))),
            "no {name} ({runtime}) header: {text}"
        );
    }
    Ok(())
}

#[test]
fn runtime_errors_are_one_line_and_exit_code_2() -> Result<()> {
    let Some(_serial) = begin("runtime_errors_are_one_line_and_exit_code_2") else {
        return Ok(());
    };
    // The same name in Docker and in Podman: refused, both listed.
    let d = TestContainer::run("pt-twice", &[], SLEEP)?;
    let podman = Podman::up()?;
    podman.podman(&[
        "run",
        "-d",
        "--name",
        &d.name,
        &podman.image,
        "sleep",
        "3600",
    ])?;
    let both = pathtrace(&["--container", &d.name, "--duration", "1"])
        .env("CONTAINER_HOST", &podman.endpoint)
        .output();
    let podman_rm = podman.podman(&["rm", "-f", "-t", "0", &d.name]);
    let both = both?;
    podman_rm?;
    let stderr = String::from_utf8_lossy(&both.stderr);
    eprintln!("{stderr}");
    ensure!(both.status.code() == Some(2), "exit {:?}", both.status);
    ensure!(
        stderr.lines().count() == 1
            && stderr.contains("is in more than one runtime")
            && stderr.contains(&format!("{} in Docker", d.name))
            && stderr.contains(&format!("{} in Podman", d.name))
            && stderr.contains("--runtime"),
        "{stderr}"
    );
    // Podman installed, its API socket not listening (no CONTAINER_HOST, no default socket):
    // the unknown name's line says how to start it.
    if !std::path::Path::new("/run/podman/podman.sock").exists() {
        let out = pathtrace(&["--container", "no-such-ctr-anywhere", "--duration", "1"])
            .env_remove("CONTAINER_HOST")
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        eprintln!("{stderr}");
        ensure!(out.status.code() == Some(2), "exit {:?}", out.status);
        ensure!(
            stderr.lines().count() == 1
                && stderr.contains("no container named 'no-such-ctr-anywhere'")
                && stderr.contains("podman system service"),
            "{stderr}"
        );
    }
    // Asked for Podman at a socket that is not there.
    let out = pathtrace(&["--container", &d.name, "--duration", "1"])
        .env("CONTAINER_HOST", "unix:///nonexistent/podman.sock")
        .args(["--runtime", "podman"])
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stderr}");
    ensure!(
        out.status.code() == Some(2)
            && stderr.lines().count() == 1
            && stderr.contains("/nonexistent/podman.sock"),
        "{stderr}"
    );
    assert_no_programs_left("after the runtime errors")
}
