//! The sockets of a container that uses the host's network namespace. Nothing on the path sets
//! its packets apart (no veth, no namespace), so they are told apart by their local endpoint:
//! the addresses and ports of the sockets its processes hold. Its processes are the ones whose
//! cgroup path holds the container's id; their sockets are the `socket:[inode]` links under
//! `/proc/PID/fd`; the endpoints are those inodes' lines in `/proc/net/{tcp,tcp6,udp,udp6}`.
//! The shared hooks on the host's uplinks then emit packets to and from those endpoints, the way
//! they do for the remote endpoints a container's own hooks learn.
//!
//! Sockets are found by polling: a connection made and closed between two scans is not seen,
//! and one made just before a scan is seen from its first packet after it.

use std::{
    collections::HashSet,
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use tracer_common::config::EndpointKey;

use crate::model::{family_and_bytes, Proto};

/// Finds a host-network container's local endpoints, scan after scan.
#[derive(Debug)]
pub(crate) struct SocketWatch {
    /// The runtime's id of the container, as its processes' cgroup paths hold it.
    id: String,
    /// The host's addresses: what a socket bound to the wildcard address is reached at.
    host_addrs: Vec<IpAddr>,
    known: HashSet<EndpointKey>,
}

impl SocketWatch {
    pub(crate) fn new(id: &str, host_addrs: Vec<IpAddr>) -> Self {
        Self {
            id: id.to_string(),
            host_addrs,
            known: HashSet::new(),
        }
    }

    /// The container's local endpoints not seen in an earlier scan.
    pub(crate) fn scan(&mut self) -> Vec<EndpointKey> {
        let inodes: HashSet<u64> = processes(&self.id)
            .into_iter()
            .flat_map(socket_inodes)
            .collect();
        if inodes.is_empty() {
            return Vec::new();
        }
        let mut new = Vec::new();
        for (file, proto) in [
            ("/proc/net/tcp", Proto::Tcp),
            ("/proc/net/tcp6", Proto::Tcp),
            ("/proc/net/udp", Proto::Udp),
            ("/proc/net/udp6", Proto::Udp),
        ] {
            let Ok(text) = fs::read_to_string(file) else {
                continue;
            };
            for (addr, port) in local_endpoints(&text, &inodes) {
                let addrs: Vec<IpAddr> = match addr {
                    // A `::` socket takes IPv4 too (unless IPV6_V6ONLY, which is not shown).
                    IpAddr::V6(a) if a.is_unspecified() => self.host_addrs.clone(),
                    IpAddr::V4(a) if a.is_unspecified() => self
                        .host_addrs
                        .iter()
                        .copied()
                        .filter(IpAddr::is_ipv4)
                        .collect(),
                    // An IPv4 connection of a `::` socket: `::ffff:a.b.c.d`.
                    IpAddr::V6(a) => vec![a.to_ipv4_mapped().map_or(addr, IpAddr::V4)],
                    IpAddr::V4(_) => vec![addr],
                };
                for a in addrs {
                    let (family, bytes) = family_and_bytes(a);
                    let key = EndpointKey {
                        addr: bytes,
                        port,
                        proto: proto.number(),
                        family,
                    };
                    if self.known.insert(key) {
                        new.push(key);
                    }
                }
            }
        }
        new
    }
}

/// The pids whose cgroup path holds `id` (every hierarchy, v1 or v2).
fn processes(id: &str) -> Vec<u32> {
    if id.len() < 12 {
        return Vec::new();
    }
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/cgroup")).is_ok_and(|c| c.contains(id))
        })
        .collect()
}

/// The socket inodes a process holds open.
fn socket_inodes(pid: u32) -> Vec<u64> {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| {
            let target = fs::read_link(e.path()).ok()?;
            let t = target.to_str()?;
            t.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect()
}

/// The local (address, port) of the lines of a `/proc/net/{tcp,udp}[6]` table whose inode is one
/// of `inodes`.
fn local_endpoints(text: &str, inodes: &HashSet<u64>) -> Vec<(IpAddr, u16)> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let w: Vec<&str> = line.split_whitespace().collect();
            let inode: u64 = w.get(9)?.parse().ok()?;
            if !inodes.contains(&inode) {
                return None;
            }
            let (addr, port) = w.get(1)?.split_once(':')?;
            Some((hex_addr(addr)?, u16::from_str_radix(port, 16).ok()?))
        })
        .collect()
}

/// An address as `/proc/net` prints it: 32-bit words in hexadecimal, each in host byte order.
fn hex_addr(s: &str) -> Option<IpAddr> {
    let word = |i: usize| -> Option<[u8; 4]> {
        let w = u32::from_str_radix(s.get(i * 8..i * 8 + 8)?, 16).ok()?;
        Some(w.to_ne_bytes())
    };
    match s.len() {
        8 => Some(IpAddr::V4(Ipv4Addr::from(word(0)?))),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            Some(IpAddr::V6(Ipv6Addr::from(b)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_lines_give_the_local_endpoints_of_the_inodes() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0
   1: 0202C80A:B3A2 0202C80A:1B58 01 00000000:00000000 00:00000000 00000000     0        0 4343 1 0000000000000000 20 4 30 10 -1
   2: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 99 1 0000000000000000 100 0 0 10 0
";
        let inodes: HashSet<u64> = [4242, 4343].into();
        let got = local_endpoints(text, &inodes);
        assert_eq!(
            got,
            [
                (IpAddr::from([127, 0, 0, 1]), 8080),
                (IpAddr::from([10, 200, 2, 2]), 0xb3a2)
            ]
        );
        let v6 = "0000000000000000FFFF00000100007F";
        assert_eq!(hex_addr(v6), "::ffff:127.0.0.1".parse().ok());
    }
}
