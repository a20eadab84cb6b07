//! Reading captures back: [`read_capture`] / [`parse_capture`].
//!
//! Any pcapng 1.x file is accepted: little- or big-endian sections, several sections (rotated
//! files concatenated), unknown blocks and options skipped, a cut last block ignored. pathtrace's
//! own files replay in full (hooks from the topology snapshot); others replay as far as they carry
//! Ethernet frames, with one hook per interface name (direction from `epb_flags`). The parser only
//! slices the input, so what it allocates is bounded by the input's length.

use std::{collections::HashMap, path::Path};

use bytes::Bytes;

use super::{
    block, io_reason, parse_description, Capture, CaptureError, CaptureMeta, FormatError, HookTime,
    SNAPSHOT_PEN, SNAPSHOT_TAG,
};
use crate::model::{Direction, DropRecord, Hook, PacketRecord, Place, Role, Topology};

/// Reads a capture file.
pub fn read_capture(path: &Path) -> Result<Capture, CaptureError> {
    let name = path.display().to_string();
    let data = std::fs::read(path).map_err(|source| CaptureError::Open {
        path: name.clone(),
        reason: io_reason(&source),
        source,
    })?;
    parse(&data).map_err(|error| CaptureError::Format { path: name, error })
}

/// Reads a capture with its rotated continuations (`FILE.1`, `FILE.2`, ..., see
/// [`super::rotated_files`]) when there are, as one capture of several sections.
pub fn read_rotated(path: &Path) -> Result<Capture, CaptureError> {
    let files = super::rotated_files(path).unwrap_or_default();
    if files.len() <= 1 {
        return read_capture(path);
    }
    let mut all = Vec::new();
    for f in &files {
        let bytes = std::fs::read(f).map_err(|source| CaptureError::Open {
            path: f.display().to_string(),
            reason: io_reason(&source),
            source,
        })?;
        all.extend(bytes);
    }
    parse(&all).map_err(|error| CaptureError::Format {
        path: path.display().to_string(),
        error,
    })
}

/// Reads a capture from its bytes (errors name the file `input`). Never panics.
pub fn parse_capture(data: &[u8]) -> Result<Capture, CaptureError> {
    parse(data).map_err(|error| CaptureError::Format {
        path: "input".into(),
        error,
    })
}

#[derive(Clone, Copy)]
enum Endian {
    Little,
    Big,
}

impl Endian {
    fn u16(self, b: &[u8], at: usize) -> Option<u16> {
        let v: [u8; 2] = b.get(at..at.checked_add(2)?)?.try_into().ok()?;
        Some(match self {
            Self::Little => u16::from_le_bytes(v),
            Self::Big => u16::from_be_bytes(v),
        })
    }

    fn u32(self, b: &[u8], at: usize) -> Option<u32> {
        let v: [u8; 4] = b.get(at..at.checked_add(4)?)?.try_into().ok()?;
        Some(match self {
            Self::Little => u32::from_le_bytes(v),
            Self::Big => u32::from_be_bytes(v),
        })
    }
}

/// Options of a block body, until `opt_endofopt` or the first one that does not fit.
fn options(e: Endian, mut b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let code = e.u16(b, 0)?;
        let len = usize::from(e.u16(b, 2)?);
        if code == block::OPT_END {
            return None;
        }
        let value = b.get(4..4 + len)?;
        b = b.get((4 + len.next_multiple_of(4)).min(b.len())..)?;
        Some((code, value))
    })
}

/// Timestamp unit of an interface (`if_tsresol`), and its `if_tsoffset` in seconds.
#[derive(Clone, Copy)]
struct Clock {
    resol: u8,
    offset_s: i64,
}

impl Clock {
    fn to_unix_ns(self, ts: u64) -> i128 {
        let ts = u128::from(ts);
        let exp = u32::from(self.resol & 0x7f);
        let ns = if self.resol & 0x80 != 0 {
            (ts * 1_000_000_000) >> exp
        } else if exp <= 9 {
            ts * 10u128.pow(9 - exp)
        } else {
            10u128.checked_pow(exp - 9).map_or(0, |d| ts / d)
        };
        ns as i128 + i128::from(self.offset_s) * 1_000_000_000
    }
}

