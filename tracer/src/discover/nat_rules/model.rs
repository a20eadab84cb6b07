//! The rule model both parsers build and the evaluator walks: one [`ParsedRule`] per line as the
//! tool printed it, its conditions and action, and the index of base chains per table.

use std::{collections::HashMap, net::IpAddr};

use crate::model::{addr_bits, prefix_mask, NatRule};

use super::{
    SOURCE_IP6TABLES_LEGACY, SOURCE_IP6TABLES_NFT, SOURCE_IPTABLES_LEGACY, SOURCE_IPTABLES_NFT,
};

/// Address family of a table: iptables' is that of the tool, nftables' that of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    Ip,
    Ip6,
    Inet,
}

impl Family {
    pub(super) fn from_nft(s: &str) -> Option<Self> {
        match s {
            "ip" => Some(Self::Ip),
            "ip6" => Some(Self::Ip6),
            "inet" => Some(Self::Inet),
            _ => None,
        }
    }
    pub(super) fn as_nft(self) -> &'static str {
        match self {
            Self::Ip => "ip",
            Self::Ip6 => "ip6",
            Self::Inet => "inet",
        }
    }
    pub(super) fn admits(self, v6: bool) -> bool {
        match self {
            Self::Ip => !v6,
            Self::Ip6 => v6,
            Self::Inet => true,
        }
    }
    pub(super) fn of_iptables_source(source: &str) -> Option<Self> {
        match source {
            SOURCE_IPTABLES_NFT | SOURCE_IPTABLES_LEGACY => Some(Self::Ip),
            SOURCE_IP6TABLES_NFT | SOURCE_IP6TABLES_LEGACY => Some(Self::Ip6),
            _ => None,
        }
    }
}

/// One line of a NAT ruleset: its text as printed, where it sits, and what it means.
#[derive(Clone, Debug, PartialEq)]
pub struct ParsedRule {
    /// One of the `SOURCE_*` constants.
    pub source: String,
    pub family: Family,
    /// `nat` for iptables; the nftables table's name.
    pub table: String,
    pub chain: String,
    /// nftables only: `table ip NAME chain CHAIN`, printed before the text in [`NatRule::text`].
    pub context: Option<String>,
    /// The line as the tool printed it, trimmed: `-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j
    /// MASQUERADE`, or for nftables a rule line or a base chain's `type nat hook ...` line. Counter
    /// values are left out (`-c N M`, `counter packets N bytes M` print as `counter`), so that
    /// the text does not change as the rule counts.
    pub text: String,
    pub(super) body: Body,
    /// The rule's packet counter when it was read (iptables always has one; nftables only with
    /// a `counter` statement).
    pub counter: Option<u64>,
}

impl ParsedRule {
    /// The text that stands for this rule in a topology snapshot and in attributions.
    pub(crate) fn full_text(&self) -> String {
        match &self.context {
            Some(ctx) => format!("{ctx}: {}", self.text),
            None => self.text.clone(),
        }
    }

    pub(crate) fn to_nat_rule(&self) -> NatRule {
        NatRule {
            source: self.source.clone(),
            text: self.full_text(),
        }
    }

