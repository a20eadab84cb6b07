//! The one rtnetlink client: links, addresses, routes (and the default route), route lookups and
//! the clsact qdiscs of netlink mode, synchronous, in the network namespace of the thread that
//! opened it (open it inside [`super::netns::Netns::run`]). Every verb that asks the kernel about
//! interfaces or routes asks through this, so `trace`, `inspect` and the lab agree on what, say,
//! "the default route" is.

use std::net::IpAddr;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_route::{
    address::{AddressAttribute, AddressMessage},
    link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage},
    route::{RouteAddress, RouteAttribute, RouteFlags, RouteMessage},
    rule::{RuleAction, RuleAttribute, RuleFlags, RuleMessage},
    tc::{TcAttribute, TcHandle, TcMessage},
    AddressFamily, RouteNetlinkMessage,
};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use crate::model::Prefix;

#[derive(Debug, thiserror::Error)]
pub enum RtnlError {
    #[error("rtnetlink socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("rtnetlink answered with error {0}")]
    Kernel(i32),
    #[error("rtnetlink: malformed answer: {0}")]
    Decode(String),
    #[error("no route to {0}")]
    NoRoute(IpAddr),
}

/// What discovery needs to know about one interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub ifindex: u32,
    pub name: String,
    /// `veth`, `bridge`, ... (`None` for devices without rtnl link ops, e.g. physical NICs).
    pub kind: Option<String>,
    /// `IFLA_LINK`: for a veth, the peer's ifindex (in the peer's namespace).
    pub peer_ifindex: Option<u32>,
    /// `IFLA_LINK_NETNSID`: set when the peer lives in another namespace.
    pub peer_netnsid: Option<i32>,
    /// `IFLA_MASTER`: the bridge (or bond) this link is a port of.
    pub master: Option<u32>,
    pub up: bool,
    /// For a tunnel device: what it encapsulates into, as far as rtnetlink tells.
    pub tunnel: Option<Tunnel>,
}

/// A tunnel device's encapsulation: the packets it sends leave again, encapsulated, toward
/// `remote` by way of `underlay`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tunnel {
    /// `vxlan`, `geneve`, `ipip`, `sit`, `gre`, `gretap`, `ip6gre`, `ip6gretap`, `ip6tnl`,
    /// `wireguard`.
    pub kind: String,
    /// The far end (a multicast group for a VXLAN with one), when the device has a fixed one.
    pub remote: Option<IpAddr>,
    pub local: Option<IpAddr>,
    /// The interface the encapsulated packets are bound to (`dev` of `ip link add ... dev`).
    pub underlay: Option<u32>,
    /// VXLAN/Geneve VNI, GRE key.
    pub id: Option<u32>,
    /// UDP destination port (VXLAN, Geneve).
    pub port: Option<u16>,
}

impl Tunnel {
    /// `vxlan tunnel (VNI 42, remote 10.0.0.2 by eth1, UDP 4789)`; `names` names an ifindex.
    pub(crate) fn describe(&self, names: impl Fn(u32) -> String) -> String {
        let mut parts = Vec::new();
        if let Some(id) = self.id {
            parts.push(if self.kind.contains("gre") {
                format!("key {id}")
            } else {
                format!("VNI {id}")
            });
        }
        match (self.remote, self.underlay) {
            (Some(r), Some(u)) => parts.push(format!("remote {r} by {}", names(u))),
            (Some(r), None) => parts.push(format!("remote {r}")),
            (None, Some(u)) => parts.push(format!("by {}", names(u))),
            (None, None) if self.kind == "wireguard" => {
                parts.push("peers: `wg show`".to_string());
            }
            (None, None) => parts.push("remote per packet (no fixed one)".to_string()),
        }
        if let Some(p) = self.port {
            parts.push(format!("UDP {p}"));
        }
        format!("{} tunnel ({})", self.kind, parts.join(", "))
    }
}

