//! `pathtrace --pod NAME -n NS` end to end against a real containerd with its CRI plugin (the
//! fixture's own: config, root, state and socket, never Docker's), Debian's CNI plugins (bridge
//! with ipMasq, host-local, portmap) and pods made through the CRI API by the test itself: the
//! four hops out and back with the CNI chain's MASQUERADE (conntrack agreeing), a hostPort's
//! DNAT through `CNI-DN-`, a Kubernetes container by its name, a pod restart followed and its
//! removal ending the trace, and the errors a user meets.
//!
//! Traffic goes only between the pods and the test's wan namespace; the wan guards the host's
//! default route; everything is removed on drop.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, MutexGuard,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context, Result};
use serde_json::Value;
use tracer::discover::netns::Netns;

use crate::{
    docker_trace::{
        assert_no_programs_left, ensure_empty, ensure_hops, final_blocks, flow_where, one_nat,
        pathtrace, text, trace_target, Running,
    },
    support::{
        cri::{Cni, Cri, Pod, PortMap},
        docker::{eth0_in, free_port, host_veth_of},
        iptables::{dnat_rule, masquerade_behind},
        privileged, serial,
        wan::{exchange, run, Wan, TCP_PORT},
    },
};

fn begin(test: &str) -> Option<MutexGuard<'static, ()>> {
    let serial = serial();
    privileged(test).then_some(serial)
}

/// The host veth of the pod's eth0 (by its iflink, checked with `ethtool -S`).
fn host_veth(pod: &Pod) -> Result<String> {
    let name = pod
        .netns
        .file_name()
        .context("netns path")?
        .to_string_lossy();
    host_veth_of(eth0_in(&name)?)
}

/// A TCP echo exchange with `addr` from inside the pod.
fn from_pod(pod: &Pod, addr: SocketAddr) -> Result<()> {
    let ns = Netns::by_name_or_path(pod.netns.to_str().context("netns path")?)?;
    ns.run(move || exchange(addr))?
}

/// An echo server on `0.0.0.0:port` inside the pod, until dropped.
struct PodServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl PodServer {
    fn start(pod: &Pod, port: u16) -> Result<Self> {
        let ns = Netns::by_name_or_path(pod.netns.to_str().context("netns path")?)?;
        let listener = ns.run(move || TcpListener::bind(("0.0.0.0", port)))??;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        let mut buf = [0u8; 512];
                        s.set_nonblocking(false).ok();
                        s.set_read_timeout(Some(Duration::from_secs(2))).ok();
                        if let Ok(n) = s.read(&mut buf) {
                            s.write_all(&buf[..n]).ok();
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for PodServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().ok();
        }
    }
}

/// The MASQUERADE line of the `CNI-<hash>` chain POSTROUTING jumps to for `ip`.
fn cni_masquerade_rule(ip: &str) -> Result<String> {
    let jump = format!("-A POSTROUTING -s {ip}/32");
    masquerade_behind("CNI", |l| l.starts_with(&jump) && l.contains("-j CNI-"))
}

/// The conntrack entry of the TCP connection from `src_ip` to the wan's echo port: its reply
/// destination (the address the connection was rewritten to).
fn conntrack_reply_dst(src_ip: &str, wan_ip: &str) -> Result<String> {
    let out = run(
        "conntrack",
        &["-L", "-p", "tcp", "-s", src_ip, "-d", wan_ip],
    )?;
    let line = out
        .lines()
        .find(|l| l.contains(&format!("dport={TCP_PORT}")))
        .with_context(|| format!("no conntrack entry {src_ip} -> {wan_ip}: {out}"))?;
    // The second `dst=` is the reply tuple's destination.
    let dst = line
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("dst="))
        .nth(1)
        .context("no reply tuple")?;
    Ok(dst.to_string())
}

fn pod_args<'a>(cri: &'a Cri, pod: &'a Pod) -> Vec<&'a str> {
    vec![
        "--pod",
        &pod.name,
        "-n",
        &pod.namespace,
        "--runtime-endpoint",
        &cri.endpoint,
    ]
}

