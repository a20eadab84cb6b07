//! Building and removing the lab topology: choosing free names and addresses, running the
//! `ip`/`iptables` commands, and undoing exactly what was made.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::Path,
    process::Command,
};

use super::{
    state::{self, LabState, Resource},
    Lab, LabError,
};
use crate::{
    discover::rtnl::{Family, Rtnl, RtnlError},
    model::Prefix,
};

/// The range of X in 10.X.1.0/24 and 10.X.2.0/24.
pub(super) const OCTETS: std::ops::RangeInclusive<u8> = 200..=250;
/// Linux interface names hold at most 15 bytes; `<name>-veth0` is the longest we make.
pub(crate) const MAX_NAME_LEN: usize = 15 - "-veth0".len();
const IP_FORWARD: &str = "net.ipv4.ip_forward";

/// Checks a user-given lab name: it becomes part of interface, namespace and file names.
pub(super) fn validate_name(name: &str) -> Result<(), LabError> {
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let starts_with_letter = name.chars().next().is_some_and(|c| c.is_ascii_lowercase());
    if name.is_empty() || name.len() > MAX_NAME_LEN || !ok_chars || !starts_with_letter {
        return Err(LabError::InvalidName(name.to_string()));
    }
    Ok(())
}

/// Whether anything of a lab called `name` exists: a state file, a namespace or a host link.
pub(super) fn name_in_use(dir: &Path, name: &str) -> bool {
    let lab = Lab::plan(name, *OCTETS.start());
    state::state_path(dir, name).exists()
        || [&lab.ctr_netns, &lab.wan_netns]
            .iter()
            .any(|ns| Path::new("/var/run/netns").join(ns).exists())
        || [&lab.bridge, &lab.host_veth, &lab.uplink]
            .iter()
            .any(|link| link_exists(link))
}

/// The first free `pt<N>`.
pub(super) fn first_free_name(dir: &Path) -> Result<String, LabError> {
    (1..=9999)
        .map(|i| format!("pt{i}"))
        .find(|name| !name_in_use(dir, name))
        .ok_or(LabError::NoFreeName)
}

/// Whether a link of that name exists in the calling thread's namespace (not /sys/class/net, which
/// shows the namespace sysfs was mounted in).
fn link_exists(name: &str) -> bool {
    nix::net::if_::if_nametoindex(name).is_ok()
}

/// Whether two IPv4 prefixes share any address.
pub(super) fn overlaps(a: (Ipv4Addr, u8), b: (Ipv4Addr, u8)) -> bool {
    let prefix = |(addr, len): (Ipv4Addr, u8)| Prefix {
        addr: addr.into(),
        len: len.min(32),
    };
    prefix(a).overlaps(&prefix(b))
}

/// The first X whose two /24s overlap no host prefix and no other lab.
pub(super) fn choose_octet(host: &[(Ipv4Addr, u8)], used_by_labs: &[u8]) -> Result<u8, LabError> {
    OCTETS
        .into_iter()
        .find(|&x| {
            !used_by_labs.contains(&x)
                && [Ipv4Addr::new(10, x, 1, 0), Ipv4Addr::new(10, x, 2, 0)]
                    .iter()
                    .all(|&net| host.iter().all(|&p| !overlaps((net, 24), p)))
        })
        .ok_or(LabError::NoFreeSubnet)
}

/// IPv4 prefixes in use in the calling thread's namespace: every address (with its prefix length)
/// and every route's destination, in all routing tables. Default routes (/0) are left out: they
/// overlap everything by design and do not make a subnet ambiguous.
pub(super) fn host_prefixes() -> Result<Vec<(Ipv4Addr, u8)>, LabError> {
    let nl = |e: RtnlError| LabError::Netlink(e.to_string());
    let mut rtnl = Rtnl::open().map_err(nl)?;
    let mut prefixes = Vec::new();
    for a in rtnl.addrs().map_err(nl)? {
        for ip in std::iter::once(a.addr).chain(a.peer) {
            if let IpAddr::V4(ip) = ip {
                prefixes.push((ip, a.prefix_len));
            }
        }
    }
    for r in rtnl.routes(Family::V4).map_err(nl)? {
        if let (Some(IpAddr::V4(ip)), 1..) = (r.dst, r.dst_len) {
            prefixes.push((ip, r.dst_len));
        }
    }
    Ok(prefixes)
}

