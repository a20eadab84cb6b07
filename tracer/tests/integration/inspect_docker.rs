//! `pathtrace inspect` against the real dockerd: the veth pair it names is the one `ethtool -S`
//! names, the bridge is docker0 and its other port is attributed to its container, Docker's own
//! MASQUERADE and DNAT rules are listed, and an unknown container is one line and exit code 2.
//! Reads only: no test sends any traffic.
//!
//! Needs root and a running dockerd; without them the tests print a loud notice and pass, except
//! under CI (`CI` set), where they fail.

use std::{fs, os::unix::fs::MetadataExt as _, process::Command};

use anyhow::{ensure, Context, Result};
use serde_json::Value;

use crate::support::{
    docker::{docker, free_port, host_veths_peering, unique_name, TestContainer},
    docker_or_skip as gate, BIN,
};

const SLEEP: &[&str] = &["sleep", "3600"];
const MASQUERADE: &str = "-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE";

/// Runs `pathtrace inspect <args>`: (exit code, stdout, stderr).
fn inspect(args: &[&str]) -> Result<(i32, String, String)> {
    let out = Command::new(BIN)
        .arg("inspect")
        .args(args)
        .output()
        .context("running pathtrace")?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// `inspect --container <name> --json`, parsed.
fn inspect_json(name: &str) -> Result<Value> {
    let (code, stdout, stderr) = inspect(&["--container", name, "--json"])?;
    ensure!(code == 0, "exit {code}: {stderr}");
    ensure!(stdout.lines().count() == 1, "not one JSON line: {stdout}");
    let v: Value = serde_json::from_str(&stdout)?;
    crate::support::schema::check(&v);
    Ok(v)
}

/// The container's eth0 ifindex, read inside it.
fn eth0_ifindex(c: &TestContainer) -> Result<u32> {
    Ok(docker(&["exec", &c.name, "cat", "/sys/class/net/eth0/ifindex"])?.parse()?)
}

fn eth0(report: &Value) -> Result<&Value> {
    report["interfaces"]
        .as_array()
        .and_then(|a| a.iter().find(|i| i["ifname"] == "eth0"))
        .with_context(|| format!("no eth0 in {report}"))
}

fn nat_texts(report: &Value) -> Vec<&str> {
    let rules = report["nat_rules"].as_array().into_iter().flatten();
    rules
        .filter(|r| r["source"].as_str().is_some_and(|s| !s.is_empty()))
        .filter_map(|r| r["text"].as_str())
        .collect()
}

#[test]
fn names_the_ethtool_veth_pair_docker0_its_neighbour_and_dockers_nat_rules() -> Result<()> {
    if !gate("names_the_ethtool_veth_pair_docker0_its_neighbour_and_dockers_nat_rules") {
        return Ok(());
    }
    let port = free_port()?;
    let publish = format!("127.0.0.1:{port}:80");
    let c = TestContainer::run("pt-inspect", &["-p", &publish], SLEEP)?;
    let neighbour = TestContainer::run("pt-inspect-nb", &[], SLEEP)?;
    let report = inspect_json(&c.name)?;

    ensure!(report["name"] == c.name.as_str(), "{report}");
    ensure!(report["id"] == c.id[..12], "{report}");
    let pid = c.pid()?;
    ensure!(report["pid"] == pid, "pid {pid}: {report}");
    let inode = fs::metadata(format!("/proc/{pid}/ns/net"))?.ino();
    ensure!(report["netns_inode"] == inode, "netns {inode}: {report}");

    let iface = eth0(&report)?;
    let ifindex = eth0_ifindex(&c)?;
    ensure!(
        iface["ifindex"] == ifindex,
        "eth0 is ifindex {ifindex}: {iface}"
    );
    let veth = iface["host_veth"]["name"]
        .as_str()
        .context("no host_veth")?;
    ensure!(
        host_veths_peering(ifindex)? == [veth],
        "ethtool says the peer of eth0 ({ifindex}) is {:?}, inspect says {veth}",
        host_veths_peering(ifindex)?
    );
    ensure!(iface["host_veth"]["peer_ifindex"] == ifindex, "{iface}");
    let veth_ifindex: u32 = fs::read_to_string(format!("/sys/class/net/{veth}/ifindex"))?
        .trim()
        .parse()?;
    ensure!(iface["peer_ifindex"] == veth_ifindex, "{iface}");
    ensure!(iface["bridge"]["name"] == "docker0", "{iface}");
    ensure!(iface["network"] == "bridge", "{iface}");

    // The neighbour's host veth is a port of docker0, attributed to it.
    let nb_veth = &host_veths_peering(eth0_ifindex(&neighbour)?)?[..];
    let ports = iface["bridge"]["ports"].as_array().context("no ports")?;
    ensure!(
        ports.iter().any(
            |p| [p["name"].as_str()] == [nb_veth.first().map(String::as_str)]
                && p["container"] == neighbour.name.as_str()
        ),
        "{} ({nb_veth:?}) not among the docker0 ports {ports:?}",
        neighbour.name
    );

    let texts = nat_texts(&report);
    ensure!(texts.contains(&MASQUERADE), "no MASQUERADE in {texts:#?}");
    let ip = c.inspect("{{.NetworkSettings.IPAddress}}")?;
    let dnat = format!(
        "-A DOCKER -d 127.0.0.1/32 ! -i docker0 -p tcp -m tcp --dport {port} -j DNAT --to-destination {ip}:80"
    );
    ensure!(texts.contains(&dnat.as_str()), "no {dnat} in {texts:#?}");
    // Only this container's DNAT: not the neighbour's, which publishes nothing.
    ensure!(
        texts.iter().filter(|t| t.contains("DNAT")).count() == 1,
        "{texts:#?}"
    );
    let published = report["published"].as_array().context("no published")?;
    ensure!(
        published
            .iter()
            .any(|p| p["host_port"] == port && p["container_port"] == 80 && p["proto"] == "tcp"),
        "{published:?}"
    );
    ensure!(report["route"].is_object(), "no route: {report}");
    Ok(())
}

#[test]
fn text_mode_shows_the_container_and_docker0() -> Result<()> {
    if !gate("text_mode_shows_the_container_and_docker0") {
        return Ok(());
    }
    let c = TestContainer::run("pt-inspect-text", &[], SLEEP)?;
    let (code, stdout, stderr) = inspect(&["--container", &c.name])?;
    ensure!(code == 0, "exit {code}: {stderr}");
    ensure!(
        stdout
            .lines()
            .next()
            .is_some_and(|l| l.starts_with(&c.name)),
        "{stdout}"
    );
    ensure!(stdout.contains("docker0"), "{stdout}");
    ensure!(stdout.contains(MASQUERADE), "{stdout}");
    // Without --container, every running container gets its block.
    let (code, all, stderr) = inspect(&[])?;
    ensure!(code == 0, "exit {code}: {stderr}");
    ensure!(all.contains(&c.name), "{all}");
    Ok(())
}

#[test]
fn unknown_container_is_one_line_and_exit_code_2() -> Result<()> {
    if !gate("unknown_container_is_one_line_and_exit_code_2") {
        return Ok(());
    }
    let name = unique_name("pt-inspect-nobody");
    let (code, stdout, stderr) = inspect(&["--container", &name, "--json"])?;
    ensure!(code == 2, "exit {code}, stderr {stderr}");
    ensure!(stdout.is_empty(), "{stdout}");
    ensure!(stderr.lines().count() == 1, "not one line: {stderr}");
    ensure!(
        stderr.starts_with("pathtrace: ") && stderr.contains(&name),
        "{stderr}"
    );
    Ok(())
}