fn json(out: &str) -> Vec<Value> {
    crate::support::lab::json_lines(out.as_bytes())
}

#[test]
fn pod_on_a_bridge_cni_masquerade_and_host_port() -> Result<()> {
    let Some(_serial) = begin("pod_on_a_bridge_cni_masquerade_and_host_port") else {
        return Ok(());
    };
    let wan = Wan::up()?;
    let cri = Cri::up()?;
    cri.allow_forward(&wan.uplink)?;
    let host_port = free_port()?;
    let pod = cri.run_pod("web", "shop", 0, &[PortMap::tcp(80, host_port)])?;
    let (veth, up) = (host_veth(&pod)?, wan.uplink.clone());
    let to: SocketAddr = format!("{}:{TCP_PORT}", wan.wan_ip).parse()?;

    // Out: the pod's eth0, its host veth, the CNI bridge, the uplink; MASQUERADE by the CNI chain.
    let out = trace_target(
        &pod_args(&cri, &pod),
        &["--to", &wan.wan_ip, "--json"],
        || (0..3).try_for_each(|_| from_pod(&pod, to)),
    )?;
    let lines = json(&out);
    let flow = flow_where(&lines, "TCP flow from the pod with replies", |f| {
        f["proto"] == "tcp"
            && text(&f["src"]).starts_with(&format!("{}:", pod.ip))
            && f["packets_back"].as_u64() > Some(0)
    })?;
    let eth0 = "shop/web:eth0";
    let bridge = &cri.bridge;
    ensure_hops(
        flow,
        "hops",
        &format!(
            "{eth0} egress -> host:{veth} ingress -> host:{bridge} ingress -> host:{up} egress"
        ),
    )?;
    ensure_hops(
        flow,
        "hops_back",
        &format!(
            "host:{up} ingress -> host:{bridge} egress -> host:{veth} egress -> {eth0} ingress"
        ),
    )?;
    let snat = one_nat(flow, "nat")?;
    let rule = cni_masquerade_rule(&pod.ip)?;
    eprintln!("iptables: {rule}");
    ensure!(
        snat["kind"] == "snat" && snat["rule"] == rule.as_str(),
        "SNAT step {snat}, iptables says {rule}"
    );
    ensure!(
        text(&snat["after"]).starts_with(&format!("{}:", wan.host_ip)),
        "SNAT to the uplink address: {snat}"
    );
    let reply_dst = conntrack_reply_dst(&pod.ip, &wan.wan_ip)?;
    ensure!(
        reply_dst == wan.host_ip,
        "conntrack rewrote to {reply_dst}, pathtrace says {snat}"
    );
    ensure_empty(flow, &["stops"])?;

    // In: the wan to the host port, DNAT through CNI-HOSTPORT-DNAT -> CNI-DN-<hash>.
    let _server = PodServer::start(&pod, 80)?;
    let public: SocketAddr = format!("{}:{host_port}", wan.host_ip).parse()?;
    let private = format!("{}:80", pod.ip);
    let out = trace_target(
        &pod_args(&cri, &pod),
        &["--to", &wan.wan_ip, "--json"],
        || (0..3).try_for_each(|_| wan.exchange(public)),
    )?;
    let lines = json(&out);
    let flow = flow_where(&lines, "inbound TCP flow with replies", |f| {
        f["proto"] == "tcp" && f["dst"] == private.as_str() && f["packets_back"].as_u64() > Some(0)
    })?;
    ensure!(flow["origin"] == "inbound", "{flow}");
    ensure_hops(
        flow,
        "hops",
        &format!(
            "host:{up} ingress -> host:{bridge} egress -> host:{veth} egress -> {eth0} ingress"
        ),
    )?;
    let dnat = one_nat(flow, "nat")?;
    let rule = dnat_rule("CNI-DN-", &private)?;
    eprintln!("iptables: {rule}");
    ensure!(
        dnat["kind"] == "dnat"
            && dnat["before"] == public.to_string().as_str()
            && dnat["after"] == private.as_str()
            && dnat["rule"] == rule.as_str(),
        "DNAT step {dnat}, iptables says {rule}"
    );

    // A Kubernetes container by its name in the pod: the pod's namespace, labelled with it.
    cri.run_container(&pod, "app")?;
    let out = trace_target(
        &[
            "--container",
            "app",
            "-n",
            "shop",
            "--runtime-endpoint",
            &cri.endpoint,
        ],
        &["--to", &wan.wan_ip, "--json"],
        || from_pod(&pod, to),
    )?;
    let lines = json(&out);
    let flow = flow_where(&lines, "TCP flow of container app", |f| {
        f["proto"] == "tcp" && f["packets_back"].as_u64() > Some(0)
    })?;
    ensure!(
        text(&flow["hops"][0]["hook"]) == "shop/web/app:eth0",
        "first hop of container app: {flow}"
    );

    // verify from the pod: PASS with the CNI chain's rule, an exit code a script can trust.
    let masq = cni_masquerade_rule(&pod.ip)?;
    let mut args = pod_args(&cri, &pod);
    let dst = to.to_string();
    args.extend([
        "--to",
        &dst,
        "--expect-snat",
        &wan.host_ip,
        "--expect-via",
        &up,
    ]);
    let v = pathtrace(&[&["verify"], args.as_slice()].concat()).output()?;
    let v_out = String::from_utf8_lossy(&v.stdout);
    eprintln!("verify: {v_out}");
    ensure!(
        v.status.code() == Some(0) && v_out.starts_with("PASS") && v_out.contains(&masq),
        "verify: {v_out}{}",
        String::from_utf8_lossy(&v.stderr)
    );

    // -w, then show: the replay has the live run's hops and rule.
    let file = cri.run_dir.join("pod.pcapng");
    let file_arg = file.to_str().context("capture path")?;
    let live = json(&trace_target(
        &pod_args(&cri, &pod),
        &["--to", &wan.wan_ip, "--json", "-w", file_arg],
        || from_pod(&pod, to),
    )?);
    let shown = pathtrace(&["show", file_arg, "--json"]).output()?;
    ensure!(
        shown.status.success(),
        "show: {}",
        String::from_utf8_lossy(&shown.stderr)
    );
    let replayed = json(&String::from_utf8_lossy(&shown.stdout));
    let pick = |lines: &[Value]| -> Result<Value> {
        Ok(flow_where(lines, "the pod's TCP flow", |f| {
            f["proto"] == "tcp" && text(&f["src"]).starts_with(&format!("{}:", pod.ip))
        })?
        .clone())
    };
    let (live, shown) = (pick(&live)?, pick(&replayed)?);
    ensure!(live["hops"] == shown["hops"], "live {live}\nshown {shown}");
    let (l, r) = (&live["nat"][0], &shown["nat"][0]);
    ensure!(text(&l["rule"]) == masq, "live rule: {l}");
    // The live view decided between portmap's mark rule and the CNI chain by their counters;
    // a capture has no counters, so the replay keeps both as candidates and says why.
    let candidates_kept = r["rule"].is_null()
        && r["rule_confidence"] == "candidates"
        && r["candidates"]
            .as_array()
            .is_some_and(|c| c.iter().any(|x| x == masq.as_str()))
        && r["why"].as_str().is_some_and(|w| !w.is_empty());
    ensure!(
        match l["rule_confidence"].as_str() {
            Some("counters") => candidates_kept,
            _ => r["rule"] == l["rule"],
        },
        "live {l}\nshown {r}"
    );
    assert_no_programs_left("after the pod traces")
}

