//! `pathtrace`: parses the command line and dispatches to `tracer::cmd`.

use std::process::ExitCode;

use tracer::{cli::Cli, cmd};

fn main() -> ExitCode {
    limit_malloc_arenas();
    let cli = Cli::parse_args();
    cmd::init_logging(cli.verbose);
    match cmd::dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            // One line naming the problem and the fix; exit code 2 for bad input and environment.
            tracer::say(&format!("pathtrace: {}", tracer::one_line(&e)));
            ExitCode::from(2)
        }
    }
}

/// glibc gives each thread that allocates an arena of its own (up to 8 per core); freed memory
/// in one arena cannot serve another, and with the loader, attach, tokio and writer threads that
/// shows as megabytes of RSS. Two arenas are plenty for a reader that allocates little per
/// event, and a tracer on a production host should stay small. A fixed mmap threshold keeps
/// large blocks (batches, tables while they grow) in mappings of their own that go back to the
/// kernel when freed; glibc's default raises the threshold after the first such free, and the
/// heap then keeps their high-water mark.
fn limit_malloc_arenas() {
    // SAFETY: mallopt only sets allocator parameters; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 10);
    }
}
