//! `pathtrace show FILE`: replays a capture through the same correlation and rendering as a live
//! trace, on any machine, without root or eBPF. NAT rules come from the file's topology
//! snapshot; conntrack confirmations (a live-kernel question) are not asked.

use std::{path::Path, process::ExitCode, sync::Arc};

use super::{
    live::{LiveView, ViewOptions},
    output::Output,
    session::{Observer, StopReason},
};
use crate::{
    capture::{self, Capture},
    collect::Event,
    correlate::FlowReport,
    discover::nat_rules::NatRuleset,
    model::{HookStats, RuleAttributor},
    render::Format,
};

pub fn run(path: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let cap = load(path)?;
    for w in &cap.warnings {
        eprintln!("pathtrace: {}: {w}", path.display());
    }
    let format = if json { Format::Json } else { Format::Text };
    replay(&cap, format, Output::stdout());
    Ok(ExitCode::SUCCESS)
}

/// Reads a capture, with its rotated continuations (`FILE.1`, `FILE.2`, ...) when there are.
pub fn load(path: &Path) -> anyhow::Result<Capture> {
    let files = capture::rotated_files(path).unwrap_or_default();
    if files.len() <= 1 {
        return Ok(capture::read_capture(path)?);
    }
    let mut all = Vec::new();
    for f in &files {
        all.extend(
            std::fs::read(f).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", f.display()))?,
        );
    }
    Ok(capture::parse_capture(&all)?)
}

/// Correlates a capture's packets and prints the final flows and a summary; returns the flows.
pub fn replay(cap: &Capture, format: Format, out: Output) -> Vec<FlowReport> {
    let rules: Arc<dyn RuleAttributor> = Arc::new(NatRuleset::from_rules(&cap.topology.nat_rules));
    let mut view = LiveView::new(
        Arc::new(cap.topology.clone()),
        Some(rules),
        ViewOptions {
            format,
            max_flows: 1 << 20,
            confirm_conntrack: false,
            updates: false,
            keep_flows: true,
        },
        out,
    );
    let events: Vec<Event> = cap.records.iter().cloned().map(Event::Packet).collect();
    view.feed(&events);
    // What the file holds per hook: every packet it has was emitted; nothing else is known.
    let stats: Vec<_> = cap
        .topology
        .hooks
        .iter()
        .map(|h| {
            let emitted = cap
                .records
                .iter()
                .filter(|r| r.slot == h.slot && r.direction == h.direction)
                .count() as u64;
            (
                h.clone(),
                HookStats {
                    seen: emitted,
                    filtered: 0,
                    emitted,
                    lost: 0,
                },
            )
        })
        .collect();
    view.finished(StopReason::Requested, &stats);
    view.finish_output();
    std::mem::take(&mut view.final_flows)
}
