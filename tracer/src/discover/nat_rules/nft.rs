//! nftables rule text (`nft -a -s list ruleset` lines) into the rule model.

use std::collections::HashSet;

use super::{
    model::{
        parse_nat_range, parse_port_range, proto_number, Action, AddrKind, BaseChain, Body, Cond,
        Family, Hook, MapKey, MapKeyValue, NatRange, NatTarget, Net, ParsedRule, Rule, Sets,
        PORT_PROTOS,
    },
    SOURCE_NFTABLES,
};

/// Parses `nft -a [-s] list ruleset` output, keeping the chains of `type nat` base chains and the
/// chains they jump to. `skip` holds the (family, chain) pairs of the `nat` table that iptables-nft
/// listed already; those are left out. The tables' named sets and maps go into `sets` (rules
/// refer to them as `@NAME`).
pub(crate) fn parse_nft_ruleset(
    text: &str,
    skip: &HashSet<(Family, String)>,
    sets: &mut Sets,
) -> Vec<ParsedRule> {
    let mut out = Vec::new();
    let tables = nft_tables(text);
    for table in &tables {
        let Some(family) = Family::from_nft(&table.family) else {
            continue;
        };
        for (name, elements) in &table.sets {
            sets.nft
                .insert((family, table.name.clone(), name.clone()), elements.clone());
        }
    }
    for table in tables {
        let Some(family) = Family::from_nft(&table.family) else {
            continue; // bridge, arp, netdev: no NAT hooks.
        };
        let chains: Vec<(NftChain, Vec<ParsedRule>)> = table
            .chains
            .into_iter()
            .map(|chain| {
                let context = format!(
                    "table {} {} chain {}",
                    family.as_nft(),
                    table.name,
                    chain.name
                );
                let rules = chain
                    .lines
                    .iter()
                    .map(|line| nft_line(family, &table.name, &chain.name, &context, line, sets))
                    .collect();
                (chain, rules)
            })
            .collect();
        let keep = reachable_nat_chains(&chains);
        for (chain, rules) in chains {
            let managed = family != Family::Inet
                && table.name == "nat"
                && skip.contains(&(family, chain.name.clone()));
            if keep.contains(&chain.name) && !managed {
                out.extend(rules);
            }
        }
    }
    out
}

/// Chains of one table that NAT can reach: `type nat` base chains and their jump/goto targets.
fn reachable_nat_chains(chains: &[(NftChain, Vec<ParsedRule>)]) -> HashSet<String> {
    let mut keep: HashSet<String> = chains
        .iter()
        .filter(|(_, rules)| rules.iter().any(|r| matches!(r.body, Body::Header(_))))
        .map(|(c, _)| c.name.clone())
        .collect();
    let mut todo: Vec<String> = keep.iter().cloned().collect();
    while let Some(name) = todo.pop() {
        let Some((_, rules)) = chains.iter().find(|(c, _)| c.name == name) else {
            continue;
        };
        for r in rules {
            if let Body::Rule(Rule {
                action: Action::Jump(t) | Action::Goto(t),
                ..
            }) = &r.body
            {
                if keep.insert(t.clone()) {
                    todo.push(t.clone());
                }
            }
        }
    }
    keep
}

pub(super) fn nft_line(
    family: Family,
    table: &str,
    chain: &str,
    context: &str,
    line: &str,
    sets: &Sets,
) -> ParsedRule {
    let (line, counter) = strip_nft_counter(line);
    let body = if line.starts_with("type ") {
        match parse_nft_chain_header(&line) {
            Some(base) => Body::Header(base),
            // A filter/route base chain, or a header we do not understand: never evaluated.
            None => Body::Unparsed,
        }
    } else {
        let scope = SetScope {
            sets,
            family,
            table,
        };
        Body::Rule(parse_nft_rule(&line, &scope))
    };
    ParsedRule {
        source: SOURCE_NFTABLES.to_string(),
        family,
        table: table.to_string(),
        chain: chain.to_string(),
        context: Some(context.to_string()),
        text: line,
        body,
        counter,
    }
}

