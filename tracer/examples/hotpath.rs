//! The userspace hot path without a kernel: raw ring-buffer records of a 64-byte UDP flood
//! (container → wan through veth, bridge and a MASQUERADE uplink: 4 events per datagram) are
//! decoded and fed to the live view in 10 ms batches with a tick every 250 ms, exactly as
//! `pipeline::session` does. Deterministic, so instruction counts compare between builds:
//!
//! ```sh
//! cargo build --release --example hotpath
//! valgrind --tool=callgrind target/release/examples/hotpath 100000 [--json] [-w FILE]
//! ```

use std::{net::Ipv4Addr, sync::Arc};

use tracer::{
    capture::{
        record::{self, Recorder},
        testframes,
    },
    collect::{decode_with, Event},
    model::{Direction, Hook, HookStats, Place, Role, Topology},
    pipeline::{
        engine::Engine,
        session::{Finished, Observer, StopReason},
    },
    render::{Format, Output},
};
use tracer_common::event::{EventHeader, PacketEvent, PacketMeta, KIND_PACKET};

const CTR: [u8; 4] = [10, 200, 1, 2];
const WAN: [u8; 4] = [10, 200, 2, 2];
const UPLINK: [u8; 4] = [10, 200, 2, 1];

fn hook(slot: u8, ns: &str, ifname: &str, direction: Direction, place: Place) -> Hook {
    testframes::hook(slot, ns, ifname, direction, place, Role::All)
}

fn topology() -> Topology {
    use Direction::{Egress as E, Ingress as I};
    Topology {
        target: "cpu-ctr".into(),
        hooks: vec![
            hook(0, "cpu-ctr", "eth0", E, Place::Container),
            hook(1, "cpu-ctr", "eth0", I, Place::Container),
            hook(2, "host", "cpu-veth", I, Place::Veth),
            hook(3, "host", "cpu-veth", E, Place::Veth),
            hook(4, "host", "cpu-br", I, Place::Bridge),
            hook(5, "host", "cpu-br", E, Place::Bridge),
            hook(6, "host", "cpu-up", E, Place::Uplink),
            hook(7, "host", "cpu-up", I, Place::Uplink),
        ],
        target_addrs: vec![Ipv4Addr::from(CTR).into()],
        uplink_addrs: vec![Ipv4Addr::from(UPLINK).into()],
        nat_rules: Vec::new(),
    }
}

/// One raw record as the kernel writes it: header, parsed metadata, a 106-byte frame.
#[inline(never)]
fn raw(out: &mut Vec<u8>, slot: u8, dir: u8, ktime_ns: u64, n: u32, src: [u8; 4]) {
    let mut meta = PacketMeta {
        fingerprint: 0x9e37_79b9_7f4a_7c15 ^ u64::from(n).wrapping_mul(0x1000_0000_01b3),
        sport: 40000,
        dport: 5201,
        family: 4,
        proto: 17,
        l3_offset: 14,
        l4_offset: 34,
        ..Default::default()
    };
    meta.saddr[..4].copy_from_slice(&src);
    meta.daddr[..4].copy_from_slice(&WAN);
    let mut ev = PacketEvent {
        header: EventHeader {
            kind: KIND_PACKET,
            hook: slot,
            direction: dir,
            ifindex: 10 + u32::from(slot),
            ktime_ns,
        },
        meta,
        pkt_len: 106,
        cap_len: 106,
        data: [0; tracer_common::event::CAPTURE_MAX],
    };
    for (i, b) in ev.data[..106].iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(31) ^ (n as u8);
    }
    // SAFETY: PacketEvent is repr(C) plain old data without implicit padding.
    let bytes = unsafe {
        std::slice::from_raw_parts(
            (&ev as *const PacketEvent).cast::<u8>(),
            size_of::<PacketEvent>(),
        )
    };
    out.clear();
    out.extend_from_slice(bytes);
}

/// What the session does with one drain's worth of records (measured: `callgrind_annotate
/// --inclusive=yes` shows this function's cost apart from generating the records).
#[inline(never)]
fn consume(observer: &mut dyn Observer, raws: &[Vec<u8>], batch: &mut Vec<Event>) {
    let frames = observer.wants_frames();
    for r in raws {
        if let Ok(ev) = decode_with(r, frames) {
            batch.push(ev);
        }
    }
    observer.events(batch);
    batch.clear();
}

#[inline(never)]
fn tick(observer: &mut dyn Observer, now: u64, stats: &[(Hook, HookStats)]) {
    observer.tick(now, stats);
}

#[expect(
    clippy::print_stderr,
    reason = "a measuring tool says what it measured"
)]
fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let datagrams: u32 = args.iter().find_map(|a| a.parse().ok()).unwrap_or(100_000);
    let json = args.iter().any(|a| a == "--json");
    let capture = args
        .iter()
        .position(|a| a == "-w")
        .and_then(|i| args.get(i + 1));

    let topo = Arc::new(topology());
    let format = if json { Format::Json } else { Format::Text };
    let mut renderer = format.renderer(Output::to(Box::new(std::io::sink())), true);
    let mut view = Engine::new(topo.clone(), None, 100_000, Vec::new(), renderer.as_mut());
    let stop = Arc::new(tokio::sync::Notify::new());
    let writer = match capture {
        Some(path) => Some(record::open(path.as_ref(), &topo, 128, Default::default())?),
        None => None,
    };
    let mut recorder;
    let observer: &mut dyn Observer = match writer {
        Some(w) => {
            recorder = Recorder::new(&mut view, w, stop);
            &mut recorder
        }
        None => &mut view,
    };
    observer.attached("tcx", &topo.hooks);

    // 62.5k datagrams/s = 250k events/s; a 10 ms drain holds 2500 events.
    const STEP_NS: u64 = 16_000;
    const DRAIN_NS: u64 = 10_000_000;
    const TICK_NS: u64 = 250_000_000;
    let t0 = 1_000_000_000u64;
    let mut raws: Vec<Vec<u8>> = (0..4096)
        .map(|_| Vec::with_capacity(size_of::<PacketEvent>()))
        .collect();
    let mut used = 0;
    let mut batch: Vec<Event> = Vec::with_capacity(4096);
    let mut next_drain = t0 + DRAIN_NS;
    let mut next_tick = t0 + TICK_NS;
    let stats: Vec<(Hook, HookStats)> = topo
        .hooks
        .iter()
        .map(|h| (h.clone(), HookStats::default()))
        .collect();
    let mut now = t0;
    for n in 0..datagrams {
        now = t0 + u64::from(n) * STEP_NS;
        raw(&mut raws[used], 0, 1, now, n, CTR);
        raw(&mut raws[used + 1], 2, 0, now + 2_000, n, CTR);
        raw(&mut raws[used + 2], 4, 0, now + 3_000, n, CTR);
        raw(&mut raws[used + 3], 6, 1, now + 6_000, n, UPLINK);
        used += 4;
        if now >= next_drain || used + 4 > raws.len() {
            next_drain += DRAIN_NS;
            consume(observer, &raws[..used], &mut batch);
            used = 0;
        }
        if now >= next_tick {
            next_tick += TICK_NS;
            tick(observer, now, &stats);
        }
    }
    consume(observer, &raws[..used], &mut batch);
    tick(observer, now + TICK_NS, &stats);
    let end = Finished {
        stats,
        ..Finished::default()
    };
    observer.finished(StopReason::Duration, &end);
    view.finish();
    eprintln!("{datagrams} datagrams, {} events", u64::from(datagrams) * 4);
    Ok(())
}
