//! `pathtrace completions SHELL` and `pathtrace man`: a completion script and the man page, both
//! made from the clap definition that makes `--help` (clap_complete, clap_mangen), so the three
//! never disagree.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::CommandFactory as _;

use crate::cli::Cli;

pub(super) fn completions(shell: clap_complete::Shell) -> anyhow::Result<ExitCode> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "pathtrace", &mut script);
    super::print(std::str::from_utf8(&script).context("the completion script is not UTF-8")?)?;
    Ok(ExitCode::SUCCESS)
}

pub(super) fn man() -> anyhow::Result<ExitCode> {
    let mut page = Vec::new();
    clap_mangen::Man::new(Cli::command())
        .render(&mut page)
        .context("rendering the man page")?;
    super::print(std::str::from_utf8(&page).context("the man page is not UTF-8")?)?;
    Ok(ExitCode::SUCCESS)
}
