use std::{io, os::unix::fs::PermissionsExt};

use super::{
    block, parse_capture, read_capture, rotated_files, rotation_path,
    testframes::{eight_hooks, meta, records, tcp_frame, TempDir},
    writer::{write_queue, Sink},
    CaptureError, CaptureWriter, FormatError, WriterOptions,
};
use crate::model::{Direction, PacketRecord};

fn write(path: &std::path::Path, per_hook: u16, opts: WriterOptions) -> Vec<PacketRecord> {
    let hooks = eight_hooks();
    let recs = records(&hooks, per_hook);
    let mut w = CaptureWriter::create(path, &meta(&hooks), &hooks, opts).expect("create");
    for r in &recs {
        w.write_packet(r).expect("write");
    }
    w.finish(&[]).expect("finish");
    recs
}

/// A small capture's bytes: 8 hooks, one packet each.
fn small_capture() -> (Vec<u8>, Vec<PacketRecord>) {
    let dir = TempDir::new("capture-small");
    let path = dir.path("small.pcapng");
    let recs = write(&path, 1, WriterOptions::default());
    (std::fs::read(&path).expect("read back"), recs)
}

fn format_error(data: &[u8]) -> FormatError {
    match parse_capture(data) {
        Err(CaptureError::Format { error, .. }) => error,
        other => panic!("expected a format error, got {other:?}"),
    }
}

/// Offsets of the blocks of a little-endian capture.
fn block_offsets(data: &[u8]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos + 8 <= data.len() {
        out.push(pos);
        pos += u32::from_le_bytes(data[pos + 4..pos + 8].try_into().expect("4 bytes")) as usize;
    }
    out
}

#[test]
fn round_trip_eight_hooks() {
    let dir = TempDir::new("capture-rt");
    let path = dir.path("rt.pcapng");
    let written = write(&path, 5, WriterOptions::default());
    let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    let cap = read_capture(&path).expect("read");
    assert_eq!(
        cap.records, written,
        "records, fingerprints and ktime survive the round trip"
    );
    assert_eq!(cap.meta, Some(meta(&eight_hooks())));
    assert_eq!(cap.topology, meta(&eight_hooks()).topology);
    assert_eq!(
        (cap.sections, cap.truncated_tail, cap.skipped),
        (1, false, 0)
    );
    assert_eq!(
        cap.application.as_deref(),
        Some(concat!("pathtrace ", env!("CARGO_PKG_VERSION")))
    );
    assert!(cap.warnings.is_empty(), "{:?}", cap.warnings);
    let data = std::fs::read(&path).expect("read bytes");
    let comment = format!(
        "fp={:016x} hook=host:pt-br0 ingress",
        written[2].fingerprint
    );
    assert!(data.windows(comment.len()).any(|w| w == comment.as_bytes()));
}

#[test]
fn reattached_hook_gets_a_new_interface() {
    let dir = TempDir::new("capture-reattach");
    let path = dir.path("re.pcapng");
    let hooks = eight_hooks();
    let mut w = CaptureWriter::create(&path, &meta(&hooks), &hooks[..2], WriterOptions::default())
        .expect("create");
    let recs = records(&hooks, 1);
    w.write_packet(&recs[0]).expect("write");
    assert!(matches!(
        w.write_packet(&recs[2]),
        Err(CaptureError::UnknownSlot(2))
    ));
    let mut again = hooks[0].clone();
    again.ifindex = 99;
    w.add_hook(&again).expect("re-attach");
    w.add_hook(&hooks[2]).expect("late hook");
    w.write_packet(&recs[0]).expect("write");
    w.write_packet(&recs[2]).expect("write");
    w.finish(&[]).expect("finish");

    let cap = read_capture(&path).expect("read");
    let ifindexes: Vec<u32> = cap.records.iter().map(|r| r.ifindex).collect();
    assert_eq!(ifindexes, [10, 99, 12]);
    assert!(
        cap.topology.hook(2).is_some(),
        "a late hook is known from its IDB"
    );
}