struct Iface {
    /// `None` when no slot was left for it.
    hook: Option<Hook>,
    ethernet: bool,
    /// pathtrace's drops interface: its records are drop reports.
    drops: bool,
    clock: Clock,
}

struct Reader {
    cap: Capture,
    endian: Endian,
    ifaces: Vec<Iface>,
    /// `boot_to_unix_ns` of the current section's snapshot.
    offset: Option<i64>,
    /// Hooks the IDBs describe, and slots given to interfaces pathtrace did not describe.
    idb_hooks: Vec<Hook>,
    slots_by_name: HashMap<String, u8>,
    unknown_iface: usize,
    not_ip: usize,
    bad_drops: usize,
}

fn parse(data: &[u8]) -> Result<Capture, FormatError> {
    if data.is_empty() {
        return Err(FormatError::Empty);
    }
    let magic = block::SHB.to_le_bytes();
    if !data.starts_with(&magic[..data.len().min(4)]) {
        return Err(FormatError::NotPcapng(looks_like(data)));
    }
    let mut r = Reader {
        cap: Capture::default(),
        endian: Endian::Little,
        ifaces: Vec::new(),
        offset: None,
        idb_hooks: Vec::new(),
        slots_by_name: HashMap::new(),
        unknown_iface: 0,
        not_ip: 0,
        bad_drops: 0,
    };
    let mut pos = 0;
    while pos < data.len() {
        let rest = &data[pos..];
        let is_shb = rest.starts_with(&magic);
        if is_shb || pos == 0 {
            r.endian = match rest.get(8..12) {
                Some([0x4d, 0x3c, 0x2b, 0x1a]) => Endian::Little,
                Some([0x1a, 0x2b, 0x3c, 0x4d]) => Endian::Big,
                Some(_) => return Err(FormatError::ByteOrder(pos)),
                None if pos == 0 => return Err(FormatError::TruncatedHeader(data.len())),
                None => {
                    r.cut_tail(pos);
                    break;
                }
            };
        }
        let Some(len) = r.endian.u32(rest, 4) else {
            r.cut_tail(pos);
            break;
        };
        if len < block::BLOCK_OVERHEAD as u32 || len % 4 != 0 {
            return Err(FormatError::BlockLength { offset: pos, len });
        }
        let Some(blk) = rest.get(..len as usize) else {
            if pos == 0 {
                return Err(FormatError::TruncatedHeader(data.len()));
            }
            r.cut_tail(pos);
            break;
        };
        let trailer = r.endian.u32(blk, blk.len() - 4).unwrap_or(0);
        if trailer != len {
            return Err(FormatError::BlockTrailer {
                offset: pos,
                len,
                trailer,
            });
        }
        let body = &blk[8..blk.len() - 4];
        match r.endian.u32(blk, 0).unwrap_or(0) {
            block::SHB => r.section(body, pos)?,
            block::IDB => r.interface(body, pos)?,
            block::EPB => r.packet(body, pos)?,
            block::ISB => r.statistics(body),
            _ => {}
        }
        pos += blk.len();
    }
    Ok(r.finish())
}

impl Reader {
    fn cut_tail(&mut self, pos: usize) {
        self.cap.truncated_tail = true;
        self.cap.warnings.push(format!(
            "the capture ends inside a block at offset {pos} (interrupted while writing); that block was ignored"
        ));
    }

