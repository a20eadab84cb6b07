//! Drop reasons: the `pathtrace_drop` program on the `kfree_skb` tracepoint, and the names of the
//! kernel's `enum skb_drop_reason` for the records it sends.
//!
//! The kernel program needs `struct sk_buff` offsets as load-time globals, so the work is split:
//! [`LoadOptions::drop_reasons`](super::LoadOptions) makes [`Tracer::load`] read the kernel's BTF
//! and set `SKB_OFFSETS`; [`Tracer::enable_drop_reasons`] then attaches the program. Missing BTF
//! or a kernel without the tracepoint is not an error: the answer is
//! [`DropSupport::Unavailable`] with the reason, and tracing goes on without drop reasons.

use std::{collections::BTreeMap, sync::Arc};

use aya::{
    maps::{MapData, PerCpuArray},
    programs::{tp_btf::BtfTracePointLink, BtfTracePoint},
    Btf as AyaBtf,
};
use tracer_common::config::{HookCounters, SkbOffsets};

use super::{AttachError, Tracer};
use crate::{
    collect::Event,
    discover::btf::{Btf, DropReasons},
    model::{DropRecord, HookStats},
};

/// The drop program in the kernel object.
pub const DROP_PROGRAM: &str = tracer_common::names::PROGRAM_DROP;
/// The tracepoint it attaches to.
const TRACEPOINT: &str = "kfree_skb";

/// Whether drop reasons are being reported.
#[derive(Clone, Debug)]
pub enum DropSupport {
    /// Attached; the namer turns reason numbers into the kernel's names.
    Enabled(DropNamer),
    /// Not available here, and why (for "drop reasons unavailable: <why>").
    Unavailable(String),
}

/// Names drop reasons from the kernel's BTF (`2` -> `NOT_SPECIFIED`, `NETFILTER_DROP`, ...).
/// Cheap to clone; hand one to whatever turns events into records.
#[derive(Clone, Debug, Default)]
pub struct DropNamer(Arc<BTreeMap<u32, String>>);

impl DropNamer {
    pub(crate) fn new(reasons: DropReasons) -> Self {
        Self(Arc::new(reasons.names))
    }

    /// The reason's name without the `SKB_DROP_REASON_` prefix. `None` for values this kernel's
    /// enum does not list (subsystem reasons, e.g. mac80211's, live in other enums).
    pub(crate) fn name(&self, reason: u32) -> Option<&str> {
        self.0.get(&reason).map(String::as_str)
    }

    /// Fills `reason_name` unless it is already set.
    pub(crate) fn fill(&self, record: &mut DropRecord) {
        if record.reason_name.is_none() {
            record.reason_name = self.name(record.reason).map(str::to_string);
        }
    }

    /// Fills the reason names of the drop records among freshly decoded events.
    pub fn fill_events(&self, events: &mut [Event]) {
        for ev in events {
            if let Event::Drop(record) = ev {
                self.fill(record);
            }
        }
    }
}

/// What the tracer knows and holds for drop reasons.
#[derive(Default)]
pub(super) struct DropState {
    /// `None`: not asked for at load time. `Some(Err(why))`: asked for, not possible here.
    prepared: Option<Result<DropNamer, String>>,
    link: Option<BtfTracePointLink>,
}

impl DropState {
    /// Reads the kernel's BTF when drop reasons are wanted, and gives the value of the
    /// `SKB_OFFSETS` global to load the object with (`SkbOffsets::NONE` when off or unavailable).
    pub(super) fn prepare(wanted: bool) -> (Self, SkbOffsets) {
        if !wanted {
            return (Self::default(), SkbOffsets::NONE);
        }
        let (prepared, offsets) = match from_kernel_btf() {
            Ok((namer, offsets)) => (Ok(namer), offsets),
            Err(why) => {
                tracing::info!("drop reasons unavailable: {why}");
                (Err(why), SkbOffsets::NONE)
            }
        };
        let state = Self {
            prepared: Some(prepared),
            link: None,
        };
        (state, offsets)
    }

    /// Loads the drop program ahead of [`Tracer::enable_drop_reasons`] (which then only attaches
    /// it), when drop reasons were prepared. The error is the reason they are unavailable.
    pub(super) fn preload(&self, prog: &mut aya::programs::Program) -> Result<(), String> {
        if !matches!(self.prepared, Some(Ok(_))) {
            return Ok(());
        }
        // A program of another type is a broken object: `enable_drop_reasons` says so.
        let Ok(prog) = <&mut BtfTracePoint>::try_from(prog) else {
            return Ok(());
        };
        load_tracepoint(prog)
    }

    /// Whether drop reasons were asked for at load time.
    pub(super) fn requested(&self) -> bool {
        self.prepared.is_some()
    }

    /// Drop reasons turned out not to be possible here, for `why`.
    pub(super) fn unavailable(&mut self, why: String) {
        tracing::info!("drop reasons unavailable: {why}");
        self.prepared = Some(Err(why));
    }

    /// Detaches the drop program (closes its link).
    pub(super) fn detach(&mut self) {
        if self.link.take().is_some() {
            tracing::debug!("detached {DROP_PROGRAM}");
        }
    }
}

/// Offsets and names from /sys/kernel/btf/vmlinux, or why they cannot be had.
fn from_kernel_btf() -> Result<(DropNamer, SkbOffsets), String> {
    let btf = Btf::vmlinux().map_err(|e| e.to_string())?;
    let layout = btf.skb_layout().map_err(|e| e.to_string())?;
    let reasons = btf.drop_reasons().map_err(|e| e.to_string())?;
    let offsets = SkbOffsets {
        valid: 1,
        head: layout.head,
        data: layout.data,
        len: layout.len,
        data_len: layout.data_len,
        network_header: layout.network_header,
        protocol: layout.protocol,
        // Without SKB_CONSUMED, 0 (SKB_NOT_DROPPED_YET) is skipped anyway.
        consumed_reason: reasons.consumed.unwrap_or(0),
    };
    Ok((DropNamer::new(reasons), offsets))
}

