//! NAT steps: MASQUERADE and its de-NAT, ICMP echo id rewrite, DNAT of a published port.

use crate::model::{NatKind, Proto};

use super::*;
use crate::model::Orientation;

#[test]
fn masquerade_and_its_de_nat() {
    let server = "10.200.2.2:8080";
    let (mut c, rules) = correlator(CorrelateConfig::default());
    let mut records = masq_out(1, 0, 41234, 61000, server);
    records.extend(masq_out(2, 1_000, 41234, 61000, server));
    records.extend(masq_back(3, 500, 41234, 61000, server));
    records.into_iter().for_each(|r| c.push(&r));
    c.finish();
    let f = &c.flows()[0];
    let snat = step(
        NatKind::Snat,
        "10.200.1.2:41234",
        "10.200.2.1:61000",
        ("host:pt-br0", "host:pt-up0"),
        Some(MASQ_RULE),
    );
    assert_eq!(f.nat, [entry(snat, 2)]);
    let de_nat = step(
        NatKind::Dnat,
        "10.200.2.1:61000",
        "10.200.1.2:41234",
        ("host:pt-up0", "host:pt-br0"),
        None,
    );
    assert_eq!(f.nat_back, [entry(de_nat, 1)]);
    let queries = rules.queries.lock().map(|q| q.clone()).unwrap_or_default();
    assert_eq!(
        queries,
        [r#"Snat 10.200.1.2:41234 -> 10.200.2.1:61000 in=Some("pt-br0") out=Some("pt-up0")"#,],
        "one query per distinct step of the opening leg; replies are conntrack's, never a rule's"
    );
}

/// An echo request or reply at one hook; the parser puts the echo id in the source port of both.
fn echo(slot: u8, t_us: u64, fp: u64, icmp_type: u8, src: &str, dst: &str) -> PacketRecord {
    PacketRecord {
        icmp_type,
        ..rec(slot, t_us, fp, Proto::Icmp, src, dst)
    }
}

#[test]
fn icmp_echo_id_rewrite_is_nat_of_a_port() {
    let records = vec![
        echo(CTR_EG, 0, 1, 8, "10.200.1.2:7", "10.200.2.2:0"),
        echo(VETH_IN, 3, 1, 8, "10.200.1.2:7", "10.200.2.2:0"),
        echo(BR_IN, 6, 1, 8, "10.200.1.2:7", "10.200.2.2:0"),
        echo(UP_EG, 12, 1, 8, "10.200.2.1:900", "10.200.2.2:0"),
        echo(UP_IN, 100, 2, 0, "10.200.2.2:900", "10.200.2.1:0"),
        echo(BR_EG, 104, 2, 0, "10.200.2.2:7", "10.200.1.2:0"),
        echo(VETH_EG, 107, 2, 0, "10.200.2.2:7", "10.200.1.2:0"),
        echo(CTR_IN, 110, 2, 0, "10.200.2.2:7", "10.200.1.2:0"),
    ];
    let flows = run(records);
    assert_eq!(flows.len(), 1);
    let f = &flows[0];
    assert_eq!(
        (f.proto, f.src, f.dst),
        (Proto::Icmp, ep("10.200.1.2:7"), ep("10.200.2.2:0"))
    );
    assert_eq!((f.packets_out, f.packets_back), (1, 1));
    let snat = step(
        NatKind::Snat,
        "10.200.1.2:7",
        "10.200.2.1:900",
        ("host:pt-br0", "host:pt-up0"),
        Some(MASQ_RULE),
    );
    assert_eq!(f.nat, [entry(snat, 1)]);
    let de_nat = step(
        NatKind::Dnat,
        "10.200.2.1:900",
        "10.200.1.2:7",
        ("host:pt-up0", "host:pt-br0"),
        None,
    );
    assert_eq!(f.nat_back, [entry(de_nat, 1)]);
}

#[test]
fn dnat_of_a_published_port_opens_an_inbound_flow() {
    let client = "10.200.2.2:55555";
    let tcp = Proto::Tcp;
    let records = vec![
        rec(UP_IN, 0, 1, tcp, client, "10.200.2.1:8080"),
        rec(BR_EG, 8, 1, tcp, client, "10.200.1.2:80"),
        rec(VETH_EG, 11, 1, tcp, client, "10.200.1.2:80"),
        rec(CTR_IN, 14, 1, tcp, client, "10.200.1.2:80"),
        rec(CTR_EG, 300, 2, tcp, "10.200.1.2:80", client),
        rec(VETH_IN, 303, 2, tcp, "10.200.1.2:80", client),
        rec(BR_IN, 307, 2, tcp, "10.200.1.2:80", client),
        rec(UP_EG, 320, 2, tcp, "10.200.2.1:8080", client),
    ];
    let flows = run(records);
    assert_eq!(flows.len(), 1);
    let f = &flows[0];
    assert_eq!(f.origin, Orientation::Inbound);
    assert_eq!((f.src, f.dst), (ep(client), ep("10.200.1.2:80")));
    assert_eq!(
        hop_names(&f.hops),
        [
            "host:pt-up0 ingress",
            "host:pt-br0 egress",
            "host:pt-veth0 egress",
            "lab-ctr:eth0 ingress"
        ]
    );
    let dnat = step(
        NatKind::Dnat,
        "10.200.2.1:8080",
        "10.200.1.2:80",
        ("host:pt-up0", "host:pt-br0"),
        Some(DNAT_RULE),
    );
    assert_eq!(f.nat, [entry(dnat, 1)]);
    let un_dnat = step(
        NatKind::Snat,
        "10.200.1.2:80",
        "10.200.2.1:8080",
        ("host:pt-br0", "host:pt-up0"),
        None,
    );
    assert_eq!(f.nat_back, [entry(un_dnat, 1)]);
    assert!(f.stops.is_empty(), "{:?}", f.stops);
}
