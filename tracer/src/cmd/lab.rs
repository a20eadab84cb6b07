//! `pathtrace lab up|down|list|demo`: the built-in lab (see `crate::lab`).

use std::{io::Write as _, process::ExitCode, sync::Arc, time::Duration};

use anyhow::Context as _;

use crate::{
    attach::{PendingTracer, TcMode},
    cli::LabAction,
    config::TraceConfig,
    discover::{
        netns::Netns,
        path::{self, PathQuery},
    },
    lab::{Lab, LabSpec, LabTrafficOptions},
    pipeline::{self, annotate::ConntrackConfirm, engine::Engine, plan::Plan},
    render::Output,
};

pub(super) fn run(action: LabAction) -> anyhow::Result<ExitCode> {
    match action {
        LabAction::Up { name, json } => {
            let lab = Lab::up(&LabSpec { name })?;
            if json {
                super::print(
                    &(serde_json::to_string(&LabLine {
                        kind: "lab",
                        lab: &lab,
                    })? + "\n"),
                )?;
            } else {
                super::print(&lab_text(&lab))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        LabAction::Down { name } => {
            // Without a name: the lab the last `lab up` made, never the others (another
            // user's, a test's): those are listed.
            let n = match name {
                Some(n) => n,
                None => match Lab::last_up() {
                    Some(n) => n,
                    None => {
                        let labs: Vec<String> = Lab::list()?.into_iter().map(|l| l.name).collect();
                        anyhow::ensure!(!labs.is_empty(), "there is no lab to take down");
                        anyhow::bail!(
                            "the lab the last `lab up` made is gone; name the one to take down: `pathtrace lab down NAME` (labs: {})",
                            labs.join(", ")
                        );
                    }
                },
            };
            Lab::down(&n)?;
            // A closed stdout (`| head`) is no reason to fail after the lab is down.
            if let Err(e) = writeln!(std::io::stdout(), "lab {n} removed") {
                tracing::debug!("stdout: {e}");
            }
            let others: Vec<String> = Lab::list()?.into_iter().map(|l| l.name).collect();
            if !others.is_empty() {
                super::warn(format_args!(
                    "other labs are still up (take one down with `pathtrace lab down NAME`): {}",
                    others.join(", ")
                ));
            }
            Ok(ExitCode::SUCCESS)
        }
        LabAction::List => {
            for lab in Lab::list()? {
                super::print(&lab_text(&lab))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        LabAction::Demo {
            json,
            tc_mode,
            duration,
        } => demo(json, tc_mode.into(), duration),
    }
}

/// `lab up --json`: the lab, typed like every JSON line.
#[derive(serde::Serialize)]
struct LabLine<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(flatten)]
    lab: &'a Lab,
}

/// A lab's names and addresses, and how to trace it.
fn lab_text(lab: &Lab) -> String {
    format!(
        "lab {}: container netns {} ({} {}), bridge {}, host veth {}, uplink {} ({}) -> wan netns {} ({})\n  NAT: {}\n  trace it: pathtrace --netns {} --to {}\n",
        lab.name,
        lab.ctr_netns,
        lab.ctr_ifname,
        lab.ctr_addr,
        lab.bridge,
        lab.host_veth,
        lab.uplink,
        lab.uplink_addr,
        lab.wan_netns,
        lab.wan_addr,
        lab.masquerade_rule_text,
        lab.ctr_netns,
        lab.wan_addr
    )
}

/// Removes the lab on every way out of `demo`, panics included.
struct LabGuard(Option<Lab>);

impl Drop for LabGuard {
    fn drop(&mut self) {
        if let Some(lab) = self.0.take() {
            if let Err(e) = Lab::down(&lab.name) {
                super::warn(format_args!(
                    "removing lab {}: {e}; run `pathtrace lab down {}`",
                    lab.name, lab.name
                ));
            }
        }
    }
}

fn demo(json: bool, tc_mode: TcMode, duration: Duration) -> anyhow::Result<ExitCode> {
    let guard = LabGuard(Some(Lab::up(&LabSpec::default())?));
    let lab = guard.0.as_ref().context("lab vanished")?;
    if !json {
        super::print(&format!(
            "{}  sending ICMP, TCP and UDP from {} to {} for {:?}...\n\n",
            lab_text(lab),
            lab.ctr_netns,
            lab.wan_addr,
            duration
        ))?;
    }
    let cfg = TraceConfig::lab(&lab.ctr_netns, lab.wan_addr.into(), json, duration, tc_mode)?;
    let found = path::discover(
        &lab.ctr_netns,
        Arc::new(Netns::by_name_or_path(&lab.ctr_netns)?),
        &PathQuery {
            iface: None,
            to: cfg.to,
            uplinks: cfg.uplinks.clone(),
        },
    )?;
    let plan = Plan::for_path(&found, found.hooks(0))?;
    let mut renderer = cfg
        .format
        .renderer(Output::with_status_line(Box::new(std::io::stdout())), true);
    let traffic = lab.start_traffic(&LabTrafficOptions::default())?;
    let rt = super::runtime()?;
    let mut tracer = PendingTracer::spawn(cfg.load.clone(), tc_mode, rt.handle());
    tracer.attach(plan.targets.clone());
    let mut engine = Engine::new(
        plan.topology.clone(),
        Some(plan.attributor()),
        cfg.max_flows,
        vec![Box::new(ConntrackConfirm)],
        renderer.as_mut(),
    );
    let session = super::session(&cfg, tracer, &plan, None);
    let traced = pipeline::trace(&rt, session, &mut engine, None);
    drop(engine);
    let report = traffic.stop();
    let outcome = traced?;
    if !json {
        super::print(&format!(
            "traffic: {} ICMP echoes ({} replies), {} TCP exchanges, {} UDP datagrams ({} echoed)\n",
            report.rounds.icmp_sent,
            report.rounds.icmp_replies,
            report.rounds.tcp_exchanges_ok,
            report.rounds.udp_sent,
            report.rounds.udp_received
        ))?;
    }
    drop(guard);
    if outcome.flows == 0 {
        super::warn("no flow was traced; the lab traffic did not reach the hooks");
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}
