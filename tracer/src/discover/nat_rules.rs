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

use std::{
    collections::{HashMap, HashSet},
    fs, io,
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use crate::model::{Endpoint, NatKind, NatQuery, NatRule, Proto, RuleAttributor};

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

fn addr_bits(addr: IpAddr) -> (bool, u128) {
    match addr {
        IpAddr::V4(a) => (false, u128::from(u32::from(a))),
        IpAddr::V6(a) => (true, u128::from(a)),
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

/// The mask of a `/n` prefix in an address of `width` bits.
fn prefix_mask(n: u32, width: u32) -> u128 {
    if n == 0 {
        0
    } else {
        (u128::MAX << (128 - n)) >> (128 - width)
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
// iptables rule text

/// Splits a line into words; `"..."` groups (with `\"` and `\\` escapes) form one word.
fn split_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quoted = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            '\\' if quoted => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    words
}

/// Parses one `-A CHAIN ...` line into its chain and rule.
fn parse_iptables_rule(line: &str) -> Option<(String, Rule)> {
    let words = split_words(line);
    let mut it = words.iter().map(String::as_str);
    if !matches!(it.next(), Some("-A" | "--append")) {
        return None;
    }
    let chain = it.next()?.to_string();
    let mut conds = Vec::new();
    let mut action = Action::None;
    let mut neg = false;
    while let Some(w) = it.next() {
        if w == "!" {
            neg = true;
            continue;
        }
        let cond = match w {
            "-s" | "--source" | "-d" | "--destination" => {
                let v = it.next()?;
                let src = matches!(w, "-s" | "--source");
                match Net::parse(v) {
                    Some(net) => Cond::Addr {
                        src,
                        neg,
                        v6: net.v6(),
                        nets: vec![net],
                    },
                    None => Cond::Unknown(format!("{w} {v}")),
                }
            }
            "-i" | "--in-interface" | "-o" | "--out-interface" => Cond::Iface {
                input: matches!(w, "-i" | "--in-interface"),
                neg,
                names: vec![it.next()?.to_string()],
            },
            "-p" | "--protocol" => {
                let v = it.next()?;
                match proto_number(v) {
                    Some(n) => Cond::Proto {
                        neg,
                        protos: vec![n],
                    },
                    None => Cond::Unknown(format!("-p {v}")),
                }
            }
            "-m" | "--match" => {
                it.next()?; // the module's options follow and are parsed one by one
                neg = false;
                continue;
            }
            "--comment" => {
                it.next()?;
                neg = false;
                continue;
            }
            // addrtype: restricts LOCAL to the packet's interface's addresses; still "local".
            "--limit-iface-in" | "--limit-iface-out" => {
                neg = false;
                continue;
            }
            "--dport"
            | "--destination-port"
            | "--sport"
            | "--source-port"
            | "--dports"
            | "--destination-ports"
            | "--sports"
            | "--source-ports" => {
                let v = it.next()?;
                let ranges: Option<Vec<_>> = v.split(',').map(parse_port_range).collect();
                match ranges {
                    Some(ranges) => Cond::Port {
                        src: w.starts_with("--s"),
                        neg,
                        protos: PORT_PROTOS.to_vec(),
                        ranges,
                    },
                    None => Cond::Unknown(format!("{w} {v}")),
                }
            }
            "--dst-type" | "--src-type" => {
                let v = it.next()?;
                if v == "LOCAL" {
                    Cond::Local {
                        src: w == "--src-type",
                        neg,
                    }
                } else {
                    Cond::Unknown(format!("{w} {v}"))
                }
            }
            "-j" | "--jump" => {
                let target = it.next()?;
                let opts: Vec<&str> = it.by_ref().collect();
                action = parse_iptables_target(target, &opts);
                break;
            }
            "-g" | "--goto" => {
                action = Action::Goto(it.next()?.to_string());
                break;
            }
            other => Cond::Unknown(other.to_string()),
        };
        conds.push(cond);
        neg = false;
    }
    Some((chain, Rule { conds, action }))
}

fn parse_iptables_target(target: &str, opts: &[&str]) -> Action {
    let values = |name: &str| -> Vec<&str> {
        opts.windows(2)
            .filter(|w| w[0] == name)
            .map(|w| w[1])
            .collect()
    };
    let ranges = |name: &str| -> Option<Vec<NatRange>> {
        values(name).into_iter().map(parse_nat_range).collect()
    };
    let ports = || -> Result<Option<(u16, u16)>, ()> {
        match values("--to-ports").first() {
            Some(p) => parse_port_range(p).map(Some).ok_or(()),
            None => Ok(None),
        }
    };
    let nat = match target {
        "ACCEPT" => return Action::Accept,
        "DROP" => return Action::Drop,
        "RETURN" => return Action::Return,
        "MASQUERADE" => ports().ok().map(NatTarget::Masquerade),
        "REDIRECT" => ports().ok().map(NatTarget::Redirect),
        "SNAT" => ranges("--to-source").map(NatTarget::Snat),
        "DNAT" => ranges("--to-destination").map(NatTarget::Dnat),
        "NETMAP" => values("--to")
            .first()
            .and_then(|n| Net::parse(n))
            .map(NatTarget::Netmap),
        // Non-terminating targets have no say in NAT.
        "LOG" | "NFLOG" | "MARK" | "CONNMARK" | "TRACE" | "CT" | "NOTRACK" => return Action::None,
        chain => return Action::Jump(chain.to_string()),
    };
    match nat {
        // SNAT/DNAT without a range is a ruleset iptables would not print.
        Some(NatTarget::Snat(r) | NatTarget::Dnat(r)) if r.is_empty() => {
            Action::Unknown(format!("-j {target}"))
        }
        Some(t) => Action::Nat(t),
        None => Action::Unknown(format!("-j {target} {}", opts.join(" "))),
    }
}

// ---------------------------------------------------------------------------------------------
// nftables rule text

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
fn parse_nft_rule(line: &str) -> Rule {
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
fn parse_nft_chain_header(line: &str) -> Option<BaseChain> {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// `iptables -t nat -S` of a Docker host running one container (172.17.0.2) with `-p 8080:80`.
    const DOCKER: &str = "\
-P PREROUTING ACCEPT
-P INPUT ACCEPT
-P OUTPUT ACCEPT
-P POSTROUTING ACCEPT
-N DOCKER
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER
-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE
-A POSTROUTING -s 172.17.0.2/32 -d 172.17.0.2/32 -p tcp -m tcp --dport 80 -j MASQUERADE
-A DOCKER -i docker0 -j RETURN
-A DOCKER ! -i docker0 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 172.17.0.2:80
";

    /// `nft -a -s list ruleset` of a host with iptables-nft's Docker nat table, a filter table, and
    /// a native nftables NAT table.
    const NFT: &str = r#"table ip nat { # handle 1
	chain DOCKER { # handle 1
		iifname "docker0" counter return # handle 4
	}

	chain POSTROUTING { # handle 2
		type nat hook postrouting priority srcnat; policy accept;
		oifname != "docker0" ip saddr 172.17.0.0/16 counter masquerade # handle 3
	}
}
table ip filter { # handle 2
	chain FORWARD { # handle 6
		type filter hook forward priority filter; policy drop;
		oifname "docker0" ct state related,established counter accept # handle 14
	}
}
table inet lab { # handle 3
	set blocked { # handle 2
		type ipv4_addr
		elements = { 192.0.2.1, 192.0.2.2 }
	}

	chain post { # handle 4
		type nat hook postrouting priority srcnat + 5; policy accept;
		ip saddr 10.0.0.0/24 oifname != "br0" masquerade # handle 5
		oifname "eth1" meta l4proto { tcp, udp } snat ip to 203.0.113.10-203.0.113.20:20000-30000 comment "range" # handle 6
		ip saddr @blocked masquerade # handle 7
		ct state new masquerade # handle 8
	}

	chain pre { # handle 9
		type nat hook prerouting priority dstnat; policy accept;
		fib daddr type local jump published # handle 10
	}

	chain published { # handle 11
		iifname "br0" return # handle 12
		iifname != "docker0" tcp dport 8080 dnat ip to 172.17.0.2:80 # handle 13
		meta l4proto udp th dport { 53, 5353 } redirect to :5300 # handle 14
	}

	chain unused { # handle 15
		masquerade # handle 16
	}
}
"#;

    fn ep(s: &str) -> Endpoint {
        let (a, p) = s.rsplit_once(':').expect("addr:port");
        Endpoint::new(
            a.trim_matches(['[', ']']).parse().expect("addr"),
            p.parse().expect("port"),
        )
    }

    fn snat<'a>(before: &str, after: &str, peer: &str, out: Option<&'a str>) -> NatQuery<'a> {
        NatQuery {
            kind: NatKind::Snat,
            proto: Proto::Tcp,
            before: ep(before),
            after: ep(after),
            peer: ep(peer),
            in_iface: None,
            out_iface: out,
        }
    }

    fn dnat<'a>(before: &str, after: &str, peer: &str, iif: Option<&'a str>) -> NatQuery<'a> {
        NatQuery {
            kind: NatKind::Dnat,
            proto: Proto::Tcp,
            before: ep(before),
            after: ep(after),
            peer: ep(peer),
            in_iface: iif,
            out_iface: None,
        }
    }

    fn docker() -> NatRuleset {
        NatRuleset::new(parse_iptables_save(SOURCE_IPTABLES_NFT, Family::Ip, DOCKER))
    }

    fn nft() -> NatRuleset {
        NatRuleset::new(parse_nft_ruleset(NFT, &HashSet::new()))
    }

    #[test]
    fn docker_rules_parse_and_keep_their_text() {
        let rs = docker();
        let texts: Vec<_> = rs.rules().into_iter().map(|r| r.text).collect();
        assert_eq!(texts.len(), 6);
        assert_eq!(
            texts[2],
            "-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE"
        );
        assert!(rs.parsed().iter().all(ParsedRule::is_understood), "{rs:#?}");
        assert!(rs.rules().iter().all(|r| r.source == "iptables-nft"));
    }

    #[test]
    fn docker_masquerade_is_attributed() {
        let rs = docker();
        let q = snat(
            "172.17.0.2:40000",
            "192.0.2.10:40000",
            "198.51.100.7:443",
            Some("eth0"),
        );
        assert_eq!(
            rs.attribute(&q).as_deref(),
            Some("-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE")
        );
        // Unknown out interface: still the MASQUERADE rule.
        let q = snat(
            "172.17.0.2:40000",
            "192.0.2.10:1024",
            "198.51.100.7:443",
            None,
        );
        assert!(rs.attribute(&q).is_some_and(|t| t.contains("MASQUERADE")));
    }

    #[test]
    fn docker_hairpin_masquerade_is_attributed() {
        let q = snat(
            "172.17.0.2:40000",
            "172.17.0.1:40000",
            "172.17.0.2:80",
            Some("docker0"),
        );
        assert_eq!(
            docker().attribute(&q).as_deref(),
            Some("-A POSTROUTING -s 172.17.0.2/32 -d 172.17.0.2/32 -p tcp -m tcp --dport 80 -j MASQUERADE")
        );
    }

    #[test]
    fn docker_published_port_is_attributed() {
        let rule = "-A DOCKER ! -i docker0 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 172.17.0.2:80";
        let rs = docker();
        let q = dnat(
            "192.0.2.10:8080",
            "172.17.0.2:80",
            "198.51.100.7:50000",
            Some("eth0"),
        );
        assert_eq!(rs.attribute(&q).as_deref(), Some(rule));
        // Locally generated (OUTPUT), interface unknown.
        let q = dnat("192.0.2.10:8080", "172.17.0.2:80", "192.0.2.10:50000", None);
        assert_eq!(rs.attribute(&q).as_deref(), Some(rule));
    }

    #[test]
    fn docker_negative_cases() {
        let rs = docker();
        // Leaving by docker0 itself: `! -o docker0` does not match, nor does the hairpin rule.
        let q = snat(
            "172.17.0.2:40000",
            "192.0.2.10:40000",
            "198.51.100.7:443",
            Some("docker0"),
        );
        assert_eq!(rs.attribute(&q), None);
        // Another source subnet.
        let q = snat(
            "10.9.0.2:40000",
            "192.0.2.10:40000",
            "198.51.100.7:443",
            Some("eth0"),
        );
        assert_eq!(rs.attribute(&q), None);
        // Coming in by docker0: DOCKER returns first.
        let q = dnat(
            "192.0.2.10:8080",
            "172.17.0.2:80",
            "172.17.0.3:5000",
            Some("docker0"),
        );
        assert_eq!(rs.attribute(&q), None);
        // The rule maps to port 80, not 81; another port is not published; UDP is not published.
        let q = dnat(
            "192.0.2.10:8080",
            "172.17.0.2:81",
            "198.51.100.7:50000",
            Some("eth0"),
        );
        assert_eq!(rs.attribute(&q), None);
        let q = dnat(
            "192.0.2.10:9090",
            "172.17.0.2:80",
            "198.51.100.7:50000",
            Some("eth0"),
        );
        assert_eq!(rs.attribute(&q), None);
        let q = NatQuery {
            proto: Proto::Udp,
            ..dnat(
                "192.0.2.10:8080",
                "172.17.0.2:80",
                "198.51.100.7:5",
                Some("eth0"),
            )
        };
        assert_eq!(rs.attribute(&q), None);
        // A v6 packet is not seen by an iptables (v4) table.
        let q = snat(
            "[fd00::2]:4000",
            "[fd00::1]:4000",
            "[fd01::7]:443",
            Some("eth0"),
        );
        assert_eq!(rs.attribute(&q), None);
    }

    #[test]
    fn lab_masquerade() {
        let rule = "-A POSTROUTING -s 10.200.1.0/24 ! -o pt-br0 -j MASQUERADE";
        let rs = NatRuleset::new(parse_iptables_save(
            SOURCE_IPTABLES_LEGACY,
            Family::Ip,
            rule,
        ));
        let q = snat(
            "10.200.1.2:33000",
            "10.200.0.1:33000",
            "10.200.9.9:80",
            Some("pt-up0"),
        );
        assert_eq!(rs.attribute(&q).as_deref(), Some(rule));
        let icmp = NatQuery {
            proto: Proto::Icmp,
            ..snat(
                "10.200.1.2:7",
                "10.200.0.1:7",
                "10.200.9.9:0",
                Some("pt-up0"),
            )
        };
        assert_eq!(rs.attribute(&icmp).as_deref(), Some(rule));
        let q = snat(
            "10.200.1.2:33000",
            "10.200.0.1:33000",
            "10.200.9.9:80",
            Some("pt-br0"),
        );
        assert_eq!(rs.attribute(&q), None, "wrong out iface");
        let q = snat(
            "10.200.2.2:33000",
            "10.200.0.1:33000",
            "10.200.9.9:80",
            Some("pt-up0"),
        );
        assert_eq!(rs.attribute(&q), None, "wrong source subnet");
    }

    #[test]
    fn snat_range_must_hold_the_new_source() {
        let text =
            "-A POSTROUTING -o eth+ -p udp -j SNAT --to-source 203.0.113.1-203.0.113.4:1000-2000\n\
                    -A POSTROUTING -o eth+ -j SNAT --to-source 203.0.113.9";
        let rs = NatRuleset::new(parse_iptables_save(SOURCE_IPTABLES_NFT, Family::Ip, text));
        let udp = |after: &str| NatQuery {
            proto: Proto::Udp,
            ..snat("10.0.0.2:5000", after, "198.51.100.1:53", Some("eth3"))
        };
        assert!(rs
            .attribute(&udp("203.0.113.3:1500"))
            .is_some_and(|t| t.contains("1000-2000")));
        // The first rule surely matched but would not give this address: nothing else ran.
        assert_eq!(rs.attribute(&udp("203.0.113.9:1500")), None);
        assert_eq!(rs.attribute(&udp("203.0.113.3:999")), None);
        let tcp = snat(
            "10.0.0.2:5000",
            "203.0.113.9:5000",
            "198.51.100.1:53",
            Some("eth3"),
        );
        assert!(rs
            .attribute(&tcp)
            .is_some_and(|t| t.ends_with("203.0.113.9")));
    }

    #[test]
    fn ip6tables_rules_apply_to_v6_only() {
        let text = "-A POSTROUTING -o eth0 -j MASQUERADE\n\
                    -A PREROUTING -d fd00::/64 -p tcp -j DNAT --to-destination [fd00::9]:80";
        let rs = NatRuleset::new(parse_iptables_save(SOURCE_IP6TABLES_NFT, Family::Ip6, text));
        let v4 = snat(
            "10.0.0.2:5000",
            "192.0.2.1:5000",
            "198.51.100.1:80",
            Some("eth0"),
        );
        assert_eq!(rs.attribute(&v4), None);
        let v6 = snat(
            "[fd01::2]:5000",
            "[2001:db8::1]:5000",
            "[2001:db8:9::1]:80",
            Some("eth0"),
        );
        assert_eq!(
            rs.attribute(&v6).as_deref(),
            Some("-A POSTROUTING -o eth0 -j MASQUERADE")
        );
        let d = dnat(
            "[fd00::5]:8080",
            "[fd00::9]:80",
            "[2001:db8:9::1]:4000",
            Some("eth0"),
        );
        assert!(rs.attribute(&d).is_some_and(|t| t.contains("[fd00::9]:80")));
    }

    #[test]
    fn nft_ruleset_parses_nat_chains_only() {
        let rs = nft();
        let texts: Vec<_> = rs.rules().into_iter().map(|r| r.text).collect();
        assert!(texts.contains(
            &"table ip nat chain POSTROUTING: oifname != \"docker0\" ip saddr 172.17.0.0/16 counter masquerade # handle 3".to_string()
        ));
        assert!(texts.contains(&"table inet lab chain post: type nat hook postrouting priority srcnat + 5; policy accept;".to_string()));
        assert!(
            !texts.iter().any(|t| t.contains("chain FORWARD")),
            "filter chains are not NAT"
        );
        assert!(
            !texts.iter().any(|t| t.contains("chain unused")),
            "unreachable chain"
        );
        assert!(
            !texts.iter().any(|t| t.contains("192.0.2.1,")),
            "set elements are not rules"
        );
        assert!(rs.rules().iter().all(|r| r.source == "nftables"));
    }

    #[test]
    fn nft_attribution() {
        let rs = nft();
        // Docker's masquerade, as iptables-nft wrote it, runs first (priority 100 < 105).
        let q = snat(
            "172.17.0.2:40000",
            "192.0.2.10:40000",
            "198.51.100.7:443",
            Some("eth0"),
        );
        assert!(rs
            .attribute(&q)
            .is_some_and(|t| t.starts_with("table ip nat chain POSTROUTING:")));
        let q = snat(
            "10.0.0.5:40000",
            "192.0.2.10:40000",
            "198.51.100.7:443",
            Some("eth0"),
        );
        assert_eq!(
            rs.attribute(&q).as_deref(),
            Some("table inet lab chain post: ip saddr 10.0.0.0/24 oifname != \"br0\" masquerade # handle 5")
        );
        let q = snat(
            "10.1.0.5:40000",
            "203.0.113.15:25000",
            "198.51.100.7:443",
            Some("eth1"),
        );
        assert!(rs.attribute(&q).is_some_and(|t| t.contains("# handle 6")));
        // Outside the snat range: handles 7 and 8 use unknown matches (named set, ct) and never match.
        let q = snat(
            "10.1.0.5:40000",
            "203.0.113.99:25000",
            "198.51.100.7:443",
            Some("eth1"),
        );
        assert_eq!(rs.attribute(&q), None);
        let q = snat(
            "10.0.0.5:40000",
            "192.0.2.10:40000",
            "198.51.100.7:443",
            Some("br0"),
        );
        assert_eq!(rs.attribute(&q), None);
        // Prerouting: jump into `published`.
        let q = dnat(
            "192.0.2.10:8080",
            "172.17.0.2:80",
            "198.51.100.7:50000",
            Some("eth0"),
        );
        assert!(rs.attribute(&q).is_some_and(|t| t.contains("# handle 13")));
        let q = dnat(
            "192.0.2.10:8080",
            "172.17.0.2:80",
            "198.51.100.7:50000",
            Some("br0"),
        );
        assert_eq!(rs.attribute(&q), None, "returned before the dnat");
        let q = NatQuery {
            proto: Proto::Udp,
            ..dnat(
                "192.0.2.10:5353",
                "192.0.2.10:5300",
                "198.51.100.7:50000",
                Some("eth0"),
            )
        };
        assert!(rs
            .attribute(&q)
            .is_some_and(|t| t.contains("redirect to :5300")));
    }

    #[test]
    fn iptables_nft_chains_are_not_listed_twice() {
        let managed: HashSet<(Family, String)> = iptables_chain_names(DOCKER)
            .map(|c| (Family::Ip, c.to_string()))
            .collect();
        let rules = parse_nft_ruleset(NFT, &managed);
        assert!(rules.iter().all(|r| r.table != "nat"), "{rules:#?}");
        assert!(rules.iter().any(|r| r.table == "lab"));
        // An ip6 table named nat is another family: kept.
        let managed6: HashSet<_> = [(Family::Ip6, "POSTROUTING".to_string())].into();
        let rules = parse_nft_ruleset(NFT, &managed6);
        assert!(rules.iter().any(|r| r.table == "nat"));
    }

    #[test]
    fn from_rules_round_trips() {
        let mut parsed = parse_iptables_save(SOURCE_IPTABLES_NFT, Family::Ip, DOCKER);
        parsed.extend(parse_nft_ruleset(NFT, &HashSet::new()));
        let original = NatRuleset::new(parsed);
        let replayed = NatRuleset::from_rules(&original.rules());
        assert_eq!(original.parsed(), replayed.parsed());
        let q = dnat(
            "192.0.2.10:8080",
            "172.17.0.2:80",
            "198.51.100.7:50000",
            Some("eth0"),
        );
        assert_eq!(original.attribute(&q), replayed.attribute(&q));
        assert!(replayed.attribute(&q).is_some());
        // Unknown sources are kept but never match.
        let odd = NatRuleset::from_rules(&[NatRule {
            source: "pf".into(),
            text: "nat on em0 from 10.0.0.0/8 to any -> (em0)".into(),
        }]);
        assert_eq!(odd.rules().len(), 1);
        assert_eq!(odd.attribute(&q), None);
    }

    #[test]
    fn small_parsers() {
        assert_eq!(
            parse_nat_range("[fd00::1]-[fd00::5]:100-200"),
            Some(NatRange {
                addrs: Some(("fd00::1".parse().unwrap(), "fd00::5".parse().unwrap())),
                ports: Some((100, 200)),
            })
        );
        assert_eq!(
            parse_nat_range(":8080").map(|r| (r.addrs, r.ports)),
            Some((None, Some((8080, 8080))))
        );
        assert!(parse_nat_range("fd00::1").is_some_and(|r| r.ports.is_none()));
        assert!(Net::parse("10.1.0.0/255.0.255.0")
            .is_some_and(|n| n.contains("10.9.0.7".parse().unwrap())));
        assert!(Net::parse("10.1.0.0/255.255.0.0").is_some_and(|n| matches!(n, Net::Range { .. })));
        assert!(Net::parse("0.0.0.0/0").is_some_and(|n| n.contains("203.0.113.1".parse().unwrap())));
        assert_eq!(Net::parse("10.0.0.0/33"), None);
        assert_eq!(
            parse_nft_chain_header("type nat hook output priority -100; policy accept;"),
            Some(BaseChain {
                hook: Hook::Output,
                priority: -100
            })
        );
        assert_eq!(
            parse_nft_chain_header("type filter hook forward priority filter;"),
            None
        );
        assert_eq!(
            split_words(r#"-m comment --comment "a \"b\" c" -j X"#)[3],
            r#"a "b" c"#
        );
        assert_eq!(parse_port_range("1000:"), Some((1000, 65535)));
    }

    #[test]
    fn garbage_never_panics() {
        const PIECES: &[&str] = &[
            "-A",
            "POSTROUTING",
            "!",
            "-s",
            "-d",
            "-o",
            "-i",
            "-p",
            "tcp",
            "-m",
            "--dport",
            "-j",
            "DNAT",
            "SNAT",
            "--to-source",
            "--to-destination",
            "MASQUERADE",
            "1.2.3.4:",
            "[::1]-",
            ":-",
            "10.0.0.0/99",
            "\"",
            "\\",
            "{",
            "}",
            "#",
            "ip",
            "saddr",
            "daddr",
            "!=",
            "snat",
            "dnat",
            "to",
            "masquerade",
            "jump",
            "goto",
            "table",
            "chain",
            "type",
            "nat",
            "hook",
            "priority",
            "srcnat",
            "+",
            ";",
            "counter",
            "packets",
            "th",
            "dport",
            "fib",
            "meta",
            "l4proto",
            "€",
            "",
            "65536",
            "0-",
            "ip6",
            "redirect",
            "NETMAP",
            "--to",
            "\n",
        ];
        // A fixed xorshift sequence: reproducible noise.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let queries = [
            snat("10.0.0.2:1", "1.2.3.4:2", "5.6.7.8:3", Some("eth0")),
            dnat("10.0.0.2:1", "1.2.3.4:2", "5.6.7.8:3", None),
            snat("[::1]:1", "[::2]:2", "[::3]:3", None),
        ];
        for _ in 0..2000 {
            let n = (next() % 24) as usize;
            let line: Vec<&str> = (0..n)
                .map(|_| PIECES[(next() % PIECES.len() as u64) as usize])
                .collect();
            let line = line.join(if next() % 3 == 0 { "" } else { " " });
            let mut rules = parse_iptables_save(SOURCE_IPTABLES_NFT, Family::Ip, &line);
            rules.extend(parse_nft_ruleset(
                &format!("table ip t {{\nchain c {{\n{line}\n}}\n}}"),
                &HashSet::new(),
            ));
            rules.extend(parse_nft_ruleset(&line, &HashSet::new()));
            let rs = NatRuleset::new(rules);
            let back = NatRuleset::from_rules(&rs.rules());
            for q in &queries {
                // Only "does not panic" is asserted here.
                drop(rs.attribute(q));
                drop(back.attribute(q));
            }
        }
    }

    #[test]
    fn jump_loops_end() {
        let text = "-A POSTROUTING -j A\n-A A -j B\n-A B -j A\n-A POSTROUTING -j MASQUERADE";
        let rs = NatRuleset::new(parse_iptables_save(SOURCE_IPTABLES_NFT, Family::Ip, text));
        let q = snat("10.0.0.2:1", "1.2.3.4:2", "5.6.7.8:3", Some("eth0"));
        assert_eq!(
            rs.attribute(&q).as_deref(),
            Some("-A POSTROUTING -j MASQUERADE")
        );
    }
}
