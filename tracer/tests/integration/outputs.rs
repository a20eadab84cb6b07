//! One schema for every JSON output, on the built-in lab with the real binary: `lab up`,
//! `inspect`, a live trace with a capture, `show`, `diff` and `verify` (a pass, an expected path
//! matched as a subsequence, a bad direction word refused, and no route as a FAIL) each write
//! lines that `schema/pathtrace.schema.json` accepts, and `verify`'s flow is the live flow object.

use std::process::Command;

use serde_json::Value;

use crate::support::{
    kernel::RouteGuard,
    lab::{json_lines, pathtrace, TestLab},
    privileged, serial,
};

/// A documentation address the test makes unreachable on the host for as long as it runs.
const NOWHERE: &str = "203.0.113.78";

fn tmp(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("pathtrace-outputs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    dir.join(name)
}

fn of_type<'v>(lines: &'v [Value], kind: &str) -> Vec<&'v Value> {
    lines.iter().filter(|l| l["type"] == kind).collect()
}

#[test]
fn every_verb_writes_the_one_schema() {
    let _serial = serial();
    if !privileged("every_verb_writes_the_one_schema") {
        return;
    }
    let tag = format!("os{}", std::process::id() % 10_000);
    let up = pathtrace(&["lab", "up", "--name", &tag, "--json"]);
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    let lab = json_lines(&up.stdout);
    let down = TestLab(tracer::lab::Lab::load(&tag).expect("the lab pathtrace made"));
    assert_eq!(of_type(&lab, "lab").len(), 1);
    let (ns, wan) = (&down.0.ctr_netns, down.0.wan_addr.to_string());

    let inspect = pathtrace(&["inspect", "--netns", ns, "--json"]);
    assert!(inspect.status.success());
    assert_eq!(of_type(&json_lines(&inspect.stdout), "inspect").len(), 1);

    // A live trace with a capture, while verify sends its probe through it.
    let file = tmp("outputs.pcapng");
    let path = file.to_str().expect("utf-8 path").to_string();
    let tracing = std::thread::spawn({
        let (ns, wan, path) = (ns.clone(), wan.clone(), path.clone());
        move || {
            pathtrace(&[
                "--netns",
                &ns,
                "--to",
                &wan,
                "--json",
                "--duration",
                "3",
                "-w",
                &path,
            ])
        }
    });
    std::thread::sleep(std::time::Duration::from_millis(800));
    let expect_path = format!("{ns}:eth0 egress, host:{} egress", down.0.uplink);
    let pass = pathtrace(&[
        "verify",
        "--netns",
        ns,
        "--to",
        &wan,
        "--expect-path",
        &expect_path,
        "--json",
    ]);
    let verdict = json_lines(&pass.stdout);
    assert_eq!(pass.status.code(), Some(0), "{verdict:?}");
    let v = of_type(&verdict, "verify")[0];
    assert_eq!(v["result"], "pass");
    assert_eq!(
        v["flow"]["type"], "flow",
        "verify carries the flow object of live lines"
    );
    assert!(
        v["flow"]["src"].is_string(),
        "endpoints as ip:port: {}",
        v["flow"]
    );
    let live = tracing.join().expect("the trace thread");
    assert!(
        live.status.success(),
        "{}",
        String::from_utf8_lossy(&live.stderr)
    );
    let live = json_lines(&live.stdout);
    assert!(!of_type(&live, "flow").is_empty() && of_type(&live, "summary").len() == 1);

    let shown = pathtrace(&["show", &path, "--json"]);
    assert!(shown.status.success());
    assert_eq!(of_type(&json_lines(&shown.stdout), "summary").len(), 1);
    let diff = pathtrace(&["diff", &path, &path, "--json"]);
    assert_eq!(diff.status.code(), Some(0));
    assert_eq!(of_type(&json_lines(&diff.stdout), "diff")[0]["same"], true);

    // Another order of the same hops is not this path; a made-up direction is refused.
    let backwards = format!("host:{} egress, {ns}:eth0 egress", down.0.uplink);
    let fail = pathtrace(&[
        "verify",
        "--netns",
        ns,
        "--to",
        &wan,
        "--expect-path",
        &backwards,
        "--json",
    ]);
    assert_eq!(fail.status.code(), Some(1));
    let fail = json_lines(&fail.stdout);
    let checks = &of_type(&fail, "verify")[0]["checks"];
    let path_check = checks
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "path"));
    assert_eq!(
        path_check.map(|c| &c["ok"]),
        Some(&Value::Bool(false)),
        "{checks}"
    );
    let bad = pathtrace(&[
        "verify",
        "--netns",
        ns,
        "--to",
        &wan,
        "--expect-path",
        "host:x sideways",
    ]);
    assert_eq!(bad.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("sideways") && stderr.contains("ingress|egress"),
        "{stderr}"
    );

    // No route on the host: the answer is FAIL, with the reason, not an error.
    let added = Command::new("ip")
        .args(["route", "add", "unreachable", &format!("{NOWHERE}/32")])
        .status();
    assert!(
        added.is_ok_and(|s| s.success()),
        "adding the unreachable route"
    );
    let _route = RouteGuard("203.0.113.78/32");
    let none = pathtrace(&["verify", "--netns", ns, "--to", NOWHERE, "--json"]);
    assert_eq!(
        none.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&none.stderr)
    );
    let v = json_lines(&none.stdout);
    let route = of_type(&v, "verify")[0]["checks"][0].clone();
    assert_eq!(route["name"], "route", "{route}");
    assert_eq!(route["ok"], false);
    std::fs::remove_file(&file).ok();
}
