//! [`CaptureWriter`]: packets in, pcapng files out (see the module docs for the layout).
//!
//! Blocks are built whole in memory and queued; [`CaptureWriter::flush`] (called by the writer
//! itself every [`FLUSH_INTERVAL`] or [`FLUSH_BYTES`], and by the caller when idle) writes the
//! queue. A process killed at any moment therefore leaves complete blocks followed by at most one
//! cut block, which the reader ignores. When a write fails half-way (disk full), the file is cut
//! back to the last complete block.

use std::{
    collections::{HashMap, VecDeque},
    fs::{File, OpenOptions},
    io::{self, Seek, SeekFrom, Write},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use super::{
    block::{self, Block},
    describe, io_reason, rotation_path, CaptureError, CaptureMeta, HookTime, SNAPSHOT_PEN,
    SNAPSHOT_TAG,
};
use crate::model::{Direction, DropRecord, Hook, PacketRecord};

/// Queued blocks are written at least this often (when packets keep coming).
pub(crate) const FLUSH_INTERVAL: Duration = Duration::from_millis(100);
/// … or when this many bytes are queued.
pub(crate) const FLUSH_BYTES: usize = 64 * 1024;

/// Rotation limits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriterOptions {
    /// Start a new file when this one would grow past this many bytes (a file always holds at
    /// least one packet, so a tiny limit means one packet per file).
    pub max_size: Option<u64>,
    /// Files kept at most, the current one included; older ones are deleted. At least 1.
    pub max_files: Option<u32>,
}

/// What a finished capture wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteSummary {
    /// The files that remain, oldest first.
    pub files: Vec<PathBuf>,
    /// Packets written over all files (including those of deleted files).
    pub packets: u64,
}

/// Writes a pcapng capture, one interface per hook, rotating files when asked.
pub struct CaptureWriter {
    base: PathBuf,
    opts: WriterOptions,
    meta: CaptureMeta,
    /// Current hook of each slot, in the order of the IDBs a new file starts with.
    hooks: Vec<Hook>,
    file: File,
    /// Index of the current file (see [`rotation_path`]); files kept, oldest first.
    index: u32,
    files: VecDeque<PathBuf>,
    /// Slot -> interface id in the current file.
    iface: HashMap<u8, u32>,
    next_iface: u32,
    /// Complete blocks not yet written, and the end offset of each in `queue`.
    queue: Vec<u8>,
    ends: Vec<usize>,
    /// Bytes of the current file on disk (always a block boundary).
    written: u64,
    packets_in_file: u64,
    packets: u64,
    last_flush: Instant,
    stopped: bool,
    /// The drops interface's id in the current file, once it has one (added at the first drop).
    drops_iface: Option<u32>,
}

impl CaptureWriter {
    /// Creates `path` (mode 0600, truncated if it exists) and writes the section header, the
    /// topology snapshot and one IDB per hook.
    pub fn create(
        path: &Path,
        meta: &CaptureMeta,
        hooks: &[Hook],
        opts: WriterOptions,
    ) -> Result<Self, CaptureError> {
        if opts.max_files == Some(0) {
            return Err(CaptureError::Options("max_files must be at least 1"));
        }
        let file = create_file(path)?;
        let mut w = Self {
            base: path.to_path_buf(),
            opts,
            meta: meta.clone(),
            hooks: Vec::new(),
            file,
            index: 0,
            files: VecDeque::from([path.to_path_buf()]),
            iface: HashMap::new(),
            next_iface: 0,
            queue: Vec::new(),
            ends: Vec::new(),
            written: 0,
            packets_in_file: 0,
            packets: 0,
            last_flush: Instant::now(),
            stopped: false,
            drops_iface: None,
        };
        for hook in hooks {
            w.remember(hook);
        }
        w.start_file()?;
        Ok(w)
    }

    /// Adds a hook attached after the capture started, or one attached again (same slot, e.g.
    /// after a container restart): a new IDB, which the slot's packets use from now on.
    pub(crate) fn add_hook(&mut self, hook: &Hook) -> Result<(), CaptureError> {
        self.check_running()?;
        self.remember(hook);
        self.queue_idb(hook);
        Ok(())
    }