    fn section(&mut self, body: &[u8], offset: usize) -> Result<(), FormatError> {
        let e = self.endian;
        let malformed = FormatError::Malformed {
            offset,
            what: "section header block",
        };
        let (Some(major), Some(minor)) = (e.u16(body, 4), e.u16(body, 6)) else {
            return Err(malformed);
        };
        if major != 1 {
            return Err(FormatError::Version { major, minor });
        }
        let opts = body.get(16..).ok_or(malformed)?;
        self.cap.sections += 1;
        self.ifaces.clear();
        self.offset = None;
        let mut chunks: Vec<(u16, u16, &[u8])> = Vec::new();
        for (code, value) in options(e, opts) {
            if code == block::SHB_USERAPPL && self.cap.application.is_none() {
                self.cap.application = Some(String::from_utf8_lossy(value).into_owned());
            }
            if block::OPT_CUSTOM.contains(&code) && e.u32(value, 0) == Some(SNAPSHOT_PEN) {
                let Some(v) = value[4..].strip_prefix(SNAPSHOT_TAG.as_slice()) else {
                    continue;
                };
                if let (Some(i), Some(n), Some(part)) = (e.u16(v, 0), e.u16(v, 2), v.get(4..)) {
                    chunks.push((i, n, part));
                }
            }
        }
        if !chunks.is_empty() {
            match join_chunks(&chunks).and_then(|j| serde_json::from_slice(&j).map_err(|e| e.to_string())) {
                Ok(meta) => self.snapshot(meta),
                Err(why) => self.cap.warnings.push(format!(
                    "the topology snapshot of section {} is unreadable ({why}); hooks come from the interface names",
                    self.cap.sections
                )),
            }
        }
        Ok(())
    }

    fn snapshot(&mut self, meta: CaptureMeta) {
        self.offset = Some(meta.boot_to_unix_ns);
        match &self.cap.meta {
            None => {
                self.cap.topology = meta.topology.clone();
                self.cap.meta = Some(meta);
            }
            Some(_) => merge_hooks(&mut self.cap.topology, &meta.topology.hooks),
        }
    }

    fn interface(&mut self, body: &[u8], offset: usize) -> Result<(), FormatError> {
        let e = self.endian;
        let malformed = FormatError::Malformed {
            offset,
            what: "interface description block",
        };
        let linktype = e.u16(body, 0).ok_or(malformed.clone())?;
        let opts = body.get(8..).ok_or(malformed)?;
        let (mut name, mut desc) = (None, None);
        let mut clock = Clock {
            resol: 6,
            offset_s: 0,
        };
        for (code, value) in options(e, opts) {
            match code {
                block::IF_NAME => name = Some(String::from_utf8_lossy(value).into_owned()),
                block::IF_DESCRIPTION => desc = Some(String::from_utf8_lossy(value).into_owned()),
                block::IF_TSRESOL => clock.resol = value.first().copied().unwrap_or(6),
                block::IF_TSOFFSET => {
                    if let Ok(v) = <[u8; 8]>::try_from(value) {
                        clock.offset_s = match e {
                            Endian::Little => i64::from_le_bytes(v),
                            Endian::Big => i64::from_be_bytes(v),
                        };
                    }
                }
                _ => {}
            }
        }
        let name = name.unwrap_or_else(|| format!("if{}", self.ifaces.len()));
        if linktype == block::LINKTYPE_USER0 && name == block::DROPS_IFNAME {
            self.ifaces.push(Iface {
                hook: None,
                ethernet: false,
                drops: true,
                clock,
            });
            return Ok(());
        }
        let hook = match desc.as_deref().and_then(|d| parse_description(&name, d)) {
            Some(h) => Some(h),
            None => self.foreign_hook(&name),
        };
        if let Some(h) = &hook {
            merge_hooks_vec(&mut self.idb_hooks, std::slice::from_ref(h));
        }
        self.ifaces.push(Iface {
            hook,
            ethernet: linktype == block::LINKTYPE_ETHERNET,
            drops: false,
            clock,
        });
        Ok(())
    }

