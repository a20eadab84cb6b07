//! `pathtrace show FILE [EXPR] [-w OUT]`: replays a capture through the same correlation and
//! rendering as a live trace, on any machine, without root or eBPF. NAT rules come from the
//! file's topology snapshot; conntrack confirmations (a live-kernel question) are not asked.
//! With an expression, only the flows one of whose packets it keeps are replayed (as live), and
//! `-w` writes exactly the packets it keeps, each hook's copy judged on its own (as tcpdump);
//! `--hook` keeps one hook's packets only.

use std::{collections::HashMap, path::Path, process::ExitCode};

use anyhow::Context as _;

use crate::{
    capture::{self, Capture, CaptureWriter, WriterOptions},
    filter::Expression,
    model::{Direction, PacketRecord},
    pipeline,
    render::{Format, Output},
};

pub(super) fn run(
    path: &Path,
    json: bool,
    expression: &[String],
    write: Option<&Path>,
    hook: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let expr = Expression::from_args(expression, None)?;
    if write.is_some() && expr.is_none() && hook.is_none() {
        anyhow::bail!("show -w writes the packets an expression keeps, or one hook's (--hook HOOK): give one of them (without either, the file is its own copy)");
    }
    let mut cap = capture::read_rotated(path)?;
    for w in &cap.warnings {
        super::warn(format_args!("{}: {w}", path.display()));
    }
    if cap.meta.is_none() {
        super::warn(format_args!(
            "{} was not written by pathtrace (no topology snapshot: its interfaces are not hooks on a known path); showing its packets per interface only, no flows or hop chains",
            path.display()
        ));
    }
    if let Some(out) = write {
        let mut kept = match &expr {
            Some(expr) => verdicts(&cap, expr),
            None => vec![true; cap.records.len()],
        };
        if let Some(hook) = hook {
            let on = on_hook(&cap, hook)?;
            for (k, r) in kept.iter_mut().zip(&cap.records) {
                *k &= on.contains(&(r.slot, r.direction));
            }
        }
        let n = write_kept(&cap, &kept, out)?;
        let what = match (&expr, hook) {
            (Some(_), Some(h)) => format!("the expression keeps at {h}"),
            (Some(_), None) => "the expression keeps".to_string(),
            (None, Some(h)) => format!("of {h}"),
            (None, None) => String::new(),
        };
        super::warn(format_args!(
            "{}: {n} of {} packets, those {what}",
            out.display(),
            cap.records.len()
        ));
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(expr) = &expr {
        let kept = verdicts(&cap, expr);
        keep_flows(&mut cap, &kept);
    }
    let mut renderer = Format::of_json_flag(json).renderer(Output::stdout(), false);
    pipeline::replay(&cap, renderer.as_mut(), expr.as_ref().map(Expression::text));
    Ok(ExitCode::SUCCESS)
}

/// The (slot, direction) pairs `--hook` names: `ns:ifname` (both directions) or `ns:ifname
/// DIRECTION`; an error listing the capture's hooks when none is.
fn on_hook(cap: &Capture, wanted: &str) -> anyhow::Result<Vec<(u8, Direction)>> {
    let (label, dir) = match wanted.rsplit_once(' ') {
        Some((l, d)) if d == "ingress" || d == "egress" => (l.trim(), Some(d)),
        _ => (wanted.trim(), None),
    };
    let on: Vec<(u8, Direction)> = cap
        .topology
        .hooks
        .iter()
        .filter(|h| h.label() == label && dir.is_none_or(|d| h.direction.to_string() == d))
        .map(|h| (h.slot, h.direction))
        .collect();
    if on.is_empty() {
        let mut labels: Vec<String> = cap.topology.hooks.iter().map(|h| h.label()).collect();
        labels.dedup();
        anyhow::bail!(
            "--hook {wanted}: the capture has no such hook; its hooks are {} (optionally followed by ingress or egress)",
            labels.join(", ")
        );
    }
    Ok(on)
}

/// Leaves in `cap` the records of the flows that have a packet the expression keeps (`kept`,
/// one verdict per record).
pub(super) fn keep_flows(cap: &mut Capture, kept: &[bool]) {
    let flows = flows_kept(&cap.records, kept);
    cap.records = std::mem::take(&mut cap.records)
        .into_iter()
        .zip(flows)
        .filter_map(|(r, keep)| keep.then_some(r))
        .collect();
    // The drops of the packets kept.
    let fingerprints: std::collections::HashSet<u64> =
        cap.records.iter().map(|r| r.fingerprint).collect();
    cap.drops.retain(|d| fingerprints.contains(&d.fingerprint));
}

/// Each record's verdict.
pub(super) fn verdicts(cap: &Capture, expr: &Expression) -> Vec<bool> {
    cap.records
        .iter()
        .map(|r| expr.keeps(&r.data, r.pkt_len))
        .collect()
}

/// Writes the records `kept` says to `out`, with the capture's topology; how many.
fn write_kept(cap: &Capture, kept: &[bool], out: &Path) -> anyhow::Result<usize> {
    let meta = cap.meta.as_ref().context(
        "-w needs a capture pathtrace wrote (its topology snapshot goes into the new file)",
    )?;
    let mut w = CaptureWriter::create(out, meta, &cap.topology.hooks, WriterOptions::default())?;
    let mut n = 0;
    let mut written = std::collections::HashSet::new();
    for (r, _) in cap.records.iter().zip(kept).filter(|(_, k)| **k) {
        w.write_packet(r)?;
        written.insert(r.fingerprint);
        n += 1;
    }
    // The drop reports of the packets written, so that the new file replays their stops too.
    for d in cap
        .drops
        .iter()
        .filter(|d| written.contains(&d.fingerprint))
    {
        w.write_drop(d)?;
    }
    w.finish(&cap.hook_times)?;
    Ok(n)
}

/// For each record, whether its flow has a packet the expression keeps. A flow is what joins a
/// packet's copies at every hook (their NAT-invariant fingerprint) with the packets of the same
/// tuple, either way, at the same hook (so that NAT's rewrites and the replies come along).
fn flows_kept(records: &[PacketRecord], kept: &[bool]) -> Vec<bool> {
    let mut sets = UnionFind::default();
    let mut by_tuple = HashMap::new();
    let mut by_fp = HashMap::new();
    for (i, r) in records.iter().enumerate() {
        sets.add();
        let (a, b) = if r.src <= r.dst {
            (r.src, r.dst)
        } else {
            (r.dst, r.src)
        };
        for first in [
            *by_tuple.entry((r.slot, r.proto, a, b)).or_insert(i),
            *by_fp.entry(r.fingerprint).or_insert(i),
        ] {
            sets.join(first, i);
        }
    }
    let mut any = vec![false; records.len()];
    for (i, k) in kept.iter().enumerate() {
        if *k {
            let root = sets.root(i);
            any[root] = true;
        }
    }
    (0..records.len()).map(|i| any[sets.root(i)]).collect()
}

#[derive(Default)]
struct UnionFind(Vec<usize>);

impl UnionFind {
    fn add(&mut self) {
        self.0.push(self.0.len());
    }

    fn root(&mut self, mut i: usize) -> usize {
        while self.0[i] != i {
            self.0[i] = self.0[self.0[i]];
            i = self.0[i];
        }
        i
    }

    fn join(&mut self, a: usize, b: usize) {
        let (a, b) = (self.root(a), self.root(b));
        self.0[a.max(b)] = a.min(b);
    }
}