/// The result of a route lookup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RouteInfo {
    pub oif: u32,
    pub gateway: Option<IpAddr>,
    pub prefsrc: Option<IpAddr>,
    /// The table the route came from (`RTA_TABLE`), when the kernel says.
    pub table: Option<u32>,
}

/// A route lookup as the kernel makes it for a packet: `ip route get DST [from SRC iif DEV]
/// [mark M]`. With `iif` the kernel looks up the input route of a packet arriving there, as it
/// does for a packet it forwards (policy rules by source, interface and mark included).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct RouteQuery {
    pub dst: IpAddr,
    pub src: Option<IpAddr>,
    pub iif: Option<u32>,
    pub mark: Option<u32>,
}

impl RouteQuery {
    /// `ip route get DST`: the host's own route.
    pub(crate) fn to(dst: IpAddr) -> Self {
        Self {
            dst,
            src: None,
            iif: None,
            mark: None,
        }
    }
}

/// One policy routing rule (`ip rule`), as far as deciding where forwarded packets go needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Rule {
    pub priority: u32,
    /// `from PREFIX`.
    pub src: Option<Prefix>,
    /// `to PREFIX`.
    pub dst: Option<Prefix>,
    /// `iif NAME`.
    pub iif: Option<String>,
    /// `oif NAME` (matches only packets the host itself sends).
    pub oif: Option<String>,
    /// `fwmark MARK/MASK`.
    pub fwmark: Option<(u32, u32)>,
    /// `not`: the rule applies where its selectors do not match.
    pub invert: bool,
    /// Selectors this file does not decide (uid range, ports, ip protocol, tos, l3mdev, ...).
    pub other_selectors: bool,
    /// `lookup TABLE`; `None` for other actions (goto, nop, blackhole, unreachable, prohibit).
    pub table: Option<u32>,
}

/// An address on an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IfAddr {
    pub ifindex: u32,
    /// The interface's own address (`IFA_LOCAL` where the kernel gives one, else `IFA_ADDRESS`).
    pub addr: IpAddr,
    pub prefix_len: u8,
    /// On a point-to-point link, the far end's address (`IFA_ADDRESS` when it differs).
    pub peer: Option<IpAddr>,
}

/// An IP address family, as rtnetlink dumps are asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub(crate) fn of(addr: IpAddr) -> Self {
        match addr {
            IpAddr::V4(_) => Self::V4,
            IpAddr::V6(_) => Self::V6,
        }
    }

    fn netlink(self) -> AddressFamily {
        match self {
            Self::V4 => AddressFamily::Inet,
            Self::V6 => AddressFamily::Inet6,
        }
    }
}

/// One route of a dump (any table).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Route {
    /// Routing table (`RT_TABLE_MAIN` is 254).
    pub table: u32,
    /// Destination prefix; `None` with `dst_len` 0 for a default route.
    pub dst: Option<IpAddr>,
    pub dst_len: u8,
    pub oif: Option<u32>,
    pub gateway: Option<IpAddr>,
    pub prefsrc: Option<IpAddr>,
    /// `RTA_PRIORITY`, what `ip route` prints as `metric` (0 when absent).
    pub metric: u32,
    /// The TOS the route is for (`ip route add ... tos 0x10`); 0 for any.
    pub tos: u8,
}

impl Route {
    /// Whether this is a default route (`0.0.0.0/0` or `::/0`) of the main table, for any TOS.
    pub(crate) fn is_main_default(&self) -> bool {
        self.dst_len == 0 && self.table == u32::from(libc::RT_TABLE_MAIN) && self.tos == 0
    }
}

/// Of `routes`, the main table's default route with the lowest metric that names an interface
/// and is not for one TOS only: the one the kernel uses for ordinary traffic while it is up.
pub(crate) fn lowest_metric_default(routes: &[Route]) -> Option<&Route> {
    routes
        .iter()
        .filter(|r| r.is_main_default() && r.oif.is_some())
        .min_by_key(|r| r.metric)
}

