//! Issue #10, item 6: `--container X` for a container on the host's network traces its traffic
//! on the host's uplinks, told apart by its sockets. The lab's wan host (behind the lab uplink)
//! connects to the container's server, and the container connects to a server in the wan. The
//! ground truth is tcpdump on the lab uplink: every packet pathtrace shows was there, and for
//! the server (its socket known from the start) every packet there is shown.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

use serde_json::Value;
use tracer::discover::netns::Netns;

use crate::support::{
    docker::TestContainer,
    docker_or_skip,
    hostns::Tcpdump,
    kernel::{pathtrace_programs, poll},
    lab::{final_flows, json_lines, pathtrace, TestLab},
    privileged, serial,
};

const SERVER_PORT: u16 = 7777;

#[test]
fn a_host_network_container_is_traced_on_the_host_uplink() {
    let _serial = serial();
    let test = "a_host_network_container_is_traced_on_the_host_uplink";
    if !(docker_or_skip(test) && privileged(test)) {
        return;
    }
    let lab_guard = TestLab::up("hn");
    let lab = &lab_guard.0;
    let (wan, up) = (lab.wan_addr, lab.uplink_addr);
    // A server in the wan for the container's outbound connection: it answers after a while,
    // so that the connection outlives a look for the container's sockets.
    let wan_ns = Netns::by_name_or_path(&lab.wan_netns).expect("wan netns");
    let listener = wan_ns
        // A fixed port below the ephemeral range, as servers have: the side pathtrace takes
        // for the server of a connection it first sees mid-way.
        .run(|| TcpListener::bind(SocketAddr::from((wan, 7788))))
        .expect("enter wan")
        .expect("listen in wan");
    let out_port = listener.local_addr().expect("port").port();
    std::thread::spawn(move || {
        for mut s in listener.incoming().map_while(Result::ok) {
            std::thread::sleep(Duration::from_millis(400));
            let mut b = [0u8; 64];
            let n = s.read(&mut b).unwrap_or(0);
            s.write_all(&b[..n]).ok();
        }
    });
    let script = format!(
        "nc -ll -p {SERVER_PORT} -e cat & sleep 2.5; (echo out; sleep 1) | nc -w 2 {wan} {out_port}; sleep 60"
    );
    let ctr = TestContainer::run("hostnet", &["--network", "host"], &["sh", "-c", &script])
        .expect("docker run --network host");
    let dump = Tcpdump::start(
        "",
        &lab.uplink,
        &format!("tcp port {SERVER_PORT} or tcp port {out_port}"),
    );
    let name = ctr.name.clone();
    let wan_s = wan.to_string();
    let trace = std::thread::spawn(move || {
        pathtrace(&[
            "--container",
            &name,
            "--to",
            &wan_s,
            "--json",
            "--duration",
            "5",
        ])
    });
    assert!(
        poll(Duration::from_secs(10), || pathtrace_programs().len() >= 2),
        "pathtrace did not load its programs"
    );
    std::thread::sleep(Duration::from_millis(700));
    // The wan host to the container's server, at the host's address on the lab uplink.
    let echoed = wan_ns
        .run(|| -> std::io::Result<String> {
            let mut s = TcpStream::connect_timeout(
                &SocketAddr::from((up, SERVER_PORT)),
                Duration::from_secs(2),
            )?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            s.write_all(b"hello\n")?;
            let mut b = [0u8; 6];
            s.read_exact(&mut b)?;
            Ok(String::from_utf8_lossy(&b).into_owned())
        })
        .expect("enter wan")
        .expect("the container's server answers");
    assert_eq!(echoed, "hello\n");
    let out = trace.join().expect("pathtrace thread");
    let seen = dump.stop();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("uses the host network"), "{stderr}");
    let count = |port: u16| {
        seen.iter()
            .filter(|l| l.contains(&format!(".{port} ")) || l.contains(&format!(".{port}:")))
            .count() as u64
    };
    let lines = json_lines(&out.stdout);
    let flows: Vec<Value> = final_flows(&lines).into_values().collect();
    let packets = |f: &Value| {
        f["packets_out"].as_u64().unwrap_or(0) + f["packets_back"].as_u64().unwrap_or(0)
    };
    // Inbound to the server: every packet tcpdump saw, at the uplink both ways.
    let inbound: Vec<&Value> = flows
        .iter()
        .filter(|f| f["dst"] == format!("{up}:{SERVER_PORT}"))
        .collect();
    assert_eq!(inbound.len(), 1, "{flows:#?}");
    let f = inbound[0];
    assert_eq!(f["origin"], "inbound", "{f}");
    assert_eq!(
        packets(f),
        count(SERVER_PORT),
        "tcpdump on the uplink: {seen:?}"
    );
    assert_eq!(f["hops"][0]["hook"], format!("host:{}", lab.uplink), "{f}");
    assert_eq!(f["stops"], Value::Array(Vec::new()), "{f}");
    assert!(
        f["notes"].as_array().is_some_and(|n| n.iter().any(|n| n
            .as_str()
            .is_some_and(|s| s.contains("uses the host network")))),
        "{f}"
    );
    // Outbound from the container: seen from when its socket was found, never more than was there.
    let outbound: Vec<&Value> = flows
        .iter()
        .filter(|f| f["dst"] == format!("{wan}:{out_port}"))
        .collect();
    assert_eq!(outbound.len(), 1, "{flows:#?}");
    let n = packets(outbound[0]);
    eprintln!(
        "outbound: pathtrace {n} packets, tcpdump {}",
        count(out_port)
    );
    assert!(n > 0 && n <= count(out_port), "{}", outbound[0]);
    assert_eq!(outbound[0]["origin"], "outbound");
    // `verify` probes from a namespace of the container's own, which it has not: one line that
    // names the command that works, exit 2.
    let v = pathtrace(&["verify", "--container", &ctr.name, "--to", &wan.to_string()]);
    let err = String::from_utf8_lossy(&v.stderr);
    assert_eq!(v.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("`pathtrace --container {}` traces", ctr.name)),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}