#[test]
fn rotation_keeps_the_newest_files_each_complete() {
    let dir = TempDir::new("capture-rot");
    let base = dir.path("rot.pcapng");
    let opts = WriterOptions {
        max_size: Some(4096),
        max_files: Some(3),
    };
    let written = write(&base, 10, opts);
    let files = rotated_files(&base).expect("list");
    assert_eq!(files.len(), 3, "{files:?}");
    assert!(!base.exists(), "the oldest file was deleted");
    let mut all = Vec::new();
    let mut read = Vec::new();
    for f in &files {
        assert!(std::fs::metadata(f).expect("stat").len() <= 4096);
        let cap = read_capture(f).expect("each file stands alone");
        assert_eq!(cap.topology.hooks, eight_hooks());
        read.extend(cap.records);
        all.extend(std::fs::read(f).expect("read"));
    }
    assert_eq!(
        read[..],
        written[written.len() - read.len()..],
        "the newest packets remain"
    );
    let joined = parse_capture(&all).expect("concatenated files");
    assert_eq!((joined.sections, joined.records.len()), (3, read.len()));
    let last = files[2]
        .extension()
        .and_then(|e| e.to_str())
        .and_then(|e| e.parse::<u32>().ok());
    let last = last.expect("rotated files are numbered");
    let expected: Vec<_> = (last - 2..=last).map(|i| rotation_path(&base, i)).collect();
    assert_eq!(files, expected, "FILE.N, consecutive, oldest first");
}

#[test]
fn every_truncation_is_clean() {
    let (data, recs) = small_capture();
    let header_end = block_offsets(&data)[1];
    for cut in 0..data.len() {
        match parse_capture(&data[..cut]) {
            Ok(cap) => {
                assert!(cut >= header_end, "cut {cut} inside the header must fail");
                assert_eq!(cap.records[..], recs[..cap.records.len()], "cut {cut}");
                let at_boundary = block_offsets(&data).contains(&cut);
                assert_eq!(cap.truncated_tail, !at_boundary, "cut {cut}");
            }
            Err(e) => {
                assert!(cut < header_end, "cut {cut}: {e}");
                assert_eq!(e.to_string().lines().count(), 1);
            }
        }
    }
}

/// Every byte set to 0x00, 0xff and 0x80 in turn: a clean result or a one-line error, never a panic.
#[test]
fn every_corrupted_byte_is_clean() {
    let (data, _) = small_capture();
    for i in 0..data.len() {
        for v in [0x00, 0xff, 0x80] {
            let mut bad = data.clone();
            bad[i] = v;
            if let Err(e) = parse_capture(&bad) {
                assert!(!e.to_string().contains('\n'), "byte {i}: {e}");
            }
        }
    }
}

#[test]
fn corrupt_block_lengths_are_errors() {
    let (data, _) = small_capture();
    let second = block_offsets(&data)[1];
    let mut bad = data.clone();
    bad[second + 4..second + 8].copy_from_slice(&13u32.to_le_bytes());
    assert_eq!(
        format_error(&bad),
        FormatError::BlockLength {
            offset: second,
            len: 13
        }
    );
    let mut bad = data.clone();
    let len = u32::from_le_bytes(data[second + 4..second + 8].try_into().expect("4 bytes"));
    let end = second + len as usize;
    bad[end - 4..end].copy_from_slice(&(len + 4).to_le_bytes());
    assert_eq!(
        format_error(&bad),
        FormatError::BlockTrailer {
            offset: second,
            len,
            trailer: len + 4
        }
    );
}

#[test]
fn newer_major_version_is_refused() {
    let (mut data, _) = small_capture();
    data[12..14].copy_from_slice(&2u16.to_le_bytes());
    let msg = parse_capture(&data).expect_err("version 2").to_string();
    assert_eq!(
        msg,
        "input was written by a newer format version 2.0; this pathtrace reads pcapng 1.0"
    );
}

#[test]
fn not_pcapng_files_say_what_they_look_like() {
    assert_eq!(format_error(&[]), FormatError::Empty);
    let classic = [0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0, 0, 0, 0, 0];
    let msg = parse_capture(&classic)
        .expect_err("classic pcap")
        .to_string();
    assert!(
        msg.starts_with("input is not a pcapng file (it looks like a classic pcap file"),
        "{msg}"
    );
    assert!(
        matches!(format_error(b"{\"flow\": 1}\n"), FormatError::NotPcapng(s) if s.starts_with("JSON"))
    );
    assert_eq!(format_error(b"hello\n"), FormatError::NotPcapng("text"));
    assert_eq!(
        format_error(&[0x0a, 0x0d, 0x0d]),
        FormatError::TruncatedHeader(3)
    );
    let dir = TempDir::new("capture-missing");
    let msg = read_capture(&dir.path("nope"))
        .expect_err("missing")
        .to_string();
    assert!(msg.ends_with("nope: no such file or directory"), "{msg}");
}