pub(crate) struct Rtnl {
    socket: Socket,
    seq: u32,
}

/// Receive buffer bound: one datagram of a dump (the kernel sends at most ~32 KiB per message).
const RECV_BUF: usize = 64 * 1024;

impl Rtnl {
    /// Opens a socket in the calling thread's network namespace.
    pub(crate) fn open() -> Result<Self, RtnlError> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Self { socket, seq: 0 })
    }

    fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>, RtnlError> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        packet.finalize();
        let mut buf = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.socket.send(&buf, 0)?;

        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut out = Vec::new();
        let mut rx = Vec::with_capacity(RECV_BUF);
        loop {
            rx.clear();
            let n = self.socket.recv(&mut rx, 0)?;
            let mut offset = 0;
            while offset < n {
                let bytes = &rx[offset..n];
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes)
                    .map_err(|e| RtnlError::Decode(e.to_string()))?;
                let len = msg.header.length as usize;
                if len == 0 {
                    return Err(RtnlError::Decode("zero-length message".into()));
                }
                // NLMSG_ALIGN: messages in one datagram start on 4-byte boundaries.
                offset += (len + 3) & !3;
                if msg.header.sequence_number != self.seq {
                    continue;
                }
                match msg.payload {
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::Error(e) => match e.code {
                        None => {
                            if !dump {
                                return Ok(out);
                            }
                        }
                        Some(code) => return Err(RtnlError::Kernel(code.get())),
                    },
                    NetlinkPayload::InnerMessage(inner) => {
                        out.push(inner);
                        if !dump {
                            return Ok(out);
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    pub(crate) fn links(&mut self) -> Result<Vec<Link>, RtnlError> {
        let msgs = self.request(
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_REQUEST | NLM_F_DUMP,
        )?;
        Ok(msgs
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(link_from(&l)),
                _ => None,
            })
            .collect())
    }

    /// Every route of `family`, in every table.
    pub(crate) fn routes(&mut self, family: Family) -> Result<Vec<Route>, RtnlError> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = family.netlink();
        let msgs = self.request(
            RouteNetlinkMessage::GetRoute(msg),
            NLM_F_REQUEST | NLM_F_DUMP,
        )?;
        Ok(msgs
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r) => Some(route_from(&r)),
                _ => None,
            })
            .collect())
    }

    /// The main table's default route of `family` with the lowest metric (see
    /// [`lowest_metric_default`]), if there is one.
    pub(crate) fn default_route(&mut self, family: Family) -> Result<Option<Route>, RtnlError> {
        Ok(lowest_metric_default(&self.routes(family)?).cloned())
    }

    pub(crate) fn link_by_name(&mut self, name: &str) -> Result<Option<Link>, RtnlError> {
        Ok(self.links()?.into_iter().find(|l| l.name == name))
    }

    pub(crate) fn addrs(&mut self) -> Result<Vec<IfAddr>, RtnlError> {
        let msgs = self.request(
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
            NLM_F_REQUEST | NLM_F_DUMP,
        )?;
        let mut out = Vec::new();
        for m in msgs {
            let RouteNetlinkMessage::NewAddress(a) = m else {
                continue;
            };
            // IFA_LOCAL is the interface's own address on point-to-point links; IFA_ADDRESS
            // otherwise. Prefer LOCAL when both are present.
            let local = a.attributes.iter().find_map(|at| match at {
                AddressAttribute::Local(ip) => Some(*ip),
                _ => None,
            });
            let address = a.attributes.iter().find_map(|at| match at {
                AddressAttribute::Address(ip) => Some(*ip),
                _ => None,
            });
            if let Some(addr) = local.or(address) {
                out.push(IfAddr {
                    ifindex: a.header.index,
                    addr,
                    prefix_len: a.header.prefix_len,
                    peer: address.filter(|p| *p != addr),
                });
            }
        }
        Ok(out)
    }

    /// Whether the interface has a `clsact` qdisc.
    pub(crate) fn has_clsact(&mut self, ifindex: u32) -> Result<bool, RtnlError> {
        let msgs = self.request(
            RouteNetlinkMessage::GetQueueDiscipline(TcMessage::default()),
            NLM_F_REQUEST | NLM_F_DUMP,
        )?;
        Ok(msgs.iter().any(|m| match m {
            RouteNetlinkMessage::NewQueueDiscipline(q) => {
                q.header.index == ifindex as i32
                    && q.header.parent == TcHandle::CLSACT
                    && q.attributes
                        .iter()
                        .any(|a| matches!(a, TcAttribute::Kind(k) if k == "clsact"))
            }
            _ => false,
        }))
    }

    /// Number of tc filters under the interface's clsact qdisc (ingress and egress together).
    pub(crate) fn clsact_filter_count(&mut self, ifindex: u32) -> Result<usize, RtnlError> {
        let mut n = 0;
        // TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_INGRESS / TC_H_MIN_EGRESS)
        for minor in [0xfff2u16, 0xfff3] {
            let mut msg = TcMessage::with_index(ifindex as i32);
            msg.header.parent = TcHandle {
                major: 0xffff,
                minor,
            };
            let msgs = match self.request(
                RouteNetlinkMessage::GetTrafficFilter(msg),
                NLM_F_REQUEST | NLM_F_DUMP,
            ) {
                Ok(m) => m,
                // No such qdisc: no filters.
                Err(RtnlError::Kernel(code)) if code == -libc::EINVAL || code == -libc::ENOENT => {
                    continue
                }
                Err(e) => return Err(e),
            };
            // A filter shows up once as a chain/prio entry and once per handle; count entries that
            // carry options (a real filter).
            n += msgs
                .iter()
                .filter(|m| matches!(m, RouteNetlinkMessage::NewTrafficFilter(f) if f.header.handle != TcHandle { major: 0, minor: 0 }))
                .count();
        }
        Ok(n)
    }

    /// Deletes the interface's `clsact` qdisc (and every filter under it). Only for a qdisc this
    /// process created.
    pub(crate) fn del_clsact(&mut self, ifindex: u32) -> Result<(), RtnlError> {
        let mut msg = TcMessage::with_index(ifindex as i32);
        msg.header.parent = TcHandle::CLSACT;
        msg.header.handle = TcHandle {
            major: 0xffff,
            minor: 0,
        };
        msg.attributes.push(TcAttribute::Kind("clsact".to_string()));
        self.request(
            RouteNetlinkMessage::DelQueueDiscipline(msg),
            NLM_F_REQUEST | netlink_packet_core::NLM_F_ACK,
        )?;
        Ok(())
    }

    /// Every policy routing rule of `family` (`ip rule`), in the kernel's order (by priority).
    pub(crate) fn rules(&mut self, family: Family) -> Result<Vec<Rule>, RtnlError> {
        let mut msg = RuleMessage::default();
        msg.header.family = family.netlink();
        let msgs = self.request(
            RouteNetlinkMessage::GetRule(msg),
            NLM_F_REQUEST | NLM_F_DUMP,
        )?;
        let mut rules: Vec<Rule> = msgs
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRule(r) => Some(rule_from(&r)),
                _ => None,
            })
            .collect();
        rules.sort_by_key(|r| r.priority);
        Ok(rules)
    }

    /// `ip route get <dst>`: the kernel's own answer, policy routing included.
    pub(crate) fn route_get(&mut self, dst: IpAddr) -> Result<RouteInfo, RtnlError> {
        self.route_lookup(&RouteQuery::to(dst))
    }

    /// The kernel's route for a packet (see [`RouteQuery`]).
    pub(crate) fn route_lookup(&mut self, q: &RouteQuery) -> Result<RouteInfo, RtnlError> {
        let dst = q.dst;
        let full = if dst.is_ipv4() { 32 } else { 128 };
        let mut msg = RouteMessage::default();
        msg.header.address_family = match dst {
            IpAddr::V4(_) => AddressFamily::Inet,
            IpAddr::V6(_) => AddressFamily::Inet6,
        };
        msg.header.destination_prefix_length = full;
        // Report the table the route came from (without this flag the kernel says `main`).
        msg.header.flags = RouteFlags::LookupTable;
        msg.attributes
            .push(RouteAttribute::Destination(RouteAddress::from(dst)));
        if let Some(src) = q.src {
            msg.header.source_prefix_length = full;
            msg.attributes
                .push(RouteAttribute::Source(RouteAddress::from(src)));
        }
        if let Some(iif) = q.iif {
            msg.attributes.push(RouteAttribute::Iif(iif));
        }
        if let Some(mark) = q.mark {
            msg.attributes.push(RouteAttribute::Mark(mark));
        }
        let answer = self
            .request(RouteNetlinkMessage::GetRoute(msg), NLM_F_REQUEST)
            .map_err(|e| match e {
                // ENETUNREACH / EHOSTUNREACH
                RtnlError::Kernel(code)
                    if code == -libc::ENETUNREACH || code == -libc::EHOSTUNREACH =>
                {
                    RtnlError::NoRoute(dst)
                }
                other => other,
            })?;
        for m in answer {
            let RouteNetlinkMessage::NewRoute(r) = m else {
                continue;
            };
            let mut info = RouteInfo {
                oif: 0,
                gateway: None,
                prefsrc: None,
                table: Some(u32::from(r.header.table)),
            };
            for at in &r.attributes {
                match at {
                    RouteAttribute::Oif(i) => info.oif = *i,
                    RouteAttribute::Table(t) => info.table = Some(*t),
                    RouteAttribute::Gateway(a) => info.gateway = route_ip(a),
                    RouteAttribute::PrefSource(a) => info.prefsrc = route_ip(a),
                    _ => {}
                }
            }
            if info.oif != 0 {
                return Ok(info);
            }
        }
        Err(RtnlError::NoRoute(dst))
    }
}

