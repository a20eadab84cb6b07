//! Which rule made a rewrite: the chains a connection's first packet traverses, walked the way
//! netfilter does, with a three-valued match where the query does not know a field.

use std::net::IpAddr;

use crate::model::{addr_bits, Endpoint, NatKind, NatQuery, Proto};

use super::{
    model::{Action, Body, Cond, Hook, NatRange, NatTarget, Rule, TableIndex},
    NatRuleset,
};

/// Nesting bound for `-j CHAIN` / `jump` (the kernel's own limit is far lower in practice).
const MAX_JUMP_DEPTH: usize = 64;

impl NatRuleset {
    /// Walks the chains a query's packet would traverse and returns the index of the rule that
    /// made its rewrite.
    pub(super) fn attribute_index(&self, q: &NatQuery<'_>) -> Option<usize> {
        let probe = Probe::new(q)?;
        let hooks: &[Hook] = match q.kind {
            NatKind::Snat => &[Hook::Postrouting],
            NatKind::Dnat => &[Hook::Prerouting, Hook::Output],
        };
        for &hook in hooks {
            // All base chains on the hook, lowest priority first; for equal priorities the order
            // of registration is not visible, so keep the snapshot's (iptables-nft, legacy, nft).
            let mut bases: Vec<(i32, &TableIndex, &str)> = self
                .tables
                .iter()
                .filter(|t| t.family.admits(probe.v6))
                .flat_map(|t| {
                    t.bases
                        .iter()
                        .filter(move |b| b.hook == hook)
                        .map(move |b| (b.priority, t, b.chain.as_str()))
                })
                .collect();
            bases.sort_by_key(|b| b.0);
            for (_, table, chain) in bases {
                match self.run_chain(table, chain, &probe, hook, 0) {
                    Flow::Found(i) => return Some(i),
                    // The first packet would have been NATed otherwise: not by this hook.
                    Flow::Conflict => break,
                    Flow::Continue | Flow::Return | Flow::Stop => {}
                }
            }
        }
        None
    }

    fn run_chain(
        &self,
        table: &TableIndex,
        chain: &str,
        p: &Probe<'_>,
        hook: Hook,
        depth: usize,
    ) -> Flow {
        let Some(members) = table.chains.get(chain) else {
            return Flow::Continue;
        };
        if depth > MAX_JUMP_DEPTH {
            tracing::warn!(
                chain,
                "NAT chain jumps nest too deep; giving up on this path"
            );
            return Flow::Continue;
        }
        for &i in members {
            let Body::Rule(rule) = &self.rules[i].body else {
                continue;
            };
            let m = rule.matches(p);
            if m == Tri::No {
                continue;
            }
            let sure = m == Tri::Yes;
            match &rule.action {
                Action::None | Action::Unknown(_) => {}
                Action::Accept | Action::Drop if sure => return Flow::Stop,
                Action::Return if sure => return Flow::Return,
                Action::Accept | Action::Drop | Action::Return => {}
                Action::Jump(target) | Action::Goto(target) => {
                    match self.run_chain(table, target, p, hook, depth + 1) {
                        Flow::Continue | Flow::Return => {
                            // Falling off a `goto` chain returns to this chain's caller.
                            if sure && matches!(rule.action, Action::Goto(_)) {
                                return Flow::Return;
                            }
                        }
                        other => return other,
                    }
                }
                Action::Nat(target) => {
                    if target.kind(hook) == p.kind && target.produces(p) {
                        return Flow::Found(i);
                    }
                    if sure {
                        return Flow::Conflict;
                    }
                }
            }
        }
        Flow::Continue
    }
}

/// Three-valued match: `Maybe` when it depends on something the query does not know.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Tri {
    No,
    Maybe,
    Yes,
}

impl Tri {
    fn from_bool(b: bool) -> Self {
        if b {
            Self::Yes
        } else {
            Self::No
        }
    }
    fn negate_if(self, neg: bool) -> Self {
        match (self, neg) {
            (Self::Yes, true) => Self::No,
            (Self::No, true) => Self::Yes,
            (t, _) => t,
        }
    }
}

/// What a chain walk ended with.
enum Flow {
    /// Fell off the end of the chain.
    Continue,
    /// `RETURN` / `return`.
    Return,
    /// `ACCEPT`/`DROP`: this table makes no NAT for the packet.
    Stop,
    /// The rule at this index made the rewrite.
    Found(usize),
    /// A rule that surely matched would have made another rewrite.
    Conflict,
}

/// The first packet of the connection, as a NAT hook sees it.
struct Probe<'a> {
    kind: NatKind,
    proto: u8,
    has_ports: bool,
    v6: bool,
    src: Endpoint,
    dst: Endpoint,
    iif: Option<&'a str>,
    oif: Option<&'a str>,
    before: Endpoint,
    after: Endpoint,
}

