//! `pathtrace cleanup`: removes what a pathtrace killed with SIGKILL left behind in netlink mode
//! (cls_bpf filters named `pathtrace_h<N>`, and the clsact qdiscs it had added), in every network
//! namespace. TCX links need no cleanup: the kernel removes them with the process.
//!
//! Never anyone else's: only filters with our program names are removed, and only qdiscs we
//! recorded adding (see `attach::markers`), and those only when no filter is left on them.

use std::{collections::HashSet, process::ExitCode};

use aya::programs::{tc, TcAttachType};

use crate::{
    attach::{markers, slot_program_name},
    discover::{netns::Netns, rtnl::Rtnl},
};

#[expect(clippy::print_stdout, reason = "cleanup's report is what it removed")]
pub(super) fn run(force: bool) -> anyhow::Result<ExitCode> {
    super::require_privileges()?;
    let others = other_pathtraces();
    if !others.is_empty() && !force {
        anyhow::bail!(
            "pathtrace is running (pid {}); cleanup would remove its hooks. Stop it first, or pass --force",
            others.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
        );
    }
    let mut filters = 0;
    let mut qdiscs = 0;
    let namespaces = namespaces();
    for (label, ns) in &namespaces {
        let (f, q) = ns.run(|| clean_here(label))?;
        filters += f;
        qdiscs += q;
    }
    // Records of namespaces that no longer exist: their qdiscs went with them.
    let live: HashSet<u64> = namespaces.iter().map(|(_, ns)| ns.inode()).collect();
    for m in markers::list() {
        if !live.contains(&m.netns_inode) && !m.owner_alive() {
            markers::forget(&m);
        }
    }
    println!(
        "removed {filters} pathtrace filter(s) and {qdiscs} clsact qdisc(s) pathtrace had added"
    );
    Ok(ExitCode::SUCCESS)
}

/// Pids of other running pathtrace processes.
fn other_pathtraces() -> Vec<u32> {
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "pathtrace")
        })
        .collect()
}

/// Every network namespace on the host, once: ours, the named ones, and those of processes.
fn namespaces() -> Vec<(String, Netns)> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let mut paths = vec![("host".to_string(), "/proc/self/ns/net".into())];
    if let Ok(dir) = std::fs::read_dir("/var/run/netns") {
        for e in dir.filter_map(Result::ok) {
            paths.push((e.file_name().to_string_lossy().into_owned(), e.path()));
        }
    }
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.filter_map(Result::ok) {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.chars().all(|c| c.is_ascii_digit()) {
                paths.push((format!("pid {name}"), e.path().join("ns/net")));
            }
        }
    }
    for (label, path) in paths {
        let Ok(ns) = Netns::open(&path) else {
            continue;
        };
        if seen.insert(ns.inode()) {
            out.push((label, ns));
        }
    }
    out
}

/// Inside one namespace: our filters off every clsact interface, then our recorded qdiscs.
#[expect(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "each removal is reported as it happens, each failure on stderr"
)]
fn clean_here(label: &str) -> (usize, usize) {
    let Ok(mut rtnl) = Rtnl::open() else {
        return (0, 0);
    };
    let Ok(links) = rtnl.links() else {
        return (0, 0);
    };
    // This thread's namespace (`/proc/self` would name the process's main thread's).
    let inode = Netns::open("/proc/thread-self/ns/net")
        .map(|n| n.inode())
        .unwrap_or(0);
    let mut filters = 0;
    let mut qdiscs = 0;
    for link in &links {
        if !rtnl.has_clsact(link.ifindex).unwrap_or(false) {
            continue;
        }
        for slot in 0..tracer_common::MAX_HOOKS as u8 {
            let name = slot_program_name(slot);
            for dir in [TcAttachType::Ingress, TcAttachType::Egress] {
                match tc::qdisc_detach_program(&link.name, dir, &name) {
                    Ok(()) => {
                        filters += 1;
                        println!(
                            "{label}: removed filter {name} ({dir:?}) from {}",
                            link.name
                        );
                    }
                    Err(tc::TcError::IoError(e)) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => eprintln!("pathtrace: {label}: {}: {e}", link.name),
                }
            }
        }
    }
    for m in markers::list()
        .into_iter()
        .filter(|m| m.netns_inode == inode && !m.owner_alive())
    {
        let Some(link) = links
            .iter()
            .find(|l| l.ifindex == m.ifindex && l.name == m.ifname)
        else {
            // The interface is gone, and its qdisc with it.
            markers::forget(&m);
            continue;
        };
        match rtnl.clsact_filter_count(link.ifindex) {
            Ok(0) => match rtnl.del_clsact(link.ifindex) {
                Ok(()) => {
                    qdiscs += 1;
                    println!(
                        "{label}: removed the clsact qdisc pathtrace had added on {}",
                        link.name
                    );
                    markers::forget(&m);
                }
                Err(e) => eprintln!("pathtrace: {label}: removing clsact on {}: {e}", link.name),
            },
            Ok(n) => {
                println!(
                    "{label}: keeping the clsact qdisc on {}: {n} other filter(s) use it",
                    link.name
                );
                markers::forget(&m);
            }
            Err(e) => eprintln!("pathtrace: {label}: {}: {e}", link.name),
        }
    }
    (filters, qdiscs)
}
