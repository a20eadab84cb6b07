//! What `pathtrace verify` concludes: one probe (TCP connect, UDP datagram or ICMP echo) sent
//! from a socket opened inside the traced namespace (nothing is installed in the container),
//! traced on the whole path, and compared with the expectations ([`evaluate`], pure).

use std::{
    net::{IpAddr, SocketAddr, TcpStream, UdpSocket},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{bail, Context as _};
use serde::Serialize;
use tokio::sync::Notify;

use crate::{
    collect::Event,
    correlate::FlowReport,
    discover::netns::Netns,
    lab::traffic,
    model::{Direction, Hook, HookStats, NatKind, Proto},
    pipeline::session::{Finished, Observer, StopReason},
};

/// What the probe must show; each set field is one check.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Expectations {
    /// The source address the probe must be rewritten to (MASQUERADE/SNAT).
    pub snat: Option<IpAddr>,
    /// The interface the probe must leave the host by.
    pub via: Option<String>,
    /// Hops the probe must take, in this order (others may come between them).
    pub path: Option<Vec<ExpectHop>>,
    /// The probe must be dropped; otherwise it must be delivered and answered.
    pub drop: bool,
}

/// The probe's destination and protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Probe {
    pub dst: IpAddr,
    pub port: Option<u16>,
    pub proto: Proto,
}

impl Probe {
    pub(crate) fn parse(to: &str, proto: Option<&str>) -> anyhow::Result<Self> {
        let (dst, port) = match to.parse::<SocketAddr>() {
            Ok(sa) => (sa.ip(), Some(sa.port())),
            Err(_) => (
                to.parse::<IpAddr>().with_context(|| {
                    format!("--to {to:?}: expected HOST or HOST:PORT, e.g. 10.0.0.5:443 or [fd00::5]:443")
                })?,
                None,
            ),
        };
        if let Some(warning) = bare_v6_port(to, dst) {
            crate::say(&format!("pathtrace: {warning}"));
        }
        let proto = match proto.map(|p| (p, p.parse::<Proto>())) {
            Some((_, Ok(p @ (Proto::Tcp | Proto::Udp)))) => p,
            Some((_, Ok(Proto::Icmp))) => Proto::icmp_for(dst),
            Some((other, _)) => bail!("--proto {other:?}: expected tcp, udp or icmp"),
            None if port.is_some() => Proto::Tcp,
            None => Proto::icmp_for(dst),
        };
        if proto.has_ports() && port.is_none() {
            bail!("--proto {proto} needs a port: --to HOST:PORT");
        }
        Ok(Self { dst, port, proto })
    }

    /// Sends the probe from the current thread's namespace; never fails the run: an unanswered
    /// probe is an observation, not an error.
    pub(crate) fn send(&self, netns: &Netns) -> String {
        let timeout = Duration::from_secs(2);
        match self.proto {
            Proto::Tcp => {
                let sa = SocketAddr::new(self.dst, self.port.unwrap_or(0));
                match netns.run(|| TcpStream::connect_timeout(&sa, timeout)) {
                    Ok(Ok(_)) => "connected".into(),
                    Ok(Err(e)) => format!("connect: {e}"),
                    Err(e) => format!("{e}"),
                }
            }
            Proto::Udp => {
                let sa = SocketAddr::new(self.dst, self.port.unwrap_or(0));
                let sent = netns.run(|| -> std::io::Result<String> {
                    let bind: SocketAddr = if sa.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }
                        .parse()
                        .map_err(std::io::Error::other)?;
                    let sock = UdpSocket::bind(bind)?;
                    sock.set_read_timeout(Some(Duration::from_secs(1)))?;
                    sock.send_to(b"pathtrace-verify", sa)?;
                    let mut buf = [0u8; 64];
                    Ok(match sock.recv_from(&mut buf) {
                        Ok(_) => "answered".into(),
                        Err(_) => "sent, no answer".into(),
                    })
                });
                match sent {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => format!("send: {e}"),
                    Err(e) => format!("{e}"),
                }
            }
            _ => match traffic::icmp_echo(netns, self.dst, 1, Duration::from_millis(100)) {
                Ok(stats) if !stats.replies.is_empty() => "echo reply".into(),
                Ok(_) => "no echo reply".into(),
                Err(e) => format!("ping: {e}"),
            },
        }
    }
}

