//! Capture files: what `pathtrace -w FILE` writes and `pathtrace show FILE` / `diff A B` replay.
//!
//! The format is plain pcapng 1.0 (draft-ietf-opsawg-pcapng), written little-endian, so Wireshark
//! and tshark open it as is:
//!
//! - one Section Header Block per file: `shb_userappl` = `pathtrace <version>`, `shb_hardware` =
//!   host name, `shb_os` = kernel release, and the **topology snapshot** (below);
//! - one Interface Description Block per hook: `if_name` = the hook label (`minio:eth0`),
//!   `if_description` = `pathtrace slot 3: host:veth1a2b ingress (namespace host, place veth,
//!   role shared, ifindex 7)`, link type 1 (Ethernet), `if_tsresol` = 9 (nanoseconds). A hook
//!   attached again later (container restart) gets a new IDB; its slot then maps to the new one;
//! - one Enhanced Packet Block per packet: the captured bytes, the original length, `epb_flags`
//!   direction bits (1 inbound = ingress, 2 outbound = egress), and an `opt_comment`
//!   `fp=<fingerprint hex> hook=<label> <direction>`. Timestamps are wall-clock nanoseconds:
//!   `ktime_ns + CaptureMeta::boot_to_unix_ns`; the reader subtracts the same offset, so replayed
//!   deltas equal live ones.
//!
//! **Drop reports.** The kernel's drop reports (a packet freed with a reason, at `kfree_skb`)
//! are kept on one more interface, added at the first drop: `if_name` = `pathtrace:drops`, link
//! type 147 (LINKTYPE_USER0, which no dissector claims). Each report is one EPB whose bytes are
//! the report as JSON (`DropRecord`: time, fingerprint, reason and its name, tuple) and whose
//! `opt_comment` says it in words (`kernel drop NETFILTER_DROP fp=… tcp a -> b`), which is how
//! Wireshark shows it. A replay feeds them to correlation as the live trace received them, so
//! `show` prints where packets stopped with the kernel's reason, as the live view did.
//!
//! **Topology snapshot.** A custom option (`opt_custom`, code 2989: binary octets, may be copied)
//! with Private Enterprise Number 32473 — the example PEN of RFC 5612, as pathtrace has no PEN of
//! its own — whose data is the tag [`SNAPSHOT_TAG`], a chunk index and count (two `u16` in the
//! section's byte order) and a piece of the JSON of [`CaptureMeta`] (with the hooks current when
//! the file was started). Options hold at most 64 KiB, so a large snapshot (many NAT rules) spans
//! several options that the reader joins in order. Files without it (or with unreadable JSON) still
//! replay: hooks are then rebuilt from the IDB names and descriptions.
//!
//! **Rotation** (`WriterOptions::max_size`): the first file is `FILE`, then `FILE.1`, `FILE.2`, …
//! (see [`rotation_path`]); each is a complete pcapng (SHB, snapshot, all current IDBs). With
//! `max_files = N`, at most N files exist at a time: starting a new one deletes the oldest.
//! Concatenated files (`cat FILE FILE.1 > all`) read as one capture of several sections.

mod block;
mod reader;
pub mod record;
mod writer;

#[doc(hidden)]
pub mod testframes;
#[cfg(test)]
mod tests;

use std::{
    io,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::model::{Direction, DropRecord, Hook, PacketRecord, Place, Role, Topology};

pub use reader::{parse_capture, read_capture, read_rotated};
pub use writer::{CaptureWriter, WriterOptions};

/// Private Enterprise Number of the snapshot option: 32473, reserved for documentation examples
/// by RFC 5612.
pub(crate) const SNAPSHOT_PEN: u32 = 32473;
/// First bytes of the snapshot option's data (after the PEN), so another user of the example PEN
/// is not mistaken for pathtrace.
pub(crate) const SNAPSHOT_TAG: &[u8; 20] = b"pathtrace.topology/1";

/// When a hook was attached, and when detaching began (kernel monotonic time; 0 when not
/// known): written at the end of a capture as each interface's statistics block
/// (`isb_starttime`, `isb_endtime`), so that a replay knows, as the live trace did, which
/// packets crossed a hook before it could see them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookTime {
    pub slot: u8,
    pub direction: Direction,
    pub attached_ns: u64,
    pub detached_ns: u64,
}

