//! `pathtrace inspect`: the static path of each running container (or one, or a namespace):
//! veth pairs, bridge and its ports, NAT rules, published ports, the host's route out (see
//! `analyze::inspect`). Reads only; sends no packet.

use std::process::ExitCode;

use crate::{
    analyze::inspect::{self, Query},
    cli::InspectArgs,
    render::Format,
};

pub(super) fn run(args: &InspectArgs) -> anyhow::Result<ExitCode> {
    let rt = super::runtime()?;
    let query = Query {
        wanted: crate::config::wanted(args.container.as_ref(), &args.runtime)?,
        endpoints: crate::config::endpoints(&args.runtime),
        netns: args.netns.clone(),
        to: args.to,
    };
    let found = inspect::inspect(&rt, &query)?;
    for (name, why) in &found.skipped {
        super::warn(format_args!("skipping {name}: {why}"));
    }
    if found.reports.is_empty() {
        // stdout stays JSON lines (none) with --json.
        match args.json {
            true => no_containers(),
            false => super::print("no running containers\n")?,
        }
        return Ok(ExitCode::SUCCESS);
    }
    let printer = Format::of_json_flag(args.json).printer();
    super::print(&printer.inspect(&found.reports)?)?;
    Ok(ExitCode::SUCCESS)
}

/// On stderr: with --json, stdout holds JSON lines only.
fn no_containers() {
    crate::say("no running containers");
}
