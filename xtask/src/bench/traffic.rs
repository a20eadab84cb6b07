//! Load for the lab: iperf3 (server in the wan namespace, client in the container namespace), and
//! tcpdump as the yardstick. Traffic never leaves the lab's namespaces.
use std::{
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use super::proc::{self, in_ns, Lab, Proc};

pub(super) const IPERF_PORT: &str = "5201";

/// `iperf3 -s` in the wan namespace, until dropped.
pub(super) struct IperfServer {
    _proc: Proc,
}

impl IperfServer {
    pub(super) fn start(lab: &Lab) -> Result<Self> {
        let mut cmd = in_ns(&lab.wan_netns, "iperf3");
        cmd.args(["-s", "-B", &lab.wan_addr, "-p", IPERF_PORT]);
        let (p, _) = Proc::spawn("iperf3 server", &mut cmd, |_| false)?;
        // Listening once `ss` in the namespace shows the socket (bounded: 5 s).
        let end = Instant::now() + Duration::from_secs(5);
        loop {
            let mut ss = in_ns(&lab.wan_netns, "ss");
            ss.args(["-Hltn", &format!("sport = :{IPERF_PORT}")]);
            let out = proc::output("ss", &mut ss, Duration::from_secs(5))?;
            if !out.trim().is_empty() {
                return Ok(Self { _proc: p });
            }
            if p.ended() || Instant::now() >= end {
                bail!("iperf3 -s in {} is not listening after 5 s", lab.wan_netns);
            }
            proc::sleep(Duration::from_millis(50))?;
        }
    }
}

/// What one iperf3 client run measured, receiver side.
#[derive(Clone, Copy, Debug)]
pub(super) struct IperfResult {
    pub bits_per_second: f64,
    /// Datagrams received per second (UDP), 0 for TCP.
    pub packets_per_second: f64,
    pub seconds: f64,
}

/// The iperf3 load shapes the bench uses.
#[derive(Clone, Copy, Debug)]
pub(super) enum Load {
    /// One TCP stream as fast as it goes.
    TcpBulk,
    /// 64-byte UDP datagrams, as fast as the client can send (`-b 0`).
    UdpFlood,
    /// 64-byte UDP datagrams paced at this many per second.
    UdpPaced(u64),
}

/// UDP payload bytes per datagram.
pub(super) const UDP_LEN: u64 = 64;

/// Runs the iperf3 client in the container namespace for `secs` and reads its JSON report.
pub(super) fn iperf(lab: &Lab, load: Load, secs: u64) -> Result<IperfResult> {
    let mut cmd = in_ns(&lab.ctr_netns, "iperf3");
    cmd.args(["-c", &lab.wan_addr, "-p", IPERF_PORT, "-J"])
        .args(["-t", &secs.to_string()]);
    match load {
        Load::TcpBulk => {}
        Load::UdpFlood => {
            cmd.args(["-u", "-l", &UDP_LEN.to_string(), "-b", "0"]);
        }
        Load::UdpPaced(pps) => {
            cmd.args(["-u", "-l", &UDP_LEN.to_string()])
                .args(["-b", &(pps * UDP_LEN * 8).to_string()]);
        }
    }
    let out = proc::output("iperf3 client", &mut cmd, Duration::from_secs(secs + 20))?;
    parse_iperf(&out, matches!(load, Load::TcpBulk))
}

fn parse_iperf(json: &str, tcp: bool) -> Result<IperfResult> {
    let v: serde_json::Value = serde_json::from_str(json).context("parsing iperf3 -J output")?;
    if let Some(err) = v["error"].as_str() {
        bail!("iperf3: {err}");
    }
    let end = &v["end"];
    if tcp {
        let sum = &end["sum_received"];
        return Ok(IperfResult {
            bits_per_second: sum["bits_per_second"].as_f64().unwrap_or(0.0),
            packets_per_second: 0.0,
            seconds: sum["seconds"].as_f64().unwrap_or(0.0),
        });
    }
    // UDP: `end.sum` holds what the client sent and what the server reported lost.
    let sum = &end["sum"];
    let seconds = sum["seconds"].as_f64().unwrap_or(0.0);
    let packets = sum["packets"].as_f64().unwrap_or(0.0);
    let lost = sum["lost_packets"].as_f64().unwrap_or(0.0);
    let received = (packets - lost).max(0.0);
    if seconds <= 0.0 {
        bail!("iperf3 reported no duration");
    }
    Ok(IperfResult {
        bits_per_second: received * (UDP_LEN as f64) * 8.0 / seconds,
        packets_per_second: received / seconds,
        seconds,
    })
}

/// `tcpdump -s 128 -w /dev/null` on the lab's four interfaces (eth0 inside the container's
/// namespace, the others in the host's), until dropped.
pub(super) struct Tcpdumps {
    _procs: Vec<Proc>,
}

impl Tcpdumps {
    pub(super) fn start(lab: &Lab) -> Result<Self> {
        let args = |iface: &str| -> Vec<String> {
            ["-n", "-s", "128", "-w", "/dev/null", "-i", iface]
                .into_iter()
                .map(String::from)
                .collect()
        };
        let mut cmds = vec![in_ns(&lab.ctr_netns, "tcpdump")];
        cmds[0].args(args(&lab.ctr_ifname));
        for iface in [&lab.host_veth, &lab.bridge, &lab.uplink] {
            let mut cmd = Command::new("tcpdump");
            cmd.args(args(iface));
            cmds.push(cmd);
        }
        let mut procs = Vec::new();
        for mut cmd in cmds {
            let (p, _) = Proc::spawn("tcpdump", &mut cmd, |_| false)?;
            procs.push(p);
        }
        // tcpdump says "listening on IFACE" on stderr once its socket is bound; the packet
        // socket's counters are not visible from here, so give it a moment instead (bounded).
        proc::sleep(Duration::from_millis(500))?;
        if procs.iter().any(Proc::ended) {
            bail!("a tcpdump ended right after starting (is tcpdump installed?)");
        }
        Ok(Self { _procs: procs })
    }
}

#[cfg(test)]
mod tests {
    use super::parse_iperf;

    #[test]
    fn iperf_udp_receiver_rate() {
        let json = r#"{"end":{"sum":{"seconds":2.0,"packets":1000,"lost_packets":100}}}"#;
        let r = parse_iperf(json, false).unwrap();
        assert_eq!(r.packets_per_second, 450.0);
        assert_eq!(r.bits_per_second, 450.0 * 64.0 * 8.0);
    }

    #[test]
    fn iperf_error_is_an_error() {
        assert!(parse_iperf(r#"{"error":"unable to connect"}"#, true).is_err());
    }
}
