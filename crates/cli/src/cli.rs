//! The `raven` command line: `serve` runs the server; `subscribe`, `snapshot`,
//! `instruments`, the history commands and `health` are gRPC clients; `config` checks and
//! shows configuration files; `keys` makes API keys; `bench` load-tests a server. Human output by default,
//! `--json` for one JSON object per line with prices as exact decimal strings.

mod bench;
mod client;
mod history;
mod notify;
mod parquet;
mod render;
mod serve;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use raven_server::config::FileConfig;

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
    /// Export recorded events (JSON lines, CSV or Parquet).
    History(HistoryArgs),
    /// Print an instrument's book as it was at an instant.
    BookAt(BookAtArgs),
    /// Replay recorded events, paced as recorded (or faster).
    Replay(ReplayArgs),
    /// Load-test a server: N streaming clients, events published through the ingest API.
    Bench(BenchArgs),
    /// Check a configuration file, or print the configuration a server would run.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Ask a server whether it serves (gRPC health): exit 0 if it does, 1 if not.
    Health(HealthArgs),
    /// Manage the API keys file.
    #[command(subcommand)]
    Keys(KeysCommand),
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Make a new key: print its secret (once; only its SHA-256 is kept) and append it to
    /// FILE. A running server takes it on SIGHUP (`systemctl reload raven`).
    Add {
        /// The keys file (`[auth] keys_file`); created if missing.
        #[arg(long)]
        file: PathBuf,
        /// The key's name, in logs and errors.
        #[arg(long)]
        id: String,
        /// What it may do (repeat, or comma-separated): subscribe, history, ingest, admin.
        #[arg(long = "role", required = true, value_delimiter = ',', value_parser = parse_role)]
        roles: Vec<raven_server::api::auth::Role>,
        /// Instruments it may use (repeat, or comma-separated): VENUE:SYMBOL, VENUE:*,
        /// a prefix ending in *; all when not given.
        #[arg(long = "instruments", value_delimiter = ',')]
        instruments: Vec<String>,
    },
}

fn parse_role(name: &str) -> Result<raven_server::api::auth::Role, String> {
    raven_server::api::auth::Role::parse(name)
        .ok_or_else(|| format!("unknown role {name:?} (subscribe, history, ingest, admin)"))
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate FILE: exit 0, or 1 naming the field and the value at fault.
    Check {
        /// The TOML file.
        file: PathBuf,
    },
    /// Print the configuration with every default written out (password hidden).
    Show {
        /// The TOML file; the built-in defaults without it.
        #[arg(long, env = "RAVEN_CONFIG")]
        config: Option<PathBuf>,
    },
}

#[derive(Args)]
struct HealthArgs {
    /// The service asked about; "" asks about the server as a whole.
    #[arg(long, default_value = "raven.v1.Market")]
    service: String,
    #[command(flatten)]
    server: ServerArg,
}

/// How `history` writes events.
#[derive(Clone, Copy, ValueEnum)]
enum ExportFormat {
    /// One JSON object per event, prices as exact decimal strings.
    Jsonl,
    /// One row per level, trade, candle or status.
    Csv,
    /// Parquet, one file per channel, each with its channel's schema (needs `--out`).
    Parquet,
}

#[derive(Args)]
struct HistoryArgs {
    /// Instruments, VENUE:SYMBOL.
    #[arg(required = true)]
    instruments: Vec<String>,
    /// Channels to export (repeat, or comma-separated); all when not given.
    #[arg(long, value_enum, value_delimiter = ',')]
    channel: Vec<ChannelArg>,
    /// Events published at or after this: RFC 3339 or Unix ns.
    #[arg(long, value_parser = history::parse_time)]
    from: Option<u64>,
    /// Events published before this: RFC 3339 or Unix ns.
    #[arg(long, value_parser = history::parse_time)]
    to: Option<u64>,
    /// Most events; 0 is no limit.
    #[arg(long, default_value_t = 0)]
    limit: u64,
    /// Output format.
    #[arg(long, value_enum, default_value = "jsonl")]
    format: ExportFormat,
    /// Write here instead of stdout. Parquet with several channels: a prefix (`day` →
    /// `day.book.parquet`, `day.trades.parquet`, …).
    #[arg(long, required_if_eq("format", "parquet"))]
    out: Option<PathBuf>,
    #[command(flatten)]
    server: ServerArg,
}