    #[cfg(test)]
    /// Whether the text was understood well enough to take part in attribution.
    pub(crate) fn is_understood(&self) -> bool {
        match &self.body {
            Body::Unparsed => false,
            Body::Header(_) => true,
            Body::Rule(r) => {
                !matches!(r.action, Action::Unknown(_))
                    && !r.conds.iter().any(|c| matches!(c, Cond::Unknown(_)))
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub(super) enum Body {
    Rule(Rule),
    /// An nftables `type nat hook ... priority ...` line: makes its chain a base chain.
    Header(BaseChain),
    Unparsed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Hook {
    Prerouting,
    Input,
    Output,
    Postrouting,
}

#[derive(Clone, Debug, PartialEq)]
pub(super) struct BaseChain {
    pub(super) hook: Hook,
    pub(super) priority: i32,
}

#[derive(Clone, Debug, PartialEq)]
pub(super) struct Rule {
    pub(super) conds: Vec<Cond>,
    pub(super) action: Action,
}

#[derive(Clone, Debug, PartialEq)]
pub(super) enum Cond {
    /// `-s`/`-d`, `ip saddr`/`ip6 daddr`: the packet must be of family `v6`.
    Addr {
        src: bool,
        neg: bool,
        v6: bool,
        nets: Vec<Net>,
    },
    /// `-i`/`-o`, `iifname`/`oifname`; patterns end in `+` (iptables) or `*` (nft) for prefixes.
    Iface {
        input: bool,
        neg: bool,
        names: Vec<String>,
    },
    /// `-p`, `meta l4proto`, `ip protocol`; 0 is `all`.
    Proto { neg: bool, protos: Vec<u8> },
    /// `--dport`, `tcp dport`, `th sport`...; the packet's protocol must be one of `protos`.
    Port {
        src: bool,
        neg: bool,
        protos: Vec<u8>,
        ranges: Vec<(u16, u16)>,
    },
    /// `-m addrtype --dst-type LOCAL`, `fib daddr type local` (and the `src` forms): the
    /// address is one of `kinds`.
    AddrType {
        src: bool,
        neg: bool,
        kinds: Vec<AddrKind>,
    },
    /// A firewall mark (`-m mark`, `meta mark`) or connection mark (`-m connmark`, `ct mark`):
    /// what only the packet knows, never visible here. `what` is the match as printed.
    Mark { what: String, conn: bool },
    /// `ct state new`, `-m conntrack --ctstate NEW`: what every packet NAT rules see is (the
    /// first of its connection).
    NewConnection,
    /// `meta nfproto ipv4|ipv6`.
    Family { v6: bool },
    /// A match this parser does not know, or a set it could not read: it may or may not match.
    Unknown(String),
}

/// Address types `-m addrtype` and `fib ... type` name that pathtrace decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum AddrKind {
    /// One of the host's own addresses.
    Local,
    Unicast,
    Multicast,
    Broadcast,
}

impl AddrKind {
    /// `LOCAL`, `unicast`, ...; `None` for the types not decided here (`BLACKHOLE`, ...).
    pub(super) fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "local" => Some(Self::Local),
            "unicast" => Some(Self::Unicast),
            "multicast" => Some(Self::Multicast),
            "broadcast" => Some(Self::Broadcast),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub(super) enum Action {
    /// No verdict (`counter` only, `-j LOG`...).
    None,
    Accept,
    Drop,
    Return,
    Jump(String),
    Goto(String),
    Nat(NatTarget),
    /// A statement this parser does not know: the rule never matches.
    Unknown(String),
}

#[derive(Clone, Debug, PartialEq)]
pub(super) enum NatTarget {
    Masquerade(Option<(u16, u16)>),
    Snat(Vec<NatRange>),
    Dnat(Vec<NatRange>),
    Redirect(Option<(u16, u16)>),
    /// `-j NETMAP --to NET`: source in POSTROUTING, destination in PREROUTING/OUTPUT.
    Netmap(Net),
    /// `snat to ip saddr map { ... }`, `dnat to tcp dport map @ports`: the target is looked up by
    /// a field of the packet.
    Mapped {
        snat: bool,
        key: MapKey,
        entries: Vec<(MapKeyValue, NatRange)>,
    },
}

/// The packet field a NAT map is keyed by.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum MapKey {
    Addr { src: bool },
    Port { src: bool, protos: Vec<u8> },
}

/// One key of a NAT map.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum MapKeyValue {
    Net(Net),
    Ports(u16, u16),
}

#[derive(Clone, Debug, PartialEq)]
pub(super) struct NatRange {
    pub(super) addrs: Option<(IpAddr, IpAddr)>,
    pub(super) ports: Option<(u16, u16)>,
}

/// An address set member: a range (CIDR or `a-b`) or an address with a non-contiguous mask.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Net {
    Range { v6: bool, lo: u128, hi: u128 },
    Masked { v6: bool, addr: u128, mask: u128 },
}

impl Net {
    pub(super) fn contains(&self, addr: IpAddr) -> bool {
        let (v, x) = addr_bits(addr);
        match *self {
            Self::Range { v6, lo, hi } => v6 == v && (lo..=hi).contains(&x),
            Self::Masked { v6, addr, mask } => v6 == v && x & mask == addr & mask,
        }
    }

    pub(super) fn v6(&self) -> bool {
        match *self {
            Self::Range { v6, .. } | Self::Masked { v6, .. } => v6,
        }
    }

    /// (v6, lo, hi) of a CIDR or range.
    pub(super) fn as_range(&self) -> Option<(bool, u128, u128)> {
        match *self {
            Self::Range { v6, lo, hi } => Some((v6, lo, hi)),
            Self::Masked { .. } => None,
        }
    }

    /// `10.0.0.0/8`, `10.0.0.0/255.0.255.0`, `10.0.0.1`, `10.0.0.1-10.0.0.9`, and v6 forms.
    pub(super) fn parse(s: &str) -> Option<Self> {
        if let Some((a, b)) = s.split_once('-') {
            let (va, lo) = addr_bits(a.parse().ok()?);
            let (vb, hi) = addr_bits(b.parse().ok()?);
            return (va == vb && lo <= hi).then_some(Self::Range { v6: va, lo, hi });
        }
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let (v6, bits) = addr_bits(addr.parse().ok()?);
        let width = if v6 { 128 } else { 32 };
        let mask = match len {
            None => prefix_mask(width, width),
            Some(l) => match l.parse::<u32>() {
                Ok(n) if n <= width => prefix_mask(n, width),
                Ok(_) => return None,
                // A dotted mask (`255.255.0.0`), printed when it is not a prefix.
                Err(_) => addr_bits(l.parse().ok()?).1,
            },
        };
        let full = prefix_mask(width, width);
        if (!mask & full).wrapping_add(1) & (!mask & full) == 0 {
            let lo = bits & mask;
            Some(Self::Range {
                v6,
                lo,
                hi: lo | (!mask & full),
            })
        } else {
            Some(Self::Masked {
                v6,
                addr: bits,
                mask,
            })
        }
    }
}

/// `80`, `1000:2000` (iptables) or `1000-2000` (nft).
pub(super) fn parse_port_range(s: &str) -> Option<(u16, u16)> {
    let (a, b) = match s.split_once([':', '-']) {
        Some((a, b)) => (a, b),
        None => (s, s),
    };
    let a = parse_port(a)?;
    let b = if b.is_empty() {
        u16::MAX
    } else {
        parse_port(b)?
    };
    (a <= b).then_some((a, b))
}

/// A port number, or one of the few service names older nft versions print.
pub(super) fn parse_port(s: &str) -> Option<u16> {
    match s {
        "ssh" => Some(22),
        "domain" => Some(53),
        "http" => Some(80),
        "https" => Some(443),
        _ => s.parse().ok(),
    }
}

/// `A[-B][:P[-Q]]`, `[A6][-[B6]][:P[-Q]]`, `:P[-Q]` or a bare v6 range: a NAT target's range.
pub(super) fn parse_nat_range(s: &str) -> Option<NatRange> {
    let (addr_part, port_part) = if s.starts_with('[') {
        // Bracketed v6: the port follows the last `]`.
        let end = s.rfind(']')?;
        let rest = &s[end + 1..];
        let ports = match rest.strip_prefix(':') {
            Some(p) => Some(p),
            None if rest.is_empty() => None,
            None => return None,
        };
        (s[..=end].replace(['[', ']'], ""), ports)
    } else if s.matches(':').count() > 1 {
        (s.to_string(), None) // bare v6, no port
    } else {
        match s.split_once(':') {
            Some((a, p)) => (a.to_string(), Some(p)),
            None => (s.to_string(), None),
        }
    };
    let addrs = if addr_part.is_empty() {
        None
    } else {
        let (a, b) = addr_part
            .split_once('-')
            .unwrap_or((&addr_part, &addr_part));
        Some((a.parse().ok()?, b.parse().ok()?))
    };
    let ports = match port_part {
        Some(p) => Some(parse_port_range(p)?),
        None => None,
    };
    Some(NatRange { addrs, ports })
}

pub(super) fn proto_number(s: &str) -> Option<u8> {
    match s.to_ascii_lowercase().as_str() {
        "all" => Some(0),
        "icmp" => Some(1),
        "tcp" => Some(6),
        "udp" => Some(17),
        "dccp" => Some(33),
        "gre" => Some(47),
        "esp" => Some(50),
        "ah" => Some(51),
        "ipv6-icmp" | "icmpv6" => Some(58),
        "sctp" => Some(132),
        "udplite" => Some(136),
        n => n.parse().ok(),
    }
}

// ---------------------------------------------------------------------------------------------
// Named sets

/// The named sets rules refer to: ipsets (`-m set --match-set NAME`) and nftables sets and maps
/// (`@NAME`), with their members as the tools printed them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sets {
    /// ipset name → members of an address set (`hash:ip`, `hash:net`, `bitmap:ip`).
    pub(super) ipsets: HashMap<String, Vec<String>>,
    /// (family, table, name) → elements of an nftables set or map (`K : V` for a map).
    pub(super) nft: HashMap<(Family, String, String), Vec<String>>,
}

impl Sets {
    /// The members of ipset `name` as address ranges; `None` when it was not read or holds
    /// something else than addresses.
    pub(super) fn ipset(&self, name: &str) -> Option<Vec<Net>> {
        self.ipsets
            .get(name)?
            .iter()
            .map(|m| Net::parse(m))
            .collect()
    }