/// Runs one command; a failure names the command and carries its stderr.
pub(super) fn run(args: &[&str]) -> Result<String, LabError> {
    let cmd = args.join(" ");
    let Some((program, rest)) = args.split_first() else {
        return Err(LabError::Spawn {
            cmd,
            source: std::io::Error::other("empty command"),
        });
    };
    let output = Command::new(program)
        .args(rest)
        .output()
        .map_err(|source| LabError::Spawn {
            cmd: cmd.clone(),
            source,
        })?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(LabError::Command {
            cmd,
            status: output.status.to_string(),
            code: output.status.code(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        })
    }
}

fn sysctl_path(key: &str) -> std::path::PathBuf {
    Path::new("/proc/sys").join(key.replace('.', "/"))
}

fn read_sysctl(key: &str) -> Result<String, LabError> {
    let path = sysctl_path(key);
    std::fs::read_to_string(&path)
        .map(|v| v.trim().to_string())
        .map_err(|source| LabError::StateIo { path, source })
}

fn write_sysctl(key: &str, value: &str) -> Result<(), LabError> {
    let path = sysctl_path(key);
    std::fs::write(&path, value).map_err(|source| LabError::StateIo { path, source })
}

/// The FORWARD rules: the bridge may send to the uplink, and replies may come back. Docker hosts
/// have policy DROP there; these let exactly the lab's traffic through.
fn forward_rules(lab: &Lab) -> [Vec<String>; 2] {
    let comment = ["-m", "comment", "--comment", &lab.forward_rule_comment];
    let out: Vec<&str> = ["-i", &lab.bridge, "-o", &lab.uplink]
        .into_iter()
        .chain(comment)
        .chain(["-j", "ACCEPT"])
        .collect();
    let back: Vec<&str> = ["-i", &lab.uplink, "-o", &lab.bridge]
        .into_iter()
        .chain(["-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED"])
        .chain(comment)
        .chain(["-j", "ACCEPT"])
        .collect();
    [out, back].map(|r| r.into_iter().map(String::from).collect())
}

/// The leak guard: a packet from the lab's subnet that the host would forward by any interface
/// but the lab's uplink (a mistyped address, a route the host has and the lab should not use) is
/// dropped and counted here, never sent to the host's own networks.
fn guard_rule(lab: &Lab) -> Vec<String> {
    let comment = lab.guard_rule_comment();
    [
        "-s",
        &lab.subnet,
        "!",
        "-o",
        &lab.uplink,
        "-m",
        "comment",
        "--comment",
        &comment,
        "-j",
        "DROP",
    ]
    .into_iter()
    .map(String::from)
    .collect()
}

/// The MASQUERADE rule's arguments after the chain name; without a comment, so that
/// `iptables -t nat -S` prints exactly [`Lab::masquerade_rule_text`].
pub(super) fn masquerade_rule(lab: &Lab) -> Vec<String> {
    [
        "-s",
        &lab.subnet,
        "!",
        "-o",
        &lab.bridge,
        "-j",
        "MASQUERADE",
    ]
    .into_iter()
    .map(String::from)
    .collect()
}

