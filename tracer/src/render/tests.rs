//! Golden tests: hand-made reports in, exact text and JSON out.

use crate::{
    correlate::{
        tests::{entry, ep, lab, step},
        FlowId, FlowReport, HopTiming, Leg, NatEntry, Stop, StopCause,
    },
    model::{Direction, Hook, HookStats, NatKind, Orientation, Proto, Reporting},
};

use super::{json::flow_line, text::format_delta_us, *};

fn nat(
    kind: NatKind,
    before: &str,
    after: &str,
    between: (&str, &str),
    rule: Option<&str>,
) -> NatEntry {
    entry(step(kind, before, after, between, rule), 6)
}

const MASQ: &str = "-A POSTROUTING -s 10.200.1.0/24 ! -o pt-br0 -j MASQUERADE";

fn hops(chain: &[(&str, Direction, f64)]) -> Vec<HopTiming> {
    chain
        .iter()
        .enumerate()
        .map(|(i, (hook, dir, delta_us))| HopTiming {
            hook: hook.to_string(),
            dir: *dir,
            delta_us: *delta_us,
            slot: i as u8,
            packets: 6,
            samples: 6,
            fragments: None,
        })
        .collect()
}

/// The lab's MASQUERADE flow, one packet lost at the bridge.
pub(crate) fn masq_flow() -> FlowReport {
    use Direction::{Egress, Ingress};
    FlowReport {
        id: FlowId(1),
        proto: Proto::Tcp,
        origin: Orientation::Outbound,
        src: ep("10.200.1.2:41234"),
        dst: ep("10.200.2.2:8080"),
        packets_out: 6,
        packets_back: 5,
        bytes_out: 360,
        bytes_back: 300,
        before_path_complete: false,
        kernel_counts: false,
        first_ns: 1_000,
        last_ns: 9_000,
        hops: hops(&[
            ("lab-ctr:eth0", Egress, 0.0),
            ("host:pt-veth0", Ingress, 4.0),
            ("host:pt-br0", Ingress, 9.25),
            ("host:pt-up0", Egress, 1234.5),
        ]),
        hops_back: hops(&[
            ("host:pt-up0", Ingress, 0.0),
            ("host:pt-br0", Egress, 6.0),
            ("lab-ctr:eth0", Ingress, 15.0),
        ]),
        nat: vec![nat(
            NatKind::Snat,
            "10.200.1.2:41234",
            "10.200.2.1:41234",
            ("host:pt-br0", "host:pt-up0"),
            Some(MASQ),
        )],
        nat_back: vec![nat(
            NatKind::Dnat,
            "10.200.2.1:41234",
            "10.200.1.2:41234",
            ("host:pt-up0", "host:pt-br0"),
            None,
        )],
        stops: vec![Stop {
            leg: Leg::Out,
            after_hook: "host:pt-br0".into(),
            after_dir: Ingress,
            count: 1,
            reason: Some("NETFILTER_DROP".into()),
            cause: StopCause::Dropped,
        }],
        notes: Vec::new(),
    }
}

#[test]
fn text_flow_golden() {
    let expected = "\
tcp 10.200.1.2:41234 -> 10.200.2.2:8080   6 pkts out, 5 back
  lab-ctr:eth0 egress +0 -> host:pt-veth0 ingress +4µs -> host:pt-br0 ingress +9.2µs
  => SNAT (MASQUERADE) 10.200.1.2:41234 -> 10.200.2.1:41234   [-A POSTROUTING -s 10.200.1.0/24 ! -o pt-br0 -j MASQUERADE]
  -> host:pt-up0 egress +1.2ms
  back: host:pt-up0 ingress +0
  <= de-NAT dst 10.200.2.1:41234 -> 10.200.1.2:41234
  -> host:pt-br0 egress +6µs -> lab-ctr:eth0 ingress +15µs
  lost: 1 after host:pt-br0 ingress (reason: NETFILTER_DROP)
";
    assert_eq!(
        Format::Text.flow(&masq_flow()).unwrap_or_default(),
        expected
    );
}

