//! `pathtrace`: parses the command line and dispatches to `tracer::cmd`.

use std::process::ExitCode;

use clap::Parser as _;
use tracer::{cli::Cli, cmd};

fn main() -> ExitCode {
    limit_malloc_arenas();
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

/// glibc gives each thread that allocates an arena of its own (up to 8 per core); freed memory
/// in one arena cannot serve another, and with the loader, attach, tokio and writer threads that
/// shows as megabytes of RSS. Two arenas are plenty for a reader that allocates little per
/// event, and a tracer on a production host should stay small.
fn limit_malloc_arenas() {
    // SAFETY: mallopt only sets an allocator parameter; called before any other thread exists.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 2) };
}