#[test]
fn pod_restart_is_followed_and_removal_ends_the_trace() -> Result<()> {
    let Some(_serial) = begin("pod_restart_is_followed_and_removal_ends_the_trace") else {
        return Ok(());
    };
    let wan = Wan::up()?;
    let cri = Cri::up()?;
    cri.allow_forward(&wan.uplink)?;
    let old = cri.run_pod("web", "shop", 0, &[])?;
    let old_veth = host_veth(&old)?;
    let to: SocketAddr = format!("{}:{TCP_PORT}", wan.wan_ip).parse()?;
    let mut args = pod_args(&cri, &old);
    args.extend(["--to", wan.wan_ip.as_str()]);
    let mut trace = Running::spawn(&args)?;
    trace.wait_for("tracing ")?;
    from_pod(&old, to)?;
    // The kubelet's way: a new sandbox (attempt 1), then the old one stopped and removed.
    let new = cri.run_pod("web", "shop", 1, &[])?;
    cri.stop_pod(&old.id)?;
    cri.remove_pod(&old.id)?;
    let new_veth = host_veth(&new)?;
    ensure!(new_veth != old_veth, "the new sandbox kept the veth");
    let restarted = Instant::now();
    trace.wait_for("started again")?;
    eprintln!("restart seen after {:?}", restarted.elapsed());
    from_pod(&new, to)?;
    std::thread::sleep(Duration::from_millis(500));
    cri.stop_pod(&new.id)?;
    cri.remove_pod(&new.id)?;
    let removed = Instant::now();
    let mut stderr = String::new();
    trace
        .child
        .stderr
        .take()
        .context("stderr")?
        .read_to_string(&mut stderr)?;
    let status = trace.child.wait()?;
    let took = removed.elapsed();
    trace.seen.extend(trace.lines.iter());
    let out = trace.seen.join("\n") + "\n";
    eprintln!("{out}\n{stderr}exit {status:?} {took:?} after the removal");
    ensure!(status.code() == Some(2), "exit status {status:?}");
    ensure!(took < Duration::from_secs(10), "took {took:?} to notice");
    // Where the pod was found (several runtimes answer), then the one error line.
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.contains(" found in "))
        .collect();
    ensure!(
        errors.len() == 1 && errors[0].contains("pod shop/web was removed"),
        "stderr: {stderr}"
    );
    let note = out
        .lines()
        .find(|l| l.starts_with("** ") && l.contains("started again"))
        .context("no restart note")?;
    ensure!(
        note.contains("pod shop/web") && note.contains(&new_veth),
        "note: {note}"
    );
    let blocks = final_blocks(&out);
    for veth in [&old_veth, &new_veth] {
        // The new sandbox's MASQUERADE is its own CNI chain's: read again at the restart.
        let via = |b: &&String| {
            b.starts_with("tcp ")
                && b.contains(&format!("host:{veth} ingress"))
                && b.contains(&format!("host:{} egress", wan.uplink))
                && b.contains("=> SNAT (MASQUERADE)")
                && b.contains("[-A CNI-")
        };
        ensure!(
            blocks.iter().any(|b| via(&b)),
            "no flow via {veth}: {blocks:#?}"
        );
    }
    assert_no_programs_left("after the pod was removed")
}