#[test]
fn text_inbound_ipv6_flow_with_unplaced_nat() {
    let mut f = masq_flow();
    f.origin = Orientation::Inbound;
    f.proto = Proto::Udp;
    f.src = ep("[2001:db8::2]:5353");
    f.dst = ep("[fd00::2]:53");
    f.packets_out = 1;
    f.hops.truncate(1);
    f.hops_back.clear();
    f.nat[0].step.rule = Some("-A PREROUTING -j DNAT --to-destination [fd00::2]:53".into());
    f.nat[0].step.kind = NatKind::Dnat;
    f.stops.clear();
    let expected = "\
udp [2001:db8::2]:5353 -> [fd00::2]:53 (inbound)   1 pkt out, 5 back
  lab-ctr:eth0 egress +0
  => DNAT 10.200.1.2:41234 -> 10.200.2.1:41234   [-A PREROUTING -j DNAT --to-destination [fd00::2]:53]
";
    assert_eq!(Format::Text.flow(&f).unwrap_or_default(), expected);
}

#[test]
fn json_flow_golden() {
    let expected = concat!(
        r#"{"type":"flow","id":1,"proto":"tcp","origin":"outbound","src":"10.200.1.2:41234","dst":"10.200.2.2:8080","#,
        r#""packets_out":6,"packets_back":5,"bytes_out":360,"bytes_back":300,"counts":"events","#,
        r#""hops":[{"hook":"lab-ctr:eth0","dir":"egress","delta_us":0.0,"packets":6,"samples":6},"#,
        r#"{"hook":"host:pt-veth0","dir":"ingress","delta_us":4.0,"packets":6,"samples":6},"#,
        r#"{"hook":"host:pt-br0","dir":"ingress","delta_us":9.25,"packets":6,"samples":6},"#,
        r#"{"hook":"host:pt-up0","dir":"egress","delta_us":1234.5,"packets":6,"samples":6}],"#,
        r#""hops_back":[{"hook":"host:pt-up0","dir":"ingress","delta_us":0.0,"packets":6,"samples":6},"#,
        r#"{"hook":"host:pt-br0","dir":"egress","delta_us":6.0,"packets":6,"samples":6},"#,
        r#"{"hook":"lab-ctr:eth0","dir":"ingress","delta_us":15.0,"packets":6,"samples":6}],"#,
        r#""nat":[{"kind":"snat","before":"10.200.1.2:41234","after":"10.200.2.1:41234","#,
        r#""between":["host:pt-br0","host:pt-up0"],"#,
        r#""rule":"-A POSTROUTING -s 10.200.1.0/24 ! -o pt-br0 -j MASQUERADE","rule_confidence":"evaluated","conntrack":null,"packets":6}],"#,
        r#""nat_back":[{"kind":"dnat","before":"10.200.2.1:41234","after":"10.200.1.2:41234","#,
        r#""between":["host:pt-up0","host:pt-br0"],"rule":null,"rule_confidence":null,"conntrack":null,"packets":6}],"#,
        r#""stops":[{"leg":"out","after":"host:pt-br0","dir":"ingress","count":1,"reason":"NETFILTER_DROP","cause":"dropped"}],"#,
        r#""first_ns":1000,"last_ns":9000}"#,
        "\n"
    );
    assert_eq!(
        Format::Json.flow(&masq_flow()).unwrap_or_default(),
        expected
    );
}

