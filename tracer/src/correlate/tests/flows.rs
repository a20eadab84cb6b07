//! Packets into flows: counts, hop chains, ordering, retransmissions, losses, eviction.

use crate::model::{Direction, DropRecord, HookStats, Proto};

use super::*;
use crate::{
    correlate::{Leg, Stop, StopCause},
    model::Orientation,
};

const SERVER: &str = "10.200.2.2:8080";

/// Three requests and two replies of one connection.
fn conversation() -> Vec<PacketRecord> {
    let mut r = Vec::new();
    for (i, t) in [0u64, 1_000, 2_000].into_iter().enumerate() {
        r.extend(masq_out(100 + i as u64, t, 41234, 41234, SERVER));
    }
    r.extend(masq_back(200, 500, 41234, 41234, SERVER));
    r.extend(masq_back(201, 1_500, 41234, 41234, SERVER));
    r
}

#[test]
fn masquerade_flow_has_four_hops_each_way() {
    let flows = run(conversation());
    assert_eq!(flows.len(), 1);
    let f = &flows[0];
    assert_eq!((f.proto, f.origin), (Proto::Tcp, Orientation::Outbound));
    assert_eq!((f.src, f.dst), (ep("10.200.1.2:41234"), ep(SERVER)));
    assert_eq!((f.packets_out, f.packets_back), (3, 2));
    assert_eq!(
        hop_names(&f.hops),
        [
            "lab-ctr:eth0 egress",
            "host:pt-veth0 ingress",
            "host:pt-br0 ingress",
            "host:pt-up0 egress"
        ]
    );
    let deltas: Vec<f64> = f.hops.iter().map(|h| h.delta_us).collect();
    assert_eq!(deltas, [0.0, 4.0, 9.0, 21.0]);
    assert_eq!(
        hop_names(&f.hops_back),
        [
            "host:pt-up0 ingress",
            "host:pt-br0 egress",
            "host:pt-veth0 egress",
            "lab-ctr:eth0 ingress"
        ]
    );
    assert!(f.stops.is_empty(), "{:?}", f.stops);
    assert_eq!((f.first_ns, f.last_ns), (0, 2_021_000));
}

/// A request that never gets past the bridge's ingress hook.
fn stopped_at_bridge(fp: u64, t_us: u64) -> Vec<PacketRecord> {
    let mut records = masq_out(fp, t_us, 41234, 41234, SERVER);
    records.truncate(3);
    records
}

/// A fixed permutation that moves every event far from its place.
fn scramble(mut records: Vec<PacketRecord>) -> Vec<PacketRecord> {
    let n = records.len();
    let mut out = Vec::with_capacity(n);
    let mut i = 0usize;
    while !records.is_empty() {
        i = (i + 7) % records.len();
        out.push(records.swap_remove(i));
    }
    out
}

#[test]
fn reordered_events_give_the_same_flows() {
    let in_order = run(conversation());
    let mut reversed = conversation();
    reversed.reverse();
    assert_eq!(run(reversed), in_order);
    assert_eq!(run(scramble(conversation())), in_order);
}

#[test]
fn reordering_within_the_settle_window_survives_advance() {
    let (mut c, _) = correlator(CorrelateConfig::default());
    let mut records = masq_out(1, 0, 41234, 41234, SERVER);
    records.reverse();
    for r in records {
        c.push(&r);
        assert!(c.advance(50_000).is_empty(), "nothing settles within 200ms");
    }
    assert_eq!(c.advance(300_000_000).len(), 1);
    assert_eq!(c.flows(), run(masq_out(1, 0, 41234, 41234, SERVER)));
}

#[test]
fn retransmission_is_two_packets_not_one_eight_hop_packet() {
    let mut records = masq_out(7, 0, 41234, 41234, SERVER);
    records.extend(masq_out(7, 200_000, 41234, 41234, SERVER));
    let flows = run(records);
    assert_eq!(flows.len(), 1);
    assert_eq!(flows[0].packets_out, 2);
    assert_eq!(flows[0].hops.len(), 4);
    assert_eq!(flows[0].nat.len(), 1);
    assert_eq!(flows[0].nat[0].packets, 2);
}

#[test]
fn same_tag_after_the_gap_is_a_new_packet() {
    // The second sighting is at a hook the first did not cross, but 2s later.
    let mut records = masq_out(7, 0, 41234, 41234, SERVER);
    records.truncate(2);
    records.push(rec(
        BR_IN,
        2_000_000,
        7,
        Proto::Tcp,
        "10.200.1.2:41234",
        SERVER,
    ));
    let flows = run(records);
    assert_eq!(flows[0].packets_out, 2);
}