/// The line with `counter packets N bytes M` printed as `counter` (what `-s` prints), and N.
pub(super) fn strip_nft_counter(line: &str) -> (String, Option<u64>) {
    let words: Vec<&str> = line.split(' ').collect();
    let at = words
        .windows(5)
        .position(|w| w[0] == "counter" && w[1] == "packets" && w[3] == "bytes");
    match at.and_then(|i| Some((i, words[i + 2].parse::<u64>().ok()?))) {
        Some((i, packets)) => {
            let mut kept = words[..=i].to_vec();
            kept.extend(&words[i + 5..]);
            (kept.join(" "), Some(packets))
        }
        None => (line.to_string(), None),
    }
}

/// Where `@NAME` is looked up: the named sets of the rule's own table.
pub(super) struct SetScope<'a> {
    pub sets: &'a Sets,
    pub family: Family,
    pub table: &'a str,
}

struct NftTable {
    family: String,
    name: String,
    chains: Vec<NftChain>,
    /// Named sets and maps: name and elements as printed (`K : V` for a map).
    sets: Vec<(String, Vec<String>)>,
}

struct NftChain {
    name: String,
    /// The chain's header (`type ...`) and rule lines, trimmed, as printed.
    lines: Vec<String>,
}

/// Splits `nft list ruleset` text into tables, chains and named sets and maps; other objects
/// (flowtables, counters, quotas...) are skipped.
fn nft_tables(text: &str) -> Vec<NftTable> {
    let mut tables: Vec<NftTable> = Vec::new();
    let mut in_chain = false;
    // Depth of an object block (set, map, flowtable...) being skipped, and the set or map whose
    // lines it collects.
    let mut skip_depth = 0i32;
    let mut collecting: Option<(String, String)> = None;
    for raw in text.lines() {
        let line = raw.trim();
        let code = strip_nft_comment(line).trim();
        if skip_depth > 0 {
            skip_depth += brace_balance(code);
            if let Some((_, body)) = collecting.as_mut() {
                body.push(' ');
                body.push_str(code);
            }
            if skip_depth <= 0 {
                if let (Some((name, body)), Some(t)) = (collecting.take(), tables.last_mut()) {
                    t.sets.push((name, set_elements(&body)));
                }
            }
            continue;
        }
        let words: Vec<&str> = code.split_whitespace().collect();
        match (in_chain, words.as_slice()) {
            (_, ["table", family, name, "{"]) => {
                in_chain = false;
                tables.push(NftTable {
                    family: family.to_string(),
                    name: unquote(name),
                    chains: Vec::new(),
                    sets: Vec::new(),
                });
            }
            (false, ["set" | "map", name, "{"]) => {
                skip_depth = 1;
                collecting = Some((unquote(name), String::new()));
            }
            (false, ["chain", name, "{"]) => {
                if let Some(t) = tables.last_mut() {
                    in_chain = true;
                    t.chains.push(NftChain {
                        name: unquote(name),
                        lines: Vec::new(),
                    });
                }
            }
            (true, ["}"]) => in_chain = false,
            (true, []) => {}
            (true, [first, ..]) if matches!(*first, "policy" | "comment" | "devices") => {}
            (true, _) => {
                if let Some(c) = tables.last_mut().and_then(|t| t.chains.last_mut()) {
                    c.lines.push(line.to_string());
                }
            }
            (false, _) => skip_depth = brace_balance(code).max(0),
        }
    }
    tables
}

/// The elements of a set or map block (`elements = { a, b }`, maybe over several lines).
fn set_elements(body: &str) -> Vec<String> {
    let Some(start) = body.find("elements = {") else {
        return Vec::new();
    };
    let inner = &body[start + "elements = {".len()..];
    let end = inner.find('}').unwrap_or(inner.len());
    inner[..end]
        .split(',')
        .map(|e| unquote(e.trim()))
        .filter(|e| !e.is_empty())
        .collect()
}

