//! `pathtrace --container` end to end against the real dockerd, with the real binary: outbound
//! MASQUERADE, a published port's DNAT, docker-proxy, two containers on one bridge, a
//! user-defined network, following a restart, and the errors a user meets.
//!
//! Each test makes its own "wan": a network namespace joined to the host by a veth (`<p>-up0`
//! 10.X.2.1/24 on the host, `eth0` 10.X.2.2/24 inside). Traffic flows only between test
//! containers and that namespace, or between two test containers. Everything is removed on drop.
//!
//! Needs root, the kernel object (PATHTRACE_BUILD_EBPF=1) and a running dockerd; without them the
//! tests print a loud notice and pass, except under CI (`CI` set), where they fail.

use std::{
    io::{BufRead, BufReader, Read as _},
    net::SocketAddr,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{mpsc::Receiver, MutexGuard},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

use crate::support::{
    docker::{docker, free_port, host_veths_peering, TestContainer, TestNetwork},
    docker_or_skip, privileged, serial,
    wan::{exchange, run, Wan, TCP_PORT, UDP_PORT},
    BIN,
};

const SLEEP: &[&str] = &["sleep", "3600"];
/// A TCP echo server on :80 that keeps accepting (busybox nc: `-ll` with `-e`).
const ECHO_80: &[&str] = &["nc", "-ll", "-p", "80", "-e", "cat"];
const PROXY_NOTE: &str = "carried by docker-proxy (userland proxy) from the host, not by DNAT";

/// The lock that serialises these tests (they share docker0, the NAT table and the kernel's
/// program list), or `None` (after a loud notice) when `test` cannot run.
fn begin(test: &str) -> Option<MutexGuard<'static, ()>> {
    let serial = serial();
    (docker_or_skip(test) && privileged(test)).then_some(serial)
}

/// `docker exec`; the output, or an error with its stderr.
fn exec(c: &TestContainer, cmd: &str) -> Result<String> {
    docker(&["exec", &c.name, "sh", "-c", cmd])
}

fn ctr_ip(c: &TestContainer) -> Result<String> {
    c.inspect("{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}")
}

/// The host veth whose `ethtool -S` peer_ifindex is the container's eth0.
fn host_veth(c: &TestContainer) -> Result<String> {
    host_veth_of(c, "eth0")
}

/// The host veth of the container's interface `iface` (by `ethtool -S` peer_ifindex).
fn host_veth_of(c: &TestContainer, iface: &str) -> Result<String> {
    let ifindex: u32 = exec(c, &format!("cat /sys/class/net/{iface}/ifindex"))?.parse()?;
    match &host_veths_peering(ifindex)?[..] {
        [veth] => Ok(veth.clone()),
        other => bail!(
            "not one host veth peers with {}'s eth0 (ifindex {ifindex}): {other:?}",
            c.name
        ),
    }
}

/// Names of loaded BPF programs that are ours.
pub(crate) fn our_programs() -> Vec<String> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter_map(|p| p.name_as_str().map(str::to_string))
        .filter(|n| n.starts_with("pathtrace_h"))
        .collect()
}

pub(crate) fn pathtrace(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd
}

/// Runs `pathtrace --container NAME ARGS --duration 5`; `traffic` runs once it is attached.
/// Its stdout.
pub(crate) fn trace(
    name: &str,
    args: &[&str],
    traffic: impl FnOnce() -> Result<()>,
) -> Result<String> {
    trace_target(&["--container", name], args, traffic)
}