    /// A hook for an interface pathtrace did not describe: `ns:ifname` if the name has a colon.
    fn foreign_hook(&mut self, name: &str) -> Option<Hook> {
        let next = self.slots_by_name.len();
        let slot = match self.slots_by_name.get(name) {
            Some(&s) => s,
            None => {
                let s = u8::try_from(next).ok()?;
                self.slots_by_name.insert(name.to_string(), s);
                s
            }
        };
        let (ns_label, ifname) = name.split_once(':').unwrap_or(("capture", name));
        Some(Hook {
            slot,
            ns_label: ns_label.to_string(),
            ifname: ifname.to_string(),
            ifindex: 0,
            direction: Direction::Ingress,
            place: Place::Uplink,
            role: Role::All,
        })
    }

    /// An interface statistics block: its hook's attach time (`isb_starttime`) and when
    /// detaching began (`isb_endtime`). One that names no hook is skipped.
    fn statistics(&mut self, body: &[u8]) {
        let e = self.endian;
        let Some(iface) = e.u32(body, 0).and_then(|id| self.ifaces.get(id as usize)) else {
            return;
        };
        let Some(hook) = &iface.hook else {
            return;
        };
        let offset_ns = self
            .offset
            .or(self.cap.meta.as_ref().map(|m| m.boot_to_unix_ns))
            .unwrap_or(0);
        let ktime = |v: &[u8]| {
            let ts = u64::from(e.u32(v, 0)?) << 32 | u64::from(e.u32(v, 4)?);
            let unix = iface.clock.to_unix_ns(ts);
            Some((unix - i128::from(offset_ns)).clamp(0, i128::from(u64::MAX)) as u64)
        };
        let mut t = HookTime {
            slot: hook.slot,
            direction: hook.direction,
            attached_ns: 0,
            detached_ns: 0,
        };
        for (code, value) in options(e, body.get(12..).unwrap_or(&[])) {
            match code {
                block::ISB_STARTTIME => t.attached_ns = ktime(value).unwrap_or(0),
                block::ISB_ENDTIME => t.detached_ns = ktime(value).unwrap_or(0),
                _ => {}
            }
        }
        let key = (t.slot, t.direction);
        self.cap.hook_times.retain(|h| (h.slot, h.direction) != key);
        self.cap.hook_times.push(t);
    }

    fn packet(&mut self, body: &[u8], offset: usize) -> Result<(), FormatError> {
        let e = self.endian;
        let malformed = FormatError::Malformed {
            offset,
            what: "enhanced packet block",
        };
        let (Some(id), Some(hi), Some(lo), Some(caplen), Some(origlen)) = (
            e.u32(body, 0),
            e.u32(body, 4),
            e.u32(body, 8),
            e.u32(body, 12),
            e.u32(body, 16),
        ) else {
            return Err(malformed);
        };
        let caplen = caplen as usize;
        let frame = body.get(20..20 + caplen).ok_or(malformed)?;
        let opts = body
            .get((20 + caplen.next_multiple_of(4)).min(body.len())..)
            .unwrap_or(&[]);
        let Some(iface) = self.ifaces.get(id as usize) else {
            self.unknown_iface += 1;
            return Ok(());
        };
        if iface.drops {
            match serde_json::from_slice::<DropRecord>(frame) {
                Ok(d) => self.cap.drops.push(d),
                Err(_) => self.bad_drops += 1,
            }
            return Ok(());
        }
        let (Some(hook), true) = (&iface.hook, iface.ethernet) else {
            self.not_ip += 1;
            return Ok(());
        };
        let flags = options(e, opts)
            .find(|(code, _)| *code == block::EPB_FLAGS)
            .and_then(|(_, v)| e.u32(v, 0))
            .unwrap_or(0);
        let direction = match flags & 3 {
            block::EPB_INBOUND => Direction::Ingress,
            block::EPB_OUTBOUND => Direction::Egress,
            _ => hook.direction,
        };
        let unix_ns = iface.clock.to_unix_ns(u64::from(hi) << 32 | u64::from(lo));
        let offset_ns = self
            .offset
            .or(self.cap.meta.as_ref().map(|m| m.boot_to_unix_ns));
        let ktime =
            (unix_ns - i128::from(offset_ns.unwrap_or(0))).clamp(0, i128::from(u64::MAX)) as u64;
        let data = Bytes::copy_from_slice(frame);
        match PacketRecord::from_frame(hook.slot, direction, hook.ifindex, ktime, origlen, data) {
            Some(rec) => self.cap.records.push(rec),
            None => self.not_ip += 1,
        }
        Ok(())
    }

