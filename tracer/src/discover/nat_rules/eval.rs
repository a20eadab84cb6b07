//! Which rule made a rewrite: the chains a connection's first packet traverses, walked the way
//! netfilter does, with a three-valued match where the packet alone does not tell (a firewall
//! mark, a connection mark, a set that could not be read, a match pathtrace does not evaluate).
//! A rule that may match and would make the rewrite is a candidate; the walk goes on as if it
//! did not, until a rule that surely matches and makes it, which ends the list.

use std::net::IpAddr;

use crate::model::{addr_bits, Endpoint, NatKind, NatQuery, Proto};

use super::{
    model::{
        Action, AddrKind, Body, Cond, Hook, MapKey, MapKeyValue, NatRange, NatTarget, Rule,
        TableIndex,
    },
    NatRuleset,
};

/// Nesting bound for `-j CHAIN` / `jump` (the kernel's own limit is far lower in practice).
const MAX_JUMP_DEPTH: usize = 64;

/// What the walk found, by rule index.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Verdict {
    /// The rule that surely made the rewrite, if the walk reached one.
    pub chosen: Option<usize>,
    /// Rules before it that may have made it instead (or, without `chosen`, all that may have).
    pub candidates: Vec<usize>,
    /// Why each candidate is only a candidate.
    pub why: Vec<String>,
}

