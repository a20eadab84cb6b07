//! `pathtrace report FILE [EXPR] -o OUT.html`: a capture as one self-contained HTML page (see
//! [`crate::report`]), readable without pathtrace, root or a network.

use std::{path::Path, process::ExitCode};

use crate::{capture, filter::Expression, report};

pub(super) fn run(path: &Path, expression: &[String], out: &Path) -> anyhow::Result<ExitCode> {
    let expr = Expression::from_args(expression, None)?;
    let mut cap = capture::read_rotated(path)?;
    if cap.meta.is_none() {
        anyhow::bail!(
            "{} was not written by pathtrace (no topology snapshot): a report needs the hooks of a known path; write the capture with pathtrace -w",
            path.display()
        );
    }
    if let Some(expr) = &expr {
        let kept = super::show::verdicts(&cap, expr);
        super::show::keep_flows(&mut cap, &kept);
    }
    let page = report::render(
        &cap,
        expr.as_ref().map(Expression::text),
        &path.display().to_string(),
    )?;
    report::write(&page, out)?;
    super::warn(format_args!(
        "{}: report of {} flows written",
        out.display(),
        page.matches("<section class=\"flow\"").count()
    ));
    Ok(ExitCode::SUCCESS)
}