    /// Queues one packet; writes the queue when it is due. The slot must have a hook.
    pub fn write_packet(&mut self, rec: &PacketRecord) -> Result<(), CaptureError> {
        self.check_running()?;
        let mut epb = self.epb(rec)?;
        if let Some(max) = self.opts.max_size {
            let size = self.written + (self.queue.len() + epb.len()) as u64;
            if self.packets_in_file > 0 && size > max {
                self.rotate()?;
                // Interface ids are per file.
                epb = self.epb(rec)?;
            }
        }
        self.push(epb);
        self.packets_in_file += 1;
        self.packets += 1;
        if self.queue.len() >= FLUSH_BYTES || self.last_flush.elapsed() >= FLUSH_INTERVAL {
            self.flush()?;
        }
        Ok(())
    }

    /// Queues a kernel drop report: a record on the drops interface (added to the file at its
    /// first drop), whose bytes are the report as JSON and whose comment says it in words.
    pub fn write_drop(&mut self, drop: &DropRecord) -> Result<(), CaptureError> {
        self.check_running()?;
        let iface = match self.drops_iface {
            Some(id) => id,
            None => {
                let id = self.next_iface;
                self.push(drops_idb_block());
                self.next_iface += 1;
                self.drops_iface = Some(id);
                id
            }
        };
        let json = serde_json::to_vec(drop)?;
        self.push(drop_epb_block(
            drop,
            &json,
            iface,
            self.meta.boot_to_unix_ns,
        ));
        Ok(())
    }

    /// Writes every queued block. Call it when no packet came for a while (≈ every 100 ms).
    pub(crate) fn flush(&mut self) -> Result<(), CaptureError> {
        self.last_flush = Instant::now();
        if self.queue.is_empty() {
            return Ok(());
        }
        let result = write_queue(&mut self.file, self.written, &self.queue, &self.ends);
        self.queue.clear();
        self.ends.clear();
        match result {
            Ok(len) => {
                self.written = len;
                Ok(())
            }
            Err((len, err)) => {
                self.written = len;
                self.stopped = true;
                let path = self.current_path();
                if is_disk_full(&err) {
                    Err(CaptureError::DiskFull { path })
                } else {
                    Err(CaptureError::Write { path, source: err })
                }
            }
        }
    }

    /// Writes what is queued and `times` (of the trace's hooks, see [`HookTime`]), syncs the
    /// file and says what was written.
    pub fn finish(mut self, times: &[HookTime]) -> Result<WriteSummary, CaptureError> {
        if !self.stopped {
            for t in times {
                // Only hooks of this file's interfaces (the last file's, when rotated).
                if let Some(&iface) = self.iface.get(&t.slot) {
                    self.push(isb_block(iface, t, self.meta.boot_to_unix_ns));
                }
            }
            self.flush()?;
        }
        let path = self.current_path();
        match self.file.sync_data() {
            // A pipe (`-w -`) or another special file: nothing to sync.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
            other => other.map_err(|source| CaptureError::Write { path, source })?,
        }
        Ok(WriteSummary {
            files: self.files.iter().cloned().collect(),
            packets: self.packets,
        })
    }

    fn check_running(&self) -> Result<(), CaptureError> {
        if self.stopped {
            return Err(CaptureError::Stopped {
                path: self.current_path(),
            });
        }
        Ok(())
    }

    fn current_path(&self) -> String {
        rotation_path(&self.base, self.index).display().to_string()
    }

    fn remember(&mut self, hook: &Hook) {
        match self.hooks.iter_mut().find(|h| h.slot == hook.slot) {
            Some(h) => *h = hook.clone(),
            None => self.hooks.push(hook.clone()),
        }
    }

    fn push(&mut self, block: Vec<u8>) {
        self.queue.extend_from_slice(&block);
        self.ends.push(self.queue.len());
    }

    /// Queues an IDB for `hook`; its slot's packets use it from now on.
    fn queue_idb(&mut self, hook: &Hook) {
        self.push(idb_block(hook, self.meta.snaplen));
        self.iface.insert(hook.slot, self.next_iface);
        self.next_iface += 1;
    }

    fn epb(&self, rec: &PacketRecord) -> Result<Vec<u8>, CaptureError> {
        let id = self
            .iface
            .get(&rec.slot)
            .copied()
            .ok_or(CaptureError::UnknownSlot(rec.slot))?;
        let label = self
            .hooks
            .iter()
            .find(|h| h.slot == rec.slot)
            .map(Hook::label);
        Ok(epb_block(
            rec,
            id,
            self.meta.boot_to_unix_ns,
            label.as_deref().unwrap_or("?"),
        ))
    }

