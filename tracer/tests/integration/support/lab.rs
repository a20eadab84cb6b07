//! Lab fixtures: a lab that removes itself, running the real binary, reading its JSON lines.

use std::{
    process::{Command, Output},
    time::{Duration, Instant},
};

use tracer::lab::{Lab, LabSpec, LabTraffic, LabTrafficOptions};

use super::BIN;

/// A lab that goes away with the test, also when it fails.
pub(crate) struct TestLab(pub Lab);

impl TestLab {
    pub(crate) fn up(tag: &str) -> Self {
        let name = format!("{}{}", tag, std::process::id() % 10_000);
        Self(Lab::up(&LabSpec { name: Some(name) }).expect("lab up"))
    }

    /// The lab's ICMP, TCP and UDP loop on servers at any free port; stops when dropped.
    pub(crate) fn start_traffic(&self) -> LabTraffic {
        let opts = LabTrafficOptions {
            tcp_port: 0,
            udp_port: 0,
            ..Default::default()
        };
        self.0.start_traffic(&opts).expect("start lab traffic")
    }
}

impl Drop for TestLab {
    fn drop(&mut self) {
        if let Err(e) = Lab::down(&self.0.name) {
            eprintln!("removing lab {}: {e}", self.0.name);
        }
    }
}

/// Runs the binary and returns its output.
pub(crate) fn pathtrace(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("run pathtrace")
}

/// Runs a command; panics with its stderr when it fails.
pub(crate) fn sh(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Names of loaded BPF programs that are ours, after cls_bpf's RCU-delayed release settles.
pub(crate) fn our_programs_settled() -> Vec<String> {
    let ours = || -> Vec<String> {
        aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .filter_map(|p| p.name_as_str().map(str::to_string))
            .filter(|n| n.starts_with("pathtrace_"))
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(3);
    while !ours().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    ours()
}

/// Parses JSON lines, each checked against the output schema.
pub(crate) fn json_lines(stdout: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|l| {
            let v = serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}"));
            super::schema::check(&v);
            v
        })
        .collect()
}

/// The last line of each flow id (its final state), `conntrack` removed (a live-only field).
pub(crate) fn final_flows(
    lines: &[serde_json::Value],
) -> std::collections::BTreeMap<u64, serde_json::Value> {
    let mut out = std::collections::BTreeMap::new();
    for l in lines.iter().filter(|l| l["type"] == "flow") {
        let mut f = l.clone();
        for key in ["nat", "nat_back"] {
            if let Some(steps) = f[key].as_array_mut() {
                for s in steps {
                    if let Some(o) = s.as_object_mut() {
                        o.remove("conntrack");
                    }
                }
            }
        }
        out.insert(l["id"].as_u64().expect("flow id"), f);
    }
    out
}
