//! `pathtrace doctor`: one screen of what this host offers and what pathtrace will use, each
//! item ok, fallback or missing, with the fix. Exit 0 when tracing can work, 1 when it cannot.

use std::{path::Path, process::ExitCode};

use aya::util::KernelVersion;

use crate::discover::{btf::Btf, nat_rules};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Status {
    Ok,
    /// Works, with less (said how).
    Fallback,
    /// Not here; `blocks` when tracing cannot work without it.
    Missing {
        blocks: bool,
    },
}

struct Item {
    what: &'static str,
    status: Status,
    detail: String,
}

fn item(what: &'static str, status: Status, detail: impl Into<String>) -> Item {
    Item {
        what,
        status,
        detail: detail.into(),
    }
}

pub(super) fn run() -> anyhow::Result<ExitCode> {
    let items = checks();
    let mut out = String::new();
    for i in &items {
        let status = match i.status {
            Status::Ok => "ok",
            Status::Fallback => "fallback",
            Status::Missing { .. } => "missing",
        };
        out.push_str(&format!("{:<20} {status:<9} {}\n", i.what, i.detail));
    }
    let blocked: Vec<&str> = items
        .iter()
        .filter(|i| i.status == Status::Missing { blocks: true })
        .map(|i| i.what)
        .collect();
    out.push_str(&match blocked.is_empty() {
        true => "tracing can work here\n".to_string(),
        false => format!("tracing cannot work here: {}\n", blocked.join(", ")),
    });
    super::print(&out)?;
    Ok(if blocked.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn checks() -> Vec<Item> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let kernel = KernelVersion::current().ok();
    let at_least = |a, b| kernel.is_some_and(|v| v >= KernelVersion::new(a, b, 0));
    let mut items = vec![item("kernel", Status::Ok, release.trim())];
    items.push(match super::require_privileges() {
        Ok(()) => item(
            "privileges",
            Status::Ok,
            "CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN",
        ),
        Err(e) => item(
            "privileges",
            Status::Missing { blocks: true },
            e.to_string(),
        ),
    });
    items.push(match crate::attach::object_bytes().is_empty() {
        false => item("kernel programs", Status::Ok, "built into this binary"),
        true => item(
            "kernel programs",
            Status::Missing { blocks: true },
            "this binary was built without them: build with PATHTRACE_BUILD_EBPF=1 (cargo xtask build)",
        ),
    });
    items.push(match at_least(5, 8) {
        true => item("ring buffer", Status::Ok, "BPF ring buffer (5.8+)"),
        false => item(
            "ring buffer",
            Status::Missing { blocks: true },
            "needs kernel 5.8 or later",
        ),
    });
    items.push(match at_least(6, 6) {
        true => item("tc attach", Status::Ok, "TCX links (6.6+); --tc-mode netlink also works"),
        false => item(
            "tc attach",
            Status::Fallback,
            "netlink clsact filters (TCX needs 6.6); `pathtrace cleanup` removes them after a kill -9",
        ),
    });
    items.push(match at_least(5, 11) {
        true => item(
            "BPF memory",
            Status::Ok,
            "charged to the memory cgroup (5.11+)",
        ),
        false => item(
            "BPF memory",
            Status::Fallback,
            "charged against RLIMIT_MEMLOCK (before 5.11): pathtrace raises it at load",
        ),
    });
    let btf = Btf::vmlinux();
    items.push(match &btf {
        Ok(_) => item("BTF", Status::Ok, "/sys/kernel/btf/vmlinux"),
        Err(e) => item(
            "BTF",
            Status::Fallback,
            format!("{e}: no drop reasons (a kernel built with CONFIG_DEBUG_INFO_BTF has them)"),
        ),
    });
    items.push(match btf.as_ref().map(Btf::drop_reasons) {
        Ok(Ok(r)) => item(
            "drop reasons",
            Status::Ok,
            format!(
                "kfree_skb with the kernel's enum skb_drop_reason ({} reasons)",
                r.names.len()
            ),
        ),
        Ok(Err(e)) => item(
            "drop reasons",
            Status::Fallback,
            format!("{e} (kernels before 5.17 report none): drops are not named"),
        ),
        Err(_) => item(
            "drop reasons",
            Status::Fallback,
            "no BTF: drops are not named",
        ),
    });
    items.push(nat_item());
    items.push(
        match Path::new("/proc/sys/net/netfilter/nf_conntrack_max").exists() {
            true => item("conntrack", Status::Ok, "loaded: NAT steps are confirmed against it"),
            false => item(
                "conntrack",
                Status::Fallback,
                "nf_conntrack not loaded (no NAT here, or `modprobe nf_conntrack`): NAT steps are not confirmed",
            ),
        },
    );
    items.push(runtimes_item());
    items
}

fn nat_item() -> Item {
    match nat_rules::snapshot() {
        Ok(set) => {
            let tools: Vec<String> = set
                .rules_per_tool()
                .into_iter()
                .map(|(tool, n)| format!("{n} by {tool}"))
                .collect();
            let detail = match tools.is_empty() {
                true => "no NAT rules in this namespace".to_string(),
                false => format!("NAT rules read: {}", tools.join(", ")),
            };
            item("NAT rules", Status::Ok, detail)
        }
        Err(e) => item(
            "NAT rules",
            Status::Fallback,
            format!("{e}: NAT steps are shown without their rule (install iptables or nftables)"),
        ),
    }
}

/// The runtimes `--container` and `--pod` would look in: those that answer (asked the way a
/// trace asks them), and what was found of the others.
fn runtimes_item() -> Item {
    let answer = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| {
            rt.block_on(crate::runtime::connect(
                &crate::runtime::Endpoints::default(),
            ))
            .map_err(anyhow::Error::from)
        });
    match answer {
        Ok(r) => {
            let mut detail = r.answering().join(", ");
            for why in r.absent() {
                detail.push_str(&format!("; {why}"));
            }
            item("runtimes", Status::Ok, detail)
        }
        Err(e) => item(
            "runtimes",
            Status::Fallback,
            format!(
                "{}: --container and --pod need one; --netns works without",
                crate::one_line(&e)
            ),
        ),
    }
}
