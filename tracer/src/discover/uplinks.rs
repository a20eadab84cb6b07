//! Which interfaces a container's forwarded traffic can leave the host by: the kernel's own
//! answer for one destination (`ip route get DST from SRC iif BRIDGE`, policy rules included),
//! and without a destination the default routes of every table a policy rule can send it to, in
//! the kernel's order. A rule that depends on what the packet carries and the route lookup
//! cannot be told (a firewall mark, a destination prefix) adds its table's interfaces too: which
//! of them a packet takes is only known when it is seen there, so all of them are hooked.
//!
//! Routes to a prefix (not default) are not hooked this way: a packet routed by one out of an
//! interface no hook watches is reported as such at run time (`pipeline::exits`), and
//! `--uplink IFACE` adds that interface.

use std::net::IpAddr;

use super::rtnl::{Route, RouteInfo, RouteQuery, Rule};

/// The `main` routing table.
pub(crate) const TABLE_MAIN: u32 = libc::RT_TABLE_MAIN as u32;
const TABLE_LOCAL: u32 = libc::RT_TABLE_LOCAL as u32;
const TABLE_DEFAULT: u32 = libc::RT_TABLE_DEFAULT as u32;

/// A table by the name `ip` gives it.
pub(crate) fn table_name(table: u32) -> String {
    match table {
        TABLE_MAIN => "main".into(),
        TABLE_LOCAL => "local".into(),
        TABLE_DEFAULT => "default".into(),
        t => t.to_string(),
    }
}

/// How a rule relates to the traced side's forwarded packets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Applies {
    /// Every packet from the traced side that gets this far in the rule list.
    Always,
    /// Some of them, depending on what only the packet tells (its mark, its destination, ...).
    Maybe,
}

/// Whether `rule` can apply to a packet from `src` arriving on interface `iif` (to `dst` when
/// known), and how surely; `None` when it never does or does not look up a table for it.
pub(crate) fn applies(rule: &Rule, src: IpAddr, iif: &str, dst: Option<IpAddr>) -> Option<Applies> {
    let table = rule.table?;
    if table == TABLE_LOCAL {
        // The host's own addresses: not where forwarded packets go out.
        return None;
    }
    // Decided from what is known; `None`: depends on the packet.
    let mut known = Vec::new();
    let mut undecided = rule.other_selectors || rule.fwmark.is_some();
    if let Some(p) = rule.src {
        known.push(p.contains(src));
    }
    if let Some(p) = rule.dst {
        match dst {
            Some(d) => known.push(p.contains(d)),
            None => undecided = true,
        }
    }
    if let Some(name) = &rule.iif {
        known.push(name == iif);
    }
    if rule.oif.is_some() {
        // Matches only packets the host sends itself (a forwarded packet has no oif yet).
        known.push(false);
    }
    let all_known_match = known.iter().all(|m| *m);
    match (rule.invert, all_known_match, undecided) {
        (false, false, _) => None,
        (false, true, false) => Some(Applies::Always),
        (false, true, true) => Some(Applies::Maybe),
        // `not`: applies where the selectors do not all match.
        (true, false, _) => Some(Applies::Always),
        (true, true, false) => None,
        (true, true, true) => Some(Applies::Maybe),
    }
}

/// An interface a traced flow can leave by, and why pathtrace thinks so.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Exit {
    pub oif: u32,
    /// `default via 10.0.0.1 table main`, `ip rule fwmark 0x7 lookup 101: default via ...`.
    pub why: String,
}

