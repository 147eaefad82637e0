//! `raven bench`: the load generator (`raven-bench`) run from the command line, its
//! report written as a table, JSON, Markdown or SVG, and stopped cleanly by a signal.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};

use super::BenchArgs;

/// How often a soak reads the server's RSS.
const SOAK_SAMPLE_EVERY: Duration = Duration::from_secs(10);

pub(super) async fn bench(args: BenchArgs) -> anyhow::Result<()> {
    let soak = args.soak.is_some();
    let raven_binary =
        std::env::current_exe().context("cannot find the raven binary to start a server")?;
    let floor = if args.floor {
        let relay = raven_binary.with_file_name("raven-tonic-relay");
        anyhow::ensure!(
            relay.exists(),
            "--floor runs {}, which is not built: cargo build --release -p raven",
            relay.display()
        );
        Some(relay)
    } else {
        None
    };
    let config = raven_bench::BenchConfig {
        server: args.server,
        via_edges: args.via_edge,
        raven_binary,
        floor,
        max: args.max,
        server_config: args.server_config,
        clients: args.clients.unwrap_or_else(|| {
            if soak {
                vec![100]
            } else {
                vec![1, 10, 100, 1000]
            }
        }),
        rates: args
            .rate
            .unwrap_or_else(|| vec![if soak { 50_000 } else { 10_000 }]),
        duration: args.soak.unwrap_or(args.duration),
        warmup: args.warmup,
        instruments: args.instruments,
        compare: args.compare,
        sample_every: soak.then_some(SOAK_SAMPLE_EVERY),
        tls_ca: args.tls_ca,
        websocket: args.transport == super::Transport::Ws,
    };
    // A signal ends the run: dropping it kills the server it started.
    let mut term = signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    let report = tokio::select! {
        report = raven_bench::run(&config, |line| eprintln!("{line}")) => report?,
        _ = term.recv() => anyhow::bail!("stopped by SIGTERM; the servers it started are stopped"),
        _ = tokio::signal::ctrl_c() => anyhow::bail!("stopped by SIGINT; the servers it started are stopped"),
    };
    print!("{}", report.table());
    let write = |path: &PathBuf, text: String| {
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
    };
    if let Some(path) = &args.json {
        write(path, serde_json::to_string_pretty(&report)?)?;
    }
    if let Some(path) = &args.markdown {
        write(path, report.markdown())?;
    }
    if let Some(path) = &args.svg {
        write(path, raven_bench::svg(&report))?;
    }
    if soak {
        let failed: Vec<String> = report
            .rows
            .iter()
            .filter_map(|e| e.raven.as_ref())
            .filter(|r| r.lost > 0 || r.gaps > 0)
            .map(|r| format!("N={}: lost {}, gaps {}", r.clients, r.lost, r.gaps))
            .collect();
        if !failed.is_empty() {
            anyhow::bail!("soak failed: {}", failed.join("; "));
        }
    }
    Ok(())
}
