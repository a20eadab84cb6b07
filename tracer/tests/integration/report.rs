//! `pathtrace report` in a real browser: a capture of the lab (TCP, UDP, ICMP through
//! MASQUERADE, and UDP datagrams an iptables rule drops at the bridge) becomes one HTML file
//! with nothing to fetch; headless Chromium renders it: its DOM has one flow section per flow
//! `show --json` reports, the NAT step's text, the hop labels as SVG text and the drop's
//! kernel reason; its screenshots (wide and narrow) are real PNGs. With
//! `PATHTRACE_REPORT_SHOTS=DIR` the screenshots are kept there.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use tracer::capture::testframes::TempDir;

use crate::{
    support::{lab::TestLab, privileged, serial, BIN},
    tcpdump_habits::{capture_with_drops, DropRule},
};

/// Runs headless Chromium on `page` with `args`, killed after a minute; its stdout.
fn chromium(page: &Path, profile: &Path, args: &[&str]) -> String {
    let mut child = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(format!("file://{}", page.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run chromium (apt-get install chromium)");
    // Read while it runs: a DOM bigger than the pipe's buffer would block it otherwise.
    let mut stdout = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut dom = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut dom).map(|_| dom)
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait chromium") {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().ok();
            panic!("chromium did not finish within a minute");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "chromium {args:?} failed");
    reader
        .join()
        .expect("reader")
        .expect("chromium's stdout is UTF-8")
}

#[test]
fn the_report_renders_in_chromium_with_flows_nat_hops_and_drops() {
    let _serial = serial();
    if !privileged("the_report_renders_in_chromium_with_flows_nat_hops_and_drops") {
        return;
    }
    let lab = TestLab::up("rp");
    let l = &lab.0;
    let port = "5298";
    let rule = DropRule::insert(&l.bridge, port);
    let traffic = lab.start_traffic();
    let dir = TempDir::new("report");
    let file = dir.path("lab.pcapng");
    let trace = capture_with_drops(l, port, &file);
    let traced = trace.wait_with_output().expect("pathtrace ends");
    assert!(
        traced.status.success(),
        "{}",
        String::from_utf8_lossy(&traced.stderr)
    );
    traffic.stop();
    drop(rule);

    let html = dir.path("report.html");
    let out = Command::new(BIN)
        .arg("report")
        .arg(&file)
        .arg("-o")
        .arg(&html)
        .output()
        .expect("pathtrace report");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let page = std::fs::read_to_string(&html).expect("the report");
    for fetch in ["http://", "https://", "src=", "<link", "<script"] {
        assert!(!page.contains(fetch), "self-contained: found {fetch:?}");
    }
    let flows = {
        let show = Command::new(BIN)
            .arg("show")
            .arg(&file)
            .arg("--json")
            .output()
            .expect("show --json");
        crate::support::lab::json_lines(&show.stdout)
            .iter()
            .filter(|v| v["type"] == "flow")
            .count()
    };
    assert!(flows >= 3, "lab traffic and the dropped flow: {flows}");

    let profile = dir.path("chromium-profile");
    let dom = chromium(&html, &profile, &["--dump-dom"]);
    assert_eq!(
        dom.matches("<section class=\"flow\"").count(),
        flows,
        "one section per flow"
    );
    assert!(dom.contains("SNAT (MASQUERADE)"), "the NAT step");
    assert!(dom.contains(&l.masquerade_rule_text), "the NAT rule");
    for hop in [
        format!("{}:{} egress", l.ctr_netns, l.ctr_ifname),
        format!("host:{} ingress", l.bridge),
        format!("host:{} egress", l.uplink),
    ] {
        let at = dom
            .find(&format!(">{hop}</text>"))
            .unwrap_or_else(|| panic!("no SVG text {hop}"));
        let element = &dom[dom[..at].rfind("<text").expect("a text element")..at];
        assert!(
            element.contains("class=\"hop\""),
            "the SVG hop label {hop}: {element}"
        );
    }
    assert!(
        dom.contains(&format!(
            "lost after host:{} ingress (NETFILTER_DROP)",
            l.bridge
        )),
        "the drop with its reason, at its hop"
    );
    assert!(dom.contains("p99"), "latency percentiles");

    // `--html` on a live trace: the report of its own capture, which is then removed.
    let traffic = lab.start_traffic();
    let live_html = dir.path("live.html");
    let out = Command::new(BIN)
        .args([
            "--netns",
            &l.ctr_netns,
            "--to",
            &l.wan_addr.to_string(),
            "--duration",
            "3",
        ])
        .arg("--html")
        .arg(&live_html)
        .output()
        .expect("pathtrace --html");
    traffic.stop();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let live = std::fs::read_to_string(&live_html).expect("the live report");
    assert!(
        live.matches("<section class=\"flow\"").count() >= 3,
        "flows in the live report"
    );
    assert!(live.contains("SNAT (MASQUERADE)"));
    let left: Vec<String> = std::fs::read_dir(dir.path(""))
        .expect("the test's directory")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.contains("pathtrace-capture"))
        .collect();
    assert!(
        left.is_empty(),
        "the report's own capture is removed: {left:?}"
    );
    let bad = Command::new(BIN)
        .args([
            "--netns",
            &l.ctr_netns,
            "--duration",
            "1",
            "--html",
            "/proc/no/report.html",
        ])
        .output()
        .expect("pathtrace --html unwritable");
    let err = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(2), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("cannot write the report to /proc/no/report.html"),
        "{err}"
    );

    let keep = std::env::var_os("PATHTRACE_REPORT_SHOTS");
    for (name, size) in [("wide", "1200,1800"), ("narrow", "420,1800")] {
        let png = dir.path(&format!("report-{name}.png"));
        chromium(
            &html,
            &profile,
            &[
                &format!("--screenshot={}", png.display()),
                &format!("--window-size={size}"),
            ],
        );
        let bytes = std::fs::read(&png).expect("the screenshot");
        assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "{name}: a PNG");
        assert!(bytes.len() > 10_000, "{name}: {} bytes", bytes.len());
        eprintln!("{name} screenshot: {} bytes", bytes.len());
        if let Some(d) = &keep {
            std::fs::copy(&png, Path::new(d).join(format!("report-{name}.png"))).ok();
            std::fs::copy(&html, Path::new(d).join("report.html")).ok();
        }
    }
}
