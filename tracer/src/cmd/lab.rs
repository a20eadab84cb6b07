//! `pathtrace lab up|down|list|demo`: the built-in lab (see `crate::lab`).

use std::{io::Write as _, process::ExitCode, sync::Arc, time::Duration};

use anyhow::Context as _;

use super::{
    filter::filter_config,
    output::Output,
    trace::{ring_bytes, trace_with, Plan},
};
use crate::{
    attach::{LoadOptions, PendingTracer, TcMode},
    cli::{LabAction, TraceArgs},
    discover::{
        netns::Netns,
        path::{self, PathQuery},
    },
    lab::{Lab, LabSpec, LabTrafficOptions},
};

pub fn run(action: LabAction) -> anyhow::Result<ExitCode> {
    match action {
        LabAction::Up { name, json } => {
            let lab = Lab::up(&LabSpec { name })?;
            if json {
                println!("{}", serde_json::to_string(&lab)?);
            } else {
                print_lab(&lab);
            }
            Ok(ExitCode::SUCCESS)
        }
        LabAction::Down { name } => {
            let names: Vec<String> = match name {
                Some(n) => vec![n],
                None => Lab::list()?.into_iter().map(|l| l.name).collect(),
            };
            for n in names {
                Lab::down(&n)?;
                // A closed stdout (`| head`) must not stop the removal of the other labs.
                let _ = writeln!(std::io::stdout(), "lab {n} removed");
            }
            Ok(ExitCode::SUCCESS)
        }
        LabAction::List => {
            for lab in Lab::list()? {
                print_lab(&lab);
            }
            Ok(ExitCode::SUCCESS)
        }
        LabAction::Demo {
            json,
            tc_mode,
            duration,
        } => demo(json, tc_mode, duration),
    }
}

fn print_lab(lab: &Lab) {
    println!(
        "lab {}: container netns {} ({} {}), bridge {}, host veth {}, uplink {} ({}) -> wan netns {} ({})",
        lab.name,
        lab.ctr_netns,
        lab.ctr_ifname,
        lab.ctr_addr,
        lab.bridge,
        lab.host_veth,
        lab.uplink,
        lab.uplink_addr,
        lab.wan_netns,
        lab.wan_addr
    );
    println!("  NAT: {}", lab.masquerade_rule_text);
    println!(
        "  trace it: pathtrace --netns {} --to {}",
        lab.ctr_netns, lab.wan_addr
    );
}

/// Removes the lab on every way out of `demo`, panics included.
struct LabGuard(Option<Lab>);

impl Drop for LabGuard {
    fn drop(&mut self) {
        if let Some(lab) = self.0.take() {
            if let Err(e) = Lab::down(&lab.name) {
                eprintln!(
                    "pathtrace: removing lab {}: {e}; run `pathtrace lab down {}`",
                    lab.name, lab.name
                );
            }
        }
    }
}

fn demo(json: bool, tc_mode: TcMode, duration: Duration) -> anyhow::Result<ExitCode> {
    let guard = LabGuard(Some(Lab::up(&LabSpec::default())?));
    let lab = guard.0.as_ref().context("lab vanished")?;
    if !json {
        print_lab(lab);
        println!(
            "  sending ICMP, TCP and UDP from {} to {} for {:?}...\n",
            lab.ctr_netns, lab.wan_addr, duration
        );
    }
    let args = TraceArgs {
        netns: Some(lab.ctr_netns.clone()),
        to: Some(lab.wan_addr.into()),
        json,
        duration: Some(duration),
        tc_mode,
        snaplen: tracer_common::event::CAPTURE_DEFAULT,
        ring_size: 8192,
        max_flows: 65536,
        ..TraceArgs::default()
    };
    let found = path::discover(
        &lab.ctr_netns,
        Arc::new(Netns::by_name_or_path(&lab.ctr_netns)?),
        &PathQuery {
            iface: None,
            to: args.to,
        },
    )?;
    let plan = Plan::new(&found, found.hooks(0))?;
    let view = plan.view(&args, Output::stdout());
    let load = LoadOptions {
        filter: filter_config(&args)?,
        ring_bytes: ring_bytes(args.ring_size)?,
        kernel_log: false,
        drop_reasons: true,
    };
    let traffic = lab.start_traffic(&LabTrafficOptions::default())?;
    let rt = super::trace::runtime()?;
    let mut tracer = PendingTracer::spawn(load, tc_mode, rt.handle());
    tracer.attach(plan.targets);
    let traced = trace_with(&rt, tracer, &args, view, Default::default());
    let report = traffic.stop();
    let view = traced?;
    if !json {
        println!(
            "traffic: {} ICMP echoes ({} replies), {} TCP exchanges, {} UDP datagrams ({} echoed)",
            report.rounds.icmp_sent,
            report.rounds.icmp_replies,
            report.rounds.tcp_exchanges_ok,
            report.rounds.udp_sent,
            report.rounds.udp_received
        );
    }
    drop(guard);
    if view.final_count == 0 {
        eprintln!("pathtrace: no flow was traced; the lab traffic did not reach the hooks");
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}
