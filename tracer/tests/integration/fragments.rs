//! Issue #10, item 2: IP fragments are parts of one datagram. 4,000-byte UDP datagrams and pings
//! cross the lab (MTU 1500: three fragments each way); the bridge's hook sees the outbound ones
//! reassembled (br_netfilter), the uplink fragments again. The ground truth is tcpdump on the
//! host veth, the bridge and the uplink, read back by tshark one packet per line.

use std::{
    net::{SocketAddr, UdpSocket},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use serde_json::Value;
use tracer::discover::netns::Netns;

use crate::support::{
    kernel::{pathtrace_programs, poll},
    lab::{final_flows, json_lines, pathtrace, sh, TestLab},
    privileged, serial,
};

const DATAGRAMS: u64 = 2;
const SIZE: usize = 4000;

/// One packet as tshark reads it: source, destination, IP protocol, fragment or not.
#[derive(Debug)]
struct Seen {
    src: String,
    dst: String,
    proto: u8,
    fragment: bool,
}

fn read(pcap: &std::path::Path) -> Vec<Seen> {
    let fields = sh(
        "tshark",
        &[
            "-r",
            pcap.to_str().unwrap_or(""),
            "-o",
            "ip.defragment:FALSE",
            "-T",
            "fields",
            "-e",
            "ip.src",
            "-e",
            "ip.dst",
            "-e",
            "ip.proto",
            "-e",
            "ip.flags.mf",
            "-e",
            "ip.frag_offset",
        ],
    );
    fields
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            let [src, dst, proto, mf, off] = f[..] else {
                return None;
            };
            let more = mf == "1" || mf == "True";
            Some(Seen {
                src: src.into(),
                dst: dst.into(),
                proto: proto.parse().ok()?,
                fragment: more || off.parse::<u32>().is_ok_and(|o| o > 0),
            })
        })
        .collect()
}

/// Fragments and whole datagrams of `proto` from `src` (or to `dst`) in a capture.
fn count(seen: &[Seen], proto: u8, src: Option<&str>, dst: Option<&str>) -> (u64, u64) {
    let ours = seen.iter().filter(|s| {
        s.proto == proto && src.is_none_or(|a| s.src == a) && dst.is_none_or(|a| s.dst == a)
    });
    let (mut frags, mut whole) = (0, 0);
    for s in ours {
        if s.fragment {
            frags += 1;
        } else {
            whole += 1;
        }
    }
    (frags, whole)
}

fn hop<'a>(hops: &'a Value, hook: &str, dir: &str) -> &'a Value {
    hops.as_array()
        .and_then(|h| h.iter().find(|h| h["hook"] == hook && h["dir"] == dir))
        .unwrap_or_else(|| panic!("no hop {hook} {dir} in {hops}"))
}

