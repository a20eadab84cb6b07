//! Test material: frames, hooks, records and a temporary directory, shared by the unit tests and
//! the integration tests (`capture_tshark`). Not used by the program itself.

use std::{
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
};

use bytes::Bytes;

use crate::{
    capture::CaptureMeta,
    model::{Direction, Hook, NatRule, PacketRecord, Place, Role, Topology},
};

/// An Ethernet + IPv4 + TCP (SYN) frame with a valid IPv4 checksum.
pub(crate) fn tcp_frame(
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    seq: u32,
    ip_id: u16,
) -> Vec<u8> {
    let mut f = vec![
        0x02, 0x42, 0xac, 0x11, 0, 2, 0x02, 0x42, 0xac, 0x11, 0, 1, 0x08, 0x00,
    ];
    let mut ip = vec![0x45, 0, 0, 40];
    ip.extend_from_slice(&ip_id.to_be_bytes());
    ip.extend_from_slice(&[0x40, 0, 64, 6, 0, 0]);
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&dst);
    let sum = ip
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum::<u32>();
    let sum = !((sum & 0xffff) + (sum >> 16)) as u16;
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&seq.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0, 0, 0x50, 0x02, 0xfa, 0xf0, 0, 0, 0, 0]);
    f
}

/// A hook on interface index `10 + slot`.
pub fn hook(
    slot: u8,
    ns: &str,
    ifname: &str,
    direction: Direction,
    place: Place,
    role: Role,
) -> Hook {
    Hook {
        slot,
        ns_label: ns.into(),
        ifname: ifname.into(),
        ifindex: 10 + u32::from(slot),
        direction,
        place,
        role,
    }
}

/// The eight hooks of a container's path to the uplink, both ways.
pub fn eight_hooks() -> Vec<Hook> {
    use Direction::{Egress as E, Ingress as I};
    vec![
        hook(0, "minio", "eth0", E, Place::Container, Role::SourceOut),
        hook(1, "host", "veth1a2b", I, Place::Veth, Role::Shared),
        hook(2, "host", "pt-br0", I, Place::Bridge, Role::Shared),
        hook(3, "host", "eth0", E, Place::Uplink, Role::Shared),
        hook(4, "host", "eth0", I, Place::Uplink, Role::Shared),
        hook(5, "host", "pt-br0", E, Place::Bridge, Role::Shared),
        hook(6, "host", "veth1a2b", E, Place::Veth, Role::Shared),
        hook(7, "minio", "eth0", I, Place::Container, Role::SourceIn),
    ]
}

pub fn meta(hooks: &[Hook]) -> CaptureMeta {
    CaptureMeta {
        hostname: "testhost".into(),
        kernel_release: "6.1.0-test".into(),
        boot_to_unix_ns: 1_700_000_000_000_000_000,
        snaplen: 128,
        topology: Topology {
            target: "minio".into(),
            hooks: hooks.to_vec(),
            target_addrs: vec!["172.17.0.2".parse().expect("address")],
            uplink_addrs: vec!["192.168.1.10".parse().expect("address")],
            nat_rules: vec![NatRule {
                source: "iptables-nft".into(),
                text: "-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE".into(),
            }],
        },
    }
}

/// `per_hook` packets for each hook, interleaved as a trace would see them.
pub fn records(hooks: &[Hook], per_hook: u16) -> Vec<PacketRecord> {
    let mut out = Vec::new();
    for n in 0..per_hook {
        for h in hooks {
            let frame = tcp_frame(
                [172, 17, 0, 2],
                [1, 1, 1, 1],
                40000 + n,
                443,
                u32::from(n) * 7,
                n,
            );
            let ktime = 5_000_000_000 + u64::from(n) * 1_000_000 + u64::from(h.slot) * 1_000;
            let pkt_len = frame.len() as u32 + 100;
            let rec = PacketRecord::from_frame(
                h.slot,
                h.direction,
                h.ifindex,
                ktime,
                pkt_len,
                Bytes::from(frame),
            );
            out.push(rec.expect("an IPv4 frame parses"));
        }
    }
    out
}

/// A directory removed when dropped; unique per process and call.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("pathtrace-{name}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // Best effort: a leftover temp dir must not fail the test that made it.
        std::fs::remove_dir_all(&self.0).ok();
    }
}
