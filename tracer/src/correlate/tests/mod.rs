//! Test fixtures (shared with the renderers' tests): the lab topology (container → veth → bridge → uplink), hand-made records and
//! a fake rule attributor.

mod counts;
mod flows;
mod frags;
mod nat;

use std::{
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
};

use bytes::Bytes;

use crate::model::{
    Direction, Endpoint, Hook, NatKind, NatQuery, NatStep, PacketRecord, Place, Proto, Role,
    RuleAttributor, Topology,
};

use super::{CorrelateConfig, Correlator, FlowReport, NatEntry};

pub(crate) const CTR: &str = "10.200.1.2";
pub(crate) const UP: &str = "10.200.2.1";
pub(crate) const MASQ_RULE: &str = "-A POSTROUTING -s 10.200.1.0/24 ! -o pt-br0 -j MASQUERADE";
pub(crate) const DNAT_RULE: &str =
    "-A PREROUTING -i pt-up0 -p tcp --dport 8080 -j DNAT --to-destination 10.200.1.2:80";

/// Slots of the lab hooks.
pub(crate) const CTR_EG: u8 = 0;
pub(crate) const CTR_IN: u8 = 1;
pub(crate) const VETH_IN: u8 = 2;
pub(crate) const VETH_EG: u8 = 3;
pub(crate) const BR_IN: u8 = 4;
pub(crate) const BR_EG: u8 = 5;
pub(crate) const UP_EG: u8 = 6;
pub(crate) const UP_IN: u8 = 7;

fn hook(slot: u8, ns: &str, ifname: &str, direction: Direction, place: Place) -> Hook {
    Hook {
        slot,
        ns_label: ns.to_string(),
        ifname: ifname.to_string(),
        ifindex: u32::from(slot) + 10,
        direction,
        place,
        role: Role::All,
    }
}

/// The lab: `lab-ctr:eth0`, `host:pt-veth0`, `host:pt-br0`, `host:pt-up0`, both directions.
pub(crate) fn lab() -> Topology {
    use Direction::{Egress, Ingress};
    Topology {
        target: "lab-ctr".into(),
        hooks: vec![
            hook(CTR_EG, "lab-ctr", "eth0", Egress, Place::Container),
            hook(CTR_IN, "lab-ctr", "eth0", Ingress, Place::Container),
            hook(VETH_IN, "host", "pt-veth0", Ingress, Place::Veth),
            hook(VETH_EG, "host", "pt-veth0", Egress, Place::Veth),
            hook(BR_IN, "host", "pt-br0", Ingress, Place::Bridge),
            hook(BR_EG, "host", "pt-br0", Egress, Place::Bridge),
            hook(UP_EG, "host", "pt-up0", Egress, Place::Uplink),
            hook(UP_IN, "host", "pt-up0", Ingress, Place::Uplink),
        ],
        target_addrs: vec![ip(CTR)],
        uplink_addrs: vec![ip(UP)],
        nat_rules: Vec::new(),
    }
}

pub(crate) fn ip(s: &str) -> IpAddr {
    s.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))
}

/// `addr:port` → endpoint.
pub(crate) fn ep(s: &str) -> Endpoint {
    let sa: SocketAddr = s.parse().unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
    Endpoint::new(sa.ip(), sa.port())
}

/// A NAT step as a report holds it (no conntrack verdict).
pub(crate) fn step(
    kind: NatKind,
    before: &str,
    after: &str,
    between: (&str, &str),
    rule: Option<&str>,
) -> NatStep {
    NatStep {
        kind,
        before: ep(before),
        after: ep(after),
        between: (between.0.into(), between.1.into()),
        rule: rule.map(str::to_string),
        rule_confidence: rule.map(|_| crate::model::RuleConfidence::Evaluated),
        candidates: Vec::new(),
        why: None,
        conntrack: None,
    }
}

pub(crate) fn entry(step: NatStep, packets: u64) -> NatEntry {
    NatEntry { step, packets }
}

/// Records the attributor's queries; names the lab's MASQUERADE and DNAT rules. Replies of the
/// published service (container port 80) match neither, as conntrack reverses their DNAT.
#[derive(Default)]
pub(crate) struct FakeRules {
    pub queries: Mutex<Vec<String>>,
}