    /// Queues the SHB (with the snapshot) and one IDB per current hook.
    fn start_file(&mut self) -> Result<(), CaptureError> {
        let mut meta = self.meta.clone();
        meta.topology.hooks = self.hooks.clone();
        let shb = shb_block(&meta)?;
        self.push(shb);
        self.iface.clear();
        self.next_iface = 0;
        self.drops_iface = None;
        for hook in self.hooks.clone() {
            self.queue_idb(&hook);
        }
        self.flush()
    }

    fn rotate(&mut self) -> Result<(), CaptureError> {
        self.flush()?;
        let next = rotation_path(&self.base, self.index + 1);
        self.file = create_file(&next)?;
        self.index += 1;
        self.files.push_back(next);
        self.written = 0;
        self.packets_in_file = 0;
        let max = self.opts.max_files.map_or(usize::MAX, |m| m as usize);
        while self.files.len() > max {
            let Some(old) = self.files.pop_front() else {
                break;
            };
            match std::fs::remove_file(&old) {
                Ok(()) => {}
                // Already gone (removed by the user): nothing to keep bounded.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(CaptureError::Rotate {
                        path: old.display().to_string(),
                        source,
                    })
                }
            }
        }
        self.start_file()
    }
}

impl Drop for CaptureWriter {
    fn drop(&mut self) {
        if !self.stopped && !self.queue.is_empty() {
            // Dropped without `finish` (an error path of the caller): keep what we can. An error
            // here has no one to go to; the file stays valid up to its last complete block.
            self.flush().ok();
        }
    }
}

/// Creates `path`; `-` is stdout (a duplicate of its descriptor: `-w - | tshark -r -`).
fn create_file(path: &Path) -> Result<File, CaptureError> {
    if path == Path::new("-") {
        use std::os::fd::AsFd as _;
        return io::stdout()
            .as_fd()
            .try_clone_to_owned()
            .map(File::from)
            .map_err(|source| CaptureError::Create {
                path: "stdout".to_string(),
                reason: io_reason(&source),
                source,
            });
    }
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| CaptureError::Create {
            path: path.display().to_string(),
            reason: io_reason(&source),
            source,
        })
}

/// Where the queue goes: a file, or a fake one in tests.
pub(super) trait Sink: Write {
    /// Cuts the sink to `len` bytes and continues writing there.
    fn cut(&mut self, len: u64) -> io::Result<()>;
}

impl Sink for File {
    fn cut(&mut self, len: u64) -> io::Result<()> {
        self.set_len(len)?;
        self.seek(SeekFrom::Start(len)).map(drop)
    }
}

/// Writes the queued blocks (`ends`: the end of each in `queue`) after `written` bytes and
/// returns the new length. On failure, cuts a partly written block and returns the length kept
/// (the end of the last complete block) with the error.
pub(super) fn write_queue(
    sink: &mut impl Sink,
    written: u64,
    queue: &[u8],
    ends: &[usize],
) -> Result<u64, (u64, io::Error)> {
    let mut done = 0;
    let err = loop {
        if done == queue.len() {
            return Ok(written + done as u64);
        }
        match sink.write(&queue[done..]) {
            Ok(0) => break io::Error::from(io::ErrorKind::WriteZero),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => break e,
        }
    };
    let keep = ends
        .iter()
        .rev()
        .find(|&&e| e <= done)
        .copied()
        .unwrap_or(0);
    let len = written + keep as u64;
    // If cutting fails too, the file ends with a partial block, which readers ignore; the write
    // error is the one the user must see.
    if done > keep && sink.cut(len).is_err() {
        tracing::debug!("could not cut the capture back to {len} bytes");
    }
    Err((len, err))
}

