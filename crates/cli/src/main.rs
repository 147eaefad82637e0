//! The `raven` binary: `cli` parses the command line and runs `serve` (the
//! `raven-server` library) or a client command (`cli/client`: live calls, `cli/history`:
//! exports, book-at and replay, `cli/render`: ladders, tapes and JSON lines); `bench`
//! runs `raven-bench`. Errors are reported as one line.

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    match cli::run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