impl Tracer {
    /// Attaches the drop program (once; later calls answer the same). Needs
    /// `LoadOptions::drop_reasons` at load time. `Err` only for a broken kernel object; a kernel
    /// that cannot do it gives `Ok(DropSupport::Unavailable(why))`.
    pub fn enable_drop_reasons(&mut self) -> Result<DropSupport, AttachError> {
        let namer = match &self.drops.prepared {
            None => {
                return Ok(DropSupport::Unavailable(
                    "not requested when the kernel programs were loaded".into(),
                ))
            }
            Some(Err(why)) => return Ok(DropSupport::Unavailable(why.clone())),
            Some(Ok(namer)) => namer.clone(),
        };
        if self.drops.link.is_some() {
            return Ok(DropSupport::Enabled(namer));
        }
        let prog: &mut BtfTracePoint = self
            .ebpf
            .program_mut(DROP_PROGRAM)
            .ok_or(AttachError::MissingProgram(DROP_PROGRAM))?
            .try_into()
            .map_err(|source| AttachError::Program {
                name: DROP_PROGRAM.to_string(),
                source,
            })?;
        match attach_tracepoint(prog) {
            Ok(link) => {
                tracing::debug!("attached {DROP_PROGRAM} to tp_btf/{TRACEPOINT}");
                self.drops.link = Some(link);
                Ok(DropSupport::Enabled(namer))
            }
            Err(why) => {
                tracing::info!("drop reasons unavailable: {why}");
                Ok(DropSupport::Unavailable(why))
            }
        }
    }

    /// Whether drop reasons were asked for at load time ([`LoadOptions::drop_reasons`](super::LoadOptions)).
    pub(crate) fn drop_reasons_requested(&self) -> bool {
        self.drops.requested()
    }

    /// The kernel's name for a drop reason, once drop reasons were prepared at load time.
    pub fn reason_name(&self, reason: u32) -> Option<String> {
        self.drop_namer()?.name(reason).map(str::to_string)
    }

    /// The namer for the collector side (`None` unless drop reasons were prepared at load time).
    pub(crate) fn drop_namer(&self) -> Option<DropNamer> {
        self.drops.prepared.as_ref()?.as_ref().ok().cloned()
    }

    /// The drop program's counters summed over CPUs: `seen` drops, `filtered` (not IP or not a
    /// traced packet), `emitted`, `lost` (ring buffer full).
    pub fn drop_counters(&self) -> Result<HookStats, AttachError> {
        const NAME: &str = tracer_common::names::MAP_DROP_COUNTERS;
        let map = self.ebpf.map(NAME).ok_or(AttachError::MissingMap(NAME))?;
        let err = |source| AttachError::Map { name: NAME, source };
        let counters: PerCpuArray<&MapData, HookCounters> =
            PerCpuArray::try_from(map).map_err(err)?;
        let mut sum = HookStats::default();
        for c in counters.get(&0, 0).map_err(err)?.iter() {
            sum.seen += c.seen;
            sum.filtered += c.filtered;
            sum.emitted += c.emitted;
            sum.lost += c.lost;
        }
        Ok(sum)
    }
}

/// Loads (once) and attaches the program; the error is the reason for the live view.
fn attach_tracepoint(prog: &mut BtfTracePoint) -> Result<BtfTracePointLink, String> {
    load_tracepoint(prog)?;
    let id = prog
        .attach()
        .map_err(|e| format!("attaching tp_btf/{TRACEPOINT}: {}", error_chain(&e)))?;
    prog.take_link(id)
        .map_err(|e| format!("tp_btf/{TRACEPOINT} link: {e}"))
}

/// Loads (verifies) the program unless it is loaded already.
fn load_tracepoint(prog: &mut BtfTracePoint) -> Result<(), String> {
    if prog.fd().is_ok() {
        return Ok(());
    }
    let btf = AyaBtf::from_sys_fs().map_err(|e| format!("kernel BTF: {e}"))?;
    prog.load(TRACEPOINT, &btf)
        .map_err(|e| format!("loading tp_btf/{TRACEPOINT}: {}", error_chain(&e)))
}

/// An error with its sources, on one line (the verifier log rides in a source).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        out.push_str(": ");
        out.push_str(&s.to_string());
        next = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namer_fills_drop_records_only() {
        let mut reasons = DropReasons::default();
        reasons.names.insert(2, "NOT_SPECIFIED".into());
        reasons.names.insert(12, "NETFILTER_DROP".into());
        let namer = DropNamer::new(reasons);
        let mut events = vec![
            Event::Drop(DropRecord {
                ktime_ns: 1,
                fingerprint: 7,
                reason: 12,
                reason_name: None,
                tuple: None,
                traced: true,
            }),
            Event::Drop(DropRecord {
                ktime_ns: 2,
                fingerprint: 8,
                reason: 999,
                reason_name: None,
                tuple: None,
                traced: true,
            }),
        ];
        namer.fill_events(&mut events);
        let names: Vec<_> = events
            .iter()
            .map(|e| match e {
                Event::Drop(d) => d.reason_name.clone(),
                Event::Packet(_) | Event::Counts(_) => None,
            })
            .collect();
        assert_eq!(names, [Some("NETFILTER_DROP".to_string()), None]);
    }
}
