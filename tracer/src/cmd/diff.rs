//! `pathtrace diff BEFORE AFTER`: what changed between two captures (path, NAT mapping, rule,
//! drops; see `analyze::diff`). Exit 0 same, 1 different.

use std::{path::Path, process::ExitCode};

use crate::{
    analyze::diff::Comparison,
    capture,
    correlate::FlowReport,
    pipeline,
    render::{Collect, Format},
};

pub(super) fn run(before: &Path, after: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let replay = |p: &Path| -> anyhow::Result<Vec<FlowReport>> {
        let cap = capture::read_rotated(p)?;
        let mut flows = Collect::default();
        pipeline::replay(&cap, &mut flows);
        Ok(flows.flows)
    };
    let comparison = Comparison::of(&replay(before)?, &replay(after)?);
    super::print(&Format::of_json_flag(json).printer().diff(&comparison)?)?;
    Ok(if comparison.same() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