/// Net `{` minus `}` outside double quotes.
fn brace_balance(code: &str) -> i32 {
    let mut quoted = false;
    let mut n = 0;
    for c in code.chars() {
        match c {
            '"' => quoted = !quoted,
            '{' if !quoted => n += 1,
            '}' if !quoted => n -= 1,
            _ => {}
        }
    }
    n
}

/// The line without its `# ...` comment (e.g. `# handle 3`); `#` inside quotes is kept.
fn strip_nft_comment(line: &str) -> &str {
    let mut quoted = false;
    for (i, c) in line.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '#' if !quoted => return &line[..i],
            _ => {}
        }
    }
    line
}

fn unquote(s: &str) -> String {
    s.trim_matches('"').to_string()
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Word(String),
    /// `{ a, b }`: an anonymous set.
    Set(Vec<String>),
}

/// Splits an nft rule line into words and anonymous sets; stops at a `#` comment.
fn nft_tokens(line: &str) -> Vec<Tok> {
    let code = strip_nft_comment(line);
    let mut toks = Vec::new();
    let mut rest = code.trim_start();
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('{') {
            let end = after.find('}').unwrap_or(after.len());
            let items = after[..end]
                .split(',')
                .map(|s| unquote(s.trim()))
                .filter(|s| !s.is_empty())
                .collect();
            toks.push(Tok::Set(items));
            rest = after.get(end + 1..).unwrap_or("");
        } else if let Some(after) = rest.strip_prefix('"') {
            let end = after.find('"').unwrap_or(after.len());
            toks.push(Tok::Word(after[..end].to_string()));
            rest = after.get(end + 1..).unwrap_or("");
        } else {
            let end = rest
                .find(|c: char| c.is_whitespace() || c == '{')
                .unwrap_or(rest.len());
            toks.push(Tok::Word(rest[..end].to_string()));
            rest = &rest[end..];
        }
        rest = rest.trim_start();
    }
    toks
}

/// A cursor over an nft rule's tokens.
struct NftCursor<'a> {
    toks: Vec<Tok>,
    pos: usize,
    scope: &'a SetScope<'a>,
    /// A `@NAME` that could not be resolved, for the rule's `Unknown`.
    unresolved: Option<String>,
}

impl NftCursor<'_> {
    fn word(&mut self) -> Option<String> {
        match self.toks.get(self.pos) {
            Some(Tok::Word(w)) => {
                self.pos += 1;
                Some(w.clone())
            }
            _ => None,
        }
    }
    fn peek_word(&self) -> Option<&str> {
        match self.toks.get(self.pos) {
            Some(Tok::Word(w)) => Some(w),
            _ => None,
        }
    }
    fn skip_if(&mut self, w: &str) -> bool {
        let hit = self.peek_word() == Some(w);
        if hit {
            self.pos += 1;
        }
        hit
    }
    /// `[==|!=] VALUE|{ SET }`: negation and the values.
    fn operand(&mut self) -> Option<(bool, Vec<String>)> {
        let neg = match self.peek_word() {
            Some("!=" | "ne") => true,
            Some("==" | "eq") => false,
            _ => {
                return self.value().map(|v| (false, v));
            }
        };
        self.pos += 1;
        self.value().map(|v| (neg, v))
    }
    /// A value, an anonymous set's items, or a named set's elements (`@NAME`).
    fn value(&mut self) -> Option<Vec<String>> {
        let tok = self.toks.get(self.pos)?.clone();
        self.pos += 1;
        match tok {
            Tok::Word(w) if w.starts_with('@') => {
                let s = self.scope;
                let found = s
                    .sets
                    .nft(s.family, s.table, &w[1..])
                    .map(<[String]>::to_vec);
                if found.is_none() {
                    self.unresolved = Some(format!("{w} (set not found)"));
                }
                found
            }
            Tok::Word(w) => Some(vec![w]),
            Tok::Set(items) => Some(items),
        }
    }
}