fn is_disk_full(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::StorageFull
        || matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

fn shb_block(meta: &CaptureMeta) -> Result<Vec<u8>, CaptureError> {
    let json = serde_json::to_vec(meta)?;
    let mut b = Block::new(block::SHB);
    b.u32(block::BYTE_ORDER_MAGIC).u16(1).u16(0).u64(u64::MAX); // version 1.0, length unknown
    b.text(block::SHB_HARDWARE, &meta.hostname)
        .text(block::SHB_OS, &meta.kernel_release)
        .text(
            block::SHB_USERAPPL,
            concat!("pathtrace ", env!("CARGO_PKG_VERSION")),
        );
    let chunk = block::OPTION_MAX - 4 - SNAPSHOT_TAG.len() - 4;
    let count = u16::try_from(json.len().div_ceil(chunk).max(1))
        .map_err(|_| CaptureError::Options("topology snapshot too large"))?;
    for (i, part) in json.chunks(chunk).enumerate() {
        let mut value = Vec::with_capacity(part.len() + 28);
        value.extend_from_slice(&SNAPSHOT_PEN.to_le_bytes());
        value.extend_from_slice(SNAPSHOT_TAG);
        value.extend_from_slice(&(i as u16).to_le_bytes());
        value.extend_from_slice(&count.to_le_bytes());
        value.extend_from_slice(part);
        b.option(block::OPT_CUSTOM_BINARY_COPY, &value);
    }
    Ok(b.finish())
}

/// Interface `iface`'s statistics: when its hook was attached and detaching began, as packet
/// timestamps are written (nanoseconds since the Unix epoch), taken at the detach time.
fn isb_block(iface: u32, t: &HookTime, boot_to_unix_ns: i64) -> Vec<u8> {
    let unix = |ktime: u64| {
        (i128::from(ktime) + i128::from(boot_to_unix_ns)).clamp(0, i128::from(u64::MAX)) as u64
    };
    let split = |ts: u64| [((ts >> 32) as u32).to_le_bytes(), (ts as u32).to_le_bytes()].concat();
    let now = unix(t.detached_ns.max(t.attached_ns));
    let mut b = Block::new(block::ISB);
    b.u32(iface).u32((now >> 32) as u32).u32(now as u32);
    if t.attached_ns != 0 {
        b.option(block::ISB_STARTTIME, &split(unix(t.attached_ns)));
    }
    if t.detached_ns != 0 {
        b.option(block::ISB_ENDTIME, &split(unix(t.detached_ns)));
    }
    b.finish()
}

fn idb_block(hook: &Hook, snaplen: u32) -> Vec<u8> {
    let mut b = Block::new(block::IDB);
    b.u16(block::LINKTYPE_ETHERNET).u16(0).u32(snaplen);
    b.text(block::IF_NAME, &hook.label())
        .text(block::IF_DESCRIPTION, &describe(hook))
        .option(block::IF_TSRESOL, &[9]);
    b.finish()
}

/// The drops interface: link type USER0 (Wireshark shows its records as data, with their
/// comments), no snap length.
fn drops_idb_block() -> Vec<u8> {
    let mut b = Block::new(block::IDB);
    b.u16(block::LINKTYPE_USER0).u16(0).u32(0);
    b.text(block::IF_NAME, block::DROPS_IFNAME)
        .text(
            block::IF_DESCRIPTION,
            "pathtrace: the kernel's drop reports (kfree_skb with a reason), one JSON record each",
        )
        .option(block::IF_TSRESOL, &[9]);
    b.finish()
}

/// `kernel drop NETFILTER_DROP fp=...`: one drop report.
fn drop_epb_block(d: &DropRecord, json: &[u8], iface: u32, boot_to_unix_ns: i64) -> Vec<u8> {
    let ts = (i128::from(d.ktime_ns) + i128::from(boot_to_unix_ns)).clamp(0, i128::from(u64::MAX))
        as u64;
    let reason = d
        .reason_name
        .clone()
        .unwrap_or_else(|| format!("reason {}", d.reason));
    let mut comment = format!("kernel drop {reason} fp={:016x}", d.fingerprint);
    if let Some((proto, src, dst)) = &d.tuple {
        comment.push_str(&format!(" {proto} {src} -> {dst}"));
    }
    let mut b = Block::new(block::EPB);
    b.u32(iface)
        .u32((ts >> 32) as u32)
        .u32(ts as u32)
        .u32(json.len() as u32)
        .u32(json.len() as u32)
        .padded(json);
    b.text(block::OPT_COMMENT, &comment);
    b.finish()
}

fn epb_block(rec: &PacketRecord, iface: u32, boot_to_unix_ns: i64, label: &str) -> Vec<u8> {
    let ts = (i128::from(rec.ktime_ns) + i128::from(boot_to_unix_ns)).clamp(0, i128::from(u64::MAX))
        as u64;
    let flags = match rec.direction {
        Direction::Ingress => block::EPB_INBOUND,
        Direction::Egress => block::EPB_OUTBOUND,
    };
    let comment = format!("fp={:016x} hook={label} {}", rec.fingerprint, rec.direction);
    let mut b = Block::new(block::EPB);
    b.u32(iface)
        .u32((ts >> 32) as u32)
        .u32(ts as u32)
        .u32(rec.data.len() as u32)
        .u32(rec.pkt_len)
        .padded(&rec.data);
    b.option(block::EPB_FLAGS, &flags.to_le_bytes())
        .text(block::OPT_COMMENT, &comment);
    b.finish()
}