fn rule_from(r: &RuleMessage) -> Rule {
    let h = &r.header;
    let mut rule = Rule {
        priority: 0,
        src: None,
        dst: None,
        iif: None,
        oif: None,
        fwmark: None,
        invert: h.flags.contains(RuleFlags::Invert),
        other_selectors: h.tos != 0,
        table: (h.action == RuleAction::ToTable).then_some(u32::from(h.table)),
    };
    let (mut mark, mut mask) = (None, None);
    for a in &r.attributes {
        match a {
            RuleAttribute::Priority(p) => rule.priority = *p,
            RuleAttribute::Source(ip) => {
                rule.src = Some(Prefix {
                    addr: *ip,
                    len: h.src_len,
                });
            }
            RuleAttribute::Destination(ip) => {
                rule.dst = Some(Prefix {
                    addr: *ip,
                    len: h.dst_len,
                });
            }
            RuleAttribute::Iifname(n) => rule.iif = Some(n.clone()),
            RuleAttribute::Oifname(n) => rule.oif = Some(n.clone()),
            RuleAttribute::FwMark(m) => mark = Some(*m),
            RuleAttribute::FwMask(m) => mask = Some(*m),
            // FRA_TABLE carries tables above 255, which the header's byte cannot.
            RuleAttribute::Table(t) if rule.table.is_some() => rule.table = Some(*t),
            // The kernel reports a full uid range on every rule; only a narrower one selects.
            RuleAttribute::UidRange(u) => {
                rule.other_selectors |= !(u.start == 0 && u.end == u32::MAX);
            }
            RuleAttribute::L3MDev(true)
            | RuleAttribute::IpProtocol(_)
            | RuleAttribute::SourcePortRange(_)
            | RuleAttribute::DestinationPortRange(_)
            | RuleAttribute::TunId(_) => rule.other_selectors = true,
            _ => {}
        }
    }
    // `fwmark 0` with no mask selects nothing; a mask alone means the mark 0 under it.
    rule.fwmark = match (mark, mask) {
        (Some(0) | None, None) => None,
        (m, Some(mask)) => Some((m.unwrap_or(0), mask)),
        (Some(m), None) => Some((m, u32::MAX)),
    };
    rule
}