/// Creates the topology, recording every created piece in `state` and saving it to `dir` after each
/// step. On error the caller rolls back with [`teardown`].
pub(super) fn build(dir: &Path, state: &mut LabState) -> Result<(), LabError> {
    let lab = state.lab.clone();
    let mut step = Recorder { dir, state };

    let previous = read_sysctl(IP_FORWARD)?;
    if previous != "1" {
        write_sysctl(IP_FORWARD, "1")?;
        let key = IP_FORWARD.to_string();
        step.record(Resource::Sysctl { key, previous })?;
    }

    for ns in [&lab.ctr_netns, &lab.wan_netns] {
        run(&["ip", "netns", "add", ns])?;
        step.record(Resource::Netns { name: ns.clone() })?;
    }

    let gw = format!("{}/24", lab.gw_addr);
    run(&["ip", "link", "add", &lab.bridge, "type", "bridge"])?;
    step.record(Resource::Link {
        name: lab.bridge.clone(),
    })?;
    run(&["ip", "addr", "add", &gw, "dev", &lab.bridge])?;
    run(&["ip", "link", "set", &lab.bridge, "up"])?;

    // The container: eth0 in its namespace, the host end enslaved to the bridge.
    let (ctr, veth) = (&lab.ctr_netns, &lab.host_veth);
    let far = (ctr.as_str(), lab.ctr_ifname.as_str(), lab.ctr_addr);
    step.veth_pair(veth, far)?;
    run(&["ip", "link", "set", veth, "master", &lab.bridge])?;
    run(&["ip", "link", "set", veth, "up"])?;
    let gw_ip = lab.gw_addr.to_string();
    run(&["ip", "-n", ctr, "route", "add", "default", "via", &gw_ip])?;

    // The uplink: host end addressed, far end the "internet" host. The wan host has no route back to
    // the container subnet: MASQUERADE makes replies go to the uplink address.
    let far = (
        lab.wan_netns.as_str(),
        lab.wan_ifname.as_str(),
        lab.wan_addr,
    );
    step.veth_pair(&lab.uplink, far)?;
    let up_cidr = format!("{}/24", lab.uplink_addr);
    run(&["ip", "addr", "add", &up_cidr, "dev", &lab.uplink])?;
    run(&["ip", "link", "set", &lab.uplink, "up"])?;

    // The guard goes in last, at the top: nothing of the lab's is forwarded before it is there.
    for rule in forward_rules(&lab).into_iter().chain([guard_rule(&lab)]) {
        iptables("filter", "-I", "FORWARD", &rule)?;
        step.record(iptables_resource("filter", "FORWARD", rule))?;
    }
    let masq = masquerade_rule(&lab);
    iptables("nat", "-A", "POSTROUTING", &masq)?;
    step.record(iptables_resource("nat", "POSTROUTING", masq))?;

    step.state.complete = true;
    state::save(dir, step.state)
}

/// Appends created pieces to the state and saves it at once.
struct Recorder<'a> {
    dir: &'a Path,
    state: &'a mut LabState,
}

impl Recorder<'_> {
    fn record(&mut self, resource: Resource) -> Result<(), LabError> {
        self.state.created.push(resource);
        state::save(self.dir, self.state)
    }

    /// A veth pair: `host_end` in the host namespace (down, no address), the far end
    /// (namespace, interface name, address) configured /24 and up, with the namespace's loopback.
    fn veth_pair(
        &mut self,
        host_end: &str,
        (ns, ifname, addr): (&str, &str, Ipv4Addr),
    ) -> Result<(), LabError> {
        run(&[
            "ip", "link", "add", host_end, "type", "veth", "peer", "name", ifname, "netns", ns,
        ])?;
        self.record(Resource::Link {
            name: host_end.to_string(),
        })?;
        let cidr = format!("{addr}/24");
        run(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
        run(&["ip", "-n", ns, "addr", "add", &cidr, "dev", ifname])?;
        run(&["ip", "-n", ns, "link", "set", ifname, "up"])?;
        Ok(())
    }
}

fn iptables_resource(table: &str, chain: &str, rule: Vec<String>) -> Resource {
    Resource::IptablesRule {
        table: table.into(),
        chain: chain.into(),
        rule,
    }
}

fn iptables(table: &str, op: &str, chain: &str, rule: &[String]) -> Result<String, LabError> {
    let mut args = vec!["iptables", "-w", "-t", table, op, chain];
    args.extend(rule.iter().map(String::as_str));
    run(&args)
}