    fn finish(mut self) -> Capture {
        let idb_hooks = std::mem::take(&mut self.idb_hooks);
        merge_hooks(&mut self.cap.topology, &idb_hooks);
        if self.cap.meta.is_none() {
            let t = &self.cap.topology;
            self.cap.topology.target = t
                .hooks
                .iter()
                .find(|h| h.place == Place::Container)
                .or_else(|| t.hooks.iter().find(|h| h.ns_label != "host"))
                .map(|h| h.ns_label.clone())
                .unwrap_or_default();
        }
        if self.unknown_iface > 0 {
            self.cap.warnings.push(format!(
                "{} packets refer to an interface no interface block describes; skipped",
                self.unknown_iface
            ));
        }
        if self.bad_drops > 0 {
            self.cap.warnings.push(format!(
                "{} drop reports did not decode (written by another version?); skipped",
                self.bad_drops
            ));
        }
        if self.not_ip > 0 {
            self.cap.warnings.push(format!(
                "{} packets are not IP over Ethernet; skipped",
                self.not_ip
            ));
        }
        self.cap.skipped = self.unknown_iface + self.not_ip;
        self.cap
    }
}

/// Joins snapshot chunks `(index, count, data)`; all of `0..count` must be there once.
fn join_chunks(chunks: &[(u16, u16, &[u8])]) -> Result<Vec<u8>, String> {
    let count = chunks[0].1;
    let mut out = Vec::new();
    for i in 0..count {
        let mut parts = chunks.iter().filter(|c| c.0 == i && c.1 == count);
        match (parts.next(), parts.next()) {
            (Some(c), None) => out.extend_from_slice(c.2),
            _ => return Err(format!("piece {} of {count} is missing or repeated", i + 1)),
        }
    }
    if chunks.len() != usize::from(count) {
        return Err("its pieces disagree on their count".into());
    }
    Ok(out)
}

/// Adds the hooks whose slot the topology does not have yet.
fn merge_hooks(topology: &mut Topology, hooks: &[Hook]) {
    merge_hooks_vec(&mut topology.hooks, hooks);
}

fn merge_hooks_vec(into: &mut Vec<Hook>, hooks: &[Hook]) {
    for h in hooks {
        if !into.iter().any(|x| x.slot == h.slot) {
            into.push(h.clone());
        }
    }
}

/// What a file that is not pcapng seems to be, for the error message.
fn looks_like(data: &[u8]) -> &'static str {
    let head = &data[..data.len().min(4)];
    match head {
        [0xd4, 0xc3, 0xb2, 0xa1]
        | [0xa1, 0xb2, 0xc3, 0xd4]
        | [0x4d, 0x3c, 0xb2, 0xa1]
        | [0xa1, 0xb2, 0x3c, 0x4d] => {
            "a classic pcap file, which has no hook names; pathtrace writes pcapng with -w"
        }
        [0x1f, 0x8b, ..] => "a gzip-compressed file; decompress it first",
        [0x28, 0xb5, 0x2f, 0xfd] => "a zstd-compressed file; decompress it first",
        _ => {
            let sample = &data[..data.len().min(512)];
            // A sample cut inside a multi-byte character is still text.
            let utf8 =
                std::str::from_utf8(sample).map_or_else(|e| e.error_len().is_none(), |_| true);
            let text = utf8 && sample.iter().all(|&b| b >= 0x20 || b"\t\r\n".contains(&b));
            match sample.iter().find(|b| !b.is_ascii_whitespace()) {
                Some(b'{') | Some(b'[') if text => "JSON text (pathtrace --json output?)",
                _ if text => "text",
                _ => "unrecognised binary data",
            }
        }
    }
}