    /// The elements of nftables set or map `name` of a table.
    pub(super) fn nft(&self, family: Family, table: &str, name: &str) -> Option<&[String]> {
        self.nft
            .get(&(family, table.to_string(), name.to_string()))
            .map(Vec::as_slice)
    }

    /// `ipset save` output: the members of its address sets.
    pub(crate) fn read_ipset_save(&mut self, text: &str) {
        let mut address_sets = std::collections::HashSet::new();
        for line in text.lines() {
            let w: Vec<&str> = line.split_whitespace().collect();
            match w.as_slice() {
                ["create", name, kind, ..]
                    if matches!(*kind, "hash:ip" | "hash:net" | "bitmap:ip") =>
                {
                    address_sets.insert(name.to_string());
                    self.ipsets.entry(name.to_string()).or_default();
                }
                ["add", name, member, ..] if address_sets.contains(*name) => {
                    if let Some(m) = self.ipsets.get_mut(*name) {
                        m.push(member.to_string());
                    }
                }
                _ => {}
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Tables

/// One netfilter table: the chains of one (source, family, table) and its NAT base chains.
#[derive(Clone, Debug)]
pub(super) struct TableIndex {
    pub(super) family: Family,
    pub(super) chains: HashMap<String, Vec<usize>>,
    pub(super) bases: Vec<IndexedBase>,
}

#[derive(Clone, Debug)]
pub(super) struct IndexedBase {
    pub(super) hook: Hook,
    pub(super) priority: i32,
    pub(super) chain: String,
}

pub(super) fn index_tables(rules: &[ParsedRule]) -> Vec<TableIndex> {
    let mut keys: Vec<(&str, Family, &str)> = Vec::new();
    let mut tables: Vec<TableIndex> = Vec::new();
    for (i, r) in rules.iter().enumerate() {
        if matches!(r.body, Body::Unparsed) {
            continue;
        }
        let key = (r.source.as_str(), r.family, r.table.as_str());
        let t = match keys.iter().position(|k| *k == key) {
            Some(t) => t,
            None => {
                keys.push(key);
                tables.push(TableIndex {
                    family: r.family,
                    chains: HashMap::new(),
                    bases: Vec::new(),
                });
                tables.len() - 1
            }
        };
        let table = &mut tables[t];
        match &r.body {
            Body::Header(b) => table.bases.push(IndexedBase {
                hook: b.hook,
                priority: b.priority,
                chain: r.chain.clone(),
            }),
            _ => table.chains.entry(r.chain.clone()).or_default().push(i),
        }
    }
    for (key, table) in keys.iter().zip(tables.iter_mut()) {
        if Family::of_iptables_source(key.0).is_some() {
            // The built-in chains of iptables' nat table, at the priorities iptables registers.
            for (chain, hook, priority) in [
                ("PREROUTING", Hook::Prerouting, -100),
                ("INPUT", Hook::Input, 100),
                ("OUTPUT", Hook::Output, -100),
                ("POSTROUTING", Hook::Postrouting, 100),
            ] {
                table.bases.push(IndexedBase {
                    hook,
                    priority,
                    chain: chain.to_string(),
                });
            }
        }
    }
    tables
}
/// Protocols with ports (what `th dport` and `--dport` can match): tcp, udp, dccp, sctp, udplite.
pub(super) const PORT_PROTOS: &[u8] = &[6, 17, 33, 132, 136];
