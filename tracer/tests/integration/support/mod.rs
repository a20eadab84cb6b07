//! What the integration tests share: the one privilege gate ([`privileged`], [`root_or_skip`],
//! [`docker_or_skip`]: a test that cannot run says so loudly, and fails under CI), the lock that
//! keeps tests that share the kernel's hooks apart ([`serial`]), and the fixtures: [`lab`] (a lab
//! that removes itself, running the binary), [`kernel`] (what pathtrace could leave behind, a
//! spawned trace, another tool's tc program), [`docker`] (an offline busybox image, containers and
//! networks that remove themselves), [`wan`] (a test uplink with echo servers), [`corpus`]
//! (crafted frames, filter expressions and tcpdump's verdicts on them) and [`schema`] (every JSON
//! line read is checked against the one output schema).

pub(crate) mod corpus;
pub(crate) mod cri;
pub(crate) mod docker;
pub(crate) mod hostns;
pub(crate) mod iptables;
pub(crate) mod kernel;
pub(crate) mod lab;
pub(crate) mod podman;
pub(crate) mod schema;
pub(crate) mod wan;

use std::{
    io::Write as _,
    sync::{Mutex, MutexGuard},
};

/// The binary under test.
pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_pathtrace");

/// Tests that attach to the kernel's hooks, or count programs and tc filters, take this first:
/// one at a time, whatever `--test-threads` says.
pub(crate) fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Root and a built kernel object; otherwise a loud skip, or a failure under CI.
pub(crate) fn privileged(test: &str) -> bool {
    let why = if !nix::unistd::Uid::effective().is_root() {
        Some("needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN)".to_string())
    } else if tracer::attach::object_bytes().is_empty() {
        Some("the kernel object was not built (PATHTRACE_BUILD_EBPF=1)".to_string())
    } else {
        None
    };
    gate(test, why)
}

/// Root (network namespaces, iptables, the Docker socket; no kernel programs); otherwise a loud
/// skip, or a failure under CI.
pub(crate) fn root_or_skip(test: &str) -> bool {
    let root = nix::unistd::Uid::effective().is_root();
    gate(
        test,
        (!root).then(|| "needs root (network namespaces, iptables)".to_string()),
    )
}

/// Root and a dockerd that answers; otherwise a loud skip, or a failure under CI.
pub(crate) fn docker_or_skip(test: &str) -> bool {
    if !root_or_skip(test) {
        return false;
    }
    let why = docker::docker(&["version", "--format", "{{.Server.Version}}"])
        .err()
        .map(|e| {
            format!(
                "dockerd is not reachable ({e:#}); start it: dockerd >/tmp/dockerd.log 2>&1 & \
                 (and wait for /var/run/docker.sock)"
            )
        });
    gate(test, why)
}

/// `why` the test cannot run, if it cannot: fails under CI, else says so loudly and skips.
fn gate(test: &str, why: Option<String>) -> bool {
    let Some(why) = why else {
        return true;
    };
    let msg = format!("!!! {test}: {why} — NOT RUN");
    assert!(
        std::env::var_os("CI").is_none(),
        "{msg} (CI is set: privileged tests must run there)"
    );
    // Straight to fd 2: the test harness hides the `eprintln!` of a test that passes. Nothing
    // useful is left to do when stderr itself is gone.
    writeln!(std::io::stderr(), "{msg}").ok();
    false
}