/// Words that start a rule's statement (verdict or NAT): what follows the matches.
const STATEMENTS: &[&str] = &[
    "accept",
    "drop",
    "return",
    "jump",
    "goto",
    "masquerade",
    "snat",
    "dnat",
    "redirect",
    "counter",
    "log",
    "comment",
];

/// Parses one nft rule line. Never fails: what it does not know becomes an `Unknown`.
pub(super) fn parse_nft_rule(line: &str, scope: &SetScope<'_>) -> Rule {
    let mut c = NftCursor {
        toks: nft_tokens(line),
        pos: 0,
        scope,
        unresolved: None,
    };
    let mut conds = Vec::new();
    let mut action = Action::None;
    while c.pos < c.toks.len() {
        let word_at = c.pos;
        let Some(w) = c.word() else {
            conds.push(Cond::Unknown("{ set }".to_string()));
            break;
        };
        let verdict = |a: Action| Some(Some(a));
        // `Some(None)`: a statement with no say in NAT; `None`: not understood.
        let step: Option<Option<Action>> = match w.as_str() {
            "counter" => {
                if c.skip_if("packets") {
                    c.pos += 3; // N bytes M
                }
                Some(None)
            }
            "comment" => c.value().map(|_| None),
            "log" => {
                while matches!(
                    c.peek_word(),
                    Some("prefix" | "level" | "group" | "snaplen" | "queue-threshold" | "flags")
                ) {
                    c.pos += 2;
                }
                Some(None)
            }
            "continue" => Some(None),
            "accept" => verdict(Action::Accept),
            "drop" => verdict(Action::Drop),
            "return" => verdict(Action::Return),
            "jump" => c.word().map(|t| Some(Action::Jump(t))),
            "goto" => c.word().map(|t| Some(Action::Goto(t))),
            "masquerade" => {
                nft_port_target(&mut c).map(|p| Some(Action::Nat(NatTarget::Masquerade(p))))
            }
            "redirect" => {
                nft_port_target(&mut c).map(|p| Some(Action::Nat(NatTarget::Redirect(p))))
            }
            "snat" | "dnat" => nft_nat_target(&mut c, w == "snat").map(|t| Some(Action::Nat(t))),
            _ => match nft_match(&w, &mut c) {
                Some(cond) => {
                    conds.push(cond);
                    Some(None)
                }
                None => None,
            },
        };
        match step {
            Some(Some(a)) => action = a,
            Some(None) => {}
            None => {
                let what = c.unresolved.take().unwrap_or(w);
                // A NAT statement not understood: the rule's verdict is unknown, not "none".
                if matches!(what.as_str(), "snat" | "dnat" | "masquerade" | "redirect") {
                    action = Action::Unknown(what);
                    break;
                }
                // A match not understood: it may or may not match; the rule's statement, which
                // comes after every match, is still read.
                let start = (word_at + 1).max(c.pos.min(word_at + 1));
                let statement = c.toks[start..]
                    .iter()
                    .position(|t| matches!(t, Tok::Word(w) if STATEMENTS.contains(&w.as_str())));
                let skipped: Vec<String> = c.toks[start..start + statement.unwrap_or(0)]
                    .iter()
                    .map(|t| match t {
                        Tok::Word(w) => w.clone(),
                        Tok::Set(items) => format!("{{ {} }}", items.join(", ")),
                    })
                    .collect();
                let printed = std::iter::once(what)
                    .chain(skipped)
                    .collect::<Vec<_>>()
                    .join(" ");
                conds.push(Cond::Unknown(printed));
                match statement {
                    Some(n) => c.pos = start + n,
                    None => break,
                }
            }
        }
    }
    Rule { conds, action }
}

