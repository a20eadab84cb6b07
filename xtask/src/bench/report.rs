//! The table: metric | measured | target | verdict, printed as a Markdown table so that the same
//! text goes into the README.
use std::fmt::Write as _;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    Pass,
    Fail,
    /// A figure without a target (a baseline, a yardstick).
    Info,
    /// The measurement itself failed.
    Error,
}

impl Verdict {
    pub(super) fn of(pass: bool) -> Self {
        if pass {
            Self::Pass
        } else {
            Self::Fail
        }
    }

    fn word(self) -> &'static str {
        match self {
            Self::Pass => "pass",
            Self::Fail => "FAIL",
            Self::Info => "-",
            Self::Error => "ERROR",
        }
    }
}

pub(super) struct Row {
    pub metric: String,
    pub measured: String,
    pub target: String,
    pub verdict: Verdict,
}

impl Row {
    pub(super) fn new(
        metric: impl Into<String>,
        measured: impl Into<String>,
        target: impl Into<String>,
        verdict: Verdict,
    ) -> Self {
        Self {
            metric: metric.into(),
            measured: measured.into(),
            target: target.into(),
            verdict,
        }
    }

    pub(super) fn info(metric: impl Into<String>, measured: impl Into<String>) -> Self {
        Self::new(metric, measured, "-", Verdict::Info)
    }
}

/// The rows as an aligned Markdown table.
pub(super) fn table(rows: &[Row]) -> String {
    let head = ["metric", "measured", "target", "result"];
    let cells: Vec<[&str; 4]> = rows
        .iter()
        .map(|r| {
            [
                r.metric.as_str(),
                r.measured.as_str(),
                r.target.as_str(),
                r.verdict.word(),
            ]
        })
        .collect();
    let mut width = head.map(|h| h.chars().count());
    for row in &cells {
        for (w, c) in width.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, row: [&str; 4]| {
        out.push('|');
        for (c, w) in row.iter().zip(width) {
            let pad = w - c.chars().count();
            // Writing to a String cannot fail.
            write!(out, " {c}{} |", " ".repeat(pad)).ok();
        }
        out.push('\n');
    };
    line(&mut out, head);
    out.push('|');
    for w in width {
        out.push_str(&"-".repeat(w + 2));
        out.push('|');
    }
    out.push('\n');
    for row in cells {
        line(&mut out, row);
    }
    out
}

/// The median of `v` (the mean of the middle two for an even count); 0 when empty.
pub(super) fn median(v: &[f64]) -> f64 {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[]), 0.0);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    #[test]
    fn table_is_aligned_markdown() {
        let t = table(&[
            Row::new("a", "1", ">= 1", Verdict::Pass),
            Row::info("longer metric", "2"),
        ]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines.iter().all(|l| l.len() == lines[0].len()));
        assert!(lines[1].starts_with("|---"));
        assert!(lines[2].contains("| pass "));
    }
}