/// A bare IPv6 address whose last group could be a port (`fd00::1:443`): it is read as an
/// address, which may not be what was meant; the warning says how to write the other.
pub(crate) fn bare_v6_port(text: &str, addr: IpAddr) -> Option<String> {
    let (head, last) = text.rsplit_once(':')?;
    let looks_like_port =
        !last.is_empty() && last.len() <= 5 && last.bytes().all(|b| b.is_ascii_digit());
    // Only when what comes before is an address of its own: `fd00::1:443`, not `fd00::1`.
    let head_is_addr = head.parse::<std::net::Ipv6Addr>().is_ok();
    (addr.is_ipv6() && !text.starts_with('[') && looks_like_port && head_is_addr).then(|| {
        format!(
            "--to {text} is read as the IPv6 address {addr}, no port; for an address and a port write [{head}]:{last}"
        )
    })
}

/// One expectation and what was observed.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Check {
    pub name: &'static str,
    pub expected: String,
    pub observed: String,
    pub ok: bool,
}

/// Compares a traced probe flow with the expectations (pure: unit-tested).
pub(crate) fn evaluate(expect: &Expectations, flow: Option<&FlowReport>) -> Vec<Check> {
    let mut checks = Vec::new();
    let Some(f) = flow else {
        checks.push(Check {
            name: "seen",
            expected: "the probe on the path".into(),
            observed: "no packet of the probe was seen".into(),
            ok: false,
        });
        return checks;
    };
    let snat: Vec<String> = f
        .nat
        .iter()
        .filter(|n| n.step.kind == NatKind::Snat)
        .map(|n| n.step.after.addr.to_string())
        .collect();
    let path: Vec<String> = f
        .hops
        .iter()
        .map(|h| format!("{} {}", h.hook, h.dir))
        .collect();
    // Only a loss is an answer about the packet; where pathtrace lost sight of it (ring buffer
    // full, an untraced exit) it cannot tell, and says that instead of a drop.
    let (losses, unknown): (Vec<_>, Vec<_>) = f.stops.iter().partition(|s| s.cause.is_loss());
    let dropped = !losses.is_empty();
    let describe = |stops: &[&crate::correlate::Stop]| {
        stops
            .iter()
            .map(|s| s.describe())
            .collect::<Vec<_>>()
            .join("; ")
    };
    let stop_text = describe(&losses);
    let unknown_text = describe(&unknown);
    if let Some(addr) = expect.snat {
        let ok = snat.iter().any(|a| *a == addr.to_string());
        let observed = if snat.is_empty() {
            "no SNAT".to_string()
        } else {
            format!("SNAT to {}", snat.join(", "))
        };
        checks.push(Check {
            name: "snat",
            expected: format!("SNAT to {addr}"),
            observed,
            ok,
        });
    }
    if let Some(iface) = &expect.via {
        // Where it left the host: the last egress hop in the host's namespace (the container's
        // own interface is where it starts, not where it leaves).
        let last = f
            .hops
            .iter()
            .rev()
            .find(|h| h.dir == Direction::Egress && h.hook.starts_with("host:"));
        let untraced = f.stops.iter().find_map(|s| match &s.cause {
            crate::correlate::StopCause::UntracedExit { via, route } => Some((via, route)),
            _ => None,
        });
        let (observed, ok) = match (last, untraced) {
            (Some(h), _) => (
                format!("leaves by {}", h.hook),
                h.hook.rsplit(':').next() == Some(iface.as_str()),
            ),
            // As the host's routes say, not as seen: not enough for a PASS.
            (None, Some((via, route))) => (
                format!("not seen leaving; the route says the untraced interface {via} ({route}); trace it with --uplink {via}"),
                false,
            ),
            (None, None) => ("not seen leaving the host".into(), false),
        };
        checks.push(Check {
            name: "via",
            expected: format!("leaves by {iface}"),
            observed,
            ok,
        });
    }
    if let Some(want) = &expect.path {
        let observed = f.hops.iter().map(|h| (h.hook.as_str(), h.dir));
        let expected: Vec<String> = want.iter().map(ExpectHop::to_string).collect();
        checks.push(Check {
            name: "path",
            expected: format!("{} (in this order)", expected.join(" -> ")),
            observed: path.join(" -> "),
            ok: is_subsequence(want, observed),
        });
    }
    if expect.drop {
        checks.push(Check {
            name: "drop",
            expected: "dropped".into(),
            observed: if dropped {
                stop_text
            } else if !unknown.is_empty() {
                format!("cannot tell: {unknown_text}")
            } else {
                "not dropped".into()
            },
            ok: dropped,
        });
    } else {
        let answered = f.packets_back > 0;
        let observed = if dropped {
            stop_text
        } else if answered {
            "answered".into()
        } else if !unknown.is_empty() {
            format!("cannot tell: {unknown_text}")
        } else {
            "no answer".into()
        };
        checks.push(Check {
            name: "delivered",
            expected: "delivered and answered".into(),
            observed,
            ok: !dropped && answered,
        });
    }
    if !unknown.is_empty() && !dropped {
        // Even an answered probe had packets pathtrace lost sight of: the path shown may be
        // incomplete, and a script must not take a PASS built on it.
        checks.push(Check {
            name: "seen_whole",
            expected: "every packet of the probe seen at every hook it crossed".into(),
            observed: unknown_text,
            ok: false,
        });
    }
    checks
}