/// Without a destination: the default routes of the tables the rules can send a packet from
/// `src` on `iif` to, the one the kernel uses for most destinations first. Tables of rules that
/// may apply (marks, prefixes) add every interface they route by (their default routes, or all
/// their routes when they have none).
pub(crate) fn default_exits(rules: &[Rule], routes: &[Route], src: IpAddr, iif: &str) -> Vec<Exit> {
    let mut exits: Vec<Exit> = Vec::new();
    let push = |exits: &mut Vec<Exit>, oif: u32, why: String| {
        if !exits.iter().any(|e| e.oif == oif) {
            exits.push(Exit { oif, why });
        }
    };
    let family_ok = |r: &Route| r.dst.is_none_or(|d| d.is_ipv4() == src.is_ipv4());
    for rule in rules {
        let (Some(how), Some(table)) = (applies(rule, src, iif, None), rule.table) else {
            continue;
        };
        let in_table = || {
            routes
                .iter()
                .filter(move |r| r.table == table && family_ok(r))
        };
        let default = in_table()
            .filter(|r| r.dst_len == 0 && r.tos == 0 && r.oif.is_some())
            .min_by_key(|r| r.metric);
        let why_rule = if table == TABLE_MAIN && rule.src.is_none() && !rule.invert {
            String::new()
        } else {
            format!("{}: ", describe_rule(rule))
        };
        match (how, default) {
            (Applies::Always, Some(d)) => {
                if let Some(oif) = d.oif {
                    push(&mut exits, oif, format!("{why_rule}{}", describe_route(d)));
                }
                // The kernel stops at the first table with a route; rules after this one see
                // only destinations routed more specifically before it.
                break;
            }
            (Applies::Always, None) => {}
            (Applies::Maybe, Some(d)) => {
                if let Some(oif) = d.oif {
                    push(&mut exits, oif, format!("{why_rule}{}", describe_route(d)));
                }
            }
            (Applies::Maybe, None) => {
                for r in in_table() {
                    if let Some(oif) = r.oif {
                        push(&mut exits, oif, format!("{why_rule}{}", describe_route(r)));
                    }
                }
            }
        }
    }
    exits
}

/// The marks of the rules that may apply to a packet from `src` on `iif` to `dst` because of a
/// firewall mark: the lookups to repeat with each, since the packet's own mark is not known.
pub(crate) fn marks_that_matter(rules: &[Rule], src: IpAddr, iif: &str, dst: IpAddr) -> Vec<u32> {
    let mut marks: Vec<u32> = rules
        .iter()
        .filter(|r| applies(r, src, iif, Some(dst)).is_some())
        .filter_map(|r| r.fwmark.map(|(mark, _)| mark))
        .collect();
    marks.dedup();
    marks
}

/// `ip rule` style: `from 10.0.1.0/24 fwmark 0x7 lookup 100`.
pub(crate) fn describe_rule(rule: &Rule) -> String {
    let mut parts = vec![format!("ip rule {}:", rule.priority)];
    if rule.invert {
        parts.push("not".into());
    }
    match rule.src {
        Some(p) => parts.push(format!("from {}/{}", p.addr, p.len)),
        None => parts.push("from all".into()),
    }
    if let Some(p) = rule.dst {
        parts.push(format!("to {}/{}", p.addr, p.len));
    }
    if let Some((mark, mask)) = rule.fwmark {
        if mask == u32::MAX {
            parts.push(format!("fwmark {mark:#x}"));
        } else {
            parts.push(format!("fwmark {mark:#x}/{mask:#x}"));
        }
    }
    if let Some(i) = &rule.iif {
        parts.push(format!("iif {i}"));
    }
    if let Some(t) = rule.table {
        parts.push(format!("lookup {}", table_name(t)));
    }
    parts.join(" ")
}

/// `default via 10.0.0.1 table main` (interfaces by index: the caller names them).
pub(crate) fn describe_route(r: &Route) -> String {
    let dst = match r.dst {
        Some(d) if r.dst_len > 0 => format!("{d}/{}", r.dst_len),
        _ => "default".into(),
    };
    let via = r.gateway.map(|g| format!(" via {g}")).unwrap_or_default();
    format!("{dst}{via} table {}", table_name(r.table))
}