/// Exit code 2, one line on stderr containing every one of `want`, nothing on stdout, nothing
/// attached.
fn expect_error(args: &[&str], want: &[&str]) -> Result<()> {
    let out = pathtrace(&[args, &["--duration", "1"]].concat()).output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{args:?}: {}", stderr.trim_end());
    ensure!(
        out.status.code() == Some(2),
        "{args:?}: exit {:?}",
        out.status
    );
    ensure!(
        stderr.lines().count() == 1,
        "{args:?}: not one line: {stderr}"
    );
    for w in want {
        ensure!(stderr.contains(w), "{args:?}: {w:?} not in {stderr}");
    }
    ensure!(out.stdout.is_empty(), "{args:?}: stdout");
    assert_no_programs_left(&format!("after {args:?}"))
}

#[test]
fn pod_errors_are_one_line_and_exit_code_2() -> Result<()> {
    let Some(_serial) = begin("pod_errors_are_one_line_and_exit_code_2") else {
        return Ok(());
    };
    let cri = Cri::up()?;
    let ep = cri.endpoint.as_str();
    cri.run_pod("web", "shop", 0, &[])?;
    cri.run_pod_host_network("node-agent", "kube-system")?;
    expect_error(
        &["--pod", "nope", "-n", "shop", "--runtime-endpoint", ep],
        &["no pod named 'nope' in namespace shop"],
    )?;
    expect_error(
        &["--pod", "wbe", "-n", "shop", "--runtime-endpoint", ep],
        &["did you mean: web?"],
    )?;
    expect_error(
        &["--pod", "web", "--runtime-endpoint", ep],
        &["in namespace default", "give -n shop"],
    )?;
    expect_error(
        &[
            "--pod",
            "node-agent",
            "-n",
            "kube-system",
            "--runtime-endpoint",
            ep,
        ],
        &["hostNetwork: true", "no path between namespaces"],
    )?;
    expect_error(
        &[
            "--pod",
            "web",
            "-n",
            "shop",
            "--runtime-endpoint",
            "unix:///nonexistent/cri.sock",
        ],
        &["no CRI socket at /nonexistent/cri.sock"],
    )?;
    // A path that is not a socket: the connection is refused.
    let not_a_socket = cri.run_dir.join("not-a-socket");
    std::fs::write(&not_a_socket, b"")?;
    let not_a_socket = format!("unix://{}", not_a_socket.display());
    expect_error(
        &[
            "--pod",
            "web",
            "-n",
            "shop",
            "--runtime-endpoint",
            &not_a_socket,
        ],
        &["cannot reach the CRI at", &not_a_socket],
    )?;
    // Docker's own containerd serves no CRI: said, not taken for an empty Kubernetes.
    expect_error(
        &["--pod", "web", "-n", "shop", "--runtime", "docker"],
        &["no pod named 'web' in namespace shop in any CRI runtime"],
    )?;
    Ok(())
}

