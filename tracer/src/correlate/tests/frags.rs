//! IP fragments: one datagram in three fragments, reassembled at the bridge on the way out and
//! fragmented again at the uplink, answered in three fragments: one packet each way.

use tracer_common::event::FRAG_MORE;

use super::*;
use crate::model::{Direction, Proto};

const SERVER: &str = "10.200.2.2:7002";
const ID: u32 = 0x99;

/// `rec` of a UDP fragment: `piece` 0 is the first (with ports), 1 and 2 the later ones.
fn piece(slot: u8, t_us: u64, fp: u64, src: &str, dst: &str, piece: u16) -> PacketRecord {
    let strip = |s: &str| match piece {
        0 => s.to_string(),
        _ => format!("{}:0", s.rsplit_once(':').map_or(s, |(a, _)| a)),
    };
    let mut r = rec(slot, t_us, fp, Proto::Udp, &strip(src), &strip(dst));
    r.ip_id = ID;
    r.frag = match piece {
        0 => FRAG_MORE,
        1 => FRAG_MORE | 185,
        _ => 370,
    };
    r.pkt_len = if piece == 2 { 1100 } else { 1514 };
    r
}

/// The datagram out (fingerprints 10..13) and its answer (20..22) at time `t_us`.
fn exchange(t_us: u64, whole_at_bridge: bool) -> Vec<PacketRecord> {
    let inside = format!("{CTR}:41234");
    let outside = format!("{UP}:41234");
    let mut r = Vec::new();
    for p in 0..3u16 {
        let (fp, t) = (10 + u64::from(p), t_us + u64::from(p));
        r.push(piece(CTR_EG, t, fp, &inside, SERVER, p));
        r.push(piece(VETH_IN, t + 4, fp, &inside, SERVER, p));
        if !whole_at_bridge {
            r.push(piece(BR_IN, t + 8, fp, &inside, SERVER, p));
        }
        r.push(piece(UP_EG, t + 30, fp, &outside, SERVER, p));
    }
    if whole_at_bridge {
        // br_netfilter's defrag: the bridge's hook sees the datagram whole.
        let mut whole = rec(BR_IN, t_us + 12, 13, Proto::Udp, &inside, SERVER);
        (whole.ip_id, whole.pkt_len) = (ID, 4042);
        r.push(whole);
    }
    for p in 0..3u16 {
        let (fp, t) = (20 + u64::from(p), t_us + 100 + u64::from(p));
        r.push(piece(UP_IN, t, fp, SERVER, &outside, p));
        r.push(piece(BR_EG, t + 10, fp, SERVER, &inside, p));
        r.push(piece(VETH_EG, t + 12, fp, SERVER, &inside, p));
        r.push(piece(CTR_IN, t + 15, fp, SERVER, &inside, p));
    }
    r.sort_by_key(|r| r.ktime_ns);
    r
}

fn hop_fragments(hops: &[crate::correlate::HopTiming]) -> Vec<(String, Option<u64>)> {
    hops.iter()
        .map(|h| (format!("{} {}", h.hook, h.dir), h.fragments))
        .collect()
}

#[test]
fn a_fragmented_datagram_reassembled_at_the_bridge_is_one_packet_each_way() {
    let (mut c, _) = correlator(CorrelateConfig::default());
    exchange(0, true).iter().for_each(|r| c.push(r));
    c.finish();
    let flows = c.flows();
    assert_eq!(flows.len(), 1, "no phantom port-0 flow: {flows:#?}");
    let f = &flows[0];
    assert_eq!((f.src, f.dst), (ep("10.200.1.2:41234"), ep(SERVER)));
    assert_eq!((f.packets_out, f.packets_back), (1, 1));
    assert_eq!(f.bytes_out, 1514 + 1514 + 1100);
    assert!(f.stops.is_empty(), "{:?}", f.stops);
    assert_eq!(
        hop_fragments(&f.hops),
        [
            ("lab-ctr:eth0 egress".to_string(), Some(3)),
            ("host:pt-veth0 ingress".to_string(), Some(3)),
            ("host:pt-br0 ingress".to_string(), Some(0)),
            ("host:pt-up0 egress".to_string(), Some(3)),
        ]
    );
    assert!(
        f.hops_back.iter().all(|h| h.fragments == Some(3)),
        "{:?}",
        f.hops_back
    );
    let snat: Vec<_> = f
        .nat
        .iter()
        .map(|n| (n.step.between.clone(), n.packets))
        .collect();
    assert_eq!(
        snat,
        [(("host:pt-br0".to_string(), "host:pt-up0".to_string()), 1)]
    );
    assert_eq!(f.nat_back.len(), 1, "{:?}", f.nat_back);
    assert_eq!(c.orphan_fragments(), 0);
}

#[test]
fn fragments_seen_at_every_hook_are_one_packet_too() {
    let flows = run(exchange(0, false));
    assert_eq!(flows.len(), 1, "{flows:#?}");
    assert_eq!((flows[0].packets_out, flows[0].packets_back), (1, 1));
    assert!(flows[0].hops.iter().all(|h| h.fragments == Some(3)));
    assert!(flows[0].stops.is_empty());
}

#[test]
fn later_fragments_without_their_first_are_orphans_not_flows() {
    let (mut c, _) = correlator(CorrelateConfig::default());
    let records: Vec<_> = exchange(0, false)
        .into_iter()
        .filter(|r| {
            r.frag & tracer_common::event::FRAG_OFFSET != 0
                && r.direction == Direction::Egress
                && r.slot == CTR_EG
        })
        .collect();
    assert_eq!(records.len(), 2);
    records.iter().for_each(|r| c.push(r));
    c.finish();
    assert!(c.flows().is_empty());
    assert_eq!(c.orphan_fragments(), 2);
}

#[test]
fn a_whole_settling_after_its_first_fragment_still_joins_it() {
    let (mut c, _) = correlator(CorrelateConfig::default());
    let records = exchange(0, true);
    let (whole, rest): (Vec<_>, Vec<_>) = records.into_iter().partition(|r| r.fingerprint == 13);
    rest.iter().for_each(|r| c.push(r));
    // Everything but the whole settles first.
    c.advance(10_000_000_000);
    whole.iter().for_each(|r| c.push(r));
    c.finish();
    let flows = c.flows();
    assert_eq!(flows.len(), 1, "{flows:#?}");
    assert_eq!(flows[0].packets_out, 1);
    assert!(flows[0].stops.is_empty(), "{:?}", flows[0].stops);
    assert!(flows[0]
        .hops
        .iter()
        .any(|h| h.hook == "host:pt-br0" && h.fragments == Some(0)));
}
