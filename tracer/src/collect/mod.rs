//! Collect: drain the kernel's ring buffer into decoded records without ever blocking on output.

use std::os::fd::AsRawFd;

use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;
use tracer_common::event::{EventHeader, KIND_DROP, KIND_PACKET, KIND_PACKET_HEAD};

use crate::model::{CountRecord, DecodeError, DropRecord, PacketRecord};

/// One decoded event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Packet(PacketRecord),
    Drop(DropRecord),
    /// Aggregate mode: counts drained from the kernel's flow map.
    Counts(CountRecord),
}

/// Decodes one raw ring-buffer record of any kind, captured bytes included.
pub fn decode(raw: &[u8]) -> Result<Event, DecodeError> {
    decode_with(raw, true)
}

/// Decodes one raw ring-buffer record of any kind; a packet's captured bytes are copied only
/// when `frames` is set (see [`PacketRecord::decode_with`]).
pub fn decode_with(raw: &[u8], frames: bool) -> Result<Event, DecodeError> {
    if raw.len() < size_of::<EventHeader>() {
        return Err(DecodeError::Short(raw.len()));
    }
    let kind = u16::from_ne_bytes([raw[0], raw[1]]);
    match kind {
        KIND_PACKET => PacketRecord::decode_with(raw, frames).map(Event::Packet),
        KIND_PACKET_HEAD => PacketRecord::decode_head(raw).map(Event::Packet),
        KIND_DROP => DropRecord::decode(raw).map(Event::Drop),
        other => Err(DecodeError::UnknownKind(other)),
    }
}

/// The async reader of the `EVENTS` ring buffer.
pub(crate) struct Collector {
    ring: AsyncFd<RingFd>,
    decode_errors: u64,
    /// Copy each packet's captured bytes (only when a capture is written).
    frames: bool,
}

/// `RingBuf` with the `AsRawFd` tokio needs.
struct RingFd(RingBuf<MapData>);

impl AsRawFd for RingFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_raw_fd()
    }
}

impl Collector {
    /// Must be called inside the tokio runtime.
    pub(crate) fn new(ring: RingBuf<MapData>) -> std::io::Result<Self> {
        // SAFETY: the ring buffer owns its map fd, which stays open and unchanged while the
        // AsyncFd owns it.
        let ring =
            unsafe { AsyncFd::register_with_interest(RingFd(ring), tokio::io::Interest::READABLE) }
                .map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(Self {
            ring,
            decode_errors: 0,
            frames: true,
        })
    }

    /// Whether packet events keep their captured bytes ([`PacketRecord::data`]); on by default.
    /// Off, a packet costs no allocation: only a capture writer reads the bytes.
    pub(crate) fn keep_frames(&mut self, frames: bool) {
        self.frames = frames;
    }

    /// Waits until events are available, then appends up to `max` of them to `out`.
    pub(crate) async fn read(&mut self, out: &mut Vec<Event>, max: usize) -> std::io::Result<()> {
        loop {
            let mut guard = self.ring.readable_mut().await?;
            let ring = &mut guard.get_inner_mut().0;
            let mut n = 0;
            while n < max {
                let Some(item) = ring.next() else {
                    break;
                };
                match decode_with(&item, self.frames) {
                    Ok(ev) => out.push(ev),
                    Err(e) => {
                        self.decode_errors += 1;
                        tracing::debug!("undecodable event: {e}");
                    }
                }
                n += 1;
            }
            if n < max {
                guard.clear_ready();
            }
            if n > 0 {
                return Ok(());
            }
        }
    }

    /// Takes up to `max` events that are already there, without waiting.
    pub(crate) fn drain_some(&mut self, out: &mut Vec<Event>, max: usize) {
        let ring = &mut self.ring.get_mut().0;
        for _ in 0..max {
            let Some(item) = ring.next() else {
                break;
            };
            match decode_with(&item, self.frames) {
                Ok(ev) => out.push(ev),
                Err(_) => self.decode_errors += 1,
            }
        }
    }

    /// Drains whatever is left without waiting (at the end of a trace).
    pub(crate) fn drain(&mut self, out: &mut Vec<Event>) {
        let ring = &mut self.ring.get_mut().0;
        while let Some(item) = ring.next() {
            match decode_with(&item, self.frames) {
                Ok(ev) => out.push(ev),
                Err(_) => self.decode_errors += 1,
            }
        }
    }

    pub(crate) fn decode_errors(&self) -> u64 {
        self.decode_errors
    }
}
