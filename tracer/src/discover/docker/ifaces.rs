//! Which interface inside the container's namespace carries each of its Docker networks, and the
//! path from each of them to the host's uplink.

use std::{net::IpAddr, sync::Arc};

use serde::Serialize;

use super::{ContainerInfo, DockerError, NetworkAttachment};
use crate::discover::{
    netns::Netns,
    path::{self, DiscoveredPath, PathQuery},
    rtnl::{Rtnl, RtnlError},
};

/// A network of the container and the interface that carries it inside its namespace.
#[derive(Clone, Debug, Serialize)]
pub struct ContainerIface {
    pub ifname: String,
    pub ifindex: u32,
    pub network: NetworkAttachment,
}

/// The discovered path of one container interface.
#[derive(Clone, Debug)]
pub struct ContainerPath {
    pub iface: ContainerIface,
    pub path: DiscoveredPath,
}

impl ContainerInfo {
    /// The container's network namespace (through its main process).
    pub fn netns(&self) -> Result<Netns, DockerError> {
        Netns::of_pid(self.pid).map_err(|source| DockerError::Netns {
            name: self.name.clone(),
            source,
        })
    }

    /// One (interface, network) pair per network, found by address inside the container's
    /// namespace (`eth0`, `eth1`, ...), sorted by interface name.
    pub fn interfaces(&self) -> Result<Vec<ContainerIface>, DockerError> {
        self.interfaces_in(&self.netns()?)
    }

    fn interfaces_in(&self, netns: &Netns) -> Result<Vec<ContainerIface>, DockerError> {
        let name = || self.name.clone();
        let dump = netns
            .run(|| -> Result<_, RtnlError> {
                let mut rtnl = Rtnl::open()?;
                Ok((rtnl.links()?, rtnl.addrs()?))
            })
            .map_err(|source| DockerError::Netns {
                name: name(),
                source,
            })?;
        let (links, addrs) = dump.map_err(|source| DockerError::Netlink {
            name: name(),
            source,
        })?;
        let mut out = Vec::new();
        for network in &self.networks {
            let ip = network.ip.ok_or_else(|| DockerError::Unaddressed {
                name: name(),
                network: network.network_name.clone(),
            })?;
            let link = addrs
                .iter()
                .find(|a| a.addr == ip)
                .and_then(|a| links.iter().find(|l| l.ifindex == a.ifindex))
                .ok_or_else(|| DockerError::AddressNotFound {
                    name: name(),
                    network: network.network_name.clone(),
                    ip,
                })?;
            out.push(ContainerIface {
                ifname: link.name.clone(),
                ifindex: link.ifindex,
                network: network.clone(),
            });
        }
        out.sort_by(|a, b| a.ifname.cmp(&b.ifname));
        Ok(out)
    }

    /// [`path::discover`] for every interface of the container, labelled with its name; `to`
    /// picks the uplink (default: the host's default route).
    pub fn paths(&self, to: Option<IpAddr>) -> Result<Vec<ContainerPath>, DockerError> {
        let netns = Arc::new(self.netns()?);
        self.interfaces_in(&netns)?
            .into_iter()
            .map(|iface| {
                let q = PathQuery {
                    iface: Some(iface.ifname.clone()),
                    to,
                };
                let path = path::discover(&self.name, netns.clone(), &q).map_err(|source| {
                    DockerError::Path {
                        name: self.name.clone(),
                        source,
                    }
                })?;
                Ok(ContainerPath { iface, path })
            })
            .collect()
    }
}