/// What a capture records about the machine and the trace, besides packets.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureMeta {
    pub hostname: String,
    /// `uname -r`.
    pub kernel_release: String,
    /// Add to a `bpf_ktime_get_ns()` value (CLOCK_MONOTONIC) to get nanoseconds since the Unix
    /// epoch; see [`boot_to_unix_ns`].
    pub boot_to_unix_ns: i64,
    /// Bytes of each packet the kernel copies (`--snaplen`).
    pub snaplen: u32,
    /// What discovery found. The writer replaces `hooks` by the hooks it writes.
    pub topology: Topology,
}

impl CaptureMeta {
    /// Meta for a capture on this machine, now.
    pub(crate) fn for_this_host(topology: Topology, snaplen: u32) -> io::Result<Self> {
        let read = |p: &str| std::fs::read_to_string(p).map(|s| s.trim().to_string());
        Ok(Self {
            hostname: read("/proc/sys/kernel/hostname")?,
            kernel_release: read("/proc/sys/kernel/osrelease")?,
            boot_to_unix_ns: boot_to_unix_ns()?,
            snaplen,
            topology,
        })
    }
}

/// The offset from CLOCK_MONOTONIC (what `bpf_ktime_get_ns` reads) to the Unix epoch, now.
pub(crate) fn boot_to_unix_ns() -> io::Result<i64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mono = i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec);
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(io::Error::other)?
        .as_nanos() as i128;
    i64::try_from(unix - mono).map_err(io::Error::other)
}

/// A capture file read back.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Capture {
    /// From the first readable topology snapshot; `None` when no section has one.
    pub meta: Option<CaptureMeta>,
    /// The snapshot's topology, completed with hooks only the IDBs describe (or only those).
    pub topology: Topology,
    /// Packets in file order, rebuilt from their bytes with [`PacketRecord::from_frame`].
    pub records: Vec<PacketRecord>,
    /// Section Header Blocks read (one per file when rotated files are concatenated).
    pub sections: usize,
    /// The file ended inside a block (a capture killed while writing); that block was ignored.
    pub truncated_tail: bool,
    /// Packets not replayed: not IP over Ethernet, or of an interface no IDB describes.
    pub skipped: usize,
    /// `shb_userappl` of the first section, e.g. `pathtrace 0.1.0`.
    pub application: Option<String>,
    /// Things the user may want to know (unreadable snapshot, skipped packets), one line each.
    pub warnings: Vec<String>,
    /// From the interface statistics blocks (the last file's, which close it); empty for a
    /// capture cut short or without them.
    pub hook_times: Vec<HookTime>,
    /// The kernel's drop reports the trace received (the drops interface's records), in file
    /// order.
    pub drops: Vec<DropRecord>,
}

/// Why a capture could not be written or read. Each message is one line meant for the user.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("cannot create {path}: {reason}; choose a writable path with -w")]
    Create {
        path: String,
        reason: String,
        /// Not a `#[source]`: `reason` already says it, and error chains would repeat it.
        source: io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("disk full while writing {path}; the capture ends at the last complete packet")]
    DiskFull { path: String },
    #[error("capture {path} was stopped by an earlier write error")]
    Stopped { path: String },
    #[error("cannot remove old capture file {path}: {source}")]
    Rotate {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("no interface was written for hook slot {0} (add_hook it first)")]
    UnknownSlot(u8),
    #[error("invalid capture options: {0}")]
    Options(&'static str),
    #[error("cannot encode the topology snapshot or a drop report: {0}")]
    Snapshot(#[from] serde_json::Error),
    #[error("cannot read {path}: {reason}")]
    Open {
        path: String,
        reason: String,
        #[source]
        source: io::Error,
    },
    #[error("{path} {error}")]
    Format { path: String, error: FormatError },
}

/// What is wrong with the bytes of a capture (the message follows the file name).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("is empty")]
    Empty,
    #[error("is not a pcapng file (it looks like {0})")]
    NotPcapng(&'static str),
    #[error("is truncated: its section header is incomplete ({0} bytes)")]
    TruncatedHeader(usize),
    #[error("has a section header with an unknown byte-order magic at offset {0}")]
    ByteOrder(usize),
    #[error("has an impossible block length {len} at offset {offset}")]
    BlockLength { offset: usize, len: u32 },
    #[error("has an inconsistent block length at offset {offset} ({len} at its start, {trailer} at its end)")]
    BlockTrailer {
        offset: usize,
        len: u32,
        trailer: u32,
    },
    #[error("has a malformed {what} at offset {offset}")]
    Malformed { offset: usize, what: &'static str },
    #[error("was written by {} format version {major}.{minor}; this pathtrace reads pcapng 1.0", version_age(.major))]
    Version { major: u16, minor: u16 },
}

fn version_age(major: &u16) -> &'static str {
    if *major > 1 {
        "a newer"
    } else {
        "an unknown"
    }
}

/// How an I/O error reads in a one-line message.
fn io_reason(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::PermissionDenied => "permission denied".into(),
        io::ErrorKind::NotFound => "no such file or directory".into(),
        io::ErrorKind::IsADirectory => "it is a directory".into(),
        io::ErrorKind::ReadOnlyFilesystem => "read-only file system".into(),
        _ => e.to_string(),
    }
}

