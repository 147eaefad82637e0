//! `raven serve`: the configuration (the file with the flags over it), the server's
//! life from start to a drained stop, and the signals it answers (SIGTERM and SIGINT
//! drain, a second one exits at once, SIGHUP reloads).

use std::sync::Arc;

use anyhow::Context;
use raven_server::clock::SystemClock;
use raven_server::config::{FileConfig, Role};
use tokio::signal::unix::{Signal, SignalKind, signal};

use super::{RoleArg, ServeArgs, notify};

/// The configuration `raven serve` runs: the file (if any) with the flags over it. Read
/// again at SIGHUP.
fn serve_config(args: &ServeArgs) -> anyhow::Result<raven_server::config::Config> {
    let mut file = match &args.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    if let Some(listen) = args.listen {
        file.server.listen = listen.to_string();
    }
    if let Some(http) = &args.http {
        file.http.listen = http.clone();
    }
    if let Some(seed) = args.seed {
        file.sim.seed = seed;
    }
    if let Some(rate) = args.rate {
        file.sim.rate = rate;
    }
    if let Some(store) = &args.store {
        file.store.url = store.clone();
    }
    if let Some(role) = args.role {
        file.server.role = match role {
            RoleArg::Standalone => Role::Standalone,
            RoleArg::Ingest => Role::Ingest,
            RoleArg::Edge => Role::Edge,
        };
    }
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        file.tls.cert = Some(cert.clone());
        file.tls.key = Some(key.clone());
    }
    if let Some(ca) = &args.tls_ca {
        file.tls.client_ca = Some(ca.clone());
    }
    Ok(file.resolve()?)
}

/// Turns transparent huge pages off for the server's process. mimalloc asks for them
/// (`madvise`) on its arenas, so each first touch of a 2 MiB range faults in and zeroes a
/// whole huge page, and freeing part of one splits it: a fresh server at 100 clients and
/// 67,500 events/s held 53–168 MiB with them and 24–52 MiB without, and had p99 tails of
/// 110–360 ms in the first seconds of 4 runs in 8 against none over 35 ms (BENCHMARKS.md,
/// "Transparent huge pages"). A server whose limits are in bytes wants its memory counted
/// in the pages it uses.
fn no_transparent_huge_pages() {
    if let Err(e) = rustix::thread::disable_transparent_huge_pages(true) {
        tracing::warn!(error = %e, "cannot turn transparent huge pages off for this process");
    }
}

pub(super) async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RAVEN_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    raven_bench::exit_with_parent()?;
    no_transparent_huge_pages();
    let config = serve_config(&args)?;
    // Installed before the address line: a service manager may stop the server as soon as
    // it reads ready, and without a handler that SIGTERM would end it with no drain.
    let mut signals = Signals::install()?;
    // A file-size limit (`ulimit -f`, systemd's LimitFSIZE) would otherwise kill the
    // server when the database outgrows it. With a handler (tokio's, which only notes the
    // signal) the write fails with EFBIG instead, and the recorder spills and retries as
    // for any store failure.
    let _file_size_limit =
        signal(SignalKind::from_raw(libc::SIGXFSZ)).context("cannot handle SIGXFSZ")?;
    let listener = raven_server::app::bind(config.listen)
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let server = raven_server::app::start(&config, Arc::new(SystemClock), listener).await?;
    // Scripts (and the CLI tests) read the bound address from this line.
    let mut sources: Vec<String> = config
        .sim
        .iter()
        .map(|sim| format!("simulator: seed {}, {} events/s", sim.seed, sim.rate))
        .collect();
    sources.extend(
        config
            .feeds
            .iter()
            .map(|f| format!("{}: {} symbols", f.venue.as_str(), f.symbols.len())),
    );
    if let Some(replication) = &config.replication {
        let role = if config.role == Role::Edge {
            "edge node: following"
        } else {
            "ingest node: every batch to"
        };
        sources.push(format!(
            "{role} {} stream {}",
            replication.nats,
            replication.stream()
        ));
    }
    if let Some(tls) = &config.tls {
        sources.insert(
            0,
            if tls.client_certs {
                "TLS, client certificates required".to_owned()
            } else {
                "TLS".to_owned()
            },
        );
    }
    // One line, the gRPC address first: readers may close the pipe after it.
    println!(
        "raven: serving gRPC on {} ({}){}",
        server.local_addr(),
        if sources.is_empty() {
            "ingest only".to_owned()
        } else {
            sources.join("; ")
        },
        server
            .http_addr()
            .map(|http| format!(", HTTP on {http} (/metrics, /healthz, /readyz, /api/v1/stats)"))
            .unwrap_or_default()
    );
    notify::notify(&format!(
        "READY=1\nSTATUS=serving gRPC on {}{}",
        server.local_addr(),
        server
            .http_addr()
            .map(|http| format!(", HTTP on {http}"))
            .unwrap_or_default()
    ));
    let reload = || match serve_config(&args) {
        Ok(config) => server.reload(Some(&config)),
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "SIGHUP: the configuration was not reloaded; reloading the API keys alone");
            server.reload(None);
        }
    };
    signals.stop_requested(reload).await;
    notify::notify("STOPPING=1\nSTATUS=draining");
    tracing::info!(
        drain_secs = config.drain.as_secs(),
        "shutting down; a second signal exits at once"
    );
    let recorder = server.recorder_stats();
    let progress = server.progress();
    let waiting = recorder.clone();
    tokio::spawn(async move {
        let ignored = || tracing::info!("SIGHUP while shutting down: nothing reloaded");
        signals.stop_requested(ignored).await;
        let waiting = recorder.map_or(0, |r| {
            r.memory_bytes.load(std::sync::atomic::Ordering::Relaxed)
        });
        tracing::warn!(
            unstored_bytes = waiting,
            "second signal: exiting now; batches still in memory are not stored"
        );
        std::process::exit(130);
    });
    match tokio::time::timeout(config.shutdown_timeout, server.shutdown()).await {
        Ok(stopped) => Ok(stopped?),
        Err(_) => {
            let unstored = waiting.map_or(0, |r| {
                r.memory_bytes.load(std::sync::atomic::Ordering::Relaxed)
            });
            tracing::error!(
                timeout_secs = config.shutdown_timeout.as_secs(),
                unfinished = progress.step(),
                unstored_bytes = unstored,
                "shutdown did not finish in time; exiting (what the recorder had not stored is in the spill file, or lost if it was still in memory)"
            );
            std::process::exit(1);
        }
    }
}

/// The signals that stop the server (SIGTERM, SIGINT) and reload it (SIGHUP: service
/// managers send it for `systemctl reload`; by default it would end the process). Each
/// stream sees only signals that come after it was made, so the same streams are kept from
/// start-up to exit.
struct Signals {
    terminate: Signal,
    interrupt: Signal,
    hangup: Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        Ok(Self {
            terminate: signal(SignalKind::terminate())
                .context("cannot install the SIGTERM handler")?,
            interrupt: signal(SignalKind::interrupt())
                .context("cannot install the SIGINT handler")?,
            hangup: signal(SignalKind::hangup()).context("cannot install the SIGHUP handler")?,
        })
    }

    /// Returns at the next SIGTERM or SIGINT, calling `reload` at each SIGHUP meanwhile.
    async fn stop_requested(&mut self, reload: impl Fn()) {
        loop {
            tokio::select! {
                _ = self.terminate.recv() => return,
                _ = self.interrupt.recv() => return,
                _ = self.hangup.recv() => reload(),
            }
        }
    }
}