/// [`trace`] of what `target` names (`--container NAME`, `--pod NAME -n NS`).
pub(crate) fn trace_target(
    target: &[&str],
    args: &[&str],
    traffic: impl FnOnce() -> Result<()>,
) -> Result<String> {
    let argv = [target, args, &["--duration", "5"]].concat();
    let child = pathtrace(&argv).spawn()?;
    // JSON mode prints nothing until the first flow: wait for the hooks' TCX links (6 without a
    // bridge, 8 with one, more for more networks), however long loading takes.
    let deadline = Instant::now() + Duration::from_secs(3);
    while our_programs().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if !crate::support::kernel::wait_attached(child.id(), 6, Duration::from_secs(10)) {
        std::thread::sleep(Duration::from_millis(800));
    }
    let traffic = traffic();
    let out = child.wait_with_output()?;
    traffic.context("generating traffic")?;
    ensure!(
        out.status.success(),
        "pathtrace failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

/// [`trace`] with `--json`: the lines it printed.
pub(crate) fn trace_json(
    name: &str,
    args: &[&str],
    traffic: impl FnOnce() -> Result<()>,
) -> Result<Vec<Value>> {
    let out = trace(name, &[args, &["--json"]].concat(), traffic)?;
    Ok(crate::support::lab::json_lines(out.as_bytes()))
}

/// Each flow's last line (flows are reprinted as they change, and once more at the end).
pub(crate) fn final_flows(lines: &[Value]) -> Vec<&Value> {
    let mut out: Vec<&Value> = Vec::new();
    for v in lines.iter().filter(|v| v["type"] == "flow") {
        out.retain(|f| f["id"] != v["id"]);
        out.push(v);
    }
    out
}

/// A flow's `hops` or `hops_back` as `hook dir -> hook dir -> ...`.
pub(crate) fn hops(flow: &Value, key: &str) -> String {
    let hop = |h: &Value| format!("{} {}", text(&h["hook"]), text(&h["dir"]));
    let all: Option<Vec<String>> = flow[key].as_array().map(|a| a.iter().map(hop).collect());
    all.unwrap_or_default().join(" -> ")
}

pub(crate) fn text(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

pub(crate) fn ensure_hops(flow: &Value, key: &str, expected: &str) -> Result<()> {
    let got = hops(flow, key);
    ensure!(
        got == expected,
        "{key}:\n  got  {got}\n  want {expected}\n{flow}"
    );
    Ok(())
}

pub(crate) fn ensure_empty(flow: &Value, keys: &[&str]) -> Result<()> {
    for key in keys {
        ensure!(
            flow[key].as_array().is_some_and(Vec::is_empty),
            "{key} should be empty: {flow}"
        );
    }
    Ok(())
}

/// The last state of the first flow that `pred` accepts.
pub(crate) fn flow_where<'a>(
    lines: &'a [Value],
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Result<&'a Value> {
    let found = final_flows(lines).into_iter().find(|f| pred(f));
    let flow = found.with_context(|| format!("no {what} in {lines:#?}"))?;
    eprintln!("{what}: {flow}");
    Ok(flow)
}

/// The flow of `proto` whose traced-side source address is `src`, with replies.
pub(crate) fn flow_of<'a>(lines: &'a [Value], proto: &str, src: &str) -> Result<&'a Value> {
    flow_where(
        lines,
        &format!("{proto} flow from {src} with replies"),
        |f| {
            f["proto"] == proto
                && text(&f["src"]).starts_with(&format!("{src}:"))
                && f["packets_back"].as_u64() > Some(0)
        },
    )
}

/// The single NAT entry of `flow[key]`.
pub(crate) fn one_nat<'a>(flow: &'a Value, key: &str) -> Result<&'a Value> {
    let nat = flow[key].as_array().context("nat array")?;
    ensure!(nat.len() == 1, "one {key} step expected: {flow}");
    Ok(&nat[0])
}

/// Ping, UDP (busybox tftp: its nc has no -u) and TCP from the container to the wan.
fn container_traffic(c: &TestContainer, wan: &str) -> Result<()> {
    exec(c, &format!("ping -c 3 -i 0.3 -W 1 {wan}"))?;
    // The wan echoes the request back; tftp rejects it and exits non-zero: the exchange happened.
    exec(
        c,
        &format!("timeout 3 tftp -g -r x -l /tmp/x {wan} {UDP_PORT} || true"),
    )?;
    let back = exec(c, &format!("echo hello | nc -w 2 {wan} {TCP_PORT}"))?;
    ensure!(back == "hello", "TCP echo from the wan: {back:?}");
    Ok(())
}

