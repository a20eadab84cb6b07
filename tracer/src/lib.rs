//! pathtrace: the path every packet of a container takes through the host's network namespaces,
//! and where the kernel rewrites it.
//!
//! The crate is a pipeline, one module per stage (`ARCHITECTURE.md` has the picture):
//! [`runtime`] (which container a name means) and [`discover`] (namespaces, links, routes, the
//! path, NAT rules) → [`attach`] (load and attach the kernel programs) → [`collect`] (ring
//! buffer) → [`correlate`] (events → packets → hops → flows → NAT steps) → [`render`] (text,
//! JSON). [`pipeline`] is the engine that runs these for a trace; [`capture`] writes and reads
//! pcapng; [`analyze`] holds what `inspect`, `verify` and `diff` conclude. [`cli`] and [`config`]
//! are the command line and what it becomes; [`cmd`] holds one module per verb; [`lab`] builds
//! the built-in test topology; [`model`] is the vocabulary every stage speaks.

mod analyze;
pub mod attach;
pub mod capture;
pub mod cli;
pub mod cmd;
pub mod collect;
mod config;
pub mod correlate;
pub mod discover;
pub mod filter;
pub mod lab;
pub mod model;
pub mod pipeline;
pub mod render;
mod report;
pub mod runtime;

/// Writes one line to stderr. Never panics: a closed stderr (`2>&1 | head`) loses the line, and
/// nothing else.
pub fn say(line: &str) {
    use std::io::Write as _;
    let mut err = std::io::stderr().lock();
    // Nowhere left to tell about a failed write to stderr.
    writeln!(err, "{line}").ok();
}

/// An error chain as one line: "what failed: why" (each cause once).
pub fn one_line(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let s = cause.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
    }
    parts.join(": ")
}