/// A match expression starting with `first`, or `None` when it is not one this parser knows.
fn nft_match(first: &str, c: &mut NftCursor<'_>) -> Option<Cond> {
    let key = if first == "meta" {
        c.word()?
    } else {
        first.to_string()
    };
    match key.as_str() {
        "ct" if c.peek_word() == Some("state") => {
            c.pos += 1;
            let start = c.pos;
            match c.operand()? {
                (false, vals) if vals == ["new"] => Some(Cond::NewConnection),
                _ => {
                    c.pos = start;
                    None
                }
            }
        }
        "mark" | "ct" => {
            let conn = key == "ct";
            if conn && c.word()? != "mark" {
                return None;
            }
            let start = c.pos;
            // `[& MASK] [==|!=] VALUE`
            if c.skip_if("&") {
                c.word()?;
            }
            c.operand()?;
            let printed: Vec<String> = c.toks[start..c.pos]
                .iter()
                .map(|t| match t {
                    Tok::Word(w) => w.clone(),
                    Tok::Set(items) => format!("{{ {} }}", items.join(", ")),
                })
                .collect();
            let field = if conn { "ct mark" } else { "meta mark" };
            Some(Cond::Mark {
                what: format!("{field} {}", printed.join(" ")),
                conn,
            })
        }
        "ip" | "ip6" => {
            let v6 = key == "ip6";
            match c.word()?.as_str() {
                f @ ("saddr" | "daddr") => {
                    let (neg, vals) = c.operand()?;
                    let nets = vals.iter().map(|v| Net::parse(v)).collect::<Option<_>>()?;
                    Some(Cond::Addr {
                        src: f == "saddr",
                        neg,
                        v6,
                        nets,
                    })
                }
                "protocol" | "nexthdr" => nft_proto(c),
                _ => None,
            }
        }
        "l4proto" => nft_proto(c),
        "nfproto" => {
            let (neg, vals) = c.operand()?;
            match (neg, vals.as_slice()) {
                (false, [v]) if v == "ipv4" => Some(Cond::Family { v6: false }),
                (false, [v]) if v == "ipv6" => Some(Cond::Family { v6: true }),
                _ => None,
            }
        }
        "iifname" | "oifname" | "iif" | "oif" => {
            let (neg, names) = c.operand()?;
            Some(Cond::Iface {
                input: key.starts_with('i'),
                neg,
                names,
            })
        }
        "tcp" | "udp" | "sctp" | "dccp" | "udplite" | "th" => {
            let field = c.word()?;
            if field != "dport" && field != "sport" {
                return None;
            }
            let (neg, vals) = c.operand()?;
            let ranges = vals
                .iter()
                .map(|v| parse_port_range(v))
                .collect::<Option<_>>()?;
            let protos = match key.as_str() {
                "th" => PORT_PROTOS.to_vec(),
                k => vec![proto_number(k)?],
            };
            Some(Cond::Port {
                src: field == "sport",
                neg,
                protos,
                ranges,
            })
        }
        "fib" => {
            let field = c.word()?;
            if (field != "daddr" && field != "saddr") || c.word()? != "type" {
                return None;
            }
            let (neg, vals) = c.operand()?;
            let kinds: Option<Vec<AddrKind>> = vals.iter().map(|v| AddrKind::parse(v)).collect();
            Some(Cond::AddrType {
                src: field == "saddr",
                neg,
                kinds: kinds?,
            })
        }
        _ => None,
    }
}

fn nft_proto(c: &mut NftCursor<'_>) -> Option<Cond> {
    let (neg, vals) = c.operand()?;
    let protos = vals
        .iter()
        .map(|v| proto_number(v))
        .collect::<Option<_>>()?;
    Some(Cond::Proto { neg, protos })
}

/// `[to :P[-Q]] [flags]` after `masquerade` / `redirect`.
fn nft_port_target(c: &mut NftCursor<'_>) -> Option<Option<(u16, u16)>> {
    let ports = if c.skip_if("to") {
        Some(parse_port_range(c.word()?.strip_prefix(':')?)?)
    } else {
        None
    };
    skip_nat_flags(c);
    Some(ports)
}