/// The `index`-th file of a rotated capture: `FILE` for 0, then `FILE.1`, `FILE.2`, …
pub(crate) fn rotation_path(base: &Path, index: u32) -> PathBuf {
    if index == 0 {
        return base.to_path_buf();
    }
    let mut name = base.as_os_str().to_owned();
    name.push(format!(".{index}"));
    PathBuf::from(name)
}

/// The files of a rotated capture that exist, oldest first (`FILE`, `FILE.1`, … with gaps where
/// rotation deleted the oldest).
pub(crate) fn rotated_files(base: &Path) -> io::Result<Vec<PathBuf>> {
    let dir = match base.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let Some(stem) = base.file_name().and_then(|n| n.to_str()) else {
        return Ok(vec![base.to_path_buf()]);
    };
    let mut found: Vec<(u32, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(&dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let index = if name == stem {
            Some(0)
        } else {
            name.strip_prefix(stem)
                .and_then(|r| r.strip_prefix('.'))
                .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|d| d.parse().ok())
        };
        if let Some(i) = index {
            found.push((i, rotation_path(base, i)));
        }
    }
    found.sort();
    Ok(found.into_iter().map(|(_, p)| p).collect())
}

/// The `if_description` of a hook's IDB; [`parse_description`] reads it back.
fn describe(hook: &Hook) -> String {
    format!(
        "pathtrace slot {}: {} {} (namespace {}, place {}, role {}, ifindex {})",
        hook.slot,
        hook.label(),
        hook.direction,
        hook.ns_label,
        enum_name(&hook.place),
        enum_name(&hook.role),
        hook.ifindex
    )
}

/// The serde name of a unit enum variant (`peer_veth`-style names stay in one place: model.rs).
fn enum_name<T: Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::from("?"),
    }
}

fn enum_from_name<T: serde::de::DeserializeOwned>(name: &str) -> Option<T> {
    serde_json::from_value(serde_json::Value::String(name.to_string())).ok()
}

/// Rebuilds a hook from the `if_name` and `if_description` pathtrace wrote.
fn parse_description(if_name: &str, desc: &str) -> Option<Hook> {
    let rest = desc.strip_prefix("pathtrace slot ")?;
    let (slot, rest) = rest.split_once(": ")?;
    let slot: u8 = slot.parse().ok()?;
    let (head, fields) = rest.split_once(" (")?;
    let (_label, direction) = head.rsplit_once(' ')?;
    let direction = match direction {
        "ingress" => Direction::Ingress,
        "egress" => Direction::Egress,
        _ => return None,
    };
    let field = |key: &str| {
        fields
            .trim_end_matches(')')
            .split(", ")
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix(' '))
    };
    let ns_label = field("namespace")?.to_string();
    let ifname = if_name
        .strip_prefix(ns_label.as_str())
        .and_then(|r| r.strip_prefix(':'))
        .unwrap_or(if_name)
        .to_string();
    Some(Hook {
        slot,
        ns_label,
        ifname,
        ifindex: field("ifindex").and_then(|v| v.parse().ok()).unwrap_or(0),
        direction,
        place: field("place")
            .and_then(enum_from_name)
            .unwrap_or(Place::Uplink),
        role: field("role").and_then(enum_from_name).unwrap_or(Role::All),
    })
}
