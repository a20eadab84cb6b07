//! Issue #10, item 10: connections that reuse a tuple are flows of their own. The lab's container
//! connects to the wan host again and again from one source port (each connection ends with a
//! RST, so no TIME_WAIT holds the port); the kernel makes a new conntrack entry for each (the
//! ground truth: `conntrack -E -e NEW`), and pathtrace must show as many flows, each with its own
//! counts and its own SNAT step.

use std::{
    io::{Read, Write},
    net::{SocketAddr, SocketAddrV4, TcpListener, TcpStream},
    process::{Command, Stdio},
    time::Duration,
};

use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn};
use tracer::discover::netns::Netns;

use crate::support::{
    kernel::{pathtrace_programs, poll},
    lab::{final_flows, json_lines, TestLab},
    privileged, serial,
};

const CONNECTIONS: usize = 6;

/// One connection from `from` to `to`: a byte each way, then a RST (linger 0).
fn connect_once(from: SocketAddrV4, to: SocketAddrV4) -> std::io::Result<()> {
    let fd = socket::socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::empty(),
        None,
    )?;
    socket::setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    socket::setsockopt(&fd, sockopt::Linger, &linger)?;
    socket::bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrIn::from(from),
    )?;
    socket::connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn::from(to))?;
    let mut s = TcpStream::from(fd);
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(b"x")?;
    let mut b = [0u8; 1];
    s.read_exact(&mut b)?;
    Ok(())
}

#[test]
fn successive_connections_on_one_port_are_separate_flows() {
    let _serial = serial();
    if !privileged("successive_connections_on_one_port_are_separate_flows") {
        return;
    }
    let lab_guard = TestLab::up("tu");
    let lab = &lab_guard.0;
    let (wan, ctr) = (lab.wan_addr, lab.ctr_addr);
    let wan_ns = Netns::by_name_or_path(&lab.wan_netns).expect("wan netns");
    let listener = wan_ns
        .run(|| TcpListener::bind(SocketAddr::from((wan, 0))))
        .expect("enter wan netns")
        .expect("listen in wan");
    let port = listener.local_addr().expect("port").port();
    std::thread::spawn(move || {
        for mut s in listener.incoming().map_while(Result::ok) {
            let mut b = [0u8; 1];
            if s.read_exact(&mut b).is_ok() {
                s.write_all(&b).ok();
            }
        }
    });
    // The ground truth: the conntrack entries the kernel makes for them.
    let events = Command::new("conntrack")
        .args(["-E", "-e", "NEW", "-p", "tcp", "-d", &wan.to_string()])
        .args(["--dport", &port.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("conntrack -E");
    let wan_s = wan.to_string();
    let args = [
        "--netns",
        &lab.ctr_netns,
        "--to",
        &wan_s,
        "--json",
        "--duration",
        "5",
    ]
    .map(str::to_string);
    let trace = std::thread::spawn(move || {
        crate::support::lab::pathtrace(&args.each_ref().map(String::as_str))
    });
    assert!(
        poll(Duration::from_secs(10), || pathtrace_programs().len() >= 2),
        "pathtrace did not load its programs"
    );
    std::thread::sleep(Duration::from_millis(700));
    let from = SocketAddrV4::new(ctr, 40000 + (std::process::id() % 20000) as u16);
    let to = SocketAddrV4::new(wan, port);
    let ctr_ns = Netns::by_name_or_path(&lab.ctr_netns).expect("ctr netns");
    let made = ctr_ns
        .run(|| {
            (0..CONNECTIONS)
                .filter(|_| {
                    let ok = connect_once(from, to)
                        .map_err(|e| eprintln!("connection: {e}"))
                        .is_ok();
                    std::thread::sleep(Duration::from_millis(100));
                    ok
                })
                .count()
        })
        .expect("enter ctr netns");
    let out = trace.join().expect("pathtrace thread");
    std::thread::sleep(Duration::from_millis(300));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(events.id() as i32),
        nix::sys::signal::SIGINT,
    )
    .ok();
    let ct = events.wait_with_output().expect("conntrack -E");
    let new_entries = String::from_utf8_lossy(&ct.stdout)
        .lines()
        .filter(|l| l.contains(&format!("sport={}", from.port())))
        .count();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(made, CONNECTIONS, "every connection completes");
    assert_eq!(
        new_entries, CONNECTIONS,
        "conntrack made one entry per connection"
    );

    let lines = json_lines(&out.stdout);
    let src = from.to_string();
    let flows: Vec<_> = final_flows(&lines)
        .into_values()
        .filter(|f| f["proto"] == "tcp" && f["src"] == src.as_str())
        .collect();
    eprintln!("{} flows from {src}", flows.len());
    assert_eq!(
        flows.len(),
        CONNECTIONS,
        "one flow per connection: {flows:#?}"
    );
    for f in &flows {
        // One connection's packets, not several: SYN, ACK, the byte, ACKs, RST out (3 to 7);
        // SYN-ACK, the byte, ACK, FIN back (2 to 5). Merged, they would be multiples.
        let (out, back) = (f["packets_out"].as_u64(), f["packets_back"].as_u64());
        assert!(out.is_some_and(|n| (3..=7).contains(&n)), "{f}");
        assert!(back.is_some_and(|n| (2..=5).contains(&n)), "{f}");
        let snat: Vec<_> = f["nat"]
            .as_array()
            .expect("nat")
            .iter()
            .filter(|n| n["kind"] == "snat")
            .collect();
        assert_eq!(snat.len(), 1, "{f}");
        assert_eq!(f["stops"], serde_json::Value::Array(Vec::new()), "{f}");
    }
    let summary = lines.last().expect("summary");
    assert_eq!(
        summary["flows"].as_u64(),
        Some(CONNECTIONS as u64),
        "{summary}"
    );
}