/// One hop of `--expect-path`: `host:docker0`, or `host:docker0 ingress` for one direction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ExpectHop {
    /// `<namespace>:<interface>`, as hops are labelled.
    pub hook: String,
    pub dir: Option<Direction>,
}

impl std::str::FromStr for ExpectHop {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "--expect-path {s:?}: expected NS:IFACE or NS:IFACE ingress|egress, e.g. \
                 host:docker0 ingress"
            )
        };
        let mut words = s.split_whitespace();
        let hook = words.next().filter(|h| h.contains(':')).ok_or_else(bad)?;
        let dir = match words.next() {
            None => None,
            Some("ingress") => Some(Direction::Ingress),
            Some("egress") => Some(Direction::Egress),
            Some(_) => return Err(bad()),
        };
        if words.next().is_some() {
            return Err(bad());
        }
        Ok(Self {
            hook: hook.to_string(),
            dir,
        })
    }
}

impl std::fmt::Display for ExpectHop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.dir {
            Some(d) => write!(f, "{} {d}", self.hook),
            None => f.write_str(&self.hook),
        }
    }
}

/// Whether every wanted hop is among `hops`, in order (others may come between them).
fn is_subsequence<'h>(
    want: &[ExpectHop],
    hops: impl IntoIterator<Item = (&'h str, Direction)>,
) -> bool {
    let mut want = want.iter().peekable();
    for (hook, dir) in hops {
        if let Some(w) = want.peek() {
            if w.hook == hook && w.dir.is_none_or(|d| d == dir) {
                want.next();
            }
        }
    }
    want.peek().is_none()
}

/// Passes a session's events on and fires the probe once everything is attached; the session
/// stops shortly after the probe is done.
pub(crate) struct Prober<'a> {
    pub inner: &'a mut dyn Observer,
    pub netns: Arc<Netns>,
    pub probe: Probe,
    pub stop: Arc<Notify>,
    /// What the probe's socket saw (`connected`, `no echo reply`, ...), once it is done.
    pub outcome: Arc<Mutex<String>>,
}

impl Observer for Prober<'_> {
    fn attached(&mut self, mode: &str, hooks: &[Hook]) {
        self.inner.attached(mode, hooks);
        let (netns, probe, stop, outcome) = (
            self.netns.clone(),
            self.probe,
            self.stop.clone(),
            self.outcome.clone(),
        );
        std::thread::spawn(move || {
            let o = probe.send(&netns);
            if let Ok(mut g) = outcome.lock() {
                *g = o;
            }
            // Let the last packets of the exchange reach every hook and settle.
            std::thread::sleep(Duration::from_millis(400));
            stop.notify_one();
        });
    }
    fn events(&mut self, events: &[Event]) {
        self.inner.events(events);
    }
    fn tick(&mut self, now_ns: u64, stats: &[(Hook, HookStats)]) {
        self.inner.tick(now_ns, stats);
    }
    fn finished(&mut self, why: StopReason, end: &Finished) {
        self.inner.finished(why, end);
    }
}

/// A verify run, as `render` prints it.
#[derive(Clone, Debug)]
pub(crate) struct Verdict<'a> {
    pub pass: bool,
    pub probe: Probe,
    /// `--to` as given.
    pub to: &'a str,
    /// What the probe's socket saw.
    pub outcome: String,
    pub checks: Vec<Check>,
    pub flow: Option<&'a FlowReport>,
}