/// Traces a container on `bridge` while it talks to the wan: outbound hops and MASQUERADE by
/// `rule` for ICMP, UDP and TCP.
fn check_masquerade(c: &TestContainer, wan: &Wan, bridge: &str, rule: &str) -> Result<()> {
    let lines = trace_json(&c.name, &["--to", &wan.wan_ip], || {
        container_traffic(c, &wan.wan_ip)
    })?;
    let (ip, veth, up) = (ctr_ip(c)?, host_veth(c)?, &wan.uplink);
    let out = format!(
        "{}:eth0 egress -> host:{veth} ingress -> host:{bridge} ingress -> host:{up} egress",
        c.name
    );
    for proto in ["icmp", "udp", "tcp"] {
        let flow = flow_of(&lines, proto, &ip)?;
        ensure_hops(flow, "hops", &out)?;
        let snat = one_nat(flow, "nat")?;
        ensure!(
            snat["kind"] == "snat" && snat["rule"] == rule,
            "{proto} SNAT step: {snat}"
        );
        ensure!(
            text(&snat["before"]).starts_with(&format!("{ip}:"))
                && text(&snat["after"]).starts_with(&format!("{}:", wan.host_ip)),
            "{proto}: {snat}"
        );
        ensure_empty(flow, &["stops"])?;
    }
    Ok(())
}

#[test]
fn outbound_masquerade_on_docker0() -> Result<()> {
    let Some(_serial) = begin("outbound_masquerade_on_docker0") else {
        return Ok(());
    };
    let wan = Wan::up()?;
    let c = TestContainer::run("pt-snat", &[], SLEEP)?;
    let rule = "-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE";
    check_masquerade(&c, &wan, "docker0", rule)
}

#[test]
fn user_defined_network_masquerade() -> Result<()> {
    let Some(_serial) = begin("user_defined_network_masquerade") else {
        return Ok(());
    };
    let wan = Wan::up()?;
    let net = TestNetwork::create("pt-udn")?;
    let c = TestContainer::run("pt-udn", &["--network", &net.name], SLEEP)?;
    let bridge = format!("br-{}", &net.id[..12]);
    let rule = format!(
        "-A POSTROUTING -s {} ! -o {bridge} -j MASQUERADE",
        net.subnet
    );
    check_masquerade(&c, &wan, &bridge, &rule)
}

#[test]
fn published_port_dnat_from_the_wan() -> Result<()> {
    let Some(_serial) = begin("published_port_dnat_from_the_wan") else {
        return Ok(());
    };
    let wan = Wan::up()?;
    let port = free_port()?;
    let c = TestContainer::run("pt-dnat", &["-p", &format!("{port}:80")], ECHO_80)?;
    let addr: SocketAddr = format!("{}:{port}", wan.host_ip).parse()?;
    let lines = trace_json(&c.name, &["--to", &wan.wan_ip], || {
        (0..3).try_for_each(|_| wan.exchange(addr))
    })?;
    let (ip, veth, up, eth0) = (
        ctr_ip(&c)?,
        host_veth(&c)?,
        &wan.uplink,
        format!("{}:eth0", c.name),
    );
    let (public, private) = (format!("{}:{port}", wan.host_ip), format!("{ip}:80"));
    let flow = flow_where(&lines, "inbound TCP flow with replies", |f| {
        f["proto"] == "tcp" && f["dst"] == private.as_str() && f["packets_back"].as_u64() > Some(0)
    })?;
    ensure!(
        flow["origin"] == "inbound" && text(&flow["src"]).starts_with(&wan.wan_ip),
        "{flow}"
    );
    let inbound =
        format!("host:{up} ingress -> host:docker0 egress -> host:{veth} egress -> {eth0} ingress");
    ensure_hops(flow, "hops", &inbound)?;
    let replies =
        format!("{eth0} egress -> host:{veth} ingress -> host:docker0 ingress -> host:{up} egress");
    ensure_hops(flow, "hops_back", &replies)?;
    let dnat = one_nat(flow, "nat")?;
    let rule = format!(
        "-A DOCKER ! -i docker0 -p tcp -m tcp --dport {port} -j DNAT --to-destination {private}"
    );
    ensure!(
        dnat["kind"] == "dnat" && dnat["before"] == public && dnat["after"] == private,
        "{dnat}"
    );
    ensure!(dnat["rule"] == rule.as_str(), "DNAT rule: {dnat}");
    let back = one_nat(flow, "nat_back")?;
    ensure!(
        back["before"] == private && back["after"] == public,
        "reverse translation: {back}"
    );
    ensure_empty(flow, &["stops"])
}

