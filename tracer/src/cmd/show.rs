//! `pathtrace show FILE`: replays a capture through the same correlation and rendering as a live
//! trace, on any machine, without root or eBPF. NAT rules come from the file's topology
//! snapshot; conntrack confirmations (a live-kernel question) are not asked.

use std::{path::Path, process::ExitCode};

use crate::{
    capture, pipeline,
    render::{Format, Output},
};

pub(super) fn run(path: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let cap = capture::read_rotated(path)?;
    for w in &cap.warnings {
        super::warn(format_args!("{}: {w}", path.display()));
    }
    if cap.meta.is_none() {
        super::warn(format_args!(
            "{} was not written by pathtrace (no topology snapshot: its interfaces are not hooks on a known path); showing its packets per interface only, no flows or hop chains",
            path.display()
        ));
    }
    let mut renderer = Format::of_json_flag(json).renderer(Output::stdout(), false);
    pipeline::replay(&cap, renderer.as_mut());
    Ok(ExitCode::SUCCESS)
}
