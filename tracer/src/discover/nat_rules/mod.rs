//! The NAT rules in force, read from every style users run, and the rule that made an observed
//! rewrite.
//!
//! [`snapshot`] reads the `nat` table through iptables-nft, iptables-legacy (and both ip6tables),
//! all with `-t nat -S`, and native nftables with `nft -a -s list ruleset` (`-s`: counters are left
//! out, so a rule's text does not change as it counts), in the calling thread's network namespace (wrap it in
//! [`super::netns::Netns::run`] for another one). Every rule keeps its text exactly as the tool
//! printed it; [`NatRuleset`] also parses it, and answers [`RuleAttributor::attribute`] by walking
//! the chains the way netfilter does for the first packet of a connection.
//!
//! iptables-nft stores its rules in nftables tables (`ip nat`, `ip6 nat`), so `nft list ruleset`
//! shows them a second time. A chain iptables-nft listed is taken from the iptables text only;
//! `nft` contributes the chains of other tables, and chains of those tables iptables did not list.
//!
//! Here: the readers, the rule model and its evaluation. The two rule-text parsers live in
//! [`iptables`] (`-S` lines) and [`nft`] (ruleset lines); both build the model defined here.

use std::{
    collections::{HashMap, HashSet},
    fs, io,
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use crate::model::{
    addr_bits, prefix_mask, Endpoint, NatKind, NatQuery, NatRule, Proto, RuleAttributor,
};

mod iptables;
mod nft;
#[cfg(test)]
mod tests;

use iptables::parse_iptables_rule;
use nft::{parse_nft_chain_header, parse_nft_rule};

/// [`NatRule::source`] of rules read with `iptables` on nf_tables.
pub const SOURCE_IPTABLES_NFT: &str = "iptables-nft";
/// [`NatRule::source`] of rules read with `ip6tables` on nf_tables.
pub const SOURCE_IP6TABLES_NFT: &str = "ip6tables-nft";
/// [`NatRule::source`] of rules read with `iptables-legacy`.
pub const SOURCE_IPTABLES_LEGACY: &str = "iptables-legacy";
/// [`NatRule::source`] of rules read with `ip6tables-legacy`.
pub const SOURCE_IP6TABLES_LEGACY: &str = "ip6tables-legacy";
/// [`NatRule::source`] of native nftables rules (`nft list ruleset`).
pub const SOURCE_NFTABLES: &str = "nftables";

/// Where binaries are looked for when they are not on `PATH` (a non-root `PATH` lacks sbin).
const SBIN_DIRS: [&str; 2] = ["/usr/sbin", "/sbin"];
/// Nesting bound for `-j CHAIN` / `jump` (the kernel's own limit is far lower in practice).
const MAX_JUMP_DEPTH: usize = 64;
/// Protocols with ports (what `th dport` and `--dport` can match): tcp, udp, dccp, sctp, udplite.
const PORT_PROTOS: &[u8] = &[6, 17, 33, 132, 136];

#[derive(Debug, thiserror::Error)]
pub enum NatRulesError {
    /// Every NAT tool present failed (typically: not root).
    #[error("no NAT ruleset could be read: {}", .0.join("; "))]
    Unreadable(Vec<String>),
}

/// Address family of a table: iptables' is that of the tool, nftables' that of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    Ip,
    Ip6,
    Inet,
}

impl Family {
    fn from_nft(s: &str) -> Option<Self> {
        match s {
            "ip" => Some(Self::Ip),
            "ip6" => Some(Self::Ip6),
            "inet" => Some(Self::Inet),
            _ => None,
        }
    }
    fn as_nft(self) -> &'static str {
        match self {
            Self::Ip => "ip",
            Self::Ip6 => "ip6",
            Self::Inet => "inet",
        }
    }
    fn admits(self, v6: bool) -> bool {
        match self {
            Self::Ip => !v6,
            Self::Ip6 => v6,
            Self::Inet => true,
        }
    }
    fn of_iptables_source(source: &str) -> Option<Self> {
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
    /// MASQUERADE`, or for nftables a rule line or a base chain's `type nat hook ...` line.
    pub text: String,
    body: Body,
}

impl ParsedRule {
    /// The text that stands for this rule in a topology snapshot and in attributions.
    pub fn full_text(&self) -> String {
        match &self.context {
            Some(ctx) => format!("{ctx}: {}", self.text),
            None => self.text.clone(),
        }
    }

    pub fn to_nat_rule(&self) -> NatRule {
        NatRule {
            source: self.source.clone(),
            text: self.full_text(),
        }
    }