/// Issue #14: an expression is judged at the uplink on the pre-DNAT form of an inbound packet
/// (the host's published port), and a flow it keeps there is traced at every hook, the DNAT
/// step included; an expression for another port traces nothing.
#[test]
fn an_expression_on_a_published_port_judges_the_pre_dnat_form() -> Result<()> {
    let Some(_serial) = begin("an_expression_on_a_published_port_judges_the_pre_dnat_form") else {
        return Ok(());
    };
    let wan = Wan::up()?;
    let port = free_port()?;
    let c = TestContainer::run("pt-xdnat", &["-p", &format!("{port}:80")], ECHO_80)?;
    let addr: SocketAddr = format!("{}:{port}", wan.host_ip).parse()?;
    let (public, private) = (
        format!("{}:{port}", wan.host_ip),
        format!("{}:80", ctr_ip(&c)?),
    );
    let expr = format!("tcp dst port {port}");
    let lines = trace_json(&c.name, &["--to", &wan.wan_ip, &expr], || {
        (0..2).try_for_each(|_| wan.exchange(addr))
    })?;
    let flow = flow_where(&lines, "inbound TCP flow with replies", |f| {
        f["dst"] == private.as_str() && f["packets_back"].as_u64() > Some(0)
    })?;
    let (veth, eth0) = (host_veth(&c)?, format!("{}:eth0", c.name));
    ensure_hops(
        flow,
        "hops",
        &format!(
            "host:{} ingress -> host:docker0 egress -> host:{veth} egress -> {eth0} ingress",
            wan.uplink
        ),
    )?;
    let dnat = one_nat(flow, "nat")?;
    ensure!(
        dnat["kind"] == "dnat" && dnat["before"] == public && dnat["after"] == private,
        "{dnat}"
    );
    // What the kernel evaluated: `--to` joins its host to the expression.
    let joined = format!("(host {}) and ({expr})", wan.wan_ip);
    let summary = lines.iter().find(|l| l["type"] == "summary");
    ensure!(
        summary.is_some_and(|s| s["filter"] == joined.as_str()),
        "{summary:?}"
    );

    let other = format!("tcp dst port {}", if port == 65535 { 1 } else { port + 1 });
    let lines = trace_json(&c.name, &["--to", &wan.wan_ip, &other], || {
        wan.exchange(addr)
    })?;
    let flows = final_flows(&lines);
    ensure!(flows.is_empty(), "'{other}' traced: {flows:#?}");
    Ok(())
}

#[test]
fn docker_proxy_connections_are_named() -> Result<()> {
    let Some(_serial) = begin("docker_proxy_connections_are_named") else {
        return Ok(());
    };
    let port = free_port()?;
    let c = TestContainer::run("pt-proxy", &["-p", &format!("{port}:80")], ECHO_80)?;
    let proxies = run("ps", &["-eo", "args"])?;
    ensure!(
        proxies
            .lines()
            .any(|l| l.contains("docker-proxy") && l.contains(&format!("-host-port {port}"))),
        "no docker-proxy for port {port}: is dockerd running with --userland-proxy=false?"
    );
    // 127.0.0.1 is not DNATed (Docker's OUTPUT rule skips 127.0.0.0/8): docker-proxy takes it.
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let ip = ctr_ip(&c)?;
    let gateway = c.inspect("{{range .NetworkSettings.Networks}}{{.Gateway}}{{end}}")?;
    let lines = trace_json(&c.name, &[], || exchange(addr))?;
    let flow = flow_where(&lines, "TCP flow to the container", |f| {
        f["proto"] == "tcp" && f["dst"] == format!("{ip}:80")
    })?;
    ensure!(
        text(&flow["src"]).starts_with(&format!("{gateway}:")),
        "{flow}"
    );
    let notes = flow["notes"].as_array().context("notes")?;
    ensure!(
        notes.len() == 1 && text(&notes[0]).starts_with(PROXY_NOTE),
        "notes: {flow}"
    );
    ensure_empty(flow, &["nat", "nat_back"])?;
    let out = trace(&c.name, &[], || exchange(addr))?;
    eprintln!("{out}");
    let line = format!("  note: {PROXY_NOTE}: a client of host port {port}/tcp");
    ensure!(out.contains(&line), "text output lacks {line:?}");
    Ok(())
}

