//! Render: flow reports and hook counters as text (live view, replay) or JSON lines.
//!
//! Both renderers are pure functions of their input, so replaying a capture prints what the live
//! run printed. JSON objects have a fixed key order and carry no wall-clock time.

mod json;
mod text;

use crate::{
    correlate::FlowReport,
    model::{Hook, HookStats},
};

pub use json::{flow_line, summary_line};
pub use text::{flow_block, format_delta_us, summary_block};

/// What the end-of-trace summary covers.
#[derive(Clone, Copy, Debug)]
pub struct Summary<'a> {
    /// Flows in the table.
    pub flows: usize,
    /// Flows evicted to keep the table bounded.
    pub evicted: u64,
    /// Counters per hook, in the order to print them.
    pub hooks: &'a [(Hook, HookStats)],
}

/// Why output could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("cannot encode JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// An output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// One indented block per flow, for people.
    Text,
    /// One JSON object per line, for programs.
    Json,
}

impl Format {
    /// One flow: a block of lines (text) or one line (JSON), ending in a newline.
    pub fn flow(self, flow: &FlowReport) -> Result<String, RenderError> {
        match self {
            Self::Text => Ok(flow_block(flow)),
            Self::Json => Ok(flow_line(flow)? + "\n"),
        }
    }

    /// The summary, ending in a newline.
    pub fn summary(self, summary: &Summary<'_>) -> Result<String, RenderError> {
        match self {
            Self::Text => Ok(summary_block(summary)),
            Self::Json => Ok(summary_line(summary)? + "\n"),
        }
    }
}

#[cfg(test)]
mod tests;
