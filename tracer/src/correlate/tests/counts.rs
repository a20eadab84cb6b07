//! Aggregate mode: the kernel's per-hook counts join the flows their first packets' events
//! built, by tuple before and after NAT, and make the per-hop counts and the stops exact.

use super::*;
use crate::model::{CountRecord, DropRecord};

const SERVER: &str = "10.200.2.2:8080";

/// What the kernel counted of `src -> dst` at `slot`.
fn counted(slot: u8, src: &str, dst: &str, packets: u64, last_us: u64) -> CountRecord {
    CountRecord {
        slot,
        proto: Proto::Tcp,
        src: ep(src),
        dst: ep(dst),
        packets,
        bytes: packets * 60,
        first_ns: 1_000,
        last_ns: last_us * 1_000,
    }
}

/// The first exchange's events, then the kernel's counts of `out` packets out (the first
/// `reach_uplink` of them got past the bridge) and 3 back.
fn counted_flow(out: u64, reach_uplink: u64) -> Correlator {
    let (mut c, _) = correlator(CorrelateConfig::default());
    let inside = format!("{CTR}:41234");
    let outside = format!("{UP}:41234");
    for r in masq_out(1, 0, 41234, 41234, SERVER)
        .into_iter()
        .chain(masq_back(2, 100, 41234, 41234, SERVER))
    {
        c.push(&r);
    }
    c.advance(1_000_000_000);
    for slot in [CTR_EG, VETH_IN, BR_IN] {
        c.push_counts(counted(slot, &inside, SERVER, out, 2_000_000));
    }
    if reach_uplink > 0 {
        c.push_counts(counted(UP_EG, &outside, SERVER, reach_uplink, 2_000_000));
    }
    c.push_counts(counted(UP_IN, SERVER, &outside, 3, 2_000_000));
    for slot in [BR_EG, VETH_EG, CTR_IN] {
        c.push_counts(counted(slot, SERVER, &inside, 3, 2_000_000));
    }
    c
}

#[test]
fn kernel_counts_give_every_hop_its_packets_and_the_events_its_timings() {
    let mut c = counted_flow(1_000, 1_000);
    c.finish();
    let flows = c.flows();
    assert_eq!(
        flows.len(),
        1,
        "counts beyond NAT join the flow by its alias"
    );
    let f = &flows[0];
    assert!(f.kernel_counts);
    assert_eq!((f.packets_out, f.packets_back), (1_000, 3));
    assert_eq!(f.bytes_out, 60_000);
    let per_hop: Vec<(u64, u64)> = f.hops.iter().map(|h| (h.packets, h.samples)).collect();
    assert_eq!(per_hop, [(1_000, 1); 4]);
    assert!(f.hops_back.iter().all(|h| h.packets == 3 && h.samples == 1));
    assert!(f.stops.is_empty(), "{:?}", f.stops);
    assert_eq!(c.unattributed_packets(), 0);
}

#[test]
fn settled_counts_say_where_unsampled_packets_stopped_and_why() {
    let mut c = counted_flow(1_000, 400);
    // The kernel's drops of two unsampled packets, found by tuple.
    for t in [3_000u64, 3_001] {
        c.push_drop(DropRecord {
            ktime_ns: t * 1_000,
            fingerprint: 77,
            reason: 6,
            reason_name: Some("NETFILTER_DROP".into()),
            tuple: Some((Proto::Tcp, ep(&format!("{CTR}:41234")), ep(SERVER))),
            traced: false,
        });
    }
    c.finish();
    let f = &c.flows()[0];
    assert_eq!(f.stops.len(), 1, "{:?}", f.stops);
    let stop = &f.stops[0];
    assert_eq!(
        (stop.after_hook.as_str(), stop.after_dir, stop.count),
        ("host:pt-br0", Direction::Ingress, 600)
    );
    assert_eq!(stop.reason.as_deref(), Some("NETFILTER_DROP"));
    assert_eq!(stop.cause, super::super::StopCause::Dropped);
    assert_eq!(c.unmatched_drops(), 0);
}

#[test]
fn counts_still_flowing_claim_no_stop_from_their_differences() {
    let mut c = counted_flow(1_000, 990);
    // The last packet was counted 300 ms before this tick: its counts are taken in, and the
    // difference may still be in flight.
    c.advance(2_300_000_000);
    let f = &c.flows()[0];
    assert!(f.stops.is_empty(), "{:?}", f.stops);
    assert_eq!(f.hops[3].packets, 990);
}

#[test]
fn counts_no_flow_ever_had_are_counted_as_unattributed() {
    let (mut c, _) = correlator(CorrelateConfig::default());
    c.push_counts(counted(CTR_EG, "10.200.1.2:5000", SERVER, 42, 1));
    c.push_counts(counted(20, "10.200.1.2:5000", SERVER, 8, 1));
    c.advance(1_000_000);
    assert_eq!(c.unattributed_packets(), 8, "an unknown slot at once");
    c.finish();
    assert_eq!(
        c.unattributed_packets(),
        50,
        "the rest once nothing can claim them"
    );
    assert!(c.flows().is_empty());
}
