//! The live view: correlates a session's events into flows and prints them as they settle.
//! `show` replays a capture through the same code, so live and replayed output agree.

use std::{collections::HashMap, sync::Arc};

use smallvec::SmallVec;

use super::{
    output::Output,
    session::{Observer, StopReason},
};
use crate::{
    collect::Event,
    correlate::{CorrelateConfig, Correlator, FlowId, FlowReport},
    discover::conntrack,
    model::{Hook, HookStats, NatKind, RuleAttributor, Topology},
    render::{Format, Summary},
};

/// How the view behaves.
#[derive(Clone, Copy, Debug)]
pub struct ViewOptions {
    pub format: Format,
    pub max_flows: usize,
    /// Ask the kernel's conntrack table to confirm NAT steps (live only, in this namespace).
    pub confirm_conntrack: bool,
    /// Print flow updates while tracing (otherwise only the final report).
    pub updates: bool,
    /// Keep the final reports in [`LiveView::final_flows`] for the caller (verify, replay);
    /// otherwise they are rendered one at a time and not kept (100k flows, bounded memory).
    pub keep_flows: bool,
}

impl ViewOptions {
    /// A live trace as the command line asks for it: updates while tracing, conntrack confirmed.
    pub fn live(args: &crate::cli::TraceArgs) -> Self {
        Self {
            format: if args.json {
                Format::Json
            } else {
                Format::Text
            },
            max_flows: args.max_flows,
            confirm_conntrack: true,
            updates: true,
            keep_flows: false,
        }
    }
}

/// What a verb knows about flows that correlation cannot (e.g. `--container`: which connections
/// docker-proxy carries): notes to add to a flow before it is printed.
pub type FlowNotes = Box<dyn Fn(&FlowReport) -> Vec<String> + Send + Sync>;

pub struct LiveView {
    opts: ViewOptions,
    notes: Option<FlowNotes>,
    correlator: Correlator,
    out: Output,
    /// Lost count last warned about, per slot (warned again only when it doubles).
    hooks_lost: HashMap<u8, u64>,
    /// The final reports, when [`ViewOptions::keep_flows`] asked for them.
    pub final_flows: Vec<FlowReport>,
    /// Flows in the final report.
    pub final_count: usize,
    pub final_stats: Vec<(Hook, HookStats)>,
    pub stop: Option<StopReason>,
}

impl LiveView {
    pub fn new(
        topology: Arc<Topology>,
        attributor: Option<Arc<dyn RuleAttributor>>,
        opts: ViewOptions,
        out: Output,
    ) -> Self {
        let cfg = CorrelateConfig {
            max_flows: opts.max_flows,
            ..CorrelateConfig::default()
        };
        Self {
            opts,
            notes: None,
            correlator: Correlator::new(topology, attributor, cfg),
            out,
            hooks_lost: HashMap::new(),
            final_flows: Vec::new(),
            final_count: 0,
            final_stats: Vec::new(),
            stop: None,
        }
    }

    /// Adds `notes` to every flow printed from now on.
    pub fn set_flow_notes(&mut self, notes: FlowNotes) {
        self.notes = Some(notes);
    }

    /// Feeds events without a session (replay).
    pub fn feed(&mut self, events: &[Event]) {
        self.events(events);
    }

    /// Adds the verb's notes and (live) the kernel conntrack table's verdict on each NAT step.
    /// A verdict, once the entry was found, is kept with the flow and not asked again.
    fn annotate(&mut self, mut flow: FlowReport) -> FlowReport {
        if let Some(notes) = &self.notes {
            let extra = notes(&flow);
            flow.notes.extend(extra);
        }
        if !self.opts.confirm_conntrack {
            return flow;
        }
        let mut found: SmallVec<[(usize, bool); 2]> = SmallVec::new();
        for (i, entry) in flow.nat.iter_mut().enumerate() {
            let step = &mut entry.step;
            if step.conntrack.is_some() {
                continue;
            }
            let peer = match step.kind {
                NatKind::Snat => flow.dst,
                NatKind::Dnat => flow.src,
            };
            step.conntrack = conntrack::confirms(step, peer, flow.proto).unwrap_or_else(|e| {
                tracing::debug!("conntrack lookup: {e}");
                None
            });
            // Asked again later when the entry was not there yet.
            if let Some(v) = step.conntrack {
                found.push((i, v));
            }
        }
        for (i, v) in found {
            self.correlator.confirm(flow.id, i, v);
        }
        flow
    }

