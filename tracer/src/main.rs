//! `pathtrace`: parses the command line and dispatches to `tracer::cmd`.

use std::process::ExitCode;

use clap::Parser as _;
use tracer::{cli::Cli, cmd};

fn main() -> ExitCode {
    let cli = Cli::parse();
    cmd::init_logging(cli.verbose);
    match cmd::dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            // One line naming the problem and the fix; exit code 2 for bad input and environment.
            eprintln!("pathtrace: {}", cmd::one_line(&e));
            ExitCode::from(2)
        }
    }
}
