//! The built-in lab: a Docker-like topology made of network namespaces, to demo and test pathtrace
//! without Docker, and traffic to send through it.
//!
//! ```text
//!  netns <p>-ctr              host namespace                              netns <p>-wan
//!  eth0 10.X.1.2 ── veth ── <p>-veth0 ⊂ <p>-br0 10.X.1.1    <p>-up0 10.X.2.1 ── veth ── eth0 10.X.2.2
//!  default via 10.X.1.1           MASQUERADE -s 10.X.1.0/24 ! -o <p>-br0
//! ```
//!
//! [`Lab::up`] picks a free name (`pt1`, `pt2`, ...) and a free X in 200..=250, creates everything
//! with `ip`/`iptables`, and records each created piece in `/run/pathtrace/lab-<p>.json`;
//! [`Lab::down`] removes exactly those pieces. The functions here block (commands, netlink, a file
//! lock): call them from `tokio::task::spawn_blocking` in async code.
//!
//! [`traffic`] is generic: servers and exchanges inside any [`Netns`], used by the lab, the tests and
//! `verify`.

mod icmp;
pub(crate) mod state;
mod topology;
pub mod traffic;

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::discover::netns::{Netns, NetnsError};
use state::{LabState, Resource, StateLock, STATE_DIR};

/// The file in the state directory that names the lab the last `lab up` made.
const LAST_UP: &str = "last-up";
use traffic::{LoopOptions, LoopStats, ServerHandle, ServerStats, TrafficError, TrafficLoop};

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("the lab needs root (it creates namespaces, links and iptables rules): run pathtrace as root")]
    NotRoot,
    #[error("invalid lab name {0:?}: use 1 to 9 lowercase letters or digits, starting with a letter (it becomes part of 15-byte interface names)")]
    InvalidName(String),
    #[error("a lab named {0:?} exists already (state file, namespace or link): remove it with `pathtrace lab down {0}`, or choose another name")]
    NameInUse(String),
    #[error("no free lab name pt1..pt9999: remove old labs with `pathtrace lab down <name>`")]
    NoFreeName,
    #[error("no free subnet pair 10.X.1.0/24 + 10.X.2.0/24 for X in 200..=250: host addresses, routes or other labs use them all; remove stale labs or routes")]
    NoFreeSubnet,
    #[error("no lab named {0:?} (no state file in /run/pathtrace); bring one up with `pathtrace lab up`")]
    NotFound(String),
    #[error("cannot run `{cmd}`: {source} (are iproute2 and iptables installed?)")]
    Spawn { cmd: String, source: std::io::Error },
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Command {
        cmd: String,
        status: String,
        code: Option<i32>,
        stderr: String,
    },
    #[error("cannot list the host's addresses and routes over netlink: {0}")]
    Netlink(String),
    #[error("cannot access {path}: {source}")]
    StateIo {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("lab state file {path} is not valid JSON ({source}); remove the lab's namespaces, links and rules by hand, then the file")]
    StateParse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("lab state file {path} has format version {found}, this pathtrace reads {expected}: remove the lab with the pathtrace that made it")]
    StateVersion {
        path: PathBuf,
        found: u32,
        expected: u32,
    },
    #[error(
        "{error}; rolling back also failed: {leftovers}; retry with `pathtrace lab down {name}`"
    )]
    Rollback {
        name: String,
        error: Box<LabError>,
        leftovers: String,
    },
    #[error("could not remove all of lab {name}: {errors}; the state file is kept, retry with `pathtrace lab down {name}`")]
    Teardown { name: String, errors: String },
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(transparent)]
    Traffic(#[from] TrafficError),
}

/// What to bring up.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabSpec {
    /// The prefix of every name; `None` picks the first free `pt<N>`.
    pub name: Option<String>,
}

/// A lab: every name and address it uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lab {
    /// The prefix `<p>` of all names below.
    pub name: String,
    /// The X in 10.X.1.0/24 (container subnet) and 10.X.2.0/24 (uplink subnet).
    pub octet: u8,
    /// `ip netns` name of the container's namespace, `<p>-ctr`.
    pub ctr_netns: String,
    /// `ip netns` name of the "internet" host's namespace, `<p>-wan`.
    pub wan_netns: String,
    /// The bridge in the host namespace, `<p>-br0` (like docker0).
    pub bridge: String,
    /// The host end of the container's veth, `<p>-veth0`, enslaved to the bridge.
    pub host_veth: String,
    /// The host end of the uplink veth, `<p>-up0`.
    pub uplink: String,
    /// The container's interface, `eth0`.
    pub ctr_ifname: String,
    /// The wan host's interface, `eth0`.
    pub wan_ifname: String,
    /// 10.X.1.2
    pub ctr_addr: Ipv4Addr,
    /// 10.X.1.1, on the bridge; the container's default gateway.
    pub gw_addr: Ipv4Addr,
    /// 10.X.2.1, on the uplink; the source address MASQUERADE gives the container's packets.
    pub uplink_addr: Ipv4Addr,
    /// 10.X.2.2, the wan host.
    pub wan_addr: Ipv4Addr,
    /// "10.X.1.0/24"
    pub subnet: String,
    /// "10.X.2.0/24"
    pub uplink_subnet: String,
    /// The NAT rule as `iptables -t nat -S` prints it:
    /// `-A POSTROUTING -s 10.X.1.0/24 ! -o <p>-br0 -j MASQUERADE`.
    pub masquerade_rule_text: String,
    /// The comment on the lab's FORWARD rules, `pathtrace-lab-<p>`.
    pub forward_rule_comment: String,
}

