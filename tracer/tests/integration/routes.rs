//! The uplink on a host with two default routes: `trace` attaches to the one the kernel uses for
//! ordinary traffic (the main table's lowest metric, not one for a single TOS), `inspect` names the
//! same one, and it is the one `ip route get` answers with.
//!
//! A namespace plays the host (the way Kind nodes are containers), so the test can give it two
//! uplinks and two default routes without touching the machine's own: a "container" namespace on
//! a bridge, and two uplink veths whose far ends sit in namespaces of their own. No packet is
//! sent; everything is removed on drop, also when the test fails.

use std::process::Command;

use serde_json::Value;

use crate::support::{lab::sh, privileged, serial, BIN};

/// The namespaces of one run, removed on drop (their links go with them).
struct Host {
    tag: String,
    namespaces: Vec<String>,
}

impl Host {
    fn up() -> Self {
        let tag = format!("rt{}", std::process::id() % 10_000);
        let ns = |n: &str| format!("{tag}-{n}");
        let mut host = Self {
            namespaces: Vec::new(),
            tag: tag.clone(),
        };
        for n in ["host", "ctr", "w1", "w2"] {
            sh("ip", &["netns", "add", &ns(n)]);
            host.namespaces.push(ns(n));
        }
        let (h, c) = (ns("host"), ns("ctr"));
        let link = |name: &str| format!("{tag}{name}");
        let in_host = |args: &[&str]| {
            let mut a = vec!["-n", h.as_str()];
            a.extend_from_slice(args);
            sh("ip", &a);
        };
        let (veth, br, up1, up2) = (link("v0"), link("br"), link("u1"), link("u2"));
        in_host(&[
            "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &c,
        ]);
        in_host(&["link", "add", &br, "type", "bridge"]);
        in_host(&["link", "set", &veth, "master", &br]);
        for (up, far) in [(&up1, ns("w1")), (&up2, ns("w2"))] {
            in_host(&[
                "link", "add", up, "type", "veth", "peer", "name", "eth0", "netns", &far,
            ]);
        }
        in_host(&["addr", "add", "10.77.1.1/24", "dev", &br]);
        in_host(&["addr", "add", "10.77.2.1/24", "dev", &up1]);
        in_host(&["addr", "add", "10.77.3.1/24", "dev", &up2]);
        for dev in [&veth, &br, &up1, &up2] {
            in_host(&["link", "set", dev, "up"]);
        }
        // A route for one TOS, at a higher metric: the kernel lists it before the plain one, so
        // a reader that takes the first default route it is given picks the uplink ordinary
        // traffic does not use.
        let via = |gw: &str, dev: &str, metric: &str| {
            let mut args = vec!["route", "add", "default"];
            if metric == "200" {
                args.extend(["tos", "0x10"]);
            }
            args.extend(["via", gw, "dev", dev, "metric", metric]);
            args.iter().map(|a| a.to_string()).collect::<Vec<_>>()
        };
        for args in [via("10.77.2.2", &up1, "200"), via("10.77.3.2", &up2, "100")] {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            in_host(&args);
        }
        sh(
            "ip",
            &["-n", &c, "addr", "add", "10.77.1.2/24", "dev", "eth0"],
        );
        sh("ip", &["-n", &c, "link", "set", "eth0", "up"]);
        sh(
            "ip",
            &["-n", &c, "route", "add", "default", "via", "10.77.1.1"],
        );
        host
    }

    fn ns(&self, n: &str) -> String {
        format!("{}-{n}", self.tag)
    }

    /// `pathtrace ARGS` run inside the namespace that plays the host; its stdout as JSON lines.
    fn pathtrace(&self, args: &[&str]) -> Vec<Value> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns("host"), BIN])
            .args(args)
            .output()
            .expect("run pathtrace");
        assert!(
            out.status.success(),
            "pathtrace {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        crate::support::lab::json_lines(&out.stdout)
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        for ns in &self.namespaces {
            let deleted = Command::new("ip").args(["netns", "delete", ns]).status();
            if !deleted.is_ok_and(|s| s.success()) {
                eprintln!("removing namespace {ns} failed; remove it with `ip netns delete {ns}`");
            }
        }
    }
}

#[test]
fn trace_and_inspect_take_the_lowest_metric_default_route() {
    let _serial = serial();
    if !privileged("trace_and_inspect_take_the_lowest_metric_default_route") {
        return;
    }
    let host = Host::up();
    let ctr = host.ns("ctr");
    let lowest = format!("{}u2", host.tag);
    // The kernel's own answer for an ordinary packet of the container to somewhere outside.
    let kernel = sh(
        "ip",
        &[
            "-n",
            &host.ns("host"),
            "route",
            "get",
            "10.99.0.1",
            "from",
            "10.77.1.1",
        ],
    );
    assert!(
        kernel.contains(&format!("dev {lowest} ")),
        "ip route get: {kernel}"
    );

    let trace = host.pathtrace(&["--netns", &ctr, "--json", "--duration", "1"]);
    let summary = trace.last().expect("a summary line");
    assert_eq!(summary["type"], "summary", "{summary}");
    let uplinks: Vec<&str> = summary["hooks"]
        .as_array()
        .expect("hooks")
        .iter()
        .filter_map(|h| h["hook"].as_str())
        .filter(|h| h.starts_with(&format!("host:{}u", host.tag)))
        .collect();
    let want = format!("host:{lowest}");
    assert_eq!(
        uplinks,
        [want.as_str(), want.as_str()],
        "trace's uplink hooks"
    );

    let inspect = host.pathtrace(&["inspect", "--netns", &ctr, "--json"]);
    assert_eq!(inspect.len(), 1, "{inspect:?}");
    let route = &inspect[0]["route"];
    assert_eq!(route["dst"], "default", "{route}");
    assert_eq!(route["dev"], lowest.as_str(), "inspect's uplink: {route}");
    assert_eq!(route["gateway"], "10.77.3.2", "{route}");
}