fn route_from(r: &RouteMessage) -> Route {
    let mut route = Route {
        table: u32::from(r.header.table),
        dst: None,
        dst_len: r.header.destination_prefix_length,
        oif: None,
        gateway: None,
        prefsrc: None,
        metric: 0,
        tos: r.header.tos,
    };
    for a in &r.attributes {
        match a {
            // RTA_TABLE carries tables above 255, which the header's byte cannot.
            RouteAttribute::Table(t) => route.table = *t,
            RouteAttribute::Destination(d) => route.dst = route_ip(d),
            RouteAttribute::Oif(i) => route.oif = Some(*i),
            RouteAttribute::Gateway(g) => route.gateway = route_ip(g),
            RouteAttribute::PrefSource(s) => route.prefsrc = route_ip(s),
            RouteAttribute::Priority(p) => route.metric = *p,
            _ => {}
        }
    }
    route
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

fn link_from(l: &LinkMessage) -> Link {
    let mut link = Link {
        ifindex: l.header.index,
        name: String::new(),
        kind: None,
        peer_ifindex: None,
        peer_netnsid: None,
        master: None,
        up: l.header.flags.contains(LinkFlags::Up),
        tunnel: None,
    };
    for at in &l.attributes {
        match at {
            LinkAttribute::IfName(n) => link.name = n.clone(),
            LinkAttribute::Link(i) => link.peer_ifindex = Some(*i),
            LinkAttribute::LinkNetNsId(i) => link.peer_netnsid = Some(*i),
            LinkAttribute::Controller(i) => link.master = Some(*i),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    if let LinkInfo::Kind(kind) = info {
                        link.kind = Some(match kind {
                            InfoKind::Veth => "veth".to_string(),
                            InfoKind::Bridge => "bridge".to_string(),
                            InfoKind::Other(name) => name.clone(),
                            other => other.to_string(),
                        });
                    }
                }
                link.tunnel = tunnel_of(link.kind.as_deref(), infos);
            }
            _ => {}
        }
    }
    link
}