    /// Whether the text was understood well enough to take part in attribution.
    pub fn is_understood(&self) -> bool {
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

/// The NAT ruleset of one network namespace, in the order the tools printed it.
#[derive(Clone, Debug, Default)]
pub struct NatRuleset {
    rules: Vec<ParsedRule>,
    tables: Vec<TableIndex>,
}

impl NatRuleset {
    pub fn new(rules: Vec<ParsedRule>) -> Self {
        let tables = index_tables(&rules);
        Self { rules, tables }
    }

    /// Rebuilds a ruleset from a snapshot's rules (replay on another machine): parses the text
    /// again. Rules of an unknown source or that do not parse are kept but never match.
    pub fn from_rules(rules: &[NatRule]) -> Self {
        Self::new(rules.iter().map(parse_nat_rule).collect())
    }

    /// The rules for the topology snapshot, in order.
    pub fn rules(&self) -> Vec<NatRule> {
        self.rules.iter().map(ParsedRule::to_nat_rule).collect()
    }

    pub fn parsed(&self) -> &[ParsedRule] {
        &self.rules
    }

    /// Walks the chains a query's packet would traverse and returns the index of the rule that
    /// made its rewrite.
    fn attribute_index(&self, q: &NatQuery<'_>) -> Option<usize> {
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

impl RuleAttributor for NatRuleset {
    /// Unknown interfaces (`None` in the query) match any `-i`/`-o`; a rule matched only thanks to
    /// such an unknown is skipped when its result disagrees with `after`, where a rule matched for
    /// sure ends the search (the kernel would have applied it instead).
    fn attribute(&self, query: &NatQuery<'_>) -> Option<String> {
        self.attribute_index(query)
            .map(|i| self.rules[i].full_text())
    }
}

/// Reads the NAT ruleset in force in the calling thread's network namespace.
///
/// A tool that is not installed contributes nothing; one that fails is logged and skipped. Fails
/// only when every tool present failed.
pub fn snapshot() -> Result<NatRuleset, NatRulesError> {
    // Each tool is a separate process that mostly waits on the kernel: run them all at once (one
    // thread per iptables family and backend, one for nft) instead of one after another.
    let (listings, nft) = std::thread::scope(|scope| {
        let nft = scope.spawn(|| run_tool(Path::new("nft"), &["-a", "-s", "list", "ruleset"]));
        let listings: Vec<_> = iptables_candidates()
            .into_iter()
            .map(|c| scope.spawn(move || c.list()))
            .collect();
        let listings: Vec<_> = listings.into_iter().map(join_tool).collect();
        (listings, join_tool(nft))
    });

    let mut rules = Vec::new();
    let mut failures = Vec::new();
    let mut tried = 0usize;
    // (family, chain) of the `nat` table chains iptables-nft listed: `nft` shows them again.
    let mut listed_by_iptables_nft = HashSet::new();

    for (tool, listed) in listings.into_iter().flatten() {
        tried += 1;
        match listed {
            Ok(Some(out)) => {
                let parsed = parse_iptables_save(tool.source, tool.family, &out);
                if tool.nft_backed {
                    listed_by_iptables_nft
                        .extend(iptables_chain_names(&out).map(|c| (tool.family, c.to_string())));
                }
                rules.extend(parsed);
            }
            // Vanished between probing and listing: same as not installed.
            Ok(None) => tried -= 1,
            Err(msg) => {
                tracing::warn!("skipping {} NAT rules: {msg}", tool.source);
                failures.push(msg);
            }
        }
    }

    match nft {
        Ok(Some(out)) => {
            tried += 1;
            rules.extend(parse_nft_ruleset(&out, &listed_by_iptables_nft));
        }
        Ok(None) => {}
        Err(msg) => {
            tried += 1;
            tracing::warn!("skipping nftables NAT rules: {msg}");
            failures.push(msg);
        }
    }

    if tried > 0 && failures.len() == tried {
        return Err(NatRulesError::Unreadable(failures));
    }
    Ok(NatRuleset::new(rules))
}

/// What a thread of [`snapshot`] returned; its panic goes on in the caller.
fn join_tool<T>(handle: std::thread::ScopedJoinHandle<'_, T>) -> T {
    handle
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// An iptables family and backend that may be in use, with the binaries that could list it.
struct IptablesCandidate {
    bins: [PathBuf; 2],
    backend: &'static str,
    source: &'static str,
    family: Family,
    nft_backed: bool,
}

impl IptablesCandidate {
    /// Finds the binary whose `-V` names this backend and lists the `nat` table with it; `None`
    /// when no such binary is installed.
    fn list(self) -> Option<(IptablesTool, Result<Option<String>, String>)> {
        let backend = self.backend;
        let bin = self
            .bins
            .into_iter()
            .find(|bin| matches!(run_tool(bin, &["-V"]), Ok(Some(v)) if v.contains(backend)))?;
        let listed = run_tool(&bin, &["-t", "nat", "-S"]);
        let tool = IptablesTool {
            source: self.source,
            family: self.family,
            nft_backed: self.nft_backed,
        };
        Some((tool, listed))
    }
}

/// The iptables binary that listed a `nat` table.
struct IptablesTool {
    source: &'static str,
    family: Family,
    nft_backed: bool,
}

/// The iptables binaries to read, at most one per (family, backend), in a fixed order.
/// `iptables` itself is used only when its `-V` names a backend for which no `-nft`/`-legacy`
/// binary exists. Runs on the caller's thread: the legacy check reads this thread's namespace.
fn iptables_candidates() -> Vec<IptablesCandidate> {
    let mut candidates = Vec::new();
    for (plain, family, nft_src, legacy_src, names_file) in [
        (
            "iptables",
            Family::Ip,
            SOURCE_IPTABLES_NFT,
            SOURCE_IPTABLES_LEGACY,
            "ip_tables_names",
        ),
        (
            "ip6tables",
            Family::Ip6,
            SOURCE_IP6TABLES_NFT,
            SOURCE_IP6TABLES_LEGACY,
            "ip6_tables_names",
        ),
    ] {
        for (nft_backed, suffix, source) in [(true, "nft", nft_src), (false, "legacy", legacy_src)]
        {
            if !nft_backed && !legacy_nat_in_use(names_file) {
                continue;
            }
            candidates.push(IptablesCandidate {
                bins: [
                    PathBuf::from(format!("{plain}-{suffix}")),
                    PathBuf::from(plain),
                ],
                backend: if nft_backed { "nf_tables" } else { "legacy" },
                source,
                family,
                nft_backed,
            });
        }
    }
    candidates
}

/// Whether the legacy (x_tables) `nat` table exists in this thread's namespace. Listing it with
/// iptables-legacy would create it (and load iptable_nat), so look in /proc first.
fn legacy_nat_in_use(names_file: &str) -> bool {
    let dir = Path::new("/proc/thread-self/net");
    match fs::read_to_string(dir.join(names_file)) {
        Ok(names) => names.lines().any(|l| l.trim() == "nat"),
        // x_tables is not loaded at all, so there is no legacy table.
        Err(e) if e.kind() == io::ErrorKind::NotFound && dir.is_dir() => false,
        // Cannot tell (no /proc?): ask the tool.
        Err(_) => true,
    }
}

/// Runs a tool and returns its stdout; `Ok(None)` when it is not installed.
fn run_tool(bin: &Path, args: &[&str]) -> Result<Option<String>, String> {
    let shown = format!("{} {}", bin.display(), args.join(" "));
    let mut candidates = vec![bin.to_path_buf()];
    if bin.components().count() == 1 {
        candidates.extend(SBIN_DIRS.iter().map(|d| Path::new(d).join(bin)));
    }
    for candidate in candidates {
        let out = match Command::new(&candidate)
            .args(args)
            .stdin(Stdio::null())
            .output()
        {
            Ok(out) => out,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(format!("`{shown}` could not run: {e}")),
        };
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let first = stderr.lines().next().unwrap_or("").trim();
            return Err(format!("`{shown}` failed ({}): {first}", out.status));
        }
        return Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned()));
    }
    Ok(None)
}

/// Parses `iptables -t nat -S` output: one rule per `-A` line (policies and `-N` lines are not
/// rules; chains come from the `-A` lines).
pub fn parse_iptables_save(source: &str, family: Family, text: &str) -> Vec<ParsedRule> {
    text.lines()
        .map(str::trim)
        .filter(|l| l.starts_with("-A ") || l.starts_with("--append "))
        .map(|line| {
            let (chain, body) = match parse_iptables_rule(line) {
                Some((chain, rule)) => (chain, Body::Rule(rule)),
                None => (String::new(), Body::Unparsed),
            };
            ParsedRule {
                source: source.to_string(),
                family,
                table: "nat".to_string(),
                chain,
                context: None,
                text: line.to_string(),
                body,
            }
        })
        .collect()
}

/// Names of the chains an `iptables -S` listing shows (`-P`, `-N` and `-A` lines).
fn iptables_chain_names(text: &str) -> impl Iterator<Item = &str> {
    text.lines().filter_map(|l| {
        let mut w = l.split_whitespace();
        match w.next() {
            Some("-P" | "-N" | "-A") => w.next(),
            _ => None,
        }
    })
}

/// Parses `nft -a [-s] list ruleset` output, keeping the chains of `type nat` base chains and the
/// chains they jump to. `skip` holds the (family, chain) pairs of the `nat` table that iptables-nft
/// listed already; those are left out.
pub fn parse_nft_ruleset(text: &str, skip: &HashSet<(Family, String)>) -> Vec<ParsedRule> {
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

fn nft_line(family: Family, table: &str, chain: &str, context: &str, line: &str) -> ParsedRule {
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

/// Parses a [`NatRule`] from a snapshot back into a [`ParsedRule`].
fn parse_nat_rule(rule: &NatRule) -> ParsedRule {
    let text = rule.text.trim();
    if let Some(family) = Family::of_iptables_source(&rule.source) {
        if let Some(parsed) = parse_iptables_save(&rule.source, family, text).pop() {
            return parsed;
        }
    } else if rule.source == SOURCE_NFTABLES {
        if let Some((ctx, line)) = text.split_once(": ") {
            if let ["table", fam, table, "chain", chain] =
                ctx.split_whitespace().collect::<Vec<_>>().as_slice()
            {
                if let Some(family) = Family::from_nft(fam) {
                    return nft_line(family, table, chain, ctx, line.trim());
                }
            }
        }
    }
    ParsedRule {
        source: rule.source.clone(),
        family: Family::Inet,
        table: String::new(),
        chain: String::new(),
        context: None,
        text: text.to_string(),
        body: Body::Unparsed,
    }
}

// ---------------------------------------------------------------------------------------------
// Rule model and evaluation

#[derive(Clone, Debug, PartialEq)]
enum Body {
    Rule(Rule),
    /// An nftables `type nat hook ... priority ...` line: makes its chain a base chain.
    Header(BaseChain),
    Unparsed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hook {
    Prerouting,
    Input,
    Output,
    Postrouting,
}

#[derive(Clone, Debug, PartialEq)]
struct BaseChain {
    hook: Hook,
    priority: i32,
}

#[derive(Clone, Debug, PartialEq)]
struct Rule {
    conds: Vec<Cond>,
    action: Action,
}

#[derive(Clone, Debug, PartialEq)]
enum Cond {
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
    /// `-m addrtype --dst-type LOCAL`, `fib daddr type local` (and the `src` forms).
    Local { src: bool, neg: bool },
    /// `meta nfproto ipv4|ipv6`.
    Family { v6: bool },
    /// A match this parser does not know: the rule never matches.
    Unknown(String),
}

#[derive(Clone, Debug, PartialEq)]
enum Action {
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
enum NatTarget {
    Masquerade(Option<(u16, u16)>),
    Snat(Vec<NatRange>),
    Dnat(Vec<NatRange>),
    Redirect(Option<(u16, u16)>),
    /// `-j NETMAP --to NET`: source in POSTROUTING, destination in PREROUTING/OUTPUT.
    Netmap(Net),
}

#[derive(Clone, Debug, PartialEq)]
struct NatRange {
    addrs: Option<(IpAddr, IpAddr)>,
    ports: Option<(u16, u16)>,
}

/// An address set member: a range (CIDR or `a-b`) or an address with a non-contiguous mask.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Net {
    Range { v6: bool, lo: u128, hi: u128 },
    Masked { v6: bool, addr: u128, mask: u128 },
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

impl Net {
    fn contains(&self, addr: IpAddr) -> bool {
        let (v, x) = addr_bits(addr);
        match *self {
            Self::Range { v6, lo, hi } => v6 == v && (lo..=hi).contains(&x),
            Self::Masked { v6, addr, mask } => v6 == v && x & mask == addr & mask,
        }
    }

    fn v6(&self) -> bool {
        match *self {
            Self::Range { v6, .. } | Self::Masked { v6, .. } => v6,
        }
    }

    /// (v6, lo, hi) of a CIDR or range.
    fn as_range(&self) -> Option<(bool, u128, u128)> {
        match *self {
            Self::Range { v6, lo, hi } => Some((v6, lo, hi)),
            Self::Masked { .. } => None,
        }
    }

    /// `10.0.0.0/8`, `10.0.0.0/255.0.255.0`, `10.0.0.1`, `10.0.0.1-10.0.0.9`, and v6 forms.
    fn parse(s: &str) -> Option<Self> {
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
fn parse_port_range(s: &str) -> Option<(u16, u16)> {
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
fn parse_port(s: &str) -> Option<u16> {
    match s {
        "ssh" => Some(22),
        "domain" => Some(53),
        "http" => Some(80),
        "https" => Some(443),
        _ => s.parse().ok(),
    }
}

/// `A[-B][:P[-Q]]`, `[A6][-[B6]][:P[-Q]]`, `:P[-Q]` or a bare v6 range: a NAT target's range.
fn parse_nat_range(s: &str) -> Option<NatRange> {
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

fn proto_number(s: &str) -> Option<u8> {
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
// Tables

/// One netfilter table: the chains of one (source, family, table) and its NAT base chains.
#[derive(Clone, Debug)]
struct TableIndex {
    family: Family,
    chains: HashMap<String, Vec<usize>>,
    bases: Vec<IndexedBase>,
}

#[derive(Clone, Debug)]
struct IndexedBase {
    hook: Hook,
    priority: i32,
    chain: String,
}

fn index_tables(rules: &[ParsedRule]) -> Vec<TableIndex> {
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
