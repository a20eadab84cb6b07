//! The CRI fixture itself: a containerd of the test's own makes a pod with a port mapping on its
//! CNI bridge, restarts it the kubelet's way (a new sandbox, attempt + 1, then the old one stopped
//! and removed), and leaves nothing behind. No traffic is sent.
//!
//! Set `PATHTRACE_CRI_INFO_OUT=<file>` to save the pod's verbose status `info` (pretty JSON).

use std::{fs, os::unix::fs::MetadataExt as _, path::Path, time::Instant};

use anyhow::{ensure, Context, Result};

use crate::support::{
    cri::{Cri, PortMap},
    docker::free_port,
    root_or_skip,
    wan::run,
};

fn nat_rules() -> Result<String> {
    run("iptables", &["-w", "-t", "nat", "-S"])
}

/// The per-pod chains the nat rules naming CNI network `network` jump to (ipMasq's
/// `CNI-<hash>`, portmap's `CNI-DN-<hash>`).
fn pod_chains(nat: &str, network: &str) -> Vec<String> {
    let mut chains: Vec<String> = nat
        .lines()
        .filter(|l| l.contains(&format!(r#"name: \"{network}\""#)))
        .filter_map(|l| l.split(" -j ").nth(1))
        .filter(|t| t.starts_with("CNI-") && !t.starts_with("CNI-HOSTPORT-"))
        .map(String::from)
        .collect();
    chains.sort();
    chains.dedup();
    chains
}

/// Whether a nat rule names `ip` (as `<ip>/32` or `<ip>:<port>`).
fn names_ip(nat: &str, ip: &str) -> bool {
    nat.contains(&format!("{ip}/32")) || nat.contains(&format!("{ip}:"))
}

/// The host veths on `bridge`.
fn bridge_ports(bridge: &str) -> Vec<String> {
    fs::read_dir(Path::new("/sys/class/net").join(bridge).join("brif"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn cri_fixture_makes_a_pod() -> Result<()> {
    if !root_or_skip("cri_fixture_makes_a_pod") {
        return Ok(());
    }
    let t = Instant::now();
    let cri = Cri::up()?;
    eprintln!(
        "Cri::up: {:?} ({} bridge {} subnet {})",
        t.elapsed(),
        cri.endpoint,
        cri.bridge,
        cri.subnet
    );
    let host_port = free_port()?;
    let ports = [PortMap::tcp(80, host_port), PortMap::udp(53, host_port)];
    let t = Instant::now();
    let pod = cri.run_pod("web", "pathtrace-test", 0, &ports)?;
    eprintln!("run_pod: {:?}: {pod:?}", t.elapsed());
    ensure!(pod.name == "web" && pod.namespace == "pathtrace-test" && pod.attempt == 0);
    ensure!(
        Path::new(&format!("/proc/{}", pod.pid)).exists(),
        "no pause process {}",
        pod.pid
    );
    // No traffic is sent: the uplink does not exist, the rules only have to come and go.
    cri.allow_forward("pt-nowhere0")?;
    let forward = run("iptables", &["-w", "-S", "FORWARD"])?;
    ensure!(
        forward
            .matches(&format!("-s {} -o pt-nowhere0", cri.subnet))
            .count()
            == 1
            && forward
                .matches(&format!("-d {} -i pt-nowhere0", cri.subnet))
                .count()
                == 1,
        "FORWARD: {forward}"
    );

    eprintln!("PodSandboxStatus: {}", cri.pod_status_debug(&pod.id)?);
    let info = cri.pod_status_verbose(&pod.id)?;
    let pretty = serde_json::to_string_pretty(&info)?;
    eprintln!("verbose info: {pretty}");
    if let Some(out) = std::env::var_os("PATHTRACE_CRI_INFO_OUT") {
        fs::write(&out, &pretty).with_context(|| format!("writing {out:?}"))?;
    }

    // The netns, its eth0 with the reported IP, the veth on the bridge.
    ensure!(pod.netns.exists(), "no netns {}", pod.netns.display());
    let netns = pod.netns.to_str().context("netns path is not UTF-8")?;
    let eth0 = run(
        "nsenter",
        &[
            &format!("--net={netns}"),
            "ip",
            "-4",
            "-o",
            "addr",
            "show",
            "dev",
            "eth0",
        ],
    )?;
    ensure!(
        eth0.contains(&format!("inet {}/24", pod.ip)),
        "eth0 in {netns}: {eth0}"
    );
    let prefix = cri.subnet.trim_end_matches("0/24");
    ensure!(
        pod.ip.starts_with(prefix),
        "{} not in {}",
        pod.ip,
        cri.subnet
    );
    let veths = bridge_ports(&cri.bridge);
    ensure!(
        veths.len() == 1 && veths[0].starts_with("veth"),
        "ports of {}: {veths:?}",
        cri.bridge
    );

    // ipMasq's and portmap's chains.
    let nat = nat_rules()?;
    let ours: Vec<&str> = nat
        .lines()
        .filter(|l| l.contains(&cri.network) || names_ip(l, &pod.ip) || l.contains("HOSTPORT"))
        .collect();
    eprintln!("nat rules:\n{}", ours.join("\n"));
    ensure!(
        nat.lines().any(
            |l| l.starts_with(&format!("-A POSTROUTING -s {}/32", pod.ip)) && l.contains("-j CNI-")
        ),
        "no ipMasq rule for {}:\n{nat}",
        pod.ip
    );
    ensure!(
        nat.contains("-N CNI-HOSTPORT-DNAT")
            && nat.lines().any(|l| l.starts_with("-A CNI-DN-")
                && l.contains(&format!("--to-destination {}:80", pod.ip))),
        "no portmap DNAT to {}:80:\n{nat}",
        pod.ip
    );

    let old_chains = pod_chains(&nat, &cri.network);
    ensure!(old_chains.len() == 2, "the pod's chains: {old_chains:?}");

    let container = cri.run_container(&pod, "app")?;
    eprintln!("container {container}");

    // The kubelet's restart: a new sandbox (same name, namespace, uid; attempt + 1), then the
    // old one stopped and removed.
    let t = Instant::now();
    let pod2 = cri.run_pod("web", "pathtrace-test", 1, &ports)?;
    eprintln!("run_pod (attempt 1): {:?}: {pod2:?}", t.elapsed());
    ensure!(pod2.uid == pod.uid && pod2.id != pod.id);
    let (ino1, ino2) = (
        fs::metadata(&pod.netns)?.ino(),
        fs::metadata(&pod2.netns)?.ino(),
    );
    ensure!(ino1 != ino2, "both attempts in netns inode {ino1}");
    let t = Instant::now();
    cri.stop_pod(&pod.id)?;
    cri.remove_pod(&pod.id)?;
    eprintln!("stop+remove: {:?}", t.elapsed());
    ensure!(!pod.netns.exists(), "{} is left", pod.netns.display());
    let nat = nat_rules()?;
    ensure!(
        !names_ip(&nat, &pod.ip) || pod.ip == pod2.ip,
        "the old pod's rules are left:\n{nat}"
    );
    for chain in &old_chains {
        ensure!(!nat.contains(chain), "{chain} is left:\n{nat}");
    }
    let chains = pod_chains(&nat, &cri.network);
    ensure!(chains.len() == 2, "the new pod's chains: {chains:?}");
    ensure!(
        nat.contains(&format!("--to-destination {}:80", pod2.ip)),
        "no DNAT to the new pod:\n{nat}"
    );
    ensure!(bridge_ports(&cri.bridge).len() == 1);

    // Teardown: nothing is left.
    let (bridge, network, run_dir, lib_dir, socket) = (
        cri.bridge.clone(),
        cri.network.clone(),
        cri.run_dir.clone(),
        cri.lib_dir.clone(),
        cri.socket.to_string_lossy().into_owned(),
    );
    let t = Instant::now();
    drop(cri);
    eprintln!("drop: {:?}", t.elapsed());
    ensure!(
        !Path::new("/sys/class/net").join(&bridge).exists(),
        "{bridge} is left"
    );
    ensure!(!run_dir.exists() && !lib_dir.exists(), "dirs are left");
    ensure!(!pod2.netns.exists(), "{} is left", pod2.netns.display());
    let forward = run("iptables", &["-w", "-S", "FORWARD"])?;
    ensure!(
        !forward.contains("pt-nowhere0"),
        "FORWARD rules are left: {forward}"
    );
    let nat = nat_rules()?;
    ensure!(
        !nat.contains(&network) && !names_ip(&nat, &pod2.ip),
        "CNI rules are left:\n{nat}"
    );
    for chain in &chains {
        ensure!(!nat.contains(chain), "{chain} is left:\n{nat}");
    }
    let mounts = fs::read_to_string("/proc/self/mountinfo")?;
    for dir in [&run_dir, &lib_dir] {
        let dir = format!("{}/", dir.display());
        ensure!(!mounts.contains(&dir), "mounts under {dir} are left");
    }
    let procs = run("pgrep", &["-af", &socket]).unwrap_or_default();
    ensure!(procs.is_empty(), "processes are left: {procs}");
    Ok(())
}