impl Lab {
    /// The comment on the lab's leak guard, the FORWARD rule that drops (and counts) whatever of
    /// the lab's subnet would leave by another interface than its uplink: `pathtrace-lab-<p>-guard`.
    pub fn guard_rule_comment(&self) -> String {
        format!("{}-guard", self.forward_rule_comment)
    }

    /// The names and addresses of lab `name` with subnet octet `octet`; creates nothing.
    pub(crate) fn plan(name: &str, octet: u8) -> Lab {
        let ip = |c, d| Ipv4Addr::new(10, octet, c, d);
        let bridge = format!("{name}-br0");
        let subnet = format!("10.{octet}.1.0/24");
        Lab {
            name: name.to_string(),
            octet,
            ctr_netns: format!("{name}-ctr"),
            wan_netns: format!("{name}-wan"),
            host_veth: format!("{name}-veth0"),
            uplink: format!("{name}-up0"),
            ctr_ifname: "eth0".into(),
            wan_ifname: "eth0".into(),
            ctr_addr: ip(1, 2),
            gw_addr: ip(1, 1),
            uplink_addr: ip(2, 1),
            wan_addr: ip(2, 2),
            uplink_subnet: format!("10.{octet}.2.0/24"),
            masquerade_rule_text: format!("-A POSTROUTING -s {subnet} ! -o {bridge} -j MASQUERADE"),
            forward_rule_comment: format!("pathtrace-lab-{name}"),
            subnet,
            bridge,
        }
    }

    /// Creates a lab. On failure, what was already made is removed again.
    pub fn up(spec: &LabSpec) -> Result<Lab, LabError> {
        ensure_root()?;
        let dir = Path::new(STATE_DIR);
        let _lock = StateLock::acquire(dir)?;
        let name = match &spec.name {
            Some(name) => {
                topology::validate_name(name)?;
                if topology::name_in_use(dir, name) {
                    return Err(LabError::NameInUse(name.clone()));
                }
                name.clone()
            }
            None => topology::first_free_name(dir)?,
        };
        let others = state::list(dir)?;
        let used: Vec<u8> = others.iter().map(|s| s.lab.octet).collect();
        let octet = topology::choose_octet(&topology::host_prefixes()?, &used)?;
        let lab = Lab::plan(&name, octet);
        tracing::info!(lab = %name, subnet = %lab.subnet, "bringing the lab up");

        let mut st = LabState::new(lab.clone());
        state::save(dir, &st)?;
        match topology::build(dir, &mut st) {
            Ok(()) => {
                // What a later `lab down` without a name takes down: this one, no other.
                if let Err(e) = std::fs::write(dir.join(LAST_UP), &name) {
                    tracing::warn!("recording the last lab made: {e}");
                }
                Ok(lab)
            }
            Err(error) => match remove(dir, st, &others) {
                Ok(()) => Err(error),
                Err(rollback) => Err(LabError::Rollback {
                    name,
                    error: Box::new(error),
                    leftovers: rollback.to_string(),
                }),
            },
        }
    }

    /// Removes the lab `name`: exactly what its state file says `up` created. Pieces that are already
    /// gone are skipped.
    pub fn down(name: &str) -> Result<(), LabError> {
        ensure_root()?;
        let dir = Path::new(STATE_DIR);
        let _lock = StateLock::acquire(dir)?;
        let st = state::load(dir, name)?;
        let others: Vec<LabState> = state::list(dir)?
            .into_iter()
            .filter(|s| s.lab.name != name)
            .collect();
        tracing::info!(lab = %name, "taking the lab down");
        remove(dir, st, &others)
    }

    /// The lab the last `lab up` made (on this host), if it is still up.
    pub fn last_up() -> Option<String> {
        let dir = Path::new(STATE_DIR);
        let name = std::fs::read_to_string(dir.join(LAST_UP)).ok()?;
        let name = name.trim().to_string();
        state::load(dir, &name).is_ok().then_some(name)
    }