impl NatRuleset {
    /// Walks the chains a query's packet would traverse: the rule that made its rewrite, or the
    /// candidates; `None` when no rule can have made it.
    pub(super) fn attribute_index(&self, q: &NatQuery<'_>) -> Option<Verdict> {
        let probe = Probe::new(q)?;
        let hooks: &[Hook] = match q.kind {
            NatKind::Snat => &[Hook::Postrouting],
            NatKind::Dnat => &[Hook::Prerouting, Hook::Output],
        };
        let mut walk = Verdict::default();
        'hooks: for &hook in hooks {
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
                match self.run_chain(table, chain, &probe, hook, 0, None, &mut walk) {
                    Flow::Found(i) => {
                        walk.chosen = Some(i);
                        break 'hooks;
                    }
                    // The first packet would have been NATed otherwise: not by this hook.
                    Flow::Conflict => break,
                    Flow::Continue | Flow::Return | Flow::Stop => {}
                }
            }
        }
        (walk.chosen.is_some() || !walk.candidates.is_empty()).then_some(walk)
    }

    /// `unsure`: why the walk may not have got here (a jump that may not have happened).
    #[expect(
        clippy::too_many_arguments,
        reason = "one recursive walk's state, passed down"
    )]
    fn run_chain(
        &self,
        table: &TableIndex,
        chain: &str,
        p: &Probe<'_>,
        hook: Hook,
        depth: usize,
        unsure: Option<&str>,
        walk: &mut Verdict,
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
            let (m, why) = rule.matches(p, &self.local_addrs);
            if m == Tri::No {
                continue;
            }
            // A maybe without a reason is an interface the query does not know: assumed to match
            // for a rule that makes the rewrite (the packet went some way), never for one that
            // would end the walk.
            let sure = m == Tri::Yes && unsure.is_none();
            let assumed = m == Tri::Maybe && why.is_none() && unsure.is_none();
            let reason = why.as_deref().or(unsure);
            match &rule.action {
                Action::None | Action::Unknown(_) => {}
                Action::Accept | Action::Drop if sure => return Flow::Stop,
                Action::Return if sure => return Flow::Return,
                // May end the chain: the walk goes on as if it did not.
                Action::Accept | Action::Drop | Action::Return => {}
                Action::Jump(target) | Action::Goto(target) => {
                    let inner = if sure || assumed { None } else { reason };
                    match self.run_chain(table, target, p, hook, depth + 1, inner, walk) {
                        Flow::Continue | Flow::Return => {
                            // Falling off a `goto` chain returns to this chain's caller.
                            if sure && matches!(rule.action, Action::Goto(_)) {
                                return Flow::Return;
                            }
                        }
                        // Only sure all the way down: a maybe-jump's chain reports candidates.
                        other => return other,
                    }
                }
                // A map without the packet's key: the rule does nothing (nor for a protocol its
                // key implies, e.g. `tcp dport` for UDP).
                Action::Nat(target) if !target.has_key_for(p) => {}
                Action::Nat(target) => {
                    let makes_it = target.kind(hook) == p.kind && target.produces(p);
                    match (makes_it, sure || assumed) {
                        (true, true) => return Flow::Found(i),
                        (true, false) => {
                            walk.candidates.push(i);
                            let why = reason.unwrap_or("its match cannot be decided here");
                            walk.why.push(why.to_string());
                        }
                        (false, true) if sure => return Flow::Conflict,
                        (false, true) => {}
                        (false, false) => {}
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
    /// The match, and why it is only a maybe (the first undecided condition's reason).
    fn matches(&self, p: &Probe<'_>, local: &[IpAddr]) -> (Tri, Option<String>) {
        let mut least = Tri::Yes;
        let mut why = None;
        for c in &self.conds {
            let (m, reason) = c.matches(p, local);
            if m == Tri::No {
                return (Tri::No, None);
            }
            if m == Tri::Maybe && why.is_none() {
                why = reason;
            }
            least = least.min(m);
        }
        (least, why)
    }
}

impl Cond {
    fn matches(&self, p: &Probe<'_>, local: &[IpAddr]) -> (Tri, Option<String>) {
        let decided = |t: Tri| (t, None);
        match self {
            Self::Addr { src, neg, v6, nets } => {
                if *v6 != p.v6 {
                    return decided(Tri::No);
                }
                let addr = if *src { p.src.addr } else { p.dst.addr };
                decided(Tri::from_bool(nets.iter().any(|n| n.contains(addr))).negate_if(*neg))
            }
            Self::Iface { input, neg, names } => {
                let name = if *input { p.iif } else { p.oif };
                match name {
                    // Not the packet's unknown: the query's (see `assumed` in `run_chain`).
                    None => (Tri::Maybe, None),
                    Some(name) => decided(
                        Tri::from_bool(names.iter().any(|pat| iface_matches(pat, name)))
                            .negate_if(*neg),
                    ),
                }
            }
            Self::Proto { neg, protos } => decided(
                Tri::from_bool(protos.iter().any(|&n| n == 0 || n == p.proto)).negate_if(*neg),
            ),
            Self::Port {
                src,
                neg,
                protos,
                ranges,
            } => {
                if !p.has_ports || !protos.contains(&p.proto) {
                    return decided(Tri::No);
                }
                let port = if *src { p.src.port } else { p.dst.port };
                decided(
                    Tri::from_bool(ranges.iter().any(|&(a, b)| (a..=b).contains(&port)))
                        .negate_if(*neg),
                )
            }
            Self::AddrType { src, neg, kinds } => {
                let addr = if *src { p.src.addr } else { p.dst.addr };
                match addr_kind(addr, kinds, local, p) {
                    Some(t) => decided(t.negate_if(*neg)),
                    None => (
                        Tri::Maybe,
                        Some("its address-type match needs the host's addresses, which were not read".into()),
                    ),
                }
            }
            Self::Mark { what, conn } => (
                Tri::Maybe,
                Some(format!(
                    "`{what}` depends on the {} mark, which pathtrace cannot see",
                    if *conn {
                        "connection's"
                    } else {
                        "packet's firewall"
                    }
                )),
            ),
            Self::Family { v6 } => decided(Tri::from_bool(*v6 == p.v6)),
            Self::NewConnection => decided(Tri::Yes),
            Self::Unknown(what) => (
                Tri::Maybe,
                Some(format!("`{what}` is not evaluated by pathtrace")),
            ),
        }
    }
}

/// Whether `addr` is of one of `kinds`; `None` when that takes the host's addresses and they
/// are not known.
fn addr_kind(addr: IpAddr, kinds: &[AddrKind], local: &[IpAddr], p: &Probe<'_>) -> Option<Tri> {
    let multicast = addr.is_multicast();
    let broadcast = match addr {
        IpAddr::V4(a) => a.is_broadcast(),
        IpAddr::V6(_) => false,
    };
    let is_local = if local.is_empty() {
        // Without the host's addresses: a DNAT step's original destination is the host's own
        // (Docker's published ports); nothing else can be told.
        (p.kind == NatKind::Dnat && addr == p.before.addr).then_some(true)
    } else {
        Some(local.contains(&addr) || addr.is_loopback())
    };
    let mut any = false;
    for k in kinds {
        let hit = match k {
            AddrKind::Local => is_local?,
            AddrKind::Multicast => multicast,
            AddrKind::Broadcast => broadcast,
            AddrKind::Unicast => !multicast && !broadcast && !is_local?,
        };
        any |= hit;
    }
    Some(Tri::from_bool(any))
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
    /// For a map: whether it has an entry for the packet.
    fn has_key_for(&self, p: &Probe<'_>) -> bool {
        match self {
            Self::Mapped { key, entries, .. } => {
                entries.iter().any(|(k, _)| key_matches(key, k, p))
            }
            _ => true,
        }
    }

    /// Which rewrite this target makes at `hook`.
    fn kind(&self, hook: Hook) -> NatKind {
        match self {
            Self::Masquerade(_) | Self::Snat(_) | Self::Mapped { snat: true, .. } => NatKind::Snat,
            Self::Dnat(_) | Self::Redirect(_) | Self::Mapped { snat: false, .. } => NatKind::Dnat,
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
            Self::Mapped { snat, key, entries } => entries.iter().any(|(k, range)| {
                key_matches(key, k, p) && range.admits(p.after.addr) && port_ok(range.ports, !snat)
            }),
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

/// Whether a map entry's key `k` is the packet's value of `key`.
fn key_matches(key: &MapKey, k: &MapKeyValue, p: &Probe<'_>) -> bool {
    match (key, k) {
        (MapKey::Addr { src }, MapKeyValue::Net(n)) => {
            n.contains(if *src { p.src.addr } else { p.dst.addr })
        }
        (MapKey::Port { src, protos }, MapKeyValue::Ports(a, b)) => {
            let port = if *src { p.src.port } else { p.dst.port };
            p.has_ports && protos.contains(&p.proto) && (*a..=*b).contains(&port)
        }
        _ => false,
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
