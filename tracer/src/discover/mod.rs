//! Discovery: which namespaces, interfaces, bridges, routes and NAT rules make up the path.

pub mod netns;
pub mod rtnl;
