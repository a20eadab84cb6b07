//! pathtrace: the path every packet of a container takes through the host's network namespaces,
//! and where the kernel rewrites it.
//!
//! The crate is a pipeline, one module per stage: [`discover`] (namespaces, links, routes, rules,
//! Docker) → [`attach`] (load and attach the kernel programs) → [`collect`] (ring buffer and
//! counters) → [`correlate`] (events → packets → hops → flows → NAT steps) → [`render`] (text, JSON,
//! pcapng). [`cmd`] holds one file per CLI verb; [`lab`] builds the built-in test topology.

pub mod attach;
pub mod capture;
pub mod cli;
pub mod cmd;
pub mod collect;
pub mod correlate;
pub mod discover;
pub mod lab;
pub mod model;
pub mod render;