/// Undoes one created piece; a piece that is already gone is not an error.
pub(super) fn undo(resource: &Resource) -> Result<(), LabError> {
    match resource {
        Resource::Sysctl { key, previous } => write_sysctl(key, previous),
        Resource::Netns { name } => {
            if Path::new("/var/run/netns").join(name).exists() {
                run(&["ip", "netns", "del", name])?;
            }
            Ok(())
        }
        Resource::Link { name } => {
            if link_exists(name) {
                run(&["ip", "link", "del", name])?;
            }
            Ok(())
        }
        Resource::IptablesRule { table, chain, rule } => {
            // `-C` exits 1 when no such rule exists (e.g. removed by hand, or a flushed table).
            match iptables(table, "-C", chain, rule) {
                Ok(_) => iptables(table, "-D", chain, rule).map(drop),
                Err(LabError::Command { code: Some(1), .. }) => Ok(()),
                Err(e) => Err(e),
            }
        }
    }
}

/// Undoes `created` in reverse order, continuing past failures; returns what could not be undone.
/// `keep_sysctls` leaves changed sysctls alone (another lab still needs them); they are returned so
/// the caller can hand them over.
pub(super) fn teardown(created: &[Resource], keep_sysctls: bool) -> (Vec<LabError>, Vec<Resource>) {
    let mut errors = Vec::new();
    let mut kept = Vec::new();
    for resource in created.iter().rev() {
        if keep_sysctls && matches!(resource, Resource::Sysctl { .. }) {
            kept.push(resource.clone());
            continue;
        }
        if let Err(e) = undo(resource) {
            errors.push(e);
        }
    }
    (errors, kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlap_of_prefixes() {
        let net = |a, b, c, d, l| (Ipv4Addr::new(a, b, c, d), l);
        assert!(overlaps(net(10, 200, 1, 0, 24), net(10, 200, 1, 7, 32)));
        assert!(overlaps(net(10, 200, 1, 0, 24), net(10, 0, 0, 0, 8)));
        assert!(!overlaps(net(10, 200, 1, 0, 24), net(10, 200, 2, 0, 24)));
        assert!(!overlaps(net(10, 200, 1, 0, 24), net(172, 17, 0, 0, 16)));
        assert!(overlaps(net(10, 200, 1, 0, 24), net(0, 0, 0, 0, 0)));
    }

    #[test]
    fn octet_skips_host_prefixes_and_other_labs() {
        let host = [
            (Ipv4Addr::new(10, 200, 2, 1), 24),
            (Ipv4Addr::new(172, 17, 0, 1), 16),
        ];
        assert_eq!(choose_octet(&host, &[201]).ok(), Some(202));
        assert!(matches!(
            choose_octet(&[(Ipv4Addr::new(10, 0, 0, 0), 8)], &[]),
            Err(LabError::NoFreeSubnet)
        ));
    }

    #[test]
    fn netlink_sees_loopback() {
        let prefixes = host_prefixes().expect("netlink dump");
        assert!(
            prefixes.contains(&(Ipv4Addr::LOCALHOST, 8)),
            "127.0.0.1/8 missing from {prefixes:?}"
        );
    }

    #[test]
    fn names_fit_interface_limits() {
        validate_name("pt1").expect("pt1");
        validate_name("abcdefghi").expect("nine characters");
        for bad in ["", "abcdefghij", "1pt", "pt-1", "PT1", "pt/1"] {
            assert!(validate_name(bad).is_err(), "{bad:?} accepted");
        }
        let lab = Lab::plan("abcdefghi", 200);
        for name in [&lab.bridge, &lab.host_veth, &lab.uplink] {
            assert!(name.len() <= 15, "{name} too long");
        }
    }

    #[test]
    fn rules_are_the_documented_text() {
        let lab = Lab::plan("pt3", 205);
        assert_eq!(
            format!("-A POSTROUTING {}", masquerade_rule(&lab).join(" ")),
            lab.masquerade_rule_text
        );
        for rule in forward_rules(&lab) {
            assert!(rule.join(" ").contains("--comment pathtrace-lab-pt3"));
        }
    }
}
