//! Records of the clsact qdiscs pathtrace added (netlink mode), so that `pathtrace cleanup` can
//! remove them after a SIGKILL — and never a qdisc that existed before us.
//!
//! One file per qdisc in `/run/pathtrace/qdiscs/`, named `<netns inode>-<ifindex>`, holding the
//! owner's pid and the interface name. The directory lives on tmpfs: a reboot removes both the
//! qdiscs and the records.

use std::{
    fs,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

pub(crate) const DIR: &str = "/run/pathtrace/qdiscs";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QdiscMarker {
    pub netns_inode: u64,
    /// A path that opened the namespace when the record was written.
    pub netns_path: PathBuf,
    pub ifindex: u32,
    pub ifname: String,
    pub pid: u32,
}

impl QdiscMarker {
    fn file(&self, dir: &Path) -> PathBuf {
        dir.join(format!("{}-{}", self.netns_inode, self.ifindex))
    }

    /// Whether the process that wrote it still runs (then its qdisc is not a leftover).
    pub(crate) fn owner_alive(&self) -> bool {
        Path::new(&format!("/proc/{}", self.pid)).exists() && self.pid != std::process::id()
    }
}

pub(crate) fn record(marker: &QdiscMarker) {
    let dir = Path::new(DIR);
    let result = fs::create_dir_all(dir).and_then(|()| {
        let json = serde_json::to_vec(marker).map_err(std::io::Error::other)?;
        fs::write(marker.file(dir), json)
    });
    if let Err(e) = result {
        tracing::warn!(
            "recording our clsact qdisc on {}: {e} (`pathtrace cleanup` will not know it)",
            marker.ifname
        );
    }
}

pub(crate) fn forget(marker: &QdiscMarker) {
    match fs::remove_file(marker.file(Path::new(DIR))) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!("removing the record of {}: {e}", marker.ifname),
    }
}

/// Every record; unreadable ones are skipped with a warning.
pub fn list() -> Vec<QdiscMarker> {
    let Ok(entries) = fs::read_dir(DIR) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let bytes = fs::read(e.path()).ok()?;
            match serde_json::from_slice(&bytes) {
                Ok(m) => Some(m),
                Err(err) => {
                    tracing::warn!("ignoring {}: {err}", e.path().display());
                    None
                }
            }
        })
        .collect()
}