impl RuleAttributor for FakeRules {
    fn attribute(&self, q: &NatQuery<'_>) -> Option<crate::model::Attribution> {
        self.rule(q).map(crate::model::Attribution::evaluated)
    }
}

impl FakeRules {
    fn rule(&self, q: &NatQuery<'_>) -> Option<String> {
        if let Ok(mut log) = self.queries.lock() {
            log.push(format!(
                "{:?} {} -> {} in={:?} out={:?}",
                q.kind, q.before, q.after, q.in_iface, q.out_iface
            ));
        }
        match (q.kind, q.in_iface, q.out_iface) {
            (NatKind::Snat, _, Some("pt-up0"))
                if q.before.addr == ip(CTR) && q.before.port != 80 =>
            {
                Some(MASQ_RULE.into())
            }
            (NatKind::Dnat, Some("pt-up0"), _) if q.before.port == 8080 => Some(DNAT_RULE.into()),
            _ => None,
        }
    }
}

/// One packet at one hook.
pub(crate) fn rec(
    slot: u8,
    t_us: u64,
    fp: u64,
    proto: Proto,
    src: &str,
    dst: &str,
) -> PacketRecord {
    let topo = lab();
    let direction = topo.hook(slot).map_or(Direction::Ingress, |h| h.direction);
    PacketRecord {
        slot,
        direction,
        ifindex: u32::from(slot) + 10,
        ktime_ns: t_us * 1000,
        fingerprint: fp,
        proto,
        src: ep(src),
        dst: ep(dst),
        tcp_flags: 0x10,
        icmp_type: 0,
        icmp_code: 0,
        seq: 0,
        ip_id: 0,
        frag: 0,
        pkt_len: 60,
        data: Bytes::new(),
        why: tracer_common::event::WHY_EVERY,
    }
}

/// An outbound TCP packet, container port `cport` masqueraded to uplink port `nport`.
pub(crate) fn masq_out(fp: u64, t_us: u64, cport: u16, nport: u16, dst: &str) -> Vec<PacketRecord> {
    let inside = format!("{CTR}:{cport}");
    let outside = format!("{UP}:{nport}");
    vec![
        rec(CTR_EG, t_us, fp, Proto::Tcp, &inside, dst),
        rec(VETH_IN, t_us + 4, fp, Proto::Tcp, &inside, dst),
        rec(BR_IN, t_us + 9, fp, Proto::Tcp, &inside, dst),
        rec(UP_EG, t_us + 21, fp, Proto::Tcp, &outside, dst),
    ]
}

/// The reply to [`masq_out`], de-NATed between the uplink and the bridge.
pub(crate) fn masq_back(
    fp: u64,
    t_us: u64,
    cport: u16,
    nport: u16,
    src: &str,
) -> Vec<PacketRecord> {
    let inside = format!("{CTR}:{cport}");
    let outside = format!("{UP}:{nport}");
    vec![
        rec(UP_IN, t_us, fp, Proto::Tcp, src, &outside),
        rec(BR_EG, t_us + 6, fp, Proto::Tcp, src, &inside),
        rec(VETH_EG, t_us + 10, fp, Proto::Tcp, src, &inside),
        rec(CTR_IN, t_us + 15, fp, Proto::Tcp, src, &inside),
    ]
}

pub(crate) fn correlator(cfg: CorrelateConfig) -> (Correlator, Arc<FakeRules>) {
    let rules = Arc::new(FakeRules::default());
    let attributor: Arc<dyn RuleAttributor> = rules.clone();
    (
        Correlator::new(Arc::new(lab()), Some(attributor), cfg),
        rules,
    )
}

/// Feeds records (in the order given) and finishes.
pub(crate) fn run(records: Vec<PacketRecord>) -> Vec<FlowReport> {
    let (mut c, _) = correlator(CorrelateConfig::default());
    records.into_iter().for_each(|r| c.push(&r));
    c.finish();
    c.flows()
}

/// `"<hook> <dir>"` of each hop.
pub(crate) fn hop_names(hops: &[super::HopTiming]) -> Vec<String> {
    hops.iter()
        .map(|h| format!("{} {}", h.hook, h.dir))
        .collect()
}