#[derive(Args)]
struct BookAtArgs {
    /// Instrument, VENUE:SYMBOL.
    instrument: String,
    /// The instant: RFC 3339 or Unix ns.
    #[arg(long, value_parser = history::parse_time)]
    at: u64,
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
struct ReplayArgs {
    /// Instruments, VENUE:SYMBOL.
    #[arg(required = true)]
    instruments: Vec<String>,
    /// Channels to replay (repeat, or comma-separated); all when not given.
    #[arg(long, value_enum, value_delimiter = ',')]
    channel: Vec<ChannelArg>,
    /// From this publish time: RFC 3339 or Unix ns.
    #[arg(long, value_parser = history::parse_time)]
    from: Option<u64>,
    /// To this publish time: RFC 3339 or Unix ns.
    #[arg(long, value_parser = history::parse_time)]
    to: Option<u64>,
    /// Most events; 0 is no limit.
    #[arg(long, default_value_t = 0)]
    limit: u64,
    /// Multiple of recorded time: 1 replays in real time, 0 as fast as possible.
    #[arg(long, default_value_t = 1.0)]
    speed: f64,
    /// Print only how many events arrived and how fast (headers are scanned, not
    /// decoded, so this measures the server rather than the printer).
    #[arg(long)]
    stats: bool,
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    server: ServerArg,
}

#[derive(Args)]
struct BenchArgs {
    /// Server to load; without it, a `raven serve` child is started for each row.
    #[arg(long)]
    server: Option<String>,
    /// Config file for the `raven serve` child (ignored with --server).
    #[arg(long)]
    server_config: Option<PathBuf>,
    /// Client counts, one row each (each client has its own connection).
    /// [default: 1,10,100,1000; 100 with --soak]
    #[arg(long, value_delimiter = ',')]
    clients: Option<Vec<usize>>,
    /// Events published per second: one rate, or one per client count.
    /// [default: 10000; 50000 with --soak]
    #[arg(long, value_delimiter = ',')]
    rate: Option<Vec<u64>>,
    /// Measured time per row, e.g. 10s, 500ms, 2m.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Unmeasured warm-up before each row.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    warmup: Duration,
    /// Bench instruments; every client subscribes to all of them.
    #[arg(long, default_value_t = 8)]
    instruments: usize,
    /// Find each N's highest sustained rate (loss ≤ 0.1%, p99 ≤ 100 ms): start at --rate
    /// and step up ×1.5, never past this many events/s.
    #[arg(long, value_name = "CAP")]
    max: Option<u64>,
    /// Run the same workload on this NATS server (core pub/sub) and show Raven/NATS.
    #[arg(long, value_name = "NATS_URL")]
    compare: Option<String>,
    /// Publish to --server (an ingest node) and have the clients subscribe to these edge
    /// nodes of it, in turn (scale-out: the latency includes the trip through NATS).
    #[arg(long, value_name = "URL", value_delimiter = ',', requires = "server")]
    via_edge: Vec<String>,
    /// Also run every row on the plain-tonic relay (`raven-tonic-relay`, built beside
    /// this binary): what gRPC alone costs on this machine.
    #[arg(long)]
    floor: bool,
    /// Soak: one long row (this long; 100 clients at 50,000 events/s unless given), the
    /// server's RSS read every 10 s and its slope reported; fails on any loss or gap.
    #[arg(long, value_parser = parse_duration, conflicts_with_all = ["max", "compare", "floor", "duration"])]
    soak: Option<Duration>,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Also write the results as a Markdown table to this file.
    #[arg(long)]
    markdown: Option<PathBuf>,
    /// Also plot the results (latency and deliveries/s against N) to this SVG file.
    #[arg(long)]
    svg: Option<PathBuf>,
    /// The CA to trust when the server is on TLS (--server https://…, or [tls] in
    /// --server-config); its certificate must name localhost.
    #[arg(long)]
    tls_ca: Option<PathBuf>,
    /// How the clients subscribe: `grpc`; or `ws`, which also runs every row with
    /// WebSocket clients on the JSON gateway beside the gRPC row and reports the server
    /// CPU per delivery of each.
    #[arg(long, value_enum, default_value = "grpc")]
    transport: Transport,
}

/// `raven bench --transport`.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Transport {
    /// gRPC `Market.Stream` clients.
    Grpc,
    /// gRPC clients, and WebSocket clients of `/ws` beside them.
    Ws,
}

/// `10s`, `500ms`, `2m`, or plain seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit())
        .map_or((text, "s"), |i| text.split_at(i));
    let n: u64 = number
        .parse()
        .map_err(|_| format!("invalid duration {text:?}: expected e.g. 10s, 500ms or 2m"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!(
            "invalid duration {text:?}: the unit must be ms, s or m"
        )),
    }
}

