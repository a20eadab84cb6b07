//! The NAT rules in force, read from every style users run, and the rule that made an observed
//! rewrite.
//!
//! [`snapshot`] reads the `nat` table through iptables-nft, iptables-legacy (and both ip6tables),
//! all with `-t nat -S -v`, native nftables with `nft -a list ruleset`, and `ipset save`, in the
//! calling thread's network namespace (wrap it in [`super::netns::Netns::run`] for another one).
//! Every rule keeps its text as the tool printed it, counters left out (`-c N M` goes,
//! `counter packets N bytes M` prints as `counter`), so that it does not change as the rule
//! counts; the counters are kept apart ([`ParsedRule::counter`], [`NatRuleset::counters_now`]).
//! [`NatRuleset`] also parses the text, resolving named sets, and answers
//! [`RuleAttributor::attribute`] by walking the chains the way netfilter does for the first
//! packet of a connection: a rule, or the candidates and why it cannot choose.
//!
//! iptables-nft stores its rules in nftables tables (`ip nat`, `ip6 nat`), so `nft list ruleset`
//! shows them a second time. A chain iptables-nft listed is taken from the iptables text only;
//! `nft` contributes the chains of other tables, and chains of those tables iptables did not list.
//!
//! One file per subject: [`read`] runs the tools; [`iptables`] (`-S` lines) and [`nft`] (ruleset
//! lines) parse their text into the rule model of [`model`]; [`eval`] walks it. This file is the
//! ruleset and its answers.

mod eval;
mod iptables;
mod model;
mod nft;
mod read;
#[cfg(test)]
mod tests;

use std::net::IpAddr;

use crate::model::{Attribution, NatQuery, NatRule, RuleAttributor, RuleConfidence};

pub use iptables::parse_iptables_save;
pub use model::{Family, ParsedRule, Sets};
pub use read::snapshot;

use model::{index_tables, Body, TableIndex};
use nft::nft_line;

/// [`NatRule::source`] of rules read with `iptables` on nf_tables.
pub const SOURCE_IPTABLES_NFT: &str = "iptables-nft";
/// [`NatRule::source`] of rules read with `ip6tables` on nf_tables.
pub(crate) const SOURCE_IP6TABLES_NFT: &str = "ip6tables-nft";
/// [`NatRule::source`] of rules read with `iptables-legacy`.
pub(crate) const SOURCE_IPTABLES_LEGACY: &str = "iptables-legacy";
/// [`NatRule::source`] of rules read with `ip6tables-legacy`.
pub(crate) const SOURCE_IP6TABLES_LEGACY: &str = "ip6tables-legacy";
/// [`NatRule::source`] of native nftables rules (`nft list ruleset`).
pub const SOURCE_NFTABLES: &str = "nftables";

#[derive(Debug, thiserror::Error)]
pub enum NatRulesError {
    /// Every NAT tool present failed (typically: not root).
    #[error("no NAT ruleset could be read: {}", .0.join("; "))]
    Unreadable(Vec<String>),
}

/// [`NatRule::source`] of the snapshot's entry for an ipset's members (`NAME: M1, M2`).
const SOURCE_IPSET: &str = "ipset";
/// [`NatRule::source`] of the snapshot's entry for an nftables set or map (`table ip T set S:
/// E1, E2`).
const SOURCE_NFT_SET: &str = "nftables-set";
/// [`NatRule::source`] of the snapshot's entry for the host's own addresses (`-m addrtype
/// --src-type LOCAL`, `fib saddr type local`).
const SOURCE_HOST_ADDRS: &str = "host-addresses";

/// The NAT ruleset of one network namespace, in the order the tools printed it, with the named
/// sets its rules refer to and the host's own addresses.
#[derive(Clone, Debug, Default)]
pub struct NatRuleset {
    rules: Vec<ParsedRule>,
    tables: Vec<TableIndex>,
    sets: Sets,
    local_addrs: Vec<IpAddr>,
}

impl NatRuleset {
    #[cfg(test)]
    pub(crate) fn new(rules: Vec<ParsedRule>) -> Self {
        Self::with(rules, Sets::default(), Vec::new())
    }

    pub(crate) fn with(rules: Vec<ParsedRule>, sets: Sets, local_addrs: Vec<IpAddr>) -> Self {
        let tables = index_tables(&rules);
        Self {
            rules,
            tables,
            sets,
            local_addrs,
        }
    }

    /// Rebuilds a ruleset from a snapshot's rules (replay on another machine): parses the text
    /// again, with the sets and addresses the snapshot holds. Rules of an unknown source or that
    /// do not parse are kept but never match.
    pub fn from_rules(rules: &[NatRule]) -> Self {
        let mut sets = Sets::default();
        let mut local = Vec::new();
        for r in rules {
            let (head, items) = r.text.split_once(": ").unwrap_or((&r.text, ""));
            let items: Vec<String> = items
                .split(", ")
                .filter(|i| !i.is_empty())
                .map(str::to_string)
                .collect();
            match r.source.as_str() {
                SOURCE_IPSET => {
                    sets.ipsets.insert(head.to_string(), items);
                }
                SOURCE_NFT_SET => {
                    if let ["table", fam, table, "set", name] =
                        head.split_whitespace().collect::<Vec<_>>().as_slice()
                    {
                        if let Some(family) = Family::from_nft(fam) {
                            sets.nft
                                .insert((family, table.to_string(), name.to_string()), items);
                        }
                    }
                }
                SOURCE_HOST_ADDRS => {
                    local.extend(items.iter().filter_map(|a| a.parse::<IpAddr>().ok()));
                }
                _ => {}
            }
        }
        let parsed = rules
            .iter()
            .filter(|r| {
                ![SOURCE_IPSET, SOURCE_NFT_SET, SOURCE_HOST_ADDRS].contains(&r.source.as_str())
            })
            .map(|r| parse_nat_rule(r, &sets))
            .collect();
        Self::with(parsed, sets, local)
    }

