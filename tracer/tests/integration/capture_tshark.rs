//! The capture files pathtrace writes, as Wireshark's own reader sees them: one interface per hook
//! named by its label and described, every packet on its hook's interface with its comment and
//! direction flag. Needs `tshark`: skipped with a loud message when it is missing, except under CI
//! (env `CI` set), where a missing tshark fails the test.

use std::{collections::BTreeMap, process::Command};

// `testframes.rs` names `crate::capture` and `crate::model`; these make them resolve here.
use tracer::{
    capture::{
        read_capture,
        testframes::{eight_hooks, meta, records, TempDir},
        CaptureWriter, HookTime, WriterOptions,
    },
    model::Direction,
};

/// `tshark -r FILE -T fields -e F...`, one `Vec` of fields per packet; `None` when tshark is missing.
fn tshark_fields(file: &std::path::Path, fields: &[&str]) -> Option<Vec<Vec<String>>> {
    let mut cmd = Command::new("tshark");
    cmd.arg("-r")
        .arg(file)
        .args(["-T", "fields", "-E", "separator=|"]);
    for f in fields {
        cmd.args(["-e", f]);
    }
    let out = match cmd.output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let msg = "tshark is not installed: the pcapng interoperability test did NOT run";
            eprintln!("\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n!!! {msg}\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n");
            assert!(
                std::env::var_os("CI").is_none(),
                "{msg} (CI is set: install tshark)"
            );
            return None;
        }
        Err(e) => panic!("cannot run tshark: {e}"),
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "tshark failed: {stderr}");
    let stdout = String::from_utf8(out.stdout).expect("tshark prints UTF-8");
    Some(
        stdout
            .lines()
            .map(|l| l.split('|').map(str::to_string).collect())
            .collect(),
    )
}

#[test]
fn tshark_sees_one_interface_per_hook() {
    let dir = TempDir::new("capture-tshark");
    let path = dir.path("trace.pcapng");
    let hooks = eight_hooks();
    let recs = records(&hooks, 3);
    let mut w = CaptureWriter::create(&path, &meta(&hooks), &hooks, WriterOptions::default())
        .expect("create");
    for r in &recs {
        w.write_packet(r).expect("write");
    }
    // The closing block of hook times (a pcapng custom block): tshark must read past it.
    let times: Vec<HookTime> = hooks
        .iter()
        .map(|h| HookTime {
            slot: h.slot,
            direction: h.direction,
            attached_ns: 1_000 + u64::from(h.slot),
            detached_ns: 9_000_000,
        })
        .collect();
    w.finish(&times).expect("finish");
    assert_eq!(read_capture(&path).expect("read back").hook_times, times);

    let fields = [
        "frame.interface_name",
        "frame.comment",
        "frame.interface_description",
        "frame.packet_flags_direction",
    ];
    let Some(rows) = tshark_fields(&path, &fields) else {
        return;
    };
    assert_eq!(rows.len(), recs.len(), "tshark reads every packet");

    let mut want: BTreeMap<String, usize> = BTreeMap::new();
    for r in &recs {
        let hook = hooks.iter().find(|h| h.slot == r.slot).expect("hook");
        *want.entry(hook.label()).or_default() += 1;
    }
    let mut got: BTreeMap<String, usize> = BTreeMap::new();
    for (row, rec) in rows.iter().zip(&recs) {
        let [name, comment, description, direction] = &row[..] else {
            panic!("unexpected tshark row {row:?}");
        };
        *got.entry(name.clone()).or_default() += 1;
        let hook = hooks.iter().find(|h| h.slot == rec.slot).expect("hook");
        assert_eq!(name, &hook.label());
        assert_eq!(
            comment,
            &format!(
                "fp={:016x} hook={} {}",
                rec.fingerprint,
                hook.label(),
                rec.direction
            )
        );
        assert!(
            description.starts_with(&format!("pathtrace slot {}: ", rec.slot)),
            "{description}"
        );
        let flag = match rec.direction {
            Direction::Ingress => 1, // epb_flags "inbound"
            Direction::Egress => 2,  // "outbound"
        };
        let shown = u32::from_str_radix(direction.trim_start_matches("0x"), 16);
        assert_eq!(
            shown,
            Ok(flag),
            "direction flag {direction:?} of {}",
            rec.direction
        );
    }
    assert_eq!(got, want, "packets per interface name");
}
