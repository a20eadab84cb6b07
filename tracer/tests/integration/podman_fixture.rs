//! The private Podman fixture ([`Podman`]) against the real rootful Podman 4.3 and netavark:
//! it comes up, runs a container with a published port that its Docker-compatible API lists
//! with an address, netavark's MASQUERADE and DNAT rules exist, and after the fixture is
//! dropped nothing of it is left (processes, rules, bridge, mounts, directory). What the compat
//! API reports for the container and its network is printed and saved under /work/notes (for
//! whoever writes the Podman runtime). Sends no traffic.
//!
//! Needs root and podman (with runc); without root it prints a loud notice and passes, except
//! under CI (`CI` set), where it fails.

use std::{fs, path::Path, time::Instant};

use anyhow::{ensure, Context, Result};
use serde_json::Value;

use crate::support::{
    docker::free_port,
    podman::{mounts_under, Podman},
    root_or_skip,
    wan::run,
};

/// Where the compat API's answers are saved for the lead to read.
const NOTES: &str = "/work/notes";
/// netavark's host-wide IPAM database (rootful podman shares it whatever its configuration).
const IPAM: &str = "/run/containers/networks/ipam.db";

/// `docker -H <endpoint> <args>`: the docker CLI against the fixture's API.
fn docker_h(endpoint: &str, args: &[&str]) -> Result<String> {
    run("docker", &[&["-H", endpoint], args].concat())
}

/// The NETAVARK lines of `iptables [-t nat] -S`.
fn netavark_rules() -> Result<(Vec<String>, Vec<String>)> {
    let pick = |text: String| -> Vec<String> {
        text.lines()
            .filter(|l| l.to_ascii_uppercase().contains("NETAVARK"))
            .map(String::from)
            .collect()
    };
    Ok((
        pick(run("iptables", &["-w", "-S"])?),
        pick(run("iptables", &["-w", "-t", "nat", "-S"])?),
    ))
}

/// The pids whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<u32> {
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(needle))
                .unwrap_or(false)
        })
        .collect()
}