#[test]
fn two_containers_on_one_bridge() -> Result<()> {
    let Some(_serial) = begin("two_containers_on_one_bridge") else {
        return Ok(());
    };
    let a = TestContainer::run("pt-a", &[], SLEEP)?;
    let b = TestContainer::run("pt-b", &[], ECHO_80)?;
    let (a_ip, b_ip) = (ctr_ip(&a)?, ctr_ip(&b)?);
    let lines = trace_json(&a.name, &["--to", &b_ip], || {
        exec(&a, &format!("ping -c 3 -i 0.3 -W 1 {b_ip}"))?;
        let back = exec(&a, &format!("echo hello | nc -w 2 {b_ip} 80"))?;
        ensure!(back == "hello", "TCP echo from B: {back:?}");
        Ok(())
    })?;
    let (va, vb) = (host_veth(&a)?, host_veth(&b)?);
    let (ea, eb) = (format!("{}:eth0", a.name), format!("{}:eth0", b.name));
    let out = format!("{ea} egress -> host:{va} ingress -> host:{vb} egress -> {eb} ingress");
    let back = format!("{eb} egress -> host:{vb} ingress -> host:{va} egress -> {ea} ingress");
    for proto in ["icmp", "tcp"] {
        let flow = flow_of(&lines, proto, &a_ip)?;
        ensure_hops(flow, "hops", &out)?;
        ensure_hops(flow, "hops_back", &back)?;
        ensure_empty(flow, &["nat", "nat_back", "stops"])?;
    }
    for flow in final_flows(&lines) {
        ensure!(
            !flow.to_string().contains("docker0"),
            "a false bridge hop: {flow}"
        );
    }
    Ok(())
}

/// Waits until no pathtrace program is loaded (a released program goes after an RCU grace period).
pub(crate) fn assert_no_programs_left(when: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(3);
    while !our_programs().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    ensure!(
        our_programs().is_empty(),
        "{when}: programs left: {:?}",
        our_programs()
    );
    Ok(())
}

/// The final report's flow blocks (text mode): each a header line and its indented lines.
pub(crate) fn final_blocks(text: &str) -> Vec<String> {
    let tail = text.split("--- final ---\n").nth(1).unwrap_or_default();
    let mut blocks: Vec<String> = Vec::new();
    for line in tail.lines() {
        match blocks.last_mut() {
            Some(b) if line.starts_with("  ") => b.push_str(&format!("{line}\n")),
            _ => blocks.push(format!("{line}\n")),
        }
    }
    blocks
}

/// A pathtrace run without `--duration`, its stdout read line by line; killed on drop (a failing
/// test must not leave it tracing).
pub(crate) struct Running {
    pub(crate) child: Child,
    pub(crate) lines: Receiver<String>,
    pub(crate) seen: Vec<String>,
}

impl Running {
    pub(crate) fn spawn(args: &[&str]) -> Result<Self> {
        let mut child = pathtrace(args).spawn()?;
        let stdout = child.stdout.take().context("stdout")?;
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Self {
            child,
            lines,
            seen: Vec::new(),
        })
    }

    /// Reads lines until one contains `what`.
    pub(crate) fn wait_for(&mut self, what: &str) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Ok(line) = self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            self.seen.push(line);
            if self.seen.last().is_some_and(|l| l.contains(what)) {
                return Ok(());
            }
        }
        bail!("no line with {what:?}; got {:#?}", self.seen)
    }

    /// SIGINT; the exit status and everything it printed.
    pub(crate) fn interrupt(mut self) -> Result<(ExitStatus, String)> {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id())?);
        nix::sys::signal::kill(pid, nix::sys::signal::SIGINT)?;
        let status = self.child.wait()?;
        // The reader ends with the pipe: take every line.
        self.seen.extend(self.lines.iter());
        Ok((status, self.seen.join("\n") + "\n"))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.child.kill().ok();
            self.child.wait().ok();
        }
    }
}

