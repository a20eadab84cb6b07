//! `-w FILE`: an observer that writes every packet event (and drop report) to a pcapng capture while passing all
//! events on to the live view. The file is created before anything is attached, so an
//! unwritable path fails cleanly; a full disk ends the session cleanly with the file valid up to
//! its last complete block.

use std::{net::IpAddr, path::Path, sync::Arc};

use tokio::sync::Notify;

use super::{CaptureError, CaptureMeta, CaptureWriter, HookTime, WriterOptions};
use crate::{
    collect::Event,
    model::{Hook, HookStats, Topology},
    pipeline::session::{Finished, Observer, StopReason},
};

/// Opens the capture for a trace about to start (before anything is attached, so that an
/// unwritable path fails cleanly).
pub fn open(
    path: &Path,
    topology: &Topology,
    snaplen: u16,
    opts: WriterOptions,
) -> anyhow::Result<CaptureWriter> {
    let meta = CaptureMeta::for_this_host(topology.clone(), u32::from(snaplen))?;
    Ok(CaptureWriter::create(path, &meta, &topology.hooks, opts)?)
}

pub struct Recorder<'a> {
    inner: &'a mut dyn Observer,
    writer: Option<CaptureWriter>,
    /// Hooks the capture has an interface for.
    known: Vec<Hook>,
    stop: Arc<Notify>,
    /// The first write error; the session stops on it.
    pub error: Option<CaptureError>,
}

impl<'a> Recorder<'a> {
    pub fn new(inner: &'a mut dyn Observer, writer: CaptureWriter, stop: Arc<Notify>) -> Self {
        Self {
            inner,
            writer: Some(writer),
            known: Vec::new(),
            stop,
            error: None,
        }
    }

    fn failed(&mut self, e: CaptureError) {
        let msg = format!("capture stopped: {e}");
        self.inner.note(&msg);
        self.error = Some(e);
        // The writer is done; end the session so nothing is traced without being recorded.
        if let Some(w) = self.writer.take() {
            if let Err(e) = w.finish(&[]) {
                tracing::debug!("closing the capture after an error: {e}");
            }
        }
        self.stop.notify_one();
    }
}

impl Observer for Recorder<'_> {
    fn attached(&mut self, mode: &str, hooks: &[Hook]) {
        self.known = hooks.to_vec();
        self.inner.attached(mode, hooks);
    }

    fn wants_frames(&self) -> bool {
        // Asked once, before the first event: a capture that fails later ends the session.
        self.writer.is_some() || self.inner.wants_frames()
    }

    fn events(&mut self, events: &[Event]) {
        if let Some(w) = self.writer.as_mut() {
            let mut result = Ok(());
            for e in events {
                result = match e {
                    Event::Packet(p) => w.write_packet(p),
                    Event::Drop(d) => w.write_drop(d),
                    Event::Counts(_) => Ok(()),
                };
                if result.is_err() {
                    break;
                }
            }
            if let Err(e) = result {
                self.failed(e);
            }
        }
        self.inner.events(events);
    }

    fn tick(&mut self, now_ns: u64, stats: &[(Hook, HookStats)]) {
        if let Some(Err(e)) = self.writer.as_mut().map(CaptureWriter::flush) {
            self.failed(e);
        }
        self.inner.tick(now_ns, stats);
    }

    fn finished(&mut self, why: StopReason, end: &Finished) {
        if let Some(w) = self.writer.take() {
            let times: Vec<HookTime> = end
                .stats
                .iter()
                .map(|(h, st)| HookTime {
                    slot: h.slot,
                    direction: h.direction,
                    attached_ns: st.attached_ns,
                    detached_ns: st.detached_ns,
                })
                .collect();
            match w.finish(&times) {
                Ok(summary) => {
                    let files: Vec<String> = summary
                        .files
                        .iter()
                        .map(|f| f.display().to_string())
                        .collect();
                    tracing::info!("wrote {} packets to {}", summary.packets, files.join(", "));
                }
                Err(e) => {
                    self.inner.note(&format!("finishing the capture: {e}"));
                    self.error = Some(e);
                }
            }
        }
        self.inner.finished(why, end);
    }

    fn hooks_changed(&mut self, hooks: &[Hook], target_addrs: Option<&[IpAddr]>) {
        let new: Vec<Hook> = hooks
            .iter()
            .filter(|h| !self.known.contains(h))
            .cloned()
            .collect();
        if let Some(w) = self.writer.as_mut() {
            let mut result = Ok(());
            for h in &new {
                result = w.add_hook(h);
                if result.is_err() {
                    break;
                }
            }
            if let Err(e) = result {
                self.failed(e);
            }
        }
        self.known.extend(new);
        self.inner.hooks_changed(hooks, target_addrs);
    }

    fn note(&mut self, msg: &str) {
        self.inner.note(msg);
    }
}
