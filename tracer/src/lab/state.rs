//! The lab's state files: what `up` made, so `down` removes exactly that.
//!
//! One JSON file per lab, `/run/pathtrace/lab-<name>.json`, rewritten (atomically) after every step of
//! `up`, so a run that dies half-way still leaves a record `down` can undo. A lock file in the same
//! directory serialises `up` and `down` across processes (two tests bringing labs up in parallel must
//! not pick the same addresses).

use std::{
    fs::{self, File, OpenOptions},
    io::Write as _,
    path::{Path, PathBuf},
};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use super::{Lab, LabError};

/// Where state files live (tmpfs: a reboot forgets labs, as it forgets their namespaces).
pub(crate) const STATE_DIR: &str = "/run/pathtrace";

/// Bumped when the file format changes incompatibly.
const STATE_VERSION: u32 = 1;

/// One thing `up` created, in the order it was created; `down` undoes them in reverse.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum Resource {
    /// A sysctl we changed, with the value to restore (e.g. `net.ipv4.ip_forward` was `0`).
    Sysctl { key: String, previous: String },
    /// A named network namespace (`ip netns add`); deleting it deletes the links inside it.
    Netns { name: String },
    /// A link in the host namespace (a bridge, or the host end of a veth pair).
    Link { name: String },
    /// An iptables rule: `iptables -t <table> -D <chain> <rule...>` removes it.
    IptablesRule {
        table: String,
        chain: String,
        rule: Vec<String>,
    },
}

/// The content of a state file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct LabState {
    pub version: u32,
    pub lab: Lab,
    /// False while `up` is still running (or if it died half-way).
    pub complete: bool,
    pub created: Vec<Resource>,
}

impl LabState {
    pub(crate) fn new(lab: Lab) -> Self {
        Self {
            version: STATE_VERSION,
            lab,
            complete: false,
            created: Vec::new(),
        }
    }
}

/// The state file of the lab `name` in `dir`.
pub(crate) fn state_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("lab-{name}.json"))
}

/// Writes the state file atomically (temporary file, then rename).
pub(crate) fn save(dir: &Path, state: &LabState) -> Result<(), LabError> {
    let path = state_path(dir, &state.lab.name);
    let tmp = path.with_extension("json.tmp");
    let io = |source| LabError::StateIo {
        path: path.clone(),
        source,
    };
    fs::create_dir_all(dir).map_err(io)?;
    let text = serde_json::to_vec_pretty(state).map_err(|e| io(std::io::Error::other(e)))?;
    let mut file = File::create(&tmp).map_err(io)?;
    file.write_all(&text).map_err(io)?;
    file.sync_all().map_err(io)?;
    fs::rename(&tmp, &path).map_err(io)
}

/// Reads the state file of the lab `name`.
pub(crate) fn load(dir: &Path, name: &str) -> Result<LabState, LabError> {
    read(&state_path(dir, name), name)
}

fn read(path: &Path, name: &str) -> Result<LabState, LabError> {
    let text = match fs::read(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(LabError::NotFound(name.to_string()))
        }
        Err(source) => {
            return Err(LabError::StateIo {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let state: LabState = serde_json::from_slice(&text).map_err(|source| LabError::StateParse {
        path: path.to_path_buf(),
        source,
    })?;
    if state.version != STATE_VERSION {
        return Err(LabError::StateVersion {
            path: path.to_path_buf(),
            found: state.version,
            expected: STATE_VERSION,
        });
    }
    Ok(state)
}

/// Removes the state file; a missing one is fine (nothing to forget).
pub(crate) fn remove(dir: &Path, name: &str) -> Result<(), LabError> {
    let path = state_path(dir, name);
    match fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(LabError::StateIo { path, source }),
    }
}

/// All readable state files in `dir`, sorted by lab name. Unreadable files are skipped with a warning,
/// so one broken file does not hide the other labs.
pub(crate) fn list(dir: &Path) -> Result<Vec<LabState>, LabError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(LabError::StateIo {
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    let mut states = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| LabError::StateIo {
            path: dir.to_path_buf(),
            source,
        })?;
        let file_name = entry.file_name();
        let Some(name) = file_name
            .to_str()
            .and_then(|n| n.strip_prefix("lab-"))
            .and_then(|n| n.strip_suffix(".json"))
        else {
            continue;
        };
        match read(&entry.path(), name) {
            Ok(state) => states.push(state),
            Err(e) => tracing::warn!("skipping lab state file: {e}"),
        }
    }
    states.sort_by(|a, b| a.lab.name.cmp(&b.lab.name));
    Ok(states)
}

/// An exclusive lock on `dir/lab.lock`, held while labs are created or removed.
#[derive(Debug)]
pub(crate) struct StateLock {
    _lock: Flock<File>,
}

impl StateLock {
    pub(crate) fn acquire(dir: &Path) -> Result<Self, LabError> {
        let path = dir.join("lab.lock");
        let io = |source| LabError::StateIo {
            path: path.clone(),
            source,
        };
        fs::create_dir_all(dir).map_err(io)?;
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io)?;
        let lock = Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, errno)| io(std::io::Error::from(errno)))?;
        Ok(Self { _lock: lock })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("pathtrace-lab-state-{}-{tag}", std::process::id()));
        // A leftover from an earlier run with the same pid is stale: start empty.
        if dir.exists() {
            fs::remove_dir_all(&dir).expect("remove stale test dir");
        }
        dir
    }

    #[test]
    fn save_load_list_remove_round_trip() {
        let dir = temp_dir("roundtrip");
        let mut state = LabState::new(Lab::plan("ptx", 201));
        state.created.push(Resource::Netns {
            name: "ptx-ctr".into(),
        });
        state.created.push(Resource::IptablesRule {
            table: "nat".into(),
            chain: "POSTROUTING".into(),
            rule: vec!["-j".into(), "MASQUERADE".into()],
        });
        save(&dir, &state).expect("save");
        let loaded = load(&dir, "ptx").expect("load");
        assert_eq!(loaded.lab, state.lab);
        assert_eq!(loaded.created, state.created);
        fs::write(dir.join("lab-broken.json"), b"{").expect("write broken");
        fs::write(dir.join("unrelated.json"), b"{}").expect("write unrelated");
        let all = list(&dir).expect("list");
        assert_eq!(all.len(), 1, "the broken and unrelated files are skipped");
        remove(&dir, "ptx").expect("remove");
        remove(&dir, "ptx").expect("removing twice is fine");
        assert!(matches!(load(&dir, "ptx"), Err(LabError::NotFound(_))));
        fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn lock_can_be_taken_again_after_release() {
        let dir = temp_dir("lock");
        drop(StateLock::acquire(&dir).expect("first"));
        drop(StateLock::acquire(&dir).expect("second"));
        fs::remove_dir_all(&dir).expect("cleanup");
    }
}