#[test]
fn colliding_tags_with_unrelated_tuples_are_split() {
    let mut records = masq_out(9, 0, 41234, 41234, SERVER);
    records.insert(2, rec(BR_EG, 5, 9, Proto::Tcp, "1.2.3.4:1", "5.6.7.8:2"));
    let flows = run(records);
    assert_eq!(flows.len(), 2);
    assert_eq!(flows[0].hops.len(), 4);
}

#[test]
fn flows_colliding_after_masquerade_stay_separate() {
    // Two container ports, one after the other, masqueraded to the same uplink port.
    let mut records = masq_out(1, 0, 41000, 50000, SERVER);
    records.extend(masq_back(2, 100, 41000, 50000, SERVER));
    records.extend(masq_out(3, 10_000, 42000, 50000, SERVER));
    records.extend(masq_back(4, 10_100, 42000, 50000, SERVER));
    // A reply seen only at the uplink belongs to the latest mapping.
    records.push(rec(
        UP_IN,
        10_200,
        5,
        Proto::Tcp,
        SERVER,
        "10.200.2.1:50000",
    ));
    let flows = run(records);
    assert_eq!(flows.len(), 2);
    assert_eq!(flows[0].src, ep("10.200.1.2:41000"));
    assert_eq!((flows[0].packets_out, flows[0].packets_back), (1, 1));
    assert_eq!(flows[1].src, ep("10.200.1.2:42000"));
    assert_eq!((flows[1].packets_out, flows[1].packets_back), (1, 2));
}

#[test]
fn packet_stopping_at_the_bridge_is_lost_there() {
    let mut records = conversation();
    records.extend(stopped_at_bridge(300, 3_000));
    let flows = run(records);
    let expected = Stop {
        leg: Leg::Out,
        after_hook: "host:pt-br0".into(),
        after_dir: Direction::Ingress,
        count: 1,
        reason: None,
        cause: StopCause::NotSeen,
    };
    assert_eq!(flows[0].stops, [expected]);
    assert_eq!(flows[0].packets_out, 4);
}

#[test]
fn drop_record_names_the_reason() {
    let (mut c, _) = correlator(CorrelateConfig::default());
    conversation().into_iter().for_each(|r| c.push(&r));
    stopped_at_bridge(300, 3_000)
        .into_iter()
        .for_each(|r| c.push(&r));
    c.push_drop(DropRecord {
        ktime_ns: 3_010_000,
        fingerprint: 300,
        reason: 6,
        reason_name: Some("NETFILTER_DROP".into()),
        tuple: None,
        traced: true,
    });
    c.finish();
    let stops = &c.flows()[0].stops;
    assert_eq!(stops.len(), 1);
    assert_eq!(stops[0].after_hook, "host:pt-br0");
    assert_eq!(stops[0].reason.as_deref(), Some("NETFILTER_DROP"));
    assert_eq!(c.unmatched_drops(), 0);
}

#[test]
fn unanswered_flow_that_never_leaves_is_lost_at_the_bridge() {
    // Every SYN is dropped in the host: no packet reaches the uplink, no reply comes back.
    let mut records = Vec::new();
    for (i, t) in [0u64, 1_000_000, 3_000_000].into_iter().enumerate() {
        records.extend(stopped_at_bridge(i as u64 + 1, t));
    }
    let flows = run(records);
    assert_eq!(flows[0].packets_out, 3);
    assert_eq!(flows[0].stops.len(), 1);
    assert_eq!(flows[0].stops[0].count, 3);
    assert_eq!(flows[0].stops[0].after_hook, "host:pt-br0");
}

#[test]
fn oldest_flow_is_evicted_at_max_flows() {
    let cfg = CorrelateConfig {
        max_flows: 2,
        ..CorrelateConfig::default()
    };
    let (mut c, _) = correlator(cfg);
    for (i, port) in [41001u16, 41002, 41003].into_iter().enumerate() {
        let t = i as u64 * 1_000_000;
        masq_out(i as u64 + 1, t, port, port, SERVER)
            .into_iter()
            .for_each(|r| c.push(&r));
        c.advance(t * 1000 + 500_000_000);
    }
    assert_eq!(c.evicted_flows(), 1);
    let ports: Vec<u16> = c.flows().iter().map(|f| f.src.port).collect();
    assert_eq!(ports, [41002, 41003]);
}