impl<'a> Probe<'a> {
    fn new(q: &NatQuery<'a>) -> Option<Self> {
        let (src, dst) = match q.kind {
            NatKind::Snat => (q.before, q.peer),
            NatKind::Dnat => (q.peer, q.before),
        };
        let v6 = q.before.addr.is_ipv6();
        if q.after.addr.is_ipv6() != v6 || q.peer.addr.is_ipv6() != v6 {
            return None;
        }
        Some(Self {
            kind: q.kind,
            proto: q.proto.number(),
            has_ports: q.proto.has_ports() || matches!(q.proto, Proto::Other(132 | 33 | 136)),
            v6,
            src,
            dst,
            iif: q.in_iface,
            oif: q.out_iface,
            before: q.before,
            after: q.after,
        })
    }
}

impl Rule {
    fn matches(&self, p: &Probe<'_>) -> Tri {
        self.conds
            .iter()
            .map(|c| c.matches(p))
            .min()
            .unwrap_or(Tri::Yes)
    }
}

impl Cond {
    fn matches(&self, p: &Probe<'_>) -> Tri {
        match self {
            Self::Addr { src, neg, v6, nets } => {
                if *v6 != p.v6 {
                    return Tri::No;
                }
                let addr = if *src { p.src.addr } else { p.dst.addr };
                Tri::from_bool(nets.iter().any(|n| n.contains(addr))).negate_if(*neg)
            }
            Self::Iface { input, neg, names } => {
                let name = if *input { p.iif } else { p.oif };
                match name {
                    None => Tri::Maybe,
                    Some(name) => Tri::from_bool(names.iter().any(|pat| iface_matches(pat, name)))
                        .negate_if(*neg),
                }
            }
            Self::Proto { neg, protos } => {
                Tri::from_bool(protos.iter().any(|&n| n == 0 || n == p.proto)).negate_if(*neg)
            }
            Self::Port {
                src,
                neg,
                protos,
                ranges,
            } => {
                if !p.has_ports || !protos.contains(&p.proto) {
                    return Tri::No;
                }
                let port = if *src { p.src.port } else { p.dst.port };
                Tri::from_bool(ranges.iter().any(|&(a, b)| (a..=b).contains(&port))).negate_if(*neg)
            }
            // The rewritten destination of a DNAT step is the host's own address (Docker's
            // published ports); anything else depends on addresses the query does not carry.
            Self::Local { src: false, neg } if p.kind == NatKind::Dnat => Tri::Yes.negate_if(*neg),
            Self::Local { .. } => Tri::Maybe,
            Self::Family { v6 } => Tri::from_bool(*v6 == p.v6),
            Self::Unknown(_) => Tri::No,
        }
    }
}

fn iface_matches(pattern: &str, name: &str) -> bool {
    match pattern
        .strip_suffix('+')
        .or_else(|| pattern.strip_suffix('*'))
    {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

impl NatTarget {
    /// Which rewrite this target makes at `hook`.
    fn kind(&self, hook: Hook) -> NatKind {
        match self {
            Self::Masquerade(_) | Self::Snat(_) => NatKind::Snat,
            Self::Dnat(_) | Self::Redirect(_) => NatKind::Dnat,
            Self::Netmap(_) => match hook {
                Hook::Postrouting | Hook::Input => NatKind::Snat,
                Hook::Prerouting | Hook::Output => NatKind::Dnat,
            },
        }
    }

    /// Whether this target can turn `before` into `after`.
    fn produces(&self, p: &Probe<'_>) -> bool {
        // `keep`: without a port range the port stays (DNAT/REDIRECT); SNAT may change it.
        let port_ok = |ports: Option<(u16, u16)>, keep: bool| {
            !p.has_ports
                || match ports {
                    Some((a, b)) => (a..=b).contains(&p.after.port),
                    None => !keep || p.after.port == p.before.port,
                }
        };
        match self {
            Self::Masquerade(ports) => port_ok(*ports, false),
            Self::Redirect(ports) => port_ok(*ports, true),
            Self::Snat(ranges) => ranges
                .iter()
                .any(|r| r.admits(p.after.addr) && port_ok(r.ports, false)),
            Self::Dnat(ranges) => ranges
                .iter()
                .any(|r| r.admits(p.after.addr) && port_ok(r.ports, true)),
            Self::Netmap(net) => {
                let (Some((v6, lo, hi)), (after_v6, after), (_, before)) = (
                    net.as_range(),
                    addr_bits(p.after.addr),
                    addr_bits(p.before.addr),
                ) else {
                    return false;
                };
                let host = hi - lo;
                v6 == after_v6
                    && (lo..=hi).contains(&after)
                    && after & host == before & host
                    && port_ok(None, true)
            }
        }
    }
}

impl NatRange {
    fn admits(&self, addr: IpAddr) -> bool {
        match self.addrs {
            None => true,
            Some((a, b)) => {
                let ((va, a), (vb, b), (v, x)) = (addr_bits(a), addr_bits(b), addr_bits(addr));
                va == v && vb == v && (a..=b).contains(&x)
            }
        }
    }
}