    fn print_changed(&mut self, ids: Vec<FlowId>) {
        if !self.opts.updates {
            return;
        }
        for id in ids {
            let Some(flow) = self.correlator.flow(id) else {
                continue;
            };
            let flow = self.annotate(flow);
            let rendered = match self.opts.format.flow(&flow) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!("rendering flow {id:?}: {e}");
                    continue;
                }
            };
            // Text: reprint a flow only when its path, NAT or losses changed, not its counts.
            let shape = match self.opts.format {
                Format::Text => hash_of(&shape_of(&flow)),
                Format::Json => hash_of(&rendered),
            };
            // 0 is "never printed"; a shape hashing to 0 is merely printed once more.
            if self.correlator.mark(id) == Some(shape) {
                continue;
            }
            self.correlator.set_mark(id, shape);
            self.out.send(rendered);
        }
    }

    /// Final report: every flow, then the summary; blocks until written. Flows are built,
    /// rendered and queued one at a time, so the report costs no more memory than the table.
    pub fn finish_output(&mut self) {
        self.correlator.finish();
        if self.opts.format == Format::Text && self.opts.updates {
            self.out.send_blocking("--- final ---\n".to_string());
        }
        let ids = self.correlator.flow_ids();
        self.final_count = ids.len();
        for id in ids {
            let Some(flow) = self.correlator.flow(id) else {
                continue;
            };
            let flow = self.annotate(flow);
            match self.opts.format.flow(&flow) {
                Ok(r) => self.out.send_blocking(r),
                Err(e) => tracing::warn!("rendering flow: {e}"),
            }
            if self.opts.keep_flows {
                self.final_flows.push(flow);
            }
        }
        let summary = Summary {
            flows: self.final_count,
            evicted: self.correlator.evicted_flows(),
            hooks: &self.final_stats,
        };
        match self.opts.format.summary(&summary) {
            Ok(r) => self.out.send_blocking(r),
            Err(e) => tracing::warn!("rendering summary: {e}"),
        }
        self.out.close();
        let shed = self.out.shed();
        if shed > 0 {
            eprintln!(
                "pathtrace: {shed} output updates were dropped because the output was too slow"
            );
        }
    }
}

fn hash_of(s: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    s.hash(&mut h);
    h.finish()
}

/// The parts of a flow worth reprinting for.
fn shape_of(f: &FlowReport) -> String {
    let hops: Vec<_> = f.hops.iter().map(|h| (h.hook.as_str(), h.dir)).collect();
    let back: Vec<_> = f
        .hops_back
        .iter()
        .map(|h| (h.hook.as_str(), h.dir))
        .collect();
    let nat: Vec<_> = f
        .nat
        .iter()
        .map(|n| {
            (
                n.step.before,
                n.step.after,
                n.step.rule.clone(),
                n.step.conntrack,
            )
        })
        .collect();
    let stops: Vec<_> = f
        .stops
        .iter()
        .map(|s| (s.after_hook.as_str(), s.reason.clone()))
        .collect();
    format!("{hops:?}{back:?}{nat:?}{stops:?}")
}

impl Observer for LiveView {
    fn attached(&mut self, mode: &str, hooks: &[Hook]) {
        if self.opts.format == Format::Text {
            let names: Vec<String> = hooks
                .iter()
                .map(|h| format!("{} {}", h.label(), h.direction))
                .collect();
            self.out.send(format!(
                "tracing {} hooks ({mode}): {}\n",
                hooks.len(),
                names.join(", ")
            ));
        }
    }

    fn events(&mut self, events: &[Event]) {
        for e in events {
            match e {
                Event::Packet(p) => self.correlator.push(p),
                Event::Drop(d) => self.correlator.push_drop(d.clone()),
            }
        }
    }

    fn tick(&mut self, now_ns: u64, stats: &[(Hook, HookStats)]) {
        let ids = self.correlator.advance(now_ns);
        self.print_changed(ids);
        for (h, s) in stats {
            let warned = self.hooks_lost.get(&h.slot).copied().unwrap_or(0);
            if s.lost > 0 && s.lost >= warned.saturating_mul(2).max(1) {
                self.hooks_lost.insert(h.slot, s.lost);
                tracing::warn!(
                    "{} events lost at {} {}: ring buffer full",
                    s.lost,
                    h.label(),
                    h.direction
                );
            }
        }
    }

    fn hooks_changed(&mut self, hooks: &[Hook], target_addrs: Option<&[std::net::IpAddr]>) {
        self.correlator.update_topology(hooks, target_addrs);
    }

    fn note(&mut self, msg: &str) {
        match self.opts.format {
            Format::Text => self.out.send(format!("** {msg}\n")),
            Format::Json => {
                match serde_json::to_string(&serde_json::json!({"type": "note", "message": msg})) {
                    Ok(line) => self.out.send(line + "\n"),
                    Err(e) => tracing::warn!("note: {e}"),
                }
            }
        }
    }

    fn finished(&mut self, why: StopReason, stats: &[(Hook, HookStats)]) {
        self.stop = Some(why);
        self.final_stats = stats.to_vec();
    }
}
