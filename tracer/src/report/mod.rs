//! `pathtrace report`: a capture as one self-contained HTML page, for people who were not
//! there. The page is the same replay `show` prints (correlation of the file's packets, with its
//! topology snapshot and drop reports), drawn: the topology with per-hook packet counts and the
//! drops placed where they happened, then one section per flow with its hop chain, the NAT step
//! between the hooks it happened between (and its rule), per-hop latency percentiles and CDFs,
//! and where packets stopped and why.
//!
//! - [`model`]: what the page shows, computed from the capture and the replayed flows (pure).
//! - [`svg`]: the diagrams' geometry and the latency plots (plotters' SVG backend).
//! - `templates/report.html`: the page (askama: checked at compile time, HTML-escaped).
//!
//! Nothing is fetched when the page is opened: CSS and SVG are inline, there is no script.

pub(crate) mod model;
pub(crate) mod svg;

use std::path::Path;

use anyhow::Context as _;
use askama::Template;

use crate::{capture::Capture, pipeline, render::Collect};

pub(crate) use model::ReportModel;

/// Flows drawn at most; the page says how many more there were.
pub(crate) const MAX_FLOWS: usize = 500;

#[derive(Template)]
#[template(path = "report.html")]
struct Page<'a> {
    m: &'a ReportModel,
}

/// The page of a capture (`filter`: the expression that chose the flows left in it).
pub(crate) fn render(cap: &Capture, filter: Option<&str>, source: &str) -> anyhow::Result<String> {
    let mut flows = Collect::default();
    pipeline::replay(cap, &mut flows, filter);
    let model = ReportModel::build(cap, &flows.flows, filter, source);
    Page { m: &model }.render().context("rendering the report")
}

/// Writes the page to `out` (one clear error when it cannot).
pub(crate) fn write(page: &str, out: &Path) -> anyhow::Result<()> {
    std::fs::write(out, page).with_context(|| {
        format!(
            "cannot write the report to {}; choose a writable path with -o",
            out.display()
        )
    })
}
