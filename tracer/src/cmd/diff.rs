//! `pathtrace diff BEFORE AFTER`: what changed between two captures (path, NAT mapping, rule,
//! drops; see `analyze::diff`). Exit 0 same, 1 different. With an expression, only the flows
//! of each capture that have a packet it keeps are compared (as `show FILE EXPR` replays them).

use std::{path::Path, process::ExitCode};

use crate::{
    analyze::diff::Comparison,
    capture,
    correlate::FlowReport,
    filter::Expression,
    pipeline,
    render::{Collect, Format},
};

pub(super) fn run(
    before: &Path,
    after: &Path,
    json: bool,
    expression: &[String],
) -> anyhow::Result<ExitCode> {
    let expr = Expression::from_args(expression, None)?;
    let replay = |p: &Path| -> anyhow::Result<Vec<FlowReport>> {
        let mut cap = capture::read_rotated(p)?;
        if let Some(expr) = &expr {
            let kept = super::show::verdicts(&cap, expr);
            super::show::keep_flows(&mut cap, &kept);
        }
        let mut flows = Collect::default();
        pipeline::replay(&cap, &mut flows, None);
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
