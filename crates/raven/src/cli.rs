//! The `raven` command line: `serve` runs the server; `subscribe`, `snapshot` and
//! `instruments` are gRPC clients. Human output by default, `--json` for one JSON object
//! per line with prices as exact decimal strings.

mod client;
mod render;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use raven::config::FileConfig;

#[derive(Parser)]
#[command(name = "raven", version, about = "Raven market-data server and client")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server: simulator feed, gRPC on 127.0.0.1:50051 unless told otherwise.
    Serve(ServeArgs),
    /// Stream live events and print them.
    Subscribe(SubscribeArgs),
    /// Print an instrument's current book.
    Snapshot(SnapshotArgs),
    /// List the instruments the server has.
    Instruments(InstrumentsArgs),
}

#[derive(Args)]
struct ServeArgs {
    /// gRPC listen address (overrides the config file).
    #[arg(long, env = "RAVEN_LISTEN")]
    listen: Option<SocketAddr>,
    /// TOML config file; unknown keys are refused.
    #[arg(long, env = "RAVEN_CONFIG")]
    config: Option<PathBuf>,
    /// Simulator seed.
    #[arg(long, env = "RAVEN_SEED")]
    seed: Option<u64>,
    /// Simulator event rate, events per second over all instruments.
    #[arg(long, env = "RAVEN_RATE")]
    rate: Option<u64>,
}

#[derive(Args)]
struct ServerArg {
    /// Server URL.
    #[arg(long, env = "RAVEN_SERVER", default_value = "http://127.0.0.1:50051")]
    server: String,
}

#[derive(Clone, Copy, ValueEnum)]
enum ChannelArg {
    Book,
    Bbo,
    Trades,
    Candles,
}

#[derive(Args)]
struct SubscribeArgs {
    /// Instruments, VENUE:SYMBOL.
    #[arg(required = true)]
    instruments: Vec<String>,
    /// Which stream.
    #[arg(long, value_enum, default_value = "book")]
    channel: ChannelArg,
    /// Book levels per side; 0 is the full book.
    #[arg(long, default_value_t = 0)]
    depth: u32,
    /// Exit after this many events (markers not counted).
    #[arg(long)]
    count: Option<u64>,
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    server: ServerArg,
}

#[derive(Args)]
struct SnapshotArgs {
    /// Instrument, VENUE:SYMBOL.
    instrument: String,
    /// Levels per side; 0 is the full book.
    #[arg(long, default_value_t = 10)]
    depth: u32,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    server: ServerArg,
}

#[derive(Args)]
struct InstrumentsArgs {
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    server: ServerArg,
}

/// Parses arguments and runs the command.
pub fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    match cli.command {
        Command::Serve(args) => runtime.block_on(serve(args)),
        Command::Subscribe(args) => runtime.block_on(client::subscribe(args)),
        Command::Snapshot(args) => runtime.block_on(client::snapshot(args)),
        Command::Instruments(args) => runtime.block_on(client::instruments(args)),
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RAVEN_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let mut file = match &args.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    if let Some(listen) = args.listen {
        file.server.listen = listen.to_string();
    }
    if let Some(seed) = args.seed {
        file.sim.seed = seed;
    }
    if let Some(rate) = args.rate {
        file.sim.rate = rate;
    }
    let config = file.resolve()?;
    let listener = raven::app::bind(config.listen)
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let server = raven::app::start(&config, listener).await?;
    // Scripts (and the CLI tests) read the bound address from this line.
    println!(
        "raven: serving gRPC on {} (simulator: seed {}, {} events/s)",
        server.local_addr(),
        config.sim.seed,
        config.sim.rate
    );
    wait_for_signal().await?;
    tracing::info!("shutting down");
    server.shutdown().await?;
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot install the SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("cannot listen for Ctrl-C")?,
        _ = term.recv() => {}
    }
    Ok(())
}
