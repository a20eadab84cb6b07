//! Running the tools that print the NAT table: `iptables`/`ip6tables` on nf_tables and legacy
//! (`-t nat -S`), and `nft -a -s list ruleset`, all at once.

use std::{
    collections::HashSet,
    fs, io,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use super::{
    iptables::{iptables_chain_names, parse_iptables_save},
    model::{Family, Sets},
    nft::parse_nft_ruleset,
    NatRulesError, NatRuleset, SOURCE_IP6TABLES_LEGACY, SOURCE_IP6TABLES_NFT,
    SOURCE_IPTABLES_LEGACY, SOURCE_IPTABLES_NFT,
};

/// Where binaries are looked for when they are not on `PATH` (a non-root `PATH` lacks sbin).
const SBIN_DIRS: [&str; 2] = ["/usr/sbin", "/sbin"];
/// Reads the NAT ruleset in force in the calling thread's network namespace.
///
/// A tool that is not installed contributes nothing; one that fails is logged and skipped. Fails
/// only when every tool present failed.
pub fn snapshot() -> Result<NatRuleset, NatRulesError> {
    // Each tool is a separate process that mostly waits on the kernel: run them all at once (one
    // thread per iptables family and backend, one for nft) instead of one after another.
    // With counters (`-v`, and `nft` without `-s`): the parsers keep them out of the rule text.
    let (listings, nft, ipsets) = std::thread::scope(|scope| {
        let nft = scope.spawn(|| run_tool(Path::new("nft"), &["-a", "list", "ruleset"]));
        let ipsets = scope.spawn(|| run_tool(Path::new("ipset"), &["save"]));
        let listings: Vec<_> = iptables_candidates()
            .into_iter()
            .map(|c| scope.spawn(move || c.list()))
            .collect();
        let listings: Vec<_> = listings.into_iter().map(join_tool).collect();
        (listings, join_tool(nft), join_tool(ipsets))
    });

    let mut sets = Sets::default();
    match ipsets {
        Ok(Some(out)) => sets.read_ipset_save(&out),
        Ok(None) => {}
        // Rules that match an ipset then say they could not be decided.
        Err(msg) => tracing::warn!("ipsets not read: {msg}"),
    }
    let mut rules = Vec::new();
    let mut failures = Vec::new();
    let mut tried = 0usize;
    // (family, chain) of the `nat` table chains iptables-nft listed: `nft` shows them again.
    let mut listed_by_iptables_nft = HashSet::new();

    for (tool, listed) in listings.into_iter().flatten() {
        tried += 1;
        match listed {
            Ok(Some(out)) => {
                let parsed = parse_iptables_save(tool.source, tool.family, &out, &sets);
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
            rules.extend(parse_nft_ruleset(&out, &listed_by_iptables_nft, &mut sets));
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
    Ok(NatRuleset::with(rules, sets, local_addrs()))
}

/// The host's own addresses (what `-m addrtype --src-type LOCAL` and `fib saddr type local`
/// match), in the calling thread's namespace; empty when they cannot be read.
fn local_addrs() -> Vec<std::net::IpAddr> {
    match crate::discover::rtnl::Rtnl::open().and_then(|mut r| r.addrs()) {
        Ok(addrs) => addrs.into_iter().map(|a| a.addr).collect(),
        Err(e) => {
            tracing::warn!(
                "the host's addresses could not be read ({e}); address-type matches stay undecided"
            );
            Vec::new()
        }
    }
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
        let listed = run_tool(&bin, &["-t", "nat", "-S", "-v"]);
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