#[test]
fn unreadable_snapshot_falls_back_to_interface_blocks() {
    let (mut data, recs) = small_capture();
    let tag = data
        .windows(20)
        .position(|w| w == super::SNAPSHOT_TAG)
        .expect("snapshot tag");
    data[tag + 24] = b'#'; // the JSON's opening brace
    let cap = parse_capture(&data).expect("still readable");
    assert_eq!(cap.meta, None);
    assert_eq!(
        cap.topology.hooks,
        eight_hooks(),
        "descriptions carry every hook field"
    );
    assert_eq!(cap.topology.target, "minio");
    assert_eq!(cap.warnings.len(), 1, "{:?}", cap.warnings);
    // Without the snapshot's clock offset, ktime is wall-clock time: deltas are unchanged.
    let delta = |v: &[PacketRecord]| v[1].ktime_ns - v[0].ktime_ns;
    assert_eq!(delta(&cap.records), delta(&recs));
}

/// A big-endian file another tool could have written: no snapshot, no descriptions, µs clock.
fn big_endian_file() -> Vec<u8> {
    fn be_block(ty: u32, body: &[u8]) -> Vec<u8> {
        let len = (body.len() + 12) as u32;
        [
            &ty.to_be_bytes()[..],
            &len.to_be_bytes(),
            body,
            &len.to_be_bytes(),
        ]
        .concat()
    }
    let mut shb = vec![0x1a, 0x2b, 0x3c, 0x4d, 0, 1, 0, 0];
    shb.extend_from_slice(&[0xff; 8]);
    let mut idb = vec![0, 1, 0, 0, 0, 0, 1, 0];
    idb.extend_from_slice(&[0, 2, 0, 8]);
    idb.extend_from_slice(b"web:eth0");
    idb.extend_from_slice(&[0, 9, 0, 1, 6, 0, 0, 0, 0, 0, 0, 0]); // if_tsresol 6, end
    let frame = tcp_frame([10, 0, 0, 1], [10, 0, 0, 2], 1234, 80, 1, 7);
    let mut epb = Vec::new();
    for v in [0u32, 0, 1_000_000, frame.len() as u32, frame.len() as u32] {
        epb.extend_from_slice(&v.to_be_bytes());
    }
    epb.extend_from_slice(&frame);
    epb.resize(epb.len().next_multiple_of(4), 0);
    epb.extend_from_slice(&[0, 2, 0, 4, 0, 0, 0, 2, 0, 0, 0, 0]); // epb_flags: outbound
    let mut file = be_block(block::SHB, &shb);
    file.extend(be_block(block::IDB, &idb));
    file.extend(be_block(0x0bad, &[1, 2, 3, 4])); // a custom block: skipped
    file.extend(be_block(block::EPB, &epb));
    file
}

#[test]
fn big_endian_foreign_file() {
    let file = big_endian_file();
    let cap = parse_capture(&file).expect("big-endian");
    assert_eq!(cap.records.len(), 1);
    let rec = &cap.records[0];
    assert_eq!(
        (rec.direction, rec.ktime_ns, rec.src.port),
        (Direction::Egress, 1_000_000_000, 1234)
    );
    let hook = cap.topology.hook(rec.slot).expect("hook from the IDB name");
    assert_eq!(
        (hook.ns_label.as_str(), hook.ifname.as_str()),
        ("web", "eth0")
    );
    assert_eq!(cap.topology.target, "web");
}

#[test]
fn unwritable_paths_say_so_in_one_line() {
    let dir = TempDir::new("capture-unwritable");
    let hooks = eight_hooks();
    let path = dir.path("no/such/dir.pcapng");
    let err = CaptureWriter::create(&path, &meta(&hooks), &hooks, WriterOptions::default())
        .err()
        .expect("fails");
    let want = format!(
        "cannot create {}: no such file or directory; choose a writable path with -w",
        path.display()
    );
    assert_eq!(err.to_string(), want);
    let opts = WriterOptions {
        max_size: None,
        max_files: Some(0),
    };
    assert!(CaptureWriter::create(&dir.path("x"), &meta(&hooks), &hooks, opts).is_err());
}

#[test]
fn dev_full_is_disk_full() {
    let hooks = eight_hooks();
    let path = std::path::Path::new("/dev/full");
    if !path.exists() {
        eprintln!("SKIP dev_full_is_disk_full: no /dev/full");
        return;
    }
    let err = CaptureWriter::create(path, &meta(&hooks), &hooks, WriterOptions::default())
        .err()
        .expect("fails");
    assert!(matches!(err, CaptureError::DiskFull { .. }), "{err}");
}

/// A sink that holds `room` bytes, then fails with ENOSPC.
struct Full {
    data: Vec<u8>,
    room: usize,
}