/// `ip route get` style: `203.0.113.5 from 10.0.1.2 iif br0 mark 0x7 via 10.0.3.2 dev up1
/// table 100`; `names` turns an ifindex into a name.
pub(crate) fn describe_lookup(
    q: &RouteQuery,
    info: &RouteInfo,
    names: impl Fn(u32) -> String,
) -> String {
    let mut s = q.dst.to_string();
    if let Some(src) = q.src {
        s.push_str(&format!(" from {src}"));
    }
    if let Some(iif) = q.iif {
        s.push_str(&format!(" iif {}", names(iif)));
    }
    if let Some(mark) = q.mark {
        s.push_str(&format!(" mark {mark:#x}"));
    }
    if let Some(g) = info.gateway {
        s.push_str(&format!(" via {g}"));
    }
    s.push_str(&format!(" dev {}", names(info.oif)));
    if let Some(t) = info.table {
        s.push_str(&format!(" table {}", table_name(t)));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Prefix;

    fn rule(priority: u32, table: u32) -> Rule {
        Rule {
            priority,
            src: None,
            dst: None,
            iif: None,
            oif: None,
            fwmark: None,
            invert: false,
            other_selectors: false,
            table: Some(table),
        }
    }

    fn default_via(oif: u32, table: u32) -> Route {
        Route {
            table,
            dst: None,
            dst_len: 0,
            oif: Some(oif),
            gateway: Some("10.0.0.1".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))),
            prefsrc: None,
            metric: 0,
            tos: 0,
        }
    }

    fn prefix(s: &str) -> Option<Prefix> {
        s.parse().ok()
    }

    fn ctr() -> IpAddr {
        IpAddr::from([10, 77, 1, 2])
    }

    /// `ip rule` on a stock host: local, main, default.
    fn stock() -> Vec<Rule> {
        vec![
            rule(0, TABLE_LOCAL),
            rule(32766, TABLE_MAIN),
            rule(32767, TABLE_DEFAULT),
        ]
    }

    #[test]
    fn a_stock_host_leaves_by_the_main_default_route() {
        let routes = [default_via(2, TABLE_MAIN), default_via(9, 100)];
        let exits = default_exits(&stock(), &routes, ctr(), "br0");
        assert_eq!(exits.iter().map(|e| e.oif).collect::<Vec<_>>(), [2]);
        assert_eq!(exits[0].why, "default via 10.0.0.1 table main");
    }

    #[test]
    fn a_source_rule_comes_first_and_hides_the_main_table() {
        let mut rules = stock();
        rules.insert(
            1,
            Rule {
                src: prefix("10.77.1.0/24"),
                ..rule(100, 100)
            },
        );
        let routes = [default_via(2, TABLE_MAIN), default_via(9, 100)];
        let exits = default_exits(&rules, &routes, ctr(), "br0");
        assert_eq!(exits.iter().map(|e| e.oif).collect::<Vec<_>>(), [9]);
        assert_eq!(
            exits[0].why,
            "ip rule 100: from 10.77.1.0/24 lookup 100: default via 10.0.0.1 table 100"
        );
        // Another source: the rule does not apply.
        let other = default_exits(&rules, &routes, IpAddr::from([10, 9, 9, 9]), "br0");
        assert_eq!(other.iter().map(|e| e.oif).collect::<Vec<_>>(), [2]);
    }

    #[test]
    fn a_mark_rule_adds_its_table_and_the_main_table_stays() {
        let mut rules = stock();
        rules.insert(
            1,
            Rule {
                fwmark: Some((7, u32::MAX)),
                ..rule(100, 101)
            },
        );
        let routes = [default_via(2, TABLE_MAIN), default_via(9, 101)];
        let exits = default_exits(&rules, &routes, ctr(), "br0");
        assert_eq!(exits.iter().map(|e| e.oif).collect::<Vec<_>>(), [9, 2]);
        assert_eq!(marks_that_matter(&rules, ctr(), "br0", ctr()), [7]);
    }

    #[test]
    fn rules_for_other_interfaces_or_local_traffic_do_not_apply() {
        let iif = Rule {
            iif: Some("eth1".into()),
            ..rule(10, 100)
        };
        let oif = Rule {
            oif: Some("br0".into()),
            ..rule(11, 100)
        };
        let not_from = Rule {
            src: prefix("10.77.1.0/24"),
            invert: true,
            ..rule(12, 100)
        };
        for r in [&iif, &oif, &not_from] {
            assert_eq!(applies(r, ctr(), "br0", None), None, "{r:?}");
        }
        assert_eq!(
            applies(
                &Rule {
                    iif: Some("br0".into()),
                    ..iif.clone()
                },
                ctr(),
                "br0",
                None
            ),
            Some(Applies::Always)
        );
        let to = Rule {
            dst: prefix("192.0.2.0/24"),
            ..rule(13, 100)
        };
        assert_eq!(applies(&to, ctr(), "br0", None), Some(Applies::Maybe));
        assert_eq!(
            applies(&to, ctr(), "br0", Some(IpAddr::from([192, 0, 2, 9]))),
            Some(Applies::Always)
        );
        assert_eq!(
            applies(&to, ctr(), "br0", Some(IpAddr::from([198, 51, 100, 9]))),
            None
        );
    }

    #[test]
    fn a_table_without_a_default_route_falls_through() {
        let mut rules = stock();
        rules.insert(
            1,
            Rule {
                src: prefix("10.77.1.0/24"),
                ..rule(100, 100)
            },
        );
        let routes = [
            default_via(2, TABLE_MAIN),
            Route {
                dst: Some(IpAddr::from([10, 98, 0, 0])),
                dst_len: 16,
                ..default_via(5, 100)
            },
        ];
        let exits = default_exits(&rules, &routes, ctr(), "br0");
        assert_eq!(exits.iter().map(|e| e.oif).collect::<Vec<_>>(), [2]);
    }
}