    /// The lab `name`, from its state file.
    pub fn load(name: &str) -> Result<Lab, LabError> {
        Ok(state::load(Path::new(STATE_DIR), name)?.lab)
    }

    /// All labs with a state file, by name (including any whose `up` did not finish).
    pub fn list() -> Result<Vec<Lab>, LabError> {
        Ok(state::list(Path::new(STATE_DIR))?
            .into_iter()
            .map(|s| s.lab)
            .collect())
    }

    /// Where this lab's state file is.
    pub fn state_file(&self) -> PathBuf {
        state::state_path(Path::new(STATE_DIR), &self.name)
    }

    /// The container's namespace.
    pub fn ctr_ns(&self) -> Result<Netns, LabError> {
        Ok(Netns::by_name_or_path(&self.ctr_netns)?)
    }

    /// The wan host's namespace.
    pub fn wan_ns(&self) -> Result<Netns, LabError> {
        Ok(Netns::by_name_or_path(&self.wan_netns)?)
    }

    /// Whether `iptables -t nat -S POSTROUTING` prints [`Lab::masquerade_rule_text`].
    pub fn masquerade_rule_installed(&self) -> Result<bool, LabError> {
        let rules = topology::run(&["iptables", "-w", "-t", "nat", "-S", "POSTROUTING"])?;
        Ok(rules.lines().any(|l| l.trim() == self.masquerade_rule_text))
    }

    /// Starts a TCP echo and a UDP echo server on the wan host and a [`TrafficLoop`] from the
    /// container to them (ICMP, TCP, UDP rounds), e.g. while a trace runs.
    pub fn start_traffic(&self, opts: &LabTrafficOptions) -> Result<LabTraffic, LabError> {
        let wan = self.wan_ns()?;
        let tcp_server = traffic::tcp_server(&wan, opts.tcp_port)?;
        let udp_server = traffic::udp_echo_server(&wan, opts.udp_port)?;
        let targets = traffic::TrafficTargets {
            icmp: Some(self.wan_addr.into()),
            tcp: Some(SocketAddr::new(
                self.wan_addr.into(),
                tcp_server.local_addr().port(),
            )),
            udp: Some(SocketAddr::new(
                self.wan_addr.into(),
                udp_server.local_addr().port(),
            )),
        };
        let traffic = TrafficLoop::start(&self.ctr_ns()?, targets, opts.traffic.clone())?;
        Ok(LabTraffic {
            tcp_server,
            udp_server,
            traffic,
        })
    }
}

/// Ports and pacing for [`Lab::start_traffic`].
#[derive(Debug, Clone)]
pub struct LabTrafficOptions {
    /// TCP echo port on the wan host (0: any free port).
    pub tcp_port: u16,
    /// UDP echo port on the wan host (0: any free port).
    pub udp_port: u16,
    pub traffic: LoopOptions,
}

impl Default for LabTrafficOptions {
    fn default() -> Self {
        Self {
            tcp_port: 8080,
            udp_port: 8081,
            traffic: LoopOptions::default(),
        }
    }
}

/// Traffic running through a lab; stop it with [`LabTraffic::stop`] (dropping it stops it too).
#[derive(Debug)]
pub struct LabTraffic {
    pub tcp_server: ServerHandle,
    pub udp_server: ServerHandle,
    traffic: TrafficLoop,
}

/// What [`LabTraffic::stop`] reports.
#[derive(Debug, Clone, Serialize)]
pub struct LabTrafficReport {
    pub rounds: LoopStats,
    pub tcp_server: ServerStats,
    pub udp_server: ServerStats,
}

impl LabTraffic {
    /// Stops the loop, then the servers.
    pub fn stop(self) -> LabTrafficReport {
        let rounds = self.traffic.stop();
        LabTrafficReport {
            rounds,
            tcp_server: self.tcp_server.stop(),
            udp_server: self.udp_server.stop(),
        }
    }
}

fn ensure_root() -> Result<(), LabError> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err(LabError::NotRoot)
    }
}

/// Undoes what `st` records, then forgets it. A changed sysctl (ip_forward) is restored only by the
/// last lab; while others remain, the record is handed to one of them.
fn remove(dir: &Path, mut st: LabState, others: &[LabState]) -> Result<(), LabError> {
    let (errors, kept) = topology::teardown(&st.created, !others.is_empty());
    if let Some(heir) = others.first() {
        if !kept.is_empty() {
            let mut heir = heir.clone();
            // Undone in reverse: put them first so they are restored last.
            heir.created.splice(0..0, kept.into_iter().rev());
            state::save(dir, &heir)?;
        }
        st.created.retain(|r| !matches!(r, Resource::Sysctl { .. }));
    }
    if errors.is_empty() {
        state::remove(dir, &st.lab.name)
    } else {
        state::save(dir, &st)?;
        Err(LabError::Teardown {
            name: st.lab.name,
            errors: errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        })
    }
}