#[test]
fn follows_a_restart() -> Result<()> {
    let Some(_serial) = begin("follows_a_restart") else {
        return Ok(());
    };
    let wan = Wan::up()?;
    let c = TestContainer::run("pt-restart", &[], SLEEP)?;
    let old_veth = host_veth(&c)?;
    let ping = format!("ping -c 2 -i 0.3 -W 1 {}", wan.wan_ip);
    let mut trace = Running::spawn(&["--container", &c.name, "--to", &wan.wan_ip])?;
    trace.wait_for("tracing ")?;
    exec(&c, &ping)?;
    docker(&["restart", "-t0", &c.name])?;
    let new_veth = host_veth(&c)?;
    ensure!(new_veth != old_veth, "restart kept the veth {old_veth}");
    trace.wait_for("started again")?;
    exec(&c, &ping)?;
    std::thread::sleep(Duration::from_millis(500));
    let (status, out) = trace.interrupt()?;
    eprintln!("{out}");
    ensure!(status.success(), "exit status {status:?}");
    let note = out
        .lines()
        .find(|l| l.starts_with("** ") && l.contains("started again"));
    let note = note.context("no restart note")?;
    ensure!(
        note.contains(&c.name) && note.contains(&new_veth),
        "note: {note}"
    );
    let blocks = final_blocks(&out);
    for veth in [&old_veth, &new_veth] {
        let via = |b: &&String| {
            b.starts_with("icmp ")
                && b.contains(&format!("host:{veth} ingress"))
                && b.contains(&format!("host:{} egress", wan.uplink))
        };
        ensure!(
            blocks.iter().any(|b| via(&b)),
            "no ping flow via {veth}: {blocks:#?}"
        );
    }
    assert_no_programs_left("after SIGINT")
}

/// `docker network connect` then `disconnect` of the traced container's first network: the new
/// interface is attached like after a restart (its traffic keeps its container hops), the old
/// one's hooks are released, and the summary keeps their counts, marked.
#[test]
fn follows_network_connect_and_disconnect() -> Result<()> {
    let Some(_serial) = begin("follows_network_connect_and_disconnect") else {
        return Ok(());
    };
    let wan = Wan::up()?;
    let net = TestNetwork::create("pt-connect")?;
    let c = TestContainer::run("pt-connect", &[], SLEEP)?;
    let old_veth = host_veth(&c)?;
    let ping = format!("ping -c 2 -i 0.3 -W 1 {}", wan.wan_ip);
    let mut trace = Running::spawn(&["--container", &c.name, "--to", &wan.wan_ip])?;
    trace.wait_for("tracing ")?;
    exec(&c, &ping)?;
    docker(&["network", "connect", &net.name, &c.name])?;
    trace.wait_for("connected to network")?;
    docker(&["network", "disconnect", "bridge", &c.name])?;
    trace.wait_for("disconnected from network")?;
    // Docker moves the default route to the network left: the ping goes out by eth1 now.
    let new_veth = host_veth_of(&c, "eth1")?;
    ensure!(
        exec(&c, "ip route")?.contains("default via") && exec(&c, "ip route")?.contains("eth1"),
        "no default route by eth1"
    );
    exec(&c, &ping)?;
    std::thread::sleep(Duration::from_millis(500));
    let (status, out) = trace.interrupt()?;
    eprintln!("{out}");
    ensure!(status.success(), "exit status {status:?}");
    for what in [
        format!("connected to network {}", net.name),
        "disconnected from network bridge".to_string(),
    ] {
        ensure!(
            out.lines()
                .any(|l| l.starts_with("** ") && l.contains(&what)),
            "no note saying {what}"
        );
    }
    let blocks = final_blocks(&out);
    let via = |veth: &str, iface: &str| {
        blocks.iter().any(|b| {
            b.starts_with("icmp ")
                && b.contains(&format!("{}:{iface} egress", c.name))
                && b.contains(&format!("host:{veth} ingress"))
                && b.contains(&format!("host:{} egress", wan.uplink))
        })
    };
    ensure!(
        via(&old_veth, "eth0"),
        "no ping flow via eth0 / {old_veth}: {blocks:#?}"
    );
    ensure!(
        via(&new_veth, "eth1"),
        "no ping flow via eth1 / {new_veth}: {blocks:#?}"
    );
    // The released hooks' rows stay, with what they counted.
    let released: Vec<&str> = out
        .lines()
        .filter(|l| l.contains(&format!("host:{old_veth} (released)")))
        .collect();
    ensure!(released.len() == 2, "released rows of {old_veth}: {out}");
    let emitted: u64 = released
        .iter()
        .filter_map(|l| l.split_whitespace().nth(5)?.parse::<u64>().ok())
        .sum();
    ensure!(
        emitted >= 4,
        "the released veth emitted the first ping: {released:?}"
    );
    assert_no_programs_left("after SIGINT")
}

