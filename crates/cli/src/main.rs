//! The `raven` binary: `cli` parses the command line and runs `serve` (the
//! `raven-server` library) or a client command (`cli/client`: live calls, `cli/history`:
//! exports, book-at and replay, `cli/render`: ladders, tapes and JSON lines); `bench`
//! runs `raven-bench`. Errors are reported as one line.

mod cli;

use std::process::ExitCode;

/// mimalloc rather than glibc's malloc, for the tail: memory crosses threads on the hot
/// path (the engine allocates each batch it hands the recorder, whose thread frees it).
/// Through the mock exchange with recording on, receive → publish p99 was 0.89–1.04 ms
/// with glibc and 0.67–0.70 ms with mimalloc, alternating in one sitting (BENCHMARKS.md,
/// connectors).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    match cli::run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