impl io::Write for Full {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(self.room - self.data.len()).min(7); // short writes
        if n == 0 {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        self.data.extend_from_slice(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Sink for Full {
    fn cut(&mut self, len: u64) -> io::Result<()> {
        self.data.truncate(len as usize);
        Ok(())
    }
}

#[test]
fn disk_full_cuts_back_to_the_last_complete_block() {
    let (data, recs) = small_capture();
    let blocks = block_offsets(&data);
    let header_end = blocks[9]; // SHB + 8 IDBs
    let queue = &data[header_end..];
    let ends: Vec<usize> = blocks[10..]
        .iter()
        .chain([&data.len()])
        .map(|o| o - header_end)
        .collect();
    for room in header_end..data.len() {
        let mut sink = Full {
            data: data[..header_end].to_vec(),
            room,
        };
        let (len, err) =
            write_queue(&mut sink, header_end as u64, queue, &ends).expect_err("disk full");
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
        assert_eq!(sink.data.len() as u64, len);
        assert!(
            blocks.contains(&(len as usize)),
            "room {room}: cut at {len}, not a block boundary"
        );
        let cap = parse_capture(&sink.data).expect("valid up to its last block");
        assert!(!cap.truncated_tail);
        assert_eq!(cap.records[..], recs[..cap.records.len()]);
    }
}

#[test]
fn large_snapshot_spans_several_options() {
    let dir = TempDir::new("capture-bigsnap");
    let path = dir.path("big.pcapng");
    let hooks = eight_hooks();
    let mut m = meta(&hooks);
    let rule = m.topology.nat_rules[0].clone();
    m.topology.nat_rules = vec![rule; 3000]; // ≈ 250 KB of JSON: four options
    let mut w = CaptureWriter::create(&path, &m, &hooks, WriterOptions::default()).expect("create");
    w.write_packet(&records(&hooks, 1)[0]).expect("write");
    w.finish(&[]).expect("finish");
    let cap = read_capture(&path).expect("read");
    assert_eq!(cap.meta, Some(m));
    assert!(cap.warnings.is_empty(), "{:?}", cap.warnings);
}

/// Writes the seed corpus of the `capture_reader` fuzz target (tiny files, committed).
#[test]
#[ignore = "generates fuzz/corpus/capture_reader; run by hand with --ignored"]
fn write_fuzz_seeds() {
    let out =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/capture_reader");
    std::fs::create_dir_all(&out).expect("corpus dir");
    let hooks = eight_hooks();
    let mut m = meta(&hooks[..2]);
    m.topology.nat_rules.clear();
    let dir = TempDir::new("capture-seeds");
    let path = dir.path("seed.pcapng");
    let mut w =
        CaptureWriter::create(&path, &m, &hooks[..2], WriterOptions::default()).expect("create");
    for r in records(&hooks[..2], 2) {
        w.write_packet(&r).expect("write");
    }
    let mut again = hooks[1].clone();
    again.ifindex = 77;
    w.add_hook(&again).expect("re-attach");
    w.write_packet(&records(&hooks[..2], 1)[1]).expect("write");
    w.finish(&[]).expect("finish");
    let two_hooks = std::fs::read(&path).expect("read");
    let cut = two_hooks.len() - 10;
    let seeds = [
        ("two_hooks_reattach.pcapng", two_hooks.clone()),
        ("truncated_tail.pcapng", two_hooks[..cut].to_vec()),
        ("big_endian_foreign.pcapng", big_endian_file()),
    ];
    for (name, data) in seeds {
        std::fs::write(out.join(name), data).expect("write seed");
    }
}

#[test]
fn kernel_drops_round_trip_on_their_own_interface() {
    let dir = TempDir::new("capture-drops");
    let path = dir.path("drops.pcapng");
    let hooks = eight_hooks();
    let recs = records(&hooks, 2);
    let mut w = CaptureWriter::create(&path, &meta(&hooks), &hooks, WriterOptions::default())
        .expect("create");
    let drop = crate::model::DropRecord {
        ktime_ns: recs[3].ktime_ns + 1,
        fingerprint: recs[3].fingerprint,
        reason: 6,
        reason_name: Some("NETFILTER_DROP".into()),
        tuple: None,
        traced: true,
    };
    for (i, r) in recs.iter().enumerate() {
        w.write_packet(r).expect("write");
        if i == 3 {
            w.write_drop(&drop).expect("write drop");
        }
    }
    w.finish(&[]).expect("finish");
    let cap = read_capture(&path).expect("read");
    assert_eq!(
        cap.records, recs,
        "packets unchanged by the drops interface"
    );
    assert_eq!(cap.drops, vec![drop.clone()]);
    assert_eq!(cap.skipped, 0);
    assert!(
        !cap.topology
            .hooks
            .iter()
            .any(|h| h.label().contains("drops")),
        "the drops interface is no hook"
    );
    let data = std::fs::read(&path).expect("read bytes");
    let comment = format!("kernel drop NETFILTER_DROP fp={:016x}", drop.fingerprint);
    assert!(data.windows(comment.len()).any(|w| w == comment.as_bytes()));
}
