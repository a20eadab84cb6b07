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
        docker::{eth0_in, eth0_of_pid, free_port, host_veth_of, TestContainer},
        docker_or_skip,
        iptables::{dnat_rule, masquerade_behind},
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

/// The host veth of the container's eth0 (by its iflink, checked with `ethtool -S`).
fn host_veth(c: &PodmanContainer) -> Result<String> {
    host_veth_of(eth0_of_pid(c.pid)?)
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
    // Traffic once the hooks are attached (TCX links), however long loading takes.
    let limit = std::time::Duration::from_secs(10);
    ensure!(
        crate::support::kernel::wait_attached(child.id(), 6, limit),
        "pathtrace did not attach its hooks within {limit:?}"
    );
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

/// The MASQUERADE line of the `NETAVARK-<hash>` chain POSTROUTING jumps to.
fn netavark_masquerade_rule() -> Result<String> {
    masquerade_behind("netavark", |l| l.contains("-j NETAVARK-"))
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
    let (veth, up, bridge) = (host_veth(&c)?, &wan.uplink, &podman.bridge);
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
    let rule = dnat_rule("NETAVARK-DN-", &private)?;
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
/// (`iflink`), whose `ethtool -S` names that eth0 (`peer_ifindex`).
fn check_report(r: &Value, runtime: &str, bridge: &str, eth0: (u32, u32)) -> Result<()> {
    ensure!(r["runtime"] == runtime, "{r}");
    let iface = &r["interfaces"][0];
    let veth = host_veth_of(eth0)?;
    ensure!(
        iface["host_veth"]["name"] == veth.as_str(),
        "the host veth is {veth}: {r}"
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
