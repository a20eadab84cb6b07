//! nftables rule text (`nft -a -s list ruleset` lines) into the rule model.

use std::collections::HashSet;

use super::{
    model::{
        parse_nat_range, parse_port_range, proto_number, Action, BaseChain, Body, Cond, Family,
        Hook, NatRange, NatTarget, Net, ParsedRule, Rule, PORT_PROTOS,
    },
    SOURCE_NFTABLES,
};

/// Parses `nft -a [-s] list ruleset` output, keeping the chains of `type nat` base chains and the
/// chains they jump to. `skip` holds the (family, chain) pairs of the `nat` table that iptables-nft
/// listed already; those are left out.
pub(crate) fn parse_nft_ruleset(text: &str, skip: &HashSet<(Family, String)>) -> Vec<ParsedRule> {
    let mut out = Vec::new();
    for table in nft_tables(text) {
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
                    .map(|line| nft_line(family, &table.name, &chain.name, &context, line))
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
) -> ParsedRule {
    let body = if line.starts_with("type ") {
        match parse_nft_chain_header(line) {
            Some(base) => Body::Header(base),
            // A filter/route base chain, or a header we do not understand: never evaluated.
            None => Body::Unparsed,
        }
    } else {
        Body::Rule(parse_nft_rule(line))
    };
    ParsedRule {
        source: SOURCE_NFTABLES.to_string(),
        family,
        table: table.to_string(),
        chain: chain.to_string(),
        context: Some(context.to_string()),
        text: line.to_string(),
        body,
    }
}

struct NftTable {
    family: String,
    name: String,
    chains: Vec<NftChain>,
}

struct NftChain {
    name: String,
    /// The chain's header (`type ...`) and rule lines, trimmed, as printed.
    lines: Vec<String>,
}

/// Splits `nft list ruleset` text into tables and chains; sets, maps and other objects are skipped.
fn nft_tables(text: &str) -> Vec<NftTable> {
    let mut tables: Vec<NftTable> = Vec::new();
    let mut in_chain = false;
    // Depth of an object block (set, map, flowtable...) being skipped.
    let mut skip_depth = 0i32;
    for raw in text.lines() {
        let line = raw.trim();
        let code = strip_nft_comment(line).trim();
        if skip_depth > 0 {
            skip_depth += brace_balance(code);
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
                });
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
struct NftCursor {
    toks: Vec<Tok>,
    pos: usize,
}

impl NftCursor {
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
    fn value(&mut self) -> Option<Vec<String>> {
        let tok = self.toks.get(self.pos)?.clone();
        self.pos += 1;
        match tok {
            Tok::Word(w) if w.starts_with('@') => None, // named set: not resolved
            Tok::Word(w) => Some(vec![w]),
            Tok::Set(items) => Some(items),
        }
    }
}

/// Parses one nft rule line. Never fails: what it does not know becomes an `Unknown`.
pub(super) fn parse_nft_rule(line: &str) -> Rule {
    let mut c = NftCursor {
        toks: nft_tokens(line),
        pos: 0,
    };
    let mut conds = Vec::new();
    let mut action = Action::None;
    while c.pos < c.toks.len() {
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
            "snat" => nft_nat_target(&mut c).map(|r| Some(Action::Nat(NatTarget::Snat(vec![r])))),
            "dnat" => nft_nat_target(&mut c).map(|r| Some(Action::Nat(NatTarget::Dnat(vec![r])))),
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
                conds.push(Cond::Unknown(w));
                break;
            }
        }
    }
    Rule { conds, action }
}

/// A match expression starting with `first`, or `None` when it is not one this parser knows.
fn nft_match(first: &str, c: &mut NftCursor) -> Option<Cond> {
    let key = if first == "meta" {
        c.word()?
    } else {
        first.to_string()
    };
    match key.as_str() {
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
            match c.operand()? {
                (neg, vals) if vals == ["local"] => Some(Cond::Local {
                    src: field == "saddr",
                    neg,
                }),
                _ => None,
            }
        }
        _ => None,
    }
}

fn nft_proto(c: &mut NftCursor) -> Option<Cond> {
    let (neg, vals) = c.operand()?;
    let protos = vals
        .iter()
        .map(|v| proto_number(v))
        .collect::<Option<_>>()?;
    Some(Cond::Proto { neg, protos })
}

/// `[to :P[-Q]] [flags]` after `masquerade` / `redirect`.
fn nft_port_target(c: &mut NftCursor) -> Option<Option<(u16, u16)>> {
    let ports = if c.skip_if("to") {
        Some(parse_port_range(c.word()?.strip_prefix(':')?)?)
    } else {
        None
    };
    skip_nat_flags(c);
    Some(ports)
}

/// `[ip|ip6] to RANGE [flags]` after `snat` / `dnat`.
fn nft_nat_target(c: &mut NftCursor) -> Option<NatRange> {
    if !c.skip_if("ip") {
        c.skip_if("ip6");
    }
    if !c.skip_if("to") {
        return None;
    }
    let range = parse_nat_range(&c.word()?)?;
    skip_nat_flags(c);
    Some(range)
}

fn skip_nat_flags(c: &mut NftCursor) {
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
