//! The NAT rules as `iptables -t nat -S` prints them: the ground truth a NAT step's `rule` text
//! is checked against.

use anyhow::{Context, Result};

use super::wan::run;

pub(crate) fn nat_lines() -> Result<Vec<String>> {
    Ok(run("iptables", &["-w", "-t", "nat", "-S"])?
        .lines()
        .map(str::to_string)
        .collect())
}

/// The MASQUERADE line of a chain that a POSTROUTING line `jump` accepts jumps to (CNI's
/// `-s POD/32 -j CNI-<hash>`, netavark's `-s SUBNET -j NETAVARK-<hash>`).
pub(crate) fn masquerade_behind(what: &str, jump: impl Fn(&str) -> bool) -> Result<String> {
    let lines = nat_lines()?;
    let chains: Vec<&str> = lines
        .iter()
        .filter(|l| l.starts_with("-A POSTROUTING ") && jump(l))
        .filter_map(|l| l.rsplit("-j ").next())
        .map(str::trim)
        .collect();
    lines
        .iter()
        .find(|l| {
            chains.iter().any(|c| l.starts_with(&format!("-A {c} ")))
                && l.ends_with("-j MASQUERADE")
        })
        .cloned()
        .with_context(|| format!("no {what} MASQUERADE: {lines:#?}"))
}

/// The DNAT line to `to` in a chain whose name starts with `chain_prefix` (`CNI-DN-`,
/// `NETAVARK-DN-`).
pub(crate) fn dnat_rule(chain_prefix: &str, to: &str) -> Result<String> {
    let lines = nat_lines()?;
    lines
        .iter()
        .find(|l| {
            l.starts_with(&format!("-A {chain_prefix}"))
                && l.contains("-j DNAT")
                && l.ends_with(&format!("--to-destination {to}"))
        })
        .cloned()
        .with_context(|| format!("no {chain_prefix} DNAT to {to}: {lines:#?}"))
}