/// The tunnel a link of `kind` is, from its `IFLA_INFO_DATA`.
fn tunnel_of(kind: Option<&str>, infos: &[LinkInfo]) -> Option<Tunnel> {
    use netlink_packet_route::link::{InfoData, InfoGeneve, InfoVxlan};
    let kind = kind?;
    let known = [
        "vxlan",
        "geneve",
        "ipip",
        "sit",
        "gre",
        "gretap",
        "ip6gre",
        "ip6gretap",
        "ip6tnl",
        "wireguard",
    ];
    if !known.contains(&kind) {
        return None;
    }
    let mut t = Tunnel {
        kind: kind.to_string(),
        remote: None,
        local: None,
        underlay: None,
        id: None,
        port: None,
    };
    let data = infos.iter().find_map(|i| match i {
        LinkInfo::Data(d) => Some(d),
        _ => None,
    });
    match data {
        Some(InfoData::Vxlan(attrs)) => {
            for a in attrs {
                match a {
                    InfoVxlan::Id(id) => t.id = Some(*id),
                    InfoVxlan::Group(g) => t.remote = Some(IpAddr::V4(*g)),
                    InfoVxlan::Group6(g) => t.remote = Some(IpAddr::V6(*g)),
                    InfoVxlan::Local(l) => t.local = Some(IpAddr::V4(*l)),
                    InfoVxlan::Local6(l) => t.local = Some(IpAddr::V6(*l)),
                    InfoVxlan::Link(i) if *i != 0 => t.underlay = Some(*i),
                    InfoVxlan::Port(p) => t.port = Some(*p),
                    _ => {}
                }
            }
        }
        Some(InfoData::Geneve(attrs)) => {
            for a in attrs {
                match a {
                    InfoGeneve::Id(id) => t.id = Some(*id),
                    InfoGeneve::Remote(r) => t.remote = Some(IpAddr::V4(*r)),
                    InfoGeneve::Remote6(r) => t.remote = Some(IpAddr::V6(*r)),
                    InfoGeneve::Port(p) => t.port = Some(*p),
                    _ => {}
                }
            }
        }
        Some(InfoData::GreTun(attrs)) => raw_tunnel_attrs(&mut t, attrs.iter().map(nla_of), GRE),
        Some(InfoData::GreTap(attrs)) => raw_tunnel_attrs(&mut t, attrs.iter().map(nla_of), GRE),
        Some(InfoData::GreTun6(attrs)) => raw_tunnel_attrs(&mut t, attrs.iter().map(nla_of), GRE),
        Some(InfoData::GreTap6(attrs)) => raw_tunnel_attrs(&mut t, attrs.iter().map(nla_of), GRE),
        Some(InfoData::SitTun(attrs)) => raw_tunnel_attrs(&mut t, attrs.iter().map(nla_of), IPTUN),
        Some(InfoData::Other(bytes)) => {
            let layout = if kind.contains("gre") { GRE } else { IPTUN };
            raw_tunnel_attrs(&mut t, split_nlas(bytes).into_iter(), layout);
        }
        _ => {}
    }
    Some(t)
}