    /// How many rules each tool printed (`iptables-nft`, `iptables-legacy`, `nftables`).
    pub(crate) fn rules_per_tool(&self) -> std::collections::BTreeMap<String, usize> {
        let mut out = std::collections::BTreeMap::new();
        for r in &self.rules {
            *out.entry(r.to_nat_rule().source).or_default() += 1;
        }
        out
    }

    /// The rules for the topology snapshot, in order, then the sets and the host's addresses
    /// (what [`NatRuleset::from_rules`] needs to evaluate them the same way).
    pub fn rules(&self) -> Vec<NatRule> {
        let mut out: Vec<NatRule> = self.rules.iter().map(ParsedRule::to_nat_rule).collect();
        let mut ipsets: Vec<_> = self.sets.ipsets.iter().collect();
        ipsets.sort();
        for (name, members) in ipsets {
            out.push(NatRule {
                source: SOURCE_IPSET.into(),
                text: format!("{name}: {}", members.join(", ")),
            });
        }
        let mut nft: Vec<_> = self.sets.nft.iter().collect();
        nft.sort_by(|a, b| {
            (a.0 .1.as_str(), a.0 .2.as_str()).cmp(&(b.0 .1.as_str(), b.0 .2.as_str()))
        });
        for ((family, table, name), elements) in nft {
            out.push(NatRule {
                source: SOURCE_NFT_SET.into(),
                text: format!(
                    "table {} {table} set {name}: {}",
                    family.as_nft(),
                    elements.join(", ")
                ),
            });
        }
        if !self.local_addrs.is_empty() {
            let addrs: Vec<String> = self.local_addrs.iter().map(IpAddr::to_string).collect();
            out.push(NatRule {
                source: SOURCE_HOST_ADDRS.into(),
                text: format!("local: {}", addrs.join(", ")),
            });
        }
        out
    }

    /// The rule the walk decided for `query` (not a candidate): what most tests check.
    #[cfg(test)]
    pub(crate) fn rule_for(&self, query: &NatQuery<'_>) -> Option<String> {
        self.attribute(query).and_then(|a| a.rule)
    }

    /// Each rule's packet counter as the tools print it now, by reading the ruleset again (in
    /// the calling thread's namespace); `None` for a rule without a counter, or gone.
    pub(crate) fn counters_now(&self) -> Result<Vec<Option<u64>>, NatRulesError> {
        let now = snapshot()?;
        let mut by_text: std::collections::HashMap<
            (String, String),
            std::collections::VecDeque<Option<u64>>,
        > = std::collections::HashMap::new();
        for r in &now.rules {
            by_text
                .entry((r.source.clone(), r.full_text()))
                .or_default()
                .push_back(r.counter);
        }
        Ok(self
            .rules
            .iter()
            .map(|r| {
                by_text
                    .get_mut(&(r.source.clone(), r.full_text()))
                    .and_then(std::collections::VecDeque::pop_front)
                    .flatten()
            })
            .collect())
    }

    /// The index of the rule with this text (as attributions name it).
    pub(crate) fn index_of(&self, text: &str) -> Option<usize> {
        self.rules.iter().position(|r| r.full_text() == text)
    }

    pub(crate) fn parsed(&self) -> &[ParsedRule] {
        &self.rules
    }

    /// The attribution of `query` with its rules by index (for `inspect`), the decided one (the
    /// rule that surely matches, after candidates that may) last.
    pub(crate) fn attribute_rules(
        &self,
        query: &NatQuery<'_>,
    ) -> Option<(Attribution, Vec<usize>, Option<usize>)> {
        let v = self.attribute_index(query)?;
        let text = |i: usize| self.rules[i].full_text();
        let mut all = v.candidates.clone();
        all.extend(v.chosen);
        let attribution = match (v.chosen, v.candidates.is_empty()) {
            (Some(i), true) => Attribution::evaluated(text(i)),
            _ => {
                let mut why = v.why.clone();
                why.dedup();
                Attribution {
                    rule: None,
                    confidence: RuleConfidence::Candidates,
                    candidates: all.iter().map(|&i| text(i)).collect(),
                    why: Some(why.join("; ")),
                }
            }
        };
        Some((attribution, all, v.chosen))
    }
}

impl RuleAttributor for NatRuleset {
    /// Unknown interfaces (`None` in the query) may match any `-i`/`-o`; a rule that matches
    /// only maybe is a candidate, and the walk goes on to the next one that could make the
    /// rewrite, until one that surely matches (the kernel would have applied that one).
    fn attribute(&self, query: &NatQuery<'_>) -> Option<Attribution> {
        self.attribute_rules(query).map(|(a, _, _)| a)
    }
}

/// Parses a [`NatRule`] from a snapshot back into a [`ParsedRule`].
fn parse_nat_rule(rule: &NatRule, sets: &Sets) -> ParsedRule {
    let text = rule.text.trim();
    if let Some(family) = Family::of_iptables_source(&rule.source) {
        if let Some(parsed) = parse_iptables_save(&rule.source, family, text, sets).pop() {
            return parsed;
        }
    } else if rule.source == SOURCE_NFTABLES {
        if let Some((ctx, line)) = text.split_once(": ") {
            if let ["table", fam, table, "chain", chain] =
                ctx.split_whitespace().collect::<Vec<_>>().as_slice()
            {
                if let Some(family) = Family::from_nft(fam) {
                    return nft_line(family, table, chain, ctx, line.trim(), sets);
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
        counter: None,
    }
}