/// `docker rm -f` of the traced container: pathtrace ends by itself, prints what it saw, says on
/// one stderr line that the container is gone, exits 2 and leaves nothing attached.
#[test]
fn container_removed_mid_trace_ends_with_exit_2() -> Result<()> {
    let Some(_serial) = begin("container_removed_mid_trace_ends_with_exit_2") else {
        return Ok(());
    };
    let c = TestContainer::run("pt-gone", &[], SLEEP)?;
    let mut trace = Running::spawn(&["--container", &c.name])?;
    trace.wait_for("tracing ")?;
    docker(&["rm", "-f", &c.name])?;
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
    eprintln!(
        "{}\n{stderr}exit {status:?} {took:?} after docker rm",
        trace.seen.join("\n")
    );
    ensure!(status.code() == Some(2), "exit status {status:?}");
    ensure!(took < Duration::from_secs(10), "took {took:?} to notice");
    let lines: Vec<&str> = stderr.lines().collect();
    ensure!(
        lines.len() == 1 && lines[0].contains(&format!("container {} was removed", c.name)),
        "stderr: {stderr}"
    );
    ensure!(
        trace.seen.iter().any(|l| l.starts_with("--- final ---")),
        "no final report: {:#?}",
        trace.seen
    );
    assert_no_programs_left("after the container was removed")
}

/// Exit code 2, one line on stderr containing `want`, nothing on stdout.
fn expect_error(container: &str, env: Option<(&str, &str)>, want: &str) -> Result<()> {
    let mut cmd = pathtrace(&["--container", container, "--duration", "1"]);
    if let Some((k, v)) = env {
        cmd.env(k, v);
    }
    let out = cmd.output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{container}: {}", stderr.trim_end());
    ensure!(
        out.status.code() == Some(2),
        "{container}: exit {:?}: {stderr}",
        out.status
    );
    ensure!(
        stderr.lines().count() == 1,
        "{container}: one line expected: {stderr}"
    );
    ensure!(
        stderr.contains(want),
        "{container}: {want:?} not in {stderr}"
    );
    ensure!(
        out.stdout.is_empty(),
        "{container}: stdout {:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    Ok(())
}

#[test]
fn errors_are_one_line_and_exit_code_2() -> Result<()> {
    let Some(_serial) = begin("errors_are_one_line_and_exit_code_2") else {
        return Ok(());
    };
    let running = TestContainer::run("pt-err", &[], SLEEP)?;
    let typo = format!("{}x", running.name);
    expect_error(&typo, None, &format!("did you mean: {}?", running.name))?;
    let stopped = TestContainer::create("pt-err-stopped", &[], SLEEP)?;
    expect_error(&stopped.name, None, "start it with `docker start")?;
    // A host-network container is traced (see `host_network`), not an error.
    let none = TestContainer::run("pt-err-none", &["--network", "none"], SLEEP)?;
    expect_error(&none.name, None, "has no network (--network none)")?;
    let sock = "unix:///nonexistent.sock";
    expect_error(
        &running.name,
        Some(("DOCKER_HOST", sock)),
        &format!("cannot reach Docker at {sock}"),
    )?;
    assert_no_programs_left("after the errors")
}