#[test]
fn evicted_flows_release_their_addresses_and_aliases() {
    let cfg = CorrelateConfig {
        max_flows: 2,
        ..CorrelateConfig::default()
    };
    let (mut c, _) = correlator(cfg);
    for i in 0..50u64 {
        let server = format!("10.200.2.{}:8080", 10 + i);
        let t = i * 1_000_000;
        masq_out(i + 1, t, 41000 + i as u16, 41000 + i as u16, &server)
            .into_iter()
            .for_each(|r| c.push(&r));
        c.advance(t * 1000 + 500_000_000);
    }
    assert_eq!(c.evicted_flows(), 48);
    // Two flows: the container, the host's masquerade address and one server each.
    assert_eq!(c.pooled_addrs(), 4);
    let flows = c.flows();
    let ports: Vec<u16> = flows.iter().map(|f| f.src.port).collect();
    assert_eq!(ports, [41048, 41049]);
    assert!(flows.iter().all(|f| f.nat.len() == 1 && f.packets_out == 1));
}

#[test]
fn pending_buffer_is_bounded() {
    let cfg = CorrelateConfig {
        max_pending: 8,
        ..CorrelateConfig::default()
    };
    let (mut c, _) = correlator(cfg);
    for i in 0..5u64 {
        masq_out(i + 1, i * 10, 41234, 41234, SERVER)
            .into_iter()
            .for_each(|r| c.push(&r));
        assert!(c.pending_sightings() <= 8);
    }
    c.finish();
    assert_eq!(c.flows()[0].packets_out, 5);
    assert_eq!(c.flows()[0].hops.len(), 4);
}

#[test]
fn unknown_hooks_and_non_ip_events_are_ignored() {
    let (mut c, _) = correlator(CorrelateConfig::default());
    c.push(&rec(42, 0, 1, Proto::Tcp, "10.200.1.2:1", SERVER));
    c.push(&rec(CTR_EG, 0, 0, Proto::Tcp, "10.200.1.2:1", SERVER));
    c.finish();
    assert_eq!(c.ignored_events(), 2);
    assert!(c.flows().is_empty());
}

#[test]
fn lab_conversation_renders_as_text() {
    let mut records = conversation();
    records.extend(stopped_at_bridge(300, 3_000));
    let text: String = run(records)
        .iter()
        .map(|f| crate::render::Format::Text.flow(f).unwrap_or_default())
        .collect();
    let expected = "\
tcp 10.200.1.2:41234 -> 10.200.2.2:8080   4 pkts out, 2 back
  lab-ctr:eth0 egress +0 -> host:pt-veth0 ingress +4µs -> host:pt-br0 ingress +9µs
  => SNAT (MASQUERADE) 10.200.1.2:41234 -> 10.200.2.1:41234   [-A POSTROUTING -s 10.200.1.0/24 ! -o pt-br0 -j MASQUERADE]
  -> host:pt-up0 egress +21µs
  back: host:pt-up0 ingress +0
  <= de-NAT dst 10.200.2.1:41234 -> 10.200.1.2:41234
  -> host:pt-br0 egress +6µs -> host:pt-veth0 egress +10µs -> lab-ctr:eth0 ingress +15µs
  lost: 1 after host:pt-br0 ingress
";
    assert_eq!(text, expected);
}

fn lost_at(slot: u8, lost: u64) -> (Hook, HookStats) {
    let hook = lab().hooks.into_iter().find(|h| h.slot == slot);
    let stats = HookStats {
        lost,
        ..HookStats::default()
    };
    (hook.unwrap_or_else(|| lab().hooks[0].clone()), stats)
}

#[test]
fn packets_unseen_where_the_ring_buffer_was_full_are_not_losses() {
    let (mut c, _) = correlator(CorrelateConfig::default());
    // Counters at 0 ms: nothing lost. At 250 ms: the uplink's egress hook lost 1 event.
    c.note_counters(
        0,
        &[lost_at(UP_EG, 0), lost_at(BR_IN, 0), lost_at(BR_EG, 0)],
    );
    conversation().into_iter().for_each(|r| c.push(&r));
    stopped_at_bridge(300, 100_000)
        .into_iter()
        .for_each(|r| c.push(&r));
    // The bridge's egress hook lost events too, but packets to the uplink do not go there.
    c.note_counters(
        250_000_000,
        &[lost_at(UP_EG, 1), lost_at(BR_IN, 0), lost_at(BR_EG, 3)],
    );
    // Long after: a packet stopping at the bridge then is a loss again.
    stopped_at_bridge(301, 2_000_000)
        .into_iter()
        .for_each(|r| c.push(&r));
    c.note_counters(2_500_000_000, &[lost_at(UP_EG, 1), lost_at(BR_IN, 0)]);
    c.finish();
    let stops = &c.flows()[0].stops;
    let causes: Vec<_> = stops.iter().map(|s| (s.count, s.cause.clone())).collect();
    assert_eq!(
        causes,
        [
            (
                1,
                StopCause::EventsLost {
                    at: "host:pt-up0".into(),
                    at_dir: Direction::Egress
                }
            ),
            (1, StopCause::NotSeen),
        ]
    );
}