/// The probe's flow: the outbound flow to its destination (and port) of its protocol.
pub(crate) fn pick_flow<'f>(flows: &'f [FlowReport], probe: &Probe) -> Option<&'f FlowReport> {
    flows
        .iter()
        .filter(|f| {
            f.proto == probe.proto
                && f.dst.addr == probe.dst
                && probe.port.is_none_or(|p| f.dst.port == p)
        })
        .max_by_key(|f| f.packets_out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        correlate::{tests::ep, FlowId, Leg, Stop, StopCause},
        model::Orientation,
    };

    fn probe_flow(stop: Option<StopCause>, packets_back: u64) -> FlowReport {
        FlowReport {
            id: FlowId(1),
            proto: Proto::Icmp,
            origin: Orientation::Outbound,
            src: ep("10.200.1.2:7"),
            dst: ep("10.200.2.2:0"),
            packets_out: 1,
            packets_back,
            bytes_out: 84,
            bytes_back: 84 * packets_back,
            before_path_complete: false,
            kernel_counts: false,
            first_ns: 0,
            last_ns: 1,
            hops: Vec::new(),
            hops_back: Vec::new(),
            nat: Vec::new(),
            nat_back: Vec::new(),
            stops: stop
                .into_iter()
                .map(|cause| Stop {
                    leg: Leg::Out,
                    after_hook: "host:pt-br0".into(),
                    after_dir: Direction::Ingress,
                    count: 1,
                    reason: (cause == StopCause::Dropped).then(|| "NETFILTER_DROP".into()),
                    cause,
                })
                .collect(),
            notes: Vec::new(),
        }
    }

    fn failed(checks: &[Check]) -> Vec<(&str, &str)> {
        checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| (c.name, c.observed.as_str()))
            .collect()
    }

    #[test]
    fn a_ring_buffer_gap_fails_as_unknown_never_as_a_drop() {
        let gap = StopCause::EventsLost {
            at: "host:pt-up0".into(),
            at_dir: Direction::Egress,
        };
        // Expecting delivery, with no answer seen: not a drop, but nothing can be concluded.
        let checks = evaluate(
            &Expectations::default(),
            Some(&probe_flow(Some(gap.clone()), 0)),
        );
        let failed = failed(&checks);
        assert_eq!(failed.len(), 2, "{checks:?}");
        assert_eq!(failed[0].0, "delivered");
        assert!(failed[0].1.starts_with("cannot tell: not seen after host:pt-br0 ingress (ring buffer full at host:pt-up0 egress)"), "{checks:?}");
        assert_eq!(failed[1].0, "seen_whole");
        // Expecting a drop: a gap does not make one.
        let drop = Expectations {
            drop: true,
            ..Expectations::default()
        };
        let checks = evaluate(&drop, Some(&probe_flow(Some(gap), 1)));
        assert!(
            checks
                .iter()
                .any(|c| c.name == "drop" && !c.ok && c.observed.starts_with("cannot tell")),
            "{checks:?}"
        );
    }

    #[test]
    fn a_drop_is_a_drop_and_a_clean_answer_passes() {
        let drop = Expectations {
            drop: true,
            ..Expectations::default()
        };
        let checks = evaluate(&drop, Some(&probe_flow(Some(StopCause::Dropped), 0)));
        assert!(failed(&checks).is_empty(), "{checks:?}");
        let checks = evaluate(&Expectations::default(), Some(&probe_flow(None, 1)));
        assert!(failed(&checks).is_empty(), "{checks:?}");
        let untraced = StopCause::UntracedExit {
            via: "pt-up1".into(),
            route: "default dev pt-up1 table 100".into(),
        };
        let checks = evaluate(
            &Expectations::default(),
            Some(&probe_flow(Some(untraced), 1)),
        );
        assert_eq!(failed(&checks), vec![("seen_whole", "left by the untraced interface pt-up1 after host:pt-br0 ingress (route: default dev pt-up1 table 100)")]);
    }
}

#[cfg(test)]
mod parse_tests {
    use super::*;

    #[test]
    fn a_bare_ipv6_address_with_a_port_like_end_is_said_to_be_an_address() {
        let a: IpAddr = "fd00::1:443".parse().unwrap_or(IpAddr::from([0; 16]));
        assert_eq!(
            bare_v6_port("fd00::1:443", a).as_deref(),
            Some("--to fd00::1:443 is read as the IPv6 address fd00::1:443, no port; for an address and a port write [fd00::1]:443")
        );
        let b: IpAddr = "fd00::1".parse().unwrap_or(IpAddr::from([0; 16]));
        assert_eq!(
            bare_v6_port("fd00::1", b),
            None,
            "ends in a group, not a port-like number"
        );
        assert_eq!(bare_v6_port("10.0.0.1", IpAddr::from([10, 0, 0, 1])), None);
        let c: IpAddr = "fd00::abcd".parse().unwrap_or(IpAddr::from([0; 16]));
        assert_eq!(bare_v6_port("fd00::abcd", c), None);
    }
}
