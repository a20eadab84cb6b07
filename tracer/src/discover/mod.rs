//! Discovery: which namespaces, interfaces, bridges, routes and NAT rules make up the path.

pub(crate) mod btf;
pub mod conntrack;
pub mod nat_rules;
pub mod netns;
pub mod path;
pub mod rtnl;
pub(crate) mod sockets;
pub(crate) mod uplinks;