#[derive(Args)]
struct ServeArgs {
    /// gRPC listen address (overrides the config file).
    #[arg(long, env = "RAVEN_LISTEN")]
    listen: Option<SocketAddr>,
    /// HTTP listen address for /metrics, /healthz, /readyz and /api/v1/stats, or `off`
    /// (overrides `http.listen`; default 127.0.0.1:50052).
    #[arg(long, env = "RAVEN_HTTP")]
    http: Option<String>,
    /// TOML config file; unknown keys are refused.
    #[arg(long, env = "RAVEN_CONFIG")]
    config: Option<PathBuf>,
    /// Simulator seed.
    #[arg(long, env = "RAVEN_SEED")]
    seed: Option<u64>,
    /// Simulator event rate, events per second over all instruments.
    #[arg(long, env = "RAVEN_RATE")]
    rate: Option<u64>,
    /// Where to record every event: `sqlite:PATH`, `postgres://USER@HOST:PORT/DB`, or
    /// `off` (overrides `store.url`; default `sqlite:./data/raven.db`).
    #[arg(long, env = "RAVEN_STORE")]
    store: Option<String>,
    /// What this node does: `standalone`; `ingest` (also publishes every engine batch to
    /// NATS JetStream, `[replication]`); or `edge` (serves clients from an ingest node's
    /// stream, with no feeds and no recording) (overrides `server.role`).
    #[arg(long, env = "RAVEN_ROLE")]
    role: Option<RoleArg>,
    /// Serve gRPC over TLS with this certificate chain (PEM; overrides `tls.cert`).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of `--tls-cert` (PEM; overrides `tls.key`).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Require client certificates signed by this CA (PEM; overrides `tls.client_ca`).
    #[arg(long)]
    tls_ca: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum RoleArg {
    Standalone,
    Ingest,
    Edge,
}

#[derive(Args)]
struct ServerArg {
    /// Server URL; `https://` for TLS.
    #[arg(long, env = "RAVEN_SERVER", default_value = "http://127.0.0.1:50051")]
    server: String,
    /// Trust this CA (PEM) for the server's certificate instead of the public roots.
    #[arg(long, env = "RAVEN_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// Present this client certificate (PEM), for servers that require one.
    #[arg(long, env = "RAVEN_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of `--tls-cert` (PEM).
    #[arg(long, env = "RAVEN_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// API key, for servers that require one (sent as `authorization: Bearer KEY`).
    #[arg(long, env = "RAVEN_KEY", hide_env_values = true)]
    key: Option<String>,
}

#[derive(Clone, Copy, ValueEnum)]
enum ChannelArg {
    Book,
    Bbo,
    Trades,
    Candles,
}

/// The wire channel of a `--channel` value.
fn channel_pb(channel: ChannelArg) -> raven_proto::pb::Channel {
    use raven_proto::pb::Channel;
    match channel {
        ChannelArg::Book => Channel::Book,
        ChannelArg::Bbo => Channel::Bbo,
        ChannelArg::Trades => Channel::Trades,
        ChannelArg::Candles => Channel::Candles,
    }
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
    /// Start from the recorded events published since this time (RFC 3339 or Unix ns),
    /// then continue live with no gap: a `history_end` marker shows where.
    #[arg(long, value_parser = history::parse_time)]
    start: Option<u64>,
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
    // Before any configuration is read: the default connection limit derives from it, and
    // a bench's thousands of clients need descriptors as much as the server does.
    raven_server::api::connections::raise_descriptor_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    match cli.command {
        Command::Serve(args) => runtime.block_on(serve::serve(args)),
        Command::Subscribe(args) => runtime.block_on(client::subscribe(args)),
        Command::Snapshot(args) => runtime.block_on(client::snapshot(args)),
        Command::Instruments(args) => runtime.block_on(client::instruments(args)),
        Command::History(args) => runtime.block_on(history::history(args)),
        Command::BookAt(args) => runtime.block_on(history::book_at(args)),
        Command::Replay(args) => runtime.block_on(history::replay(args)),
        Command::Bench(args) => runtime.block_on(bench::bench(args)),
        Command::Config(ConfigCommand::Check { file }) => {
            FileConfig::load(&file)?.resolve()?;
            println!("{}: ok", file.display());
            Ok(())
        }
        Command::Config(ConfigCommand::Show { config }) => {
            let file = match config {
                Some(path) => FileConfig::load(&path)?,
                None => FileConfig::default(),
            };
            let shown = file.to_toml();
            file.resolve()?;
            print!("{shown}");
            Ok(())
        }
        Command::Health(args) => runtime.block_on(client::health(args)),
        Command::Keys(KeysCommand::Add {
            file,
            id,
            roles,
            instruments,
        }) => add_key(&file, &id, &roles, &instruments),
    }
}

/// Appends a new key to `file`, checks the file still loads (undoing the append if it
/// does not), and prints the secret.
fn add_key(
    file: &std::path::Path,
    id: &str,
    roles: &[raven_server::api::auth::Role],
    instruments: &[String],
) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;

    use raven_server::api::auth::{KeyLimits, Keys, key_entry, new_secret};

    let secret = new_secret()?;
    let before = std::fs::metadata(file).map_or(0, |m| m.len());
    // Owner-only: the file holds no secrets, but who may call is the operator's business.
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(file)
        .with_context(|| format!("cannot open {}", file.display()))?;
    out.write_all(key_entry(id, &secret, roles, instruments).as_bytes())
        .with_context(|| format!("cannot write {}", file.display()))?;
    drop(out);
    if let Err(e) = Keys::load(file, KeyLimits::default()) {
        let undone = std::fs::OpenOptions::new()
            .write(true)
            .open(file)
            .and_then(|f| f.set_len(before));
        if let Err(undo) = undone {
            anyhow::bail!("{e} (and the new key could not be taken out again: {undo})");
        }
        anyhow::bail!("{e}; the key was not added");
    }
    println!("{secret}");
    eprintln!(
        "added key {id:?} to {}; this is the only time its secret is shown. A running server takes it on SIGHUP (systemctl reload raven).",
        file.display()
    );
    Ok(())
}