/// Attribute numbers of the link, local and remote of a tunnel's data: `IFLA_GRE_*` and
/// `IFLA_IPTUN_*` (include/uapi/linux/if_tunnel.h), and GRE's output key.
#[derive(Clone, Copy)]
struct TunnelLayout {
    link: u16,
    local: u16,
    remote: u16,
    key: Option<u16>,
}
const GRE: TunnelLayout = TunnelLayout {
    link: 1,
    local: 6,
    remote: 7,
    key: Some(5),
};
const IPTUN: TunnelLayout = TunnelLayout {
    link: 1,
    local: 2,
    remote: 3,
    key: None,
};

/// A raw attribute: its type and value.
fn nla_of<T: netlink_packet_utils::nla::Nla>(a: &T) -> (u16, Vec<u8>) {
    let mut value = vec![0u8; a.value_len()];
    a.emit_value(&mut value);
    (a.kind(), value)
}

/// Splits a buffer of netlink attributes (4-byte aligned) into (type, value) pairs.
fn split_nlas(bytes: &[u8]) -> Vec<(u16, Vec<u8>)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 4 <= bytes.len() {
        let len = usize::from(u16::from_ne_bytes([bytes[at], bytes[at + 1]]));
        let kind = u16::from_ne_bytes([bytes[at + 2], bytes[at + 3]]) & 0x3fff;
        if len < 4 || at + len > bytes.len() {
            break;
        }
        out.push((kind, bytes[at + 4..at + len].to_vec()));
        at += (len + 3) & !3;
    }
    out
}

