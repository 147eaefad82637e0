//! `raven-tonic-relay [ADDR]`: the plain-tonic floor of `raven bench` (see the library's
//! `relay` module), on ADDR (default 127.0.0.1:0). Prints `listening on ADDR` once it
//! accepts, so a script can read the port; runs until killed.

use std::process::ExitCode;

/// The allocator `raven` runs with, so the floor differs from Raven only in what it does.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    if let Err(e) = raven_bench::exit_with_parent() {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".to_owned());
    let listener = match tokio::net::TcpListener::bind(&addr).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("error: cannot listen on {addr}: {e}");
            return ExitCode::FAILURE;
        }
    };
    match listener.local_addr() {
        Ok(bound) => println!("listening on {bound}"),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    }
    match raven_bench::relay::serve(listener).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
