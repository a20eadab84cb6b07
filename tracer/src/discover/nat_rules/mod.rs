//! The NAT rules in force, read from every style users run, and the rule that made an observed
//! rewrite.
//!
//! [`snapshot`] reads the `nat` table through iptables-nft, iptables-legacy (and both ip6tables),
//! all with `-t nat -S`, and native nftables with `nft -a -s list ruleset` (`-s`: counters are left
//! out, so a rule's text does not change as it counts), in the calling thread's network namespace
//! (wrap it in [`super::netns::Netns::run`] for another one). Every rule keeps its text exactly as
//! the tool printed it; [`NatRuleset`] also parses it, and answers [`RuleAttributor::attribute`]
//! by walking the chains the way netfilter does for the first packet of a connection.
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

use crate::model::{NatQuery, NatRule, RuleAttributor};

pub use iptables::parse_iptables_save;
pub use model::{Family, ParsedRule};
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

/// The NAT ruleset of one network namespace, in the order the tools printed it.
#[derive(Clone, Debug, Default)]
pub struct NatRuleset {
    rules: Vec<ParsedRule>,
    tables: Vec<TableIndex>,
}

impl NatRuleset {
    pub(crate) fn new(rules: Vec<ParsedRule>) -> Self {
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

    pub(crate) fn parsed(&self) -> &[ParsedRule] {
        &self.rules
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