#[test]
fn a_nat_step_seen_over_a_gap_is_the_same_step() {
    let mut records = conversation();
    // A packet whose event at the bridge was lost: SNAT seen between the veth and the uplink.
    let mut gap = masq_out(400, 5_000, 41234, 41234, SERVER);
    gap.remove(2);
    records.splice(0..0, gap);
    let flows = run(records);
    assert_eq!(flows.len(), 1);
    let snat: Vec<_> = flows[0]
        .nat
        .iter()
        .map(|n| (&n.step.between, n.packets))
        .collect();
    assert_eq!(
        snat,
        [(&("host:pt-br0".to_string(), "host:pt-up0".to_string()), 4)],
        "{:?}",
        flows[0].nat
    );
}

/// A connection's packets out and back (SYN, SYN-ACK, ACK, FIN, ACK), container port `cport`
/// masqueraded to `nport`, its SYN with sequence number `isn`.
fn connection(fp: u64, t_us: u64, cport: u16, nport: u16, isn: u32) -> Vec<PacketRecord> {
    let with = |mut recs: Vec<PacketRecord>, flags: u8, seq: u32| {
        for r in &mut recs {
            (r.tcp_flags, r.seq) = (flags, seq);
        }
        recs
    };
    let mut r = with(masq_out(fp, t_us, cport, nport, SERVER), 0x02, isn);
    r.extend(with(
        masq_back(fp + 1, t_us + 100, cport, nport, SERVER),
        0x12,
        9,
    ));
    r.extend(with(
        masq_out(fp + 2, t_us + 200, cport, nport, SERVER),
        0x10,
        isn + 1,
    ));
    r.extend(with(
        masq_out(fp + 3, t_us + 300, cport, nport, SERVER),
        0x11,
        isn + 1,
    ));
    r.extend(with(
        masq_back(fp + 4, t_us + 400, cport, nport, SERVER),
        0x10,
        10,
    ));
    r
}

#[test]
fn a_new_connection_on_a_used_tuple_is_a_new_flow_with_its_own_nat() {
    // The same container port twice; MASQUERADE maps it to another port the second time.
    let mut records = connection(10, 0, 41000, 41000, 1_000);
    records.extend(connection(20, 60_000, 41000, 50000, 7_000));
    let flows = run(records);
    assert_eq!(flows.len(), 2, "{flows:#?}");
    for (f, port) in flows.iter().zip([41000, 50000]) {
        assert_eq!(f.src, ep("10.200.1.2:41000"));
        assert_eq!((f.packets_out, f.packets_back), (3, 2), "{f:#?}");
        assert_eq!(f.nat.len(), 1, "{f:#?}");
        assert_eq!(f.nat[0].step.after.port, port, "{f:#?}");
        assert_eq!(f.nat_back.len(), 1, "{f:#?}");
        assert!(f.stops.is_empty(), "{f:#?}");
    }
}

#[test]
fn a_retransmitted_syn_stays_in_its_flow() {
    let mut records = connection(10, 0, 41000, 41000, 1_000);
    let mut again = masq_out(30, 1_000_000, 41000, 41000, SERVER);
    for r in &mut again {
        (r.tcp_flags, r.seq) = (0x02, 1_000);
    }
    records.splice(4..4, again);
    let flows = run(records);
    assert_eq!(flows.len(), 1, "{flows:#?}");
    assert_eq!(flows[0].packets_out, 4);
}

#[test]
fn udp_after_a_long_idle_gap_is_a_new_flow() {
    let udp = |fp: u64, t_us: u64| {
        let mut r = masq_out(fp, t_us, 5353, 5353, "10.200.2.2:53");
        for x in &mut r {
            x.proto = Proto::Udp;
        }
        r
    };
    let mut records = udp(1, 0);
    records.extend(udp(2, 10_000_000)); // 10 s later: the same flow
    records.extend(udp(3, 50_000_000)); // 40 s after that: a new one
    let flows = run(records);
    let counts: Vec<u64> = flows.iter().map(|f| f.packets_out).collect();
    assert_eq!(counts, [2, 1], "{flows:#?}");
}

#[test]
fn a_connection_first_seen_at_a_server_packet_is_opened_by_the_client() {
    // Tracing began mid-connection: the first packet seen is the server's (port 8080) reply.
    let mut records = masq_back(1, 0, 41234, 41234, SERVER);
    records.extend(masq_out(2, 100, 41234, 41234, SERVER));
    let flows = run(records);
    assert_eq!(flows.len(), 1, "{flows:#?}");
    let f = &flows[0];
    assert_eq!(f.origin, Orientation::Outbound);
    assert_eq!((f.src, f.dst), (ep("10.200.1.2:41234"), ep(SERVER)));
    assert_eq!((f.packets_out, f.packets_back), (1, 1));
}