#[test]
fn pod_on_a_routed_cni_has_no_bridge_hop() -> Result<()> {
    let Some(_serial) = begin("pod_on_a_routed_cni_has_no_bridge_hop") else {
        return Ok(());
    };
    let wan = Wan::up()?;
    let cri = Cri::up_with(Cni::Ptp)?;
    cri.allow_forward(&wan.uplink)?;
    let pod = cri.run_pod("api", "shop", 0, &[])?;
    let (veth, up) = (host_veth(&pod)?, wan.uplink.clone());
    let to: SocketAddr = format!("{}:{TCP_PORT}", wan.wan_ip).parse()?;
    let out = trace_target(
        &pod_args(&cri, &pod),
        &["--to", &wan.wan_ip, "--json"],
        || (0..2).try_for_each(|_| from_pod(&pod, to)),
    )?;
    let lines = json(&out);
    let flow = flow_where(&lines, "TCP flow from the routed pod", |f| {
        f["proto"] == "tcp"
            && text(&f["src"]).starts_with(&format!("{}:", pod.ip))
            && f["packets_back"].as_u64() > Some(0)
    })?;
    let eth0 = "shop/api:eth0";
    ensure_hops(
        flow,
        "hops",
        &format!("{eth0} egress -> host:{veth} ingress -> host:{up} egress"),
    )?;
    ensure_hops(
        flow,
        "hops_back",
        &format!("host:{up} ingress -> host:{veth} egress -> {eth0} ingress"),
    )?;
    let snat = one_nat(flow, "nat")?;
    let rule = cni_masquerade_rule(&pod.ip)?;
    ensure!(
        snat["kind"] == "snat" && snat["rule"] == rule.as_str(),
        "SNAT step {snat}, iptables says {rule}"
    );
    // inspect: the veth is routed, no bridge.
    let out = pathtrace(&[
        "inspect",
        "--pod",
        "api",
        "-n",
        "shop",
        "--runtime-endpoint",
        &cri.endpoint,
    ])
    .output()?;
    let text_out = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text_out}");
    ensure!(
        out.status.success() && text_out.contains("bridge     none (a routed veth)"),
        "inspect: {text_out}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_no_programs_left("after the routed pod's trace")
}
