//! iptables rule text (`iptables -t nat -S` lines) into the rule model.

use super::model::{
    parse_nat_range, parse_port_range, proto_number, Action, AddrKind, Body, Cond, Family,
    NatRange, NatTarget, Net, ParsedRule, Rule, Sets, PORT_PROTOS,
};

/// Parses `iptables -t nat -S [-v]` output: one rule per `-A` line (policies and `-N` lines are
/// not rules; chains come from the `-A` lines). With `-v` each line carries its counters
/// (`-c PACKETS BYTES`): they are read into [`ParsedRule::counter`] and left out of the text.
/// `-m set` matches are resolved against `sets` (ipset).
pub fn parse_iptables_save(
    source: &str,
    family: Family,
    text: &str,
    sets: &Sets,
) -> Vec<ParsedRule> {
    text.lines()
        .map(str::trim)
        .filter(|l| l.starts_with("-A ") || l.starts_with("--append "))
        .map(|line| {
            let (line, counter) = strip_counters(line);
            let (chain, body) = match parse_iptables_rule(&line, sets) {
                Some((chain, rule)) => (chain, Body::Rule(rule)),
                None => (String::new(), Body::Unparsed),
            };
            ParsedRule {
                source: source.to_string(),
                family,
                table: "nat".to_string(),
                chain,
                context: None,
                text: line,
                body,
                counter,
            }
        })
        .collect()
}

/// The line without its ` -c PACKETS BYTES` (what `-S -v` adds), and the packets.
pub(super) fn strip_counters(line: &str) -> (String, Option<u64>) {
    let words: Vec<&str> = line.split(' ').collect();
    let at = words
        .windows(3)
        .position(|w| w[0] == "-c" && w[1].parse::<u64>().is_ok() && w[2].parse::<u64>().is_ok());
    match at {
        Some(i) => {
            let packets = words[i + 1].parse().ok();
            let mut kept = words[..i].to_vec();
            kept.extend(&words[i + 3..]);
            (kept.join(" "), packets)
        }
        None => (line.to_string(), None),
    }
}

/// Names of the chains an `iptables -S` listing shows (`-P`, `-N` and `-A` lines).
pub(super) fn iptables_chain_names(text: &str) -> impl Iterator<Item = &str> {
    text.lines().filter_map(|l| {
        let mut w = l.split_whitespace();
        match w.next() {
            Some("-P" | "-N" | "-A") => w.next(),
            _ => None,
        }
    })
}

/// Splits a line into words; `"..."` groups (with `\"` and `\\` escapes) form one word.
pub(super) fn split_words(line: &str) -> Vec<String> {
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
pub(super) fn parse_iptables_rule(line: &str, sets: &Sets) -> Option<(String, Rule)> {
    let words = split_words(line);
    let mut it = words.iter().map(String::as_str);
    if !matches!(it.next(), Some("-A" | "--append")) {
        return None;
    }
    let chain = it.next()?.to_string();
    let mut conds = Vec::new();
    let mut action = Action::None;
    let mut neg = false;
    // The match module whose options follow (`-m mark --mark ...`).
    let mut module = "";
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
                module = it.next()?; // the module's options follow and are parsed one by one
                neg = false;
                continue;
            }
            "--mark" if matches!(module, "mark" | "connmark") => {
                let v = it.next()?;
                let bang = if neg { "! " } else { "" };
                Cond::Mark {
                    what: format!("-m {module} {bang}--mark {v}"),
                    conn: module == "connmark",
                }
            }
            "--match-set" => {
                let (name, dirs) = (it.next()?, it.next()?);
                match (sets.ipset(name), dirs) {
                    (Some(nets), "src" | "dst") => Cond::Addr {
                        src: dirs == "src",
                        neg,
                        v6: nets.first().is_some_and(Net::v6),
                        nets,
                    },
                    (None, _) => Cond::Unknown(format!(
                        "-m set --match-set {name} {dirs} (ipset {name} could not be read)"
                    )),
                    (Some(_), _) => Cond::Unknown(format!("-m set --match-set {name} {dirs}")),
                }
            }
            "--ctstate" | "--state" if matches!(module, "conntrack" | "state") => {
                let v = it.next()?;
                // NAT rules only see a connection's first packet: NEW holds, others do not.
                let states: Vec<&str> = v.split(',').collect();
                let new = states.contains(&"NEW");
                match (neg, new) {
                    (false, true) => Cond::NewConnection,
                    (true, false) => Cond::NewConnection,
                    _ => Cond::Unknown(format!("-m {module} {w} {v}")),
                }
            }
            // Options of `-m set` that do not change which packets match.
            "--return-nomatch" | "--update-counters" | "--update-subcounters" => {
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
                let kinds: Option<Vec<AddrKind>> = v.split(',').map(AddrKind::parse).collect();
                match kinds {
                    Some(kinds) => Cond::AddrType {
                        src: w == "--src-type",
                        neg,
                        kinds,
                    },
                    None => Cond::Unknown(format!("-m addrtype {w} {v}")),
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
            other => Cond::Unknown(match module {
                "" => other.to_string(),
                m => format!("-m {m} {other}"),
            }),
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