/// `[ip|ip6] to RANGE [flags]` or `[ip|ip6] to KEY map { K : V, ... }|@MAP` after `snat` /
/// `dnat`.
fn nft_nat_target(c: &mut NftCursor<'_>, snat: bool) -> Option<NatTarget> {
    if !c.skip_if("ip") {
        c.skip_if("ip6");
    }
    if !c.skip_if("to") {
        return None;
    }
    let first = c.word()?;
    let target = match map_key(&first, c) {
        Some(key) => {
            if !c.skip_if("map") {
                return None;
            }
            let entries = c
                .value()?
                .iter()
                .map(|e| map_entry(&key, e))
                .collect::<Option<Vec<_>>>()?;
            NatTarget::Mapped { snat, key, entries }
        }
        None => {
            let range = parse_nat_range(&first)?;
            if snat {
                NatTarget::Snat(vec![range])
            } else {
                NatTarget::Dnat(vec![range])
            }
        }
    };
    skip_nat_flags(c);
    Some(target)
}

/// The key expression of a NAT map (`ip saddr`, `tcp dport`, ...), starting with `first`.
fn map_key(first: &str, c: &mut NftCursor<'_>) -> Option<MapKey> {
    let field = c.peek_word()?.to_string();
    let key = match (first, field.as_str()) {
        ("ip" | "ip6", "saddr" | "daddr") => MapKey::Addr {
            src: field == "saddr",
        },
        ("tcp" | "udp" | "sctp" | "dccp" | "udplite" | "th", "sport" | "dport") => MapKey::Port {
            src: field == "sport",
            protos: match first {
                "th" => PORT_PROTOS.to_vec(),
                p => vec![proto_number(p)?],
            },
        },
        _ => return None,
    };
    c.pos += 1;
    Some(key)
}

/// One `K : V` element of a NAT map.
fn map_entry(key: &MapKey, element: &str) -> Option<(MapKeyValue, NatRange)> {
    let (k, v) = element.split_once(" : ")?;
    let k = match key {
        MapKey::Addr { .. } => MapKeyValue::Net(Net::parse(k.trim())?),
        MapKey::Port { .. } => {
            let (a, b) = parse_port_range(k.trim())?;
            MapKeyValue::Ports(a, b)
        }
    };
    Some((k, parse_nat_range(v.trim())?))
}

fn skip_nat_flags(c: &mut NftCursor<'_>) {
    while c.peek_word().is_some_and(|w| {
        w.split(',')
            .all(|f| matches!(f, "random" | "persistent" | "fully-random"))
    }) {
        c.pos += 1;
    }
}

/// `type nat hook postrouting priority srcnat + 5; policy accept;` → the base chain, for `nat`
/// chains only.
pub(super) fn parse_nft_chain_header(line: &str) -> Option<BaseChain> {
    let spec = strip_nft_comment(line).split(';').next()?;
    let words: Vec<&str> = spec.split_whitespace().collect();
    let at = |key: &str| words.iter().position(|w| *w == key);
    if words.get(at("type")? + 1) != Some(&"nat") {
        return None;
    }
    let hook = match *words.get(at("hook")? + 1)? {
        "prerouting" => Hook::Prerouting,
        "input" => Hook::Input,
        "output" => Hook::Output,
        "postrouting" => Hook::Postrouting,
        _ => return None,
    };
    let prio = &words[at("priority")? + 1..];
    let base = match *prio.first()? {
        "raw" => -300,
        "mangle" => -150,
        "dstnat" => -100,
        "filter" => 0,
        "security" => 50,
        "srcnat" => 100,
        n => n.parse().ok()?,
    };
    let priority = match prio.get(1..) {
        Some(["+", n]) => base + n.parse::<i32>().ok()?,
        Some(["-", n]) => base - n.parse::<i32>().ok()?,
        Some([]) | None => base,
        Some(_) => return None,
    };
    Some(BaseChain { hook, priority })
}