#[test]
fn json_ipv6_endpoints_are_bracketed() {
    let mut f = masq_flow();
    f.src = ep("[fd00::2]:41234");
    let line = flow_line(&f).unwrap_or_default();
    assert!(line.contains(r#""src":"[fd00::2]:41234""#), "{line}");
}

fn stats_hooks() -> Vec<(Hook, HookStats)> {
    let stats = |seen, filtered, emitted, lost| HookStats {
        seen,
        filtered,
        emitted,
        lost,
        aggregated: 0,
        overflow: 0,
        attached_ns: 0,
        detached_ns: 0,
    };
    let hooks = lab().hooks;
    let (Some(ctr_egress), Some(br_ingress)) = (hooks.first(), hooks.get(4)) else {
        return Vec::new();
    };
    vec![
        (ctr_egress.clone(), stats(12, 2, 10, 0)),
        (br_ingress.clone(), stats(40, 27, 10, 3)),
    ]
}

#[test]
fn text_summary_golden() {
    let hooks = stats_hooks();
    let s = Summary {
        flows: 2,
        evicted: 1,
        hooks: &hooks,
        released: &[],
        unused: Unused::default(),
        reporting: Reporting::EveryPacket,
        filter: None,
    };
    let expected = "\
2 flows, 1 evicted
hook          dir           seen   filtered    emitted       lost
lab-ctr:eth0  egress          12          2         10          0
host:pt-br0   ingress         40         27         10          3
!! 3 events lost at host:pt-br0 ingress: ring buffer full
";
    assert_eq!(Format::Text.summary(&s).unwrap_or_default(), expected);
}

#[test]
fn json_summary_golden() {
    let hooks = stats_hooks();
    let s = Summary {
        flows: 2,
        evicted: 1,
        hooks: &hooks,
        released: &[],
        unused: Unused::default(),
        reporting: Reporting::EveryPacket,
        filter: None,
    };
    let expected = concat!(
        r#"{"type":"summary","mode":"every_packet","flows":2,"evicted":1,"hooks":["#,
        r#"{"hook":"lab-ctr:eth0","dir":"egress","seen":12,"filtered":2,"emitted":10,"lost":0,"aggregated":0,"overflow":0},"#,
        r#"{"hook":"host:pt-br0","dir":"ingress","seen":40,"filtered":27,"emitted":10,"lost":3,"aggregated":0,"overflow":0}]}"#,
        "\n"
    );
    assert_eq!(Format::Json.summary(&s).unwrap_or_default(), expected);
}

#[test]
fn deltas_read_naturally() {
    let cases = [
        (0.0, "+0"),
        (4.0, "+4µs"),
        (4.5, "+4.5µs"),
        (120.4, "+120µs"),
        (1234.5, "+1.2ms"),
        (999_999.0, "+1.00s"),
        (3_400_000.0, "+3.40s"),
    ];
    for (us, text) in cases {
        assert_eq!(format_delta_us(us), text, "{us}");
    }
}

/// The lab's flow with its one stop put down to the ring buffer, not to the kernel.
fn unseen_flow() -> FlowReport {
    let mut f = masq_flow();
    f.stops[0].reason = None;
    f.stops[0].cause = StopCause::EventsLost {
        at: "host:pt-up0".into(),
        at_dir: Direction::Egress,
    };
    f
}

#[test]
fn a_ring_buffer_gap_is_not_printed_as_a_loss() {
    let text = Format::Text.flow(&unseen_flow()).unwrap_or_default();
    assert!(!text.contains("lost:"), "{text}");
    assert!(
        text.contains(
            "  1 events not seen after host:pt-br0 ingress (ring buffer full at host:pt-up0 egress; \
             not a packet loss as far as pathtrace can tell)\n"
        ),
        "{text}"
    );
    let json = flow_line(&unseen_flow()).unwrap_or_default();
    assert!(
        json.contains(
            r#""stops":[{"leg":"out","after":"host:pt-br0","dir":"ingress","count":1,"reason":null,"cause":"events_lost","at":"host:pt-up0","at_dir":"egress"}]"#
        ),
        "{json}"
    );
}

#[test]
fn an_untraced_exit_names_the_interface_and_the_route() {
    let mut f = masq_flow();
    f.stops[0].reason = None;
    f.stops[0].cause = StopCause::UntracedExit {
        via: "pt-up1".into(),
        route: "default via 10.200.3.2 dev pt-up1 table 100".into(),
    };
    let text = Format::Text.flow(&f).unwrap_or_default();
    assert!(!text.contains("lost:"), "{text}");
    assert!(
        text.contains("  1 left by the untraced interface pt-up1 after host:pt-br0 ingress (route: default via 10.200.3.2 dev pt-up1 table 100; trace it with --uplink pt-up1)\n"),
        "{text}"
    );
    let json = flow_line(&f).unwrap_or_default();
    assert!(
        json.contains(r#""cause":"untraced_exit","via":"pt-up1","route":"default via 10.200.3.2 dev pt-up1 table 100"}"#),
        "{json}"
    );
}

#[test]
fn released_hooks_keep_their_counts_in_the_summary() {
    let hooks = stats_hooks();
    let (now, gone) = hooks.split_at(1);
    let s = Summary {
        flows: 1,
        evicted: 0,
        hooks: now,
        released: gone,
        unused: Unused::default(),
        reporting: Reporting::EveryPacket,
        filter: None,
    };
    let text = Format::Text.summary(&s).unwrap_or_default();
    assert!(
        text.contains(
            "host:pt-br0 (released)  ingress         40         27         10          3"
        ),
        "{text}"
    );
    let json = Format::Json.summary(&s).unwrap_or_default();
    assert!(
        json.contains(r#"{"hook":"host:pt-br0","dir":"ingress","seen":40,"filtered":27,"emitted":10,"lost":3,"aggregated":0,"overflow":0,"released":true}"#),
        "{json}"
    );
}
