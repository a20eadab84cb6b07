//! pathtrace's integration tests, one binary (`cargo test -p tracer --test integration`). Most
//! are privileged: they build their own network namespaces, labs and containers, send traffic only
//! between them, run the real binary or the real kernel object, and remove everything they made,
//! also when they fail. Without root (or dockerd, or the kernel object) they say so loudly and
//! skip, and under `CI=true` they fail instead.
#![expect(
    clippy::print_stderr,
    reason = "tests say what they skip, and what they saw when it helps to read a failure"
)]

mod support;

mod aggregate;
mod capture_replay;
mod capture_tshark;
mod conntrack;
mod cri;
mod cri_fixture;
mod docker_discover;
mod docker_trace;
mod doctor;
mod drops;
mod edges;
mod filter_expr;
mod fragments;
mod host_network;
mod inspect_docker;
mod kernel_parser;
mod lab;
mod leak_guard;
mod manual;
mod nat_attribution;
mod outputs;
mod podman;
mod podman_fixture;
mod policy_routing;
mod reliability;
mod report;
mod ring_gaps;
mod routes;
mod small_fixes;
mod tcpdump_habits;
mod trace_lab;
mod tui;
mod tunnels;
mod tuple_reuse;