/// A process that is gone, or a zombie nobody has reaped yet.
fn gone(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|rest| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

#[test]
fn podman_fixture_runs_a_container() -> Result<()> {
    if !root_or_skip("podman_fixture_runs_a_container") {
        return Ok(());
    }
    let rules_before = netavark_rules()?;
    let bridge_before = Path::new("/sys/class/net/podman0").exists();
    let ipam_before = Path::new(IPAM).exists();

    let t = Instant::now();
    let podman = Podman::up()?;
    eprintln!(
        "Podman::up() took {:?}; endpoint {}",
        t.elapsed(),
        podman.endpoint
    );
    let port = free_port()?.to_string();
    let publish = format!("{port}:8080");
    let t = Instant::now();
    let c = podman.run("pt-podman", &["-p", &publish], &["sleep", "3600"])?;
    eprintln!(
        "Podman::run() took {:?}: {} {} ip {} pid {}",
        t.elapsed(),
        c.name,
        c.id,
        c.ip,
        c.pid
    );
    ensure!(!c.ip.is_empty() && c.pid > 0, "{c:?}");
    ensure!(!gone(c.pid), "the container's pid {} is not running", c.pid);

    // The compat API lists it, with the address podman gave it.
    let ps = docker_h(&podman.endpoint, &["ps", "--format", "{{.Names}} {{.ID}}"])?;
    ensure!(
        ps.lines().any(|l| l.starts_with(&c.name)),
        "docker ps: {ps}"
    );
    let container = docker_h(&podman.endpoint, &["inspect", &c.name])?;
    let network = docker_h(&podman.endpoint, &["network", "inspect", "podman"])?;
    eprintln!(
        "docker -H {} inspect {}:\n{container}",
        podman.endpoint, c.name
    );
    eprintln!(
        "docker -H {} network inspect podman:\n{network}",
        podman.endpoint
    );
    let native = podman.podman(&["network", "inspect", "podman"])?;
    eprintln!("podman network inspect podman:\n{native}");
    fs::create_dir_all(NOTES)?;
    fs::write(
        Path::new(NOTES).join("podman-container-inspect.json"),
        &container,
    )?;
    fs::write(
        Path::new(NOTES).join("podman-network-inspect.json"),
        &network,
    )?;
    let inspect: Value = serde_json::from_str(&container)?;
    let settings = &inspect[0]["NetworkSettings"];
    ensure!(
        settings["IPAddress"] == c.ip.as_str()
            && settings["Networks"]["podman"]["IPAddress"] == c.ip.as_str(),
        "compat inspect: {settings}"
    );
    ensure!(
        inspect[0]["State"]["Pid"] == c.pid,
        "compat inspect State.Pid: {}",
        inspect[0]["State"]
    );
    let native: Value = serde_json::from_str(&native)?;
    ensure!(
        native[0]["network_interface"] == podman.bridge.as_str() && podman.bridge == "podman0",
        "podman network inspect: {native}"
    );
    run("ip", &["link", "show", &podman.bridge])?;

    // netavark's rules: the network's MASQUERADE, the published port's DNAT to the container,
    // and the FORWARD jump below any guard (where the fixture put it).
    let (filter, nat) = netavark_rules()?;
    eprintln!(
        "netavark's rules:\n{}\n{}",
        filter.join("\n"),
        nat.join("\n")
    );
    ensure!(
        nat.iter()
            .any(|l| l.starts_with("-A NETAVARK-") && l.ends_with("-j MASQUERADE")),
        "no NETAVARK MASQUERADE: {nat:#?}"
    );
    let dnat = format!("--dport {port} -j DNAT --to-destination {}:8080", c.ip);
    ensure!(
        nat.iter()
            .any(|l| l.starts_with("-A NETAVARK-DN-") && l.ends_with(&dnat)),
        "no NETAVARK-DN- rule ending {dnat:?}: {nat:#?}"
    );
    let forward = run("iptables", &["-w", "-S", "FORWARD"])?;
    let rules: Vec<&str> = forward.lines().filter(|l| l.starts_with("-A")).collect();
    let jump = rules
        .iter()
        .position(|l| l.ends_with("-j NETAVARK_FORWARD"))
        .with_context(|| format!("no NETAVARK_FORWARD jump: {forward}"))?;
    ensure!(
        rules[..jump].iter().all(|l| !l.contains("-j DOCKER")),
        "the jump is below Docker's rules: {forward}"
    );
    ensure!(
        rules
            .iter()
            .filter(|l| l.contains("NETAVARK_FORWARD"))
            .count()
            == 1,
        "netavark added its own jump: {forward}"
    );

    // Teardown: nothing of it is left.
    let (dir, service) = (podman.dir.clone(), podman.service_pid());
    let dir_text = dir.display().to_string();
    let container_pid = c.pid;
    let t = Instant::now();
    drop(c);
    drop(podman);
    eprintln!("teardown took {:?}", t.elapsed());
    ensure!(
        gone(container_pid),
        "the container's pid {container_pid} is left"
    );
    if let Some(pid) = service {
        ensure!(gone(pid), "the service (pid {pid}) is left");
    }
    let left = processes_mentioning(&dir_text);
    ensure!(left.is_empty(), "processes mentioning {dir_text}: {left:?}");
    ensure!(
        mounts_under(&dir)?.is_empty(),
        "mounts under {dir_text}: {:?}",
        mounts_under(&dir)?
    );
    ensure!(!dir.exists(), "{dir_text} is left");
    ensure!(
        netavark_rules()? == rules_before,
        "netavark rules before: {rules_before:#?}, after: {:#?}",
        netavark_rules()?
    );
    let forward = run("iptables", &["-w", "-S", "FORWARD"])?;
    ensure!(
        !forward.contains("pathtrace-test-podman"),
        "the DNAT accept is left: {forward}"
    );
    ensure!(
        Path::new("/sys/class/net/podman0").exists() == bridge_before,
        "podman0 existed before: {bridge_before}, after: {}",
        !bridge_before
    );
    ensure!(
        Path::new(IPAM).exists() == ipam_before,
        "{IPAM} existed before: {ipam_before}, after: {}",
        !ipam_before
    );
    Ok(())
}
