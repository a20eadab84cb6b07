//! Privileged: `pathtrace doctor` says what this host offers, each line against what the host
//! itself says (kernel version, BTF file, conntrack, the Docker socket), and exits 0 here.

use std::path::Path;

use crate::support::{lab::pathtrace, privileged};

#[test]
fn doctor_tells_what_this_host_offers() {
    if !privileged("doctor_tells_what_this_host_offers") {
        return;
    }
    let out = pathtrace(&["doctor"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{text}");
    let status = |what: &str| {
        text.lines()
            .find(|l| l.starts_with(what))
            .and_then(|l| l[what.len()..].split_whitespace().next())
            .unwrap_or_else(|| panic!("no line for {what}:\n{text}"))
            .to_string()
    };
    for line in text.lines().filter(|l| !l.starts_with("tracing ")) {
        let word = line.get(21..).and_then(|l| l.split_whitespace().next());
        assert!(
            matches!(word, Some("ok" | "fallback" | "missing")),
            "line without a status: {line:?}"
        );
    }
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
    assert!(text.contains(release.trim()), "{text}");
    let (major, minor) = {
        let mut n = release
            .split(|c: char| !c.is_ascii_digit())
            .map(|x| x.parse::<u32>().unwrap_or(0));
        (n.next().unwrap_or(0), n.next().unwrap_or(0))
    };
    let tcx = (major, minor) >= (6, 6);
    assert_eq!(status("tc attach") == "ok", tcx, "{text}");
    let btf = Path::new("/sys/kernel/btf/vmlinux").exists();
    assert_eq!(status("BTF") == "ok", btf, "{text}");
    let conntrack = Path::new("/proc/sys/net/netfilter/nf_conntrack_max").exists();
    assert_eq!(status("conntrack") == "ok", conntrack, "{text}");
    let docker = Path::new("/var/run/docker.sock").exists();
    assert_eq!(
        text.contains("Docker (unix:///var/run/docker.sock)"),
        docker,
        "{text}"
    );
    assert!(text.ends_with("tracing can work here\n"), "{text}");
}