fn raw_tunnel_attrs(t: &mut Tunnel, attrs: impl Iterator<Item = (u16, Vec<u8>)>, l: TunnelLayout) {
    let addr = |v: &[u8]| -> Option<IpAddr> {
        match v.len() {
            4 => Some(IpAddr::from(<[u8; 4]>::try_from(v).ok()?)),
            16 => Some(IpAddr::from(<[u8; 16]>::try_from(v).ok()?)),
            _ => None,
        }
    };
    let unspecified = |a: &IpAddr| a.is_unspecified();
    for (kind, v) in attrs {
        if kind == l.link && v.len() == 4 {
            let i = u32::from_ne_bytes([v[0], v[1], v[2], v[3]]);
            t.underlay = (i != 0).then_some(i);
        } else if kind == l.local {
            t.local = addr(&v).filter(|a| !unspecified(a));
        } else if kind == l.remote {
            t.remote = addr(&v).filter(|a| !unspecified(a));
        } else if Some(kind) == l.key && v.len() == 4 {
            let key = u32::from_be_bytes([v[0], v[1], v[2], v[3]]);
            t.id = (key != 0).then_some(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn default_via(oif: u32, metric: u32, table: u32) -> Route {
        Route {
            table,
            dst: None,
            dst_len: 0,
            oif: Some(oif),
            gateway: None,
            prefsrc: None,
            metric,
            tos: 0,
        }
    }

    /// One netlink attribute: length, type, value, padded to 4 bytes.
    fn nla(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&(4 + value.len() as u16).to_ne_bytes());
        b.extend_from_slice(&kind.to_ne_bytes());
        b.extend_from_slice(value);
        while b.len() % 4 != 0 {
            b.push(0);
        }
        b
    }

    #[test]
    fn ipip_gre_and_wireguard_tunnels_are_named_with_their_far_end() {
        // IFLA_IPTUN_LINK 1, _LOCAL 2, _REMOTE 3 (include/uapi/linux/if_tunnel.h).
        let mut ipip = nla(1, &5u32.to_ne_bytes());
        ipip.extend(nla(2, &[10, 77, 2, 1]));
        ipip.extend(nla(3, &[10, 77, 2, 2]));
        let infos = [
            LinkInfo::Kind(InfoKind::IpTun),
            LinkInfo::Data(netlink_packet_route::link::InfoData::Other(ipip)),
        ];
        let t = tunnel_of(Some("ipip"), &infos).expect("a tunnel");
        assert_eq!(
            (t.remote, t.local, t.underlay),
            (
                Some(IpAddr::from([10, 77, 2, 2])),
                Some(IpAddr::from([10, 77, 2, 1])),
                Some(5)
            )
        );
        let names = |i: u32| format!("if{i}");
        assert_eq!(t.describe(names), "ipip tunnel (remote 10.77.2.2 by if5)");
        // IFLA_GRE_OKEY 5 (big-endian key), _LOCAL 6, _REMOTE 7.
        let mut gre = nla(5, &9u32.to_be_bytes());
        gre.extend(nla(7, &[192, 0, 2, 7]));
        let infos = [LinkInfo::Data(netlink_packet_route::link::InfoData::Other(
            gre,
        ))];
        let t = tunnel_of(Some("gre"), &infos).expect("a tunnel");
        assert_eq!(t.describe(names), "gre tunnel (key 9, remote 192.0.2.7)");
        let t = tunnel_of(Some("wireguard"), &[]).expect("a tunnel");
        assert_eq!(t.describe(names), "wireguard tunnel (peers: `wg show`)");
        assert_eq!(tunnel_of(Some("veth"), &[]), None);
    }

    #[test]
    fn default_route_is_the_main_tables_lowest_metric() {
        let main = u32::from(libc::RT_TABLE_MAIN);
        let routes = [
            default_via(3, 100, main),
            default_via(9, 5, 100),
            Route {
                dst_len: 24,
                ..default_via(7, 0, main)
            },
            default_via(4, 50, main),
            // For one TOS only: not what ordinary traffic takes, however low its metric.
            Route {
                tos: 0x10,
                ..default_via(5, 1, main)
            },
        ];
        assert_eq!(lowest_metric_default(&routes).and_then(|r| r.oif), Some(4));
        assert_eq!(lowest_metric_default(&routes[1..3]), None);
    }
}
