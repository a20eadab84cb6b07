//! Network namespaces: open one by name, path or process, and run code inside it.
//!
//! A namespace switch (`setns`) applies to the calling thread only, so [`Netns::run`] does it on a
//! fresh thread and joins it: the caller's own namespace never changes. Sockets and links made in
//! the closure stay bound to that namespace after the thread ends (a netlink socket, a TCX link fd).

use std::{
    fs::File,
    os::{fd::AsFd, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
};

use nix::sched::{setns, CloneFlags};

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("network namespace {0:?} not found (expected a name under /var/run/netns, or a path); list them with `ip netns list`")]
    NotFound(String),
    #[error("cannot open network namespace {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot enter network namespace {path}: {source} (needs CAP_SYS_ADMIN: run as root)")]
    Enter { path: PathBuf, source: nix::Error },
    #[error("thread running in network namespace {0} panicked")]
    Panicked(PathBuf),
}

/// An open handle on a network namespace; keeping it open keeps the namespace alive.
#[derive(Debug)]
pub struct Netns {
    file: File,
    path: PathBuf,
}

impl Netns {
    /// The namespace this process runs in (the host's, for pathtrace).
    pub fn current() -> Result<Self, NetnsError> {
        Self::open("/proc/self/ns/net")
    }

    /// A namespace by path (`/proc/<pid>/ns/net`, `/var/run/netns/NAME`, a bind mount).
    pub(crate) fn open(path: impl AsRef<Path>) -> Result<Self, NetnsError> {
        let path = path.as_ref().to_path_buf();
        match File::open(&path) {
            Ok(file) => Ok(Self { file, path }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(NetnsError::NotFound(path.display().to_string()))
            }
            Err(source) => Err(NetnsError::Open { path, source }),
        }
    }

    /// A namespace as `ip netns` names it, or a path when the argument contains a `/`.
    pub fn by_name_or_path(spec: &str) -> Result<Self, NetnsError> {
        if spec.contains('/') {
            Self::open(spec)
        } else {
            Self::open(Path::new("/var/run/netns").join(spec)).map_err(|e| match e {
                NetnsError::NotFound(_) => NetnsError::NotFound(spec.to_string()),
                other => other,
            })
        }
    }

    /// The namespace of a process.
    pub fn of_pid(pid: u32) -> Result<Self, NetnsError> {
        Self::open(format!("/proc/{pid}/ns/net"))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The namespace's inode number: its identity (`ls -L -i /proc/<pid>/ns/net`).
    pub fn inode(&self) -> u64 {
        self.file.metadata().map(|m| m.ino()).unwrap_or(0)
    }

    /// Whether two handles name the same namespace.
    pub fn same_as(&self, other: &Netns) -> bool {
        match (self.file.metadata(), other.file.metadata()) {
            (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
            _ => false,
        }
    }

    /// Runs `f` on a new thread that has entered this namespace, and returns its result.
    pub fn run<T, F>(&self, f: F) -> Result<T, NetnsError>
    where
        T: Send,
        F: FnOnce() -> T + Send,
    {
        std::thread::scope(|scope| {
            let handle = scope.spawn(|| {
                setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|source| {
                    NetnsError::Enter {
                        path: self.path.clone(),
                        source,
                    }
                })?;
                Ok(f())
            });
            handle
                .join()
                .map_err(|_| NetnsError::Panicked(self.path.clone()))?
        })
    }
}