#[test]
fn fragments_are_parts_of_one_datagram_both_ways_for_udp_and_icmp() {
    let _serial = serial();
    if !privileged("fragments_are_parts_of_one_datagram_both_ways_for_udp_and_icmp") {
        return;
    }
    let lab_guard = TestLab::up("fg");
    let lab = &lab_guard.0;
    let (ctr, wan, up) = (
        lab.ctr_addr.to_string(),
        lab.wan_addr.to_string(),
        lab.uplink_addr.to_string(),
    );
    // An echo server for big datagrams in the wan namespace.
    let wan_ns = Netns::by_name_or_path(&lab.wan_netns).expect("wan netns");
    let server = wan_ns
        .run(|| UdpSocket::bind(SocketAddr::from((lab.wan_addr, 0))))
        .expect("enter wan")
        .expect("bind");
    let port = server.local_addr().expect("port").port();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, from)) = server.recv_from(&mut buf) {
            server.send_to(&buf[..n], from).ok();
        }
    });
    let dir = std::env::temp_dir().join(format!("pathtrace-frag-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let ifaces = [
        lab.host_veth.clone(),
        lab.bridge.clone(),
        lab.uplink.clone(),
    ];
    let mut dumps: Vec<(Child, PathBuf)> = ifaces
        .iter()
        .map(|i| {
            let file = dir.join(format!("{i}.pcap"));
            let child = Command::new("tcpdump")
                .args(["-n", "-i", i, "-w", file.to_str().unwrap_or(""), "ip"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("tcpdump");
            (child, file)
        })
        .collect();
    std::thread::sleep(Duration::from_millis(800));
    let args = [
        "--netns",
        &lab.ctr_netns,
        "--to",
        &wan,
        "--json",
        "--duration",
        "5",
    ]
    .map(str::to_string);
    let trace = std::thread::spawn(move || pathtrace(&args.each_ref().map(String::as_str)));
    assert!(
        poll(Duration::from_secs(10), || pathtrace_programs().len() >= 2),
        "pathtrace did not load its programs"
    );
    std::thread::sleep(Duration::from_millis(700));
    let ctr_ns = Netns::by_name_or_path(&lab.ctr_netns).expect("ctr netns");
    let answered = ctr_ns
        .run(|| -> std::io::Result<u64> {
            let s = UdpSocket::bind("0.0.0.0:0")?;
            s.set_read_timeout(Some(Duration::from_secs(1)))?;
            let mut got = 0;
            let mut buf = vec![0u8; 65536];
            for i in 0..DATAGRAMS {
                s.send_to(&[i as u8; SIZE], (lab.wan_addr, port))?;
                if s.recv_from(&mut buf).is_ok_and(|(n, _)| n == SIZE) {
                    got += 1;
                }
            }
            Ok(got)
        })
        .expect("enter ctr")
        .expect("udp exchange");
    assert_eq!(answered, DATAGRAMS, "every datagram came back");
    let ping = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.ctr_netns,
            "ping",
            "-c",
            "2",
            "-i",
            "0.3",
            "-s",
            "4000",
            &wan,
        ])
        .output()
        .expect("ping");
    assert!(
        ping.status.success(),
        "{}",
        String::from_utf8_lossy(&ping.stdout)
    );
    let out = trace.join().expect("pathtrace thread");
    std::thread::sleep(Duration::from_millis(300));
    for (child, _) in &mut dumps {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::SIGINT,
        )
        .ok();
        child.wait().ok();
    }
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: Vec<Vec<Seen>> = dumps.iter().map(|(_, f)| read(f)).collect();
    std::fs::remove_dir_all(&dir).ok();
    let [veth, br, upl] = [&seen[0], &seen[1], &seen[2]];

    let lines = json_lines(&out.stdout);
    let summary = lines.last().expect("summary");
    assert!(summary.get("orphan_fragments").is_none(), "{summary}");
    let flows: Vec<Value> = final_flows(&lines).into_values().collect();
    // No flow without ports where ports exist: the later fragments are not flows of their own.
    let udp: Vec<&Value> = flows.iter().filter(|f| f["proto"] == "udp").collect();
    assert_eq!(udp.len(), 1, "one UDP flow, no port-0 one: {udp:#?}");
    let icmp: Vec<&Value> = flows.iter().filter(|f| f["proto"] == "icmp").collect();
    assert_eq!(icmp.len(), 1, "one ICMP flow: {icmp:#?}");
    let (h_veth, h_br, h_up) = (
        format!("host:{}", lab.host_veth),
        format!("host:{}", lab.bridge),
        format!("host:{}", lab.uplink),
    );
    for (f, proto) in [(udp[0], 17u8), (icmp[0], 1u8)] {
        assert_eq!(f["packets_out"].as_u64(), Some(DATAGRAMS), "{f}");
        assert_eq!(f["packets_back"].as_u64(), Some(DATAGRAMS), "{f}");
        assert_eq!(f["stops"], Value::Array(Vec::new()), "no loss: {f}");
        // Per hook, pathtrace's fragment counts against tcpdump's.
        let expect = [
            (
                &f["hops"],
                &h_veth,
                "ingress",
                count(veth, proto, Some(&ctr), None),
            ),
            (
                &f["hops"],
                &h_br,
                "ingress",
                count(br, proto, Some(&ctr), None),
            ),
            (
                &f["hops"],
                &h_up,
                "egress",
                count(upl, proto, Some(&up), None),
            ),
            (
                &f["hops_back"],
                &h_up,
                "ingress",
                count(upl, proto, None, Some(&up)),
            ),
            (
                &f["hops_back"],
                &h_br,
                "egress",
                count(br, proto, None, Some(&ctr)),
            ),
            (
                &f["hops_back"],
                &h_veth,
                "egress",
                count(veth, proto, None, Some(&ctr)),
            ),
        ];
        for (hops, hook, dir, (frags, whole)) in expect {
            let h = hop(hops, hook, dir);
            eprintln!("proto {proto} {hook} {dir}: tcpdump {frags} fragments, {whole} whole; pathtrace {h}");
            assert_eq!(
                h["fragments"].as_u64(),
                Some(frags),
                "{hook} {dir} fragments: {h}"
            );
            assert_eq!(
                h["packets"].as_u64(),
                Some(DATAGRAMS),
                "{hook} {dir} datagrams: {h}"
            );
            if frags == 0 {
                assert_eq!(whole, DATAGRAMS, "tcpdump saw them whole at {hook}");
            }
        }
        let snat: Vec<&Value> = f["nat"].as_array().expect("nat").iter().collect();
        assert_eq!(snat.len(), 1, "{f}");
    }
    // The outbound datagrams were reassembled at the bridge (br_netfilter), and fragmented
    // everywhere else: the test covers both forms.
    assert_eq!(count(br, 17, Some(&ctr), None), (0, DATAGRAMS));
    assert_eq!(count(veth, 17, Some(&ctr), None).0, 3 * DATAGRAMS);
}
