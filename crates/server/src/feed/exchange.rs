//! Exchange connectors: one [`ExchangeFeed`] per `[[feeds]]` table, built on the feed
//! seam. The venue's protocol logic is pure and lives in `raven-venues`; this module is
//! the one connection runtime every venue shares:
//!
//! - [`transport`]: WebSocket and REST over TCP or rustls;
//! - [`pacing`]: jittered backoff, control-frame and connection-attempt limits;
//! - [`session`]: what a venue's codec does for a connection ([`session::Session`]);
//! - [`connection`]: a connection's life (subscribe, read, ping, liveness, staleness,
//!   rotation, reconnect) around a venue session;
//! - [`rest`]: the snapshot queue behind the venue's request-weight budget;
//! - [`binance`]: the Binance session (spot and USD-M);
//! - [`coinbase`]: the Coinbase Advanced Trade session;
//! - [`kraken`]: the Kraken v2 session.
//!
//! A feed runs on a thread of its own with a single-threaded tokio runtime: its sockets
//! never compete with the gRPC server's, and when the engine applies back-pressure the
//! feed simply stops reading. Each instrument's book is written by the one connection
//! that carries its depth stream; the engine's resync requests are routed there.

pub mod binance;
pub mod coinbase;
pub mod connection;
pub mod kraken;
pub mod pacing;
pub mod rest;
pub mod session;
pub mod transport;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raven_model::{Channel, InstrumentId, InstrumentName, Price};
use raven_venues::binance::Market;
use serde::Deserialize;
use tokio::sync::{mpsc, watch};

use self::connection::{Command, Link, Slot, Timing};
use self::pacing::Attempts;
use super::{Feed, FeedContext, FeedHandle, InstrumentInfo};

/// A venue Raven has a connector for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Venue {
    /// `binance`: Binance spot.
    Binance,
    /// `binance-usdm`: Binance USD-M futures.
    BinanceUsdm,
    /// `coinbase`: Coinbase Advanced Trade.
    Coinbase,
    /// `kraken`: Kraken spot, WebSocket v2.
    Kraken,
}

impl Venue {
    fn parse(name: &str) -> Option<Venue> {
        match name {
            "binance" => Some(Venue::Binance),
            "binance-usdm" => Some(Venue::BinanceUsdm),
            "coinbase" => Some(Venue::Coinbase),
            "kraken" => Some(Venue::Kraken),
            _ => None,
        }
    }

    /// The Binance market, for the Binance venues.
    fn market(self) -> Option<Market> {
        match self {
            Venue::Binance => Some(Market::Spot),
            Venue::BinanceUsdm => Some(Market::UsdM),
            Venue::Coinbase | Venue::Kraken => None,
        }
    }

    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Venue::Binance => "binance",
            Venue::BinanceUsdm => "binance-usdm",
            Venue::Coinbase => "coinbase",
            Venue::Kraken => "kraken",
        }
    }

    /// The `VENUE` part of instrument names.
    pub fn instrument_venue(self) -> &'static str {
        match (self, self.market()) {
            (_, Some(m)) => m.venue(),
            (Venue::Coinbase, None) => raven_venues::coinbase::VENUE,
            _ => raven_venues::kraken::VENUE,
        }
    }

    fn default_ws_url(self) -> &'static str {
        match (self, self.market()) {
            (_, Some(m)) => m.default_ws_base(),
            (Venue::Coinbase, None) => raven_venues::coinbase::DEFAULT_WS_URL,
            _ => raven_venues::kraken::DEFAULT_WS_URL,
        }
    }

    fn default_rest_url(self) -> &'static str {
        match (self, self.market()) {
            (_, Some(m)) => m.default_rest_url(),
            (Venue::Coinbase, None) => "https://api.coinbase.com",
            // Kraken's feed reads nothing over REST.
            _ => "",
        }
    }

    /// Control frames per second the venue allows a connection. Coinbase and Kraken
    /// publish no per-connection figure for public market data; Binance spot's 5 is used.
    fn control_frames_per_sec(self) -> u32 {
        self.market().map_or(5, Market::control_frames_per_sec)
    }
}

/// One `[[feeds]]` table as written.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct FeedSection {
    /// `binance`, `binance-usdm`, `coinbase` or `kraken`.
    pub venue: String,
    /// Symbols as the venue spells them (`BTCUSDT`, `BTC/USD`); instruments are
    /// `VENUE:SYMBOL`.
    pub symbols: Vec<String>,
    /// WebSocket base URL; default the venue's public endpoint (tests point it at the
    /// mock exchange).
    pub ws_url: Option<String>,
    /// REST base URL (Binance: snapshots and `exchangeInfo`; Coinbase: the product
    /// list); default the venue's. Kraken is read entirely over its WebSocket.
    pub rest_url: Option<String>,
    /// Levels per REST book snapshot (Binance; default 1000), or the book depth
    /// subscribed (Kraken: 10, 25, 100, 500 or 1000; default 10).
    pub depth_limit: Option<u32>,
    /// Streams per connection (two per symbol on spot). Default 200, at most 1024.
    pub streams_per_connection: Option<usize>,
    /// An instrument with no data this long is reported `Stale` (the connection stays).
    /// Default 30000.
    pub stale_after_ms: Option<u64>,
    /// A connection with no frame at all this long is dead and replaced. Default 30000.
    pub liveness_ms: Option<u64>,
    /// Our own WebSocket pings. Default 10000.
    pub ping_every_ms: Option<u64>,
    /// Connections are replaced (make-before-break) at this age; the venue's limit is
    /// 24 h. Default 82800 (23 h).
    pub rotate_after_secs: Option<u64>,
    /// REST request weight spent per minute at most. Default half the venue's limit.
    pub rest_weight_per_minute: Option<u32>,
}

/// A `[[feeds]]` table that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("invalid [[feeds]] table {index} ({venue}): {field}: {reason}")]
pub struct FeedConfigError {
    /// Which table, from 0.
    pub index: usize,
    /// Its venue.
    pub venue: String,
    /// The field.
    pub field: &'static str,
    /// What is wrong.
    pub reason: String,
}

/// A resolved `[[feeds]]` table.
#[derive(Debug, Clone)]
pub struct ExchangeConfig {
    /// The venue.
    pub venue: Venue,
    /// Upper-case symbols, no repeats.
    pub symbols: Vec<String>,
    /// WebSocket base.
    pub ws_url: String,
    /// REST base.
    pub rest_url: String,
    /// Levels per snapshot.
    pub depth_limit: u32,
    /// Streams per connection.
    pub streams_per_connection: usize,
    /// Connection timing.
    pub timing: Timing,
    /// REST weight per minute.
    pub rest_weight_per_minute: u32,
}

impl FeedSection {
    /// Validates the table (`index` names it in errors).
    pub fn resolve(&self, index: usize) -> Result<ExchangeConfig, FeedConfigError> {
        let err = |field, reason: String| FeedConfigError {
            index,
            venue: self.venue.clone(),
            field,
            reason,
        };
        let venue = Venue::parse(&self.venue).ok_or_else(|| {
            err(
                "venue",
                "expected \"binance\", \"binance-usdm\", \"coinbase\" or \"kraken\"".into(),
            )
        })?;
        let market = venue.market();
        let kraken = venue == Venue::Kraken;
        let coinbase = venue == Venue::Coinbase;
        if self.symbols.is_empty() {
            return Err(err("symbols", "list at least one symbol".into()));
        }
        let mut symbols: Vec<String> = Vec::new();
        for s in &self.symbols {
            let upper = s.to_ascii_uppercase();
            let name = format!("{}:{upper}", venue.instrument_venue());
            // Kraken spells pairs BASE/QUOTE, Coinbase products BASE-QUOTE; Binance
            // symbols have no separator.
            if InstrumentName::parse(&name).is_err()
                || upper.contains('/') != kraken
                || upper.contains('-') != coinbase
            {
                return Err(err(
                    "symbols",
                    format!("{s:?} is not a symbol of this venue"),
                ));
            }
            if symbols.contains(&upper) {
                return Err(err("symbols", format!("{s:?} is listed twice")));
            }
            symbols.push(upper);
        }
        let depth_limit = self.depth_limit.unwrap_or(if kraken { 10 } else { 1000 });
        let depth_ok = match market {
            Some(m) => m.depth_weight(depth_limit).is_some(),
            None if kraken => raven_venues::kraken::DEPTHS.contains(&depth_limit),
            // Coinbase sends the whole book in-band: there is no depth to choose.
            None => self.depth_limit.is_none(),
        };
        if !depth_ok {
            return Err(err(
                "depth_limit",
                match market {
                    Some(Market::Spot) => "must be 1 to 5000".into(),
                    Some(Market::UsdM) => "must be one of 5, 10, 20, 50, 100, 500, 1000".into(),
                    None if kraken => "must be one of 10, 25, 100, 500, 1000".into(),
                    None => "Coinbase sends the whole book; leave depth_limit out".into(),
                },
            ));
        }
        if kraken && self.rest_url.is_some() {
            return Err(err(
                "rest_url",
                "Kraken is read entirely over its WebSocket (its instrument list too); leave rest_url out".into(),
            ));
        }
        let streams_per_connection = self.streams_per_connection.unwrap_or(200);
        if !(2..=raven_venues::binance::MAX_STREAMS_PER_CONNECTION)
            .contains(&streams_per_connection)
        {
            return Err(err(
                "streams_per_connection",
                "must be 2 to 1024 (the venue's limit)".into(),
            ));
        }
        let ms = |v: Option<u64>,
                  default: u64,
                  field: &'static str|
         -> Result<Duration, FeedConfigError> {
            match v.unwrap_or(default) {
                0 => Err(err(field, "must be at least 1".into())),
                n => Ok(Duration::from_millis(n)),
            }
        };
        let timing = Timing {
            liveness: ms(self.liveness_ms, 30_000, "liveness_ms")?,
            ping_every: ms(self.ping_every_ms, 10_000, "ping_every_ms")?,
            stale_after: ms(self.stale_after_ms, 30_000, "stale_after_ms")?,
            rotate_after: Duration::from_secs(self.rotate_after_secs.unwrap_or(82_800).max(1)),
            // The venue counts our pongs and pings too: one frame a second of margin.
            control_per_s: venue.control_frames_per_sec().saturating_sub(1).max(1) as usize,
            connect_timeout: Duration::from_secs(10),
            overlap: Duration::from_secs(2),
            resync_every: Duration::from_secs(1),
        };
        if timing.rotate_after > Duration::from_secs(86_400) {
            return Err(err(
                "rotate_after_secs",
                "must be under the venue's 24 h limit".into(),
            ));
        }
        let rest_weight_per_minute = self
            .rest_weight_per_minute
            .unwrap_or(market.map_or(0, |m| m.default_weight_per_minute() / 2));
        let snapshot_weight = market
            .and_then(|m| m.depth_weight(depth_limit))
            .unwrap_or(0);
        if rest_weight_per_minute < snapshot_weight {
            return Err(err(
                "rest_weight_per_minute",
                "must allow at least one snapshot of depth_limit levels".into(),
            ));
        }
        let trim = |u: &str| u.trim_end_matches('/').to_owned();
        Ok(ExchangeConfig {
            venue,
            symbols,
            ws_url: trim(self.ws_url.as_deref().unwrap_or(venue.default_ws_url())),
            rest_url: trim(self.rest_url.as_deref().unwrap_or(venue.default_rest_url())),
            depth_limit,
            streams_per_connection,
            timing,
            rest_weight_per_minute,
        })
    }
}

/// A connector feed.
pub struct ExchangeFeed {
    config: ExchangeConfig,
}

impl ExchangeFeed {
    /// A feed for one `[[feeds]]` table.
    pub fn new(config: ExchangeConfig) -> ExchangeFeed {
        ExchangeFeed { config }
    }
}

/// A connection to build: its URL path, its symbols, what it carries, its session.
struct Plan {
    path: &'static str,
    symbols: Vec<String>,
    channels: &'static [Channel],
    session: Box<dyn session::Session>,
}

impl ExchangeConfig {
    /// The `VENUE` part of its instruments' names.
    pub fn venue_name(&self) -> &'static str {
        self.venue.instrument_venue()
    }

    /// The connections: Binance spot and Kraken carry book and trades together; USD-M
    /// splits depth (`/public`) from trades (`/market`).
    fn plans(&self) -> Vec<Plan> {
        let kinds: &[(bool, bool)] = match self.venue.market() {
            Some(Market::UsdM) => &[(true, false), (false, true)],
            _ => &[(true, true)],
        };
        let mut plans = Vec::new();
        for &(depth, trades) in kinds {
            let per_symbol = usize::from(depth) + usize::from(trades);
            let per_connection = (self.streams_per_connection / per_symbol).max(1);
            let channels: &'static [Channel] = match (depth, trades) {
                (true, false) => &[Channel::Book],
                (false, true) => &[Channel::Trades],
                _ => &[Channel::Book, Channel::Trades],
            };
            for chunk in self.symbols.chunks(per_connection) {
                let symbols = chunk.to_vec();
                let (path, session): (&'static str, Box<dyn session::Session>) =
                    match self.venue.market() {
                        Some(market) => (
                            market.stream_path(!depth),
                            Box::new(binance::BinanceSession::new(
                                market,
                                symbols.clone(),
                                depth,
                                trades,
                                self.rest_url.clone(),
                                self.depth_limit,
                            )),
                        ),
                        None if self.venue == Venue::Coinbase => (
                            "",
                            Box::new(coinbase::CoinbaseSession::new(symbols.clone())),
                        ),
                        None => (
                            "",
                            Box::new(kraken::KrakenSession::new(
                                symbols.clone(),
                                self.depth_limit,
                            )),
                        ),
                    };
                plans.push(Plan {
                    path,
                    symbols,
                    channels,
                    session,
                });
            }
        }
        plans
    }
}

impl Feed for ExchangeFeed {
    fn name(&self) -> &str {
        self.config.venue.as_str()
    }

    fn spawn(self: Box<Self>, ctx: FeedContext) -> std::io::Result<FeedHandle> {
        let config = self.config;
        let mut ids: HashMap<String, InstrumentId> = HashMap::new();
        for symbol in &config.symbols {
            let name = InstrumentName::parse(&format!("{}:{symbol}", config.venue_name()))
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
            let (id, owner) = ctx.catalog.add(
                InstrumentInfo {
                    name: name.clone(),
                    tick_size: Price::ZERO,
                },
                ctx.id,
            );
            if owner != ctx.id {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    format!("{name} is already served by another feed"),
                ));
            }
            ids.insert(symbol.clone(), id);
        }
        let (stop_tx, stop) = watch::channel(false);
        let name = config.venue.as_str().to_owned();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let thread = std::thread::Builder::new()
            .name(format!("raven-{name}"))
            .spawn(move || runtime.block_on(run(config, ids, ctx, stop)))?;
        Ok(FeedHandle::new(
            &name,
            move || {
                let _ = stop_tx.send(true);
            },
            Some(thread),
        ))
    }
}

async fn run(
    config: ExchangeConfig,
    ids: HashMap<String, InstrumentId>,
    ctx: FeedContext,
    mut stop: watch::Receiver<bool>,
) {
    let (rest_tx, rest_rx) = mpsc::channel(4096);
    let seed = ctx.clock.now().0;
    let rest = tokio::spawn(rest::run(rest_rx, config.rest_weight_per_minute, seed));
    let info = tokio::spawn(tick_sizes(
        config.clone(),
        ids.clone(),
        ctx.catalog.clone(),
        stop.clone(),
    ));
    let attempts = Arc::new(Mutex::new(Attempts::default()));
    // Where the engine's resync requests go: the connection carrying the book.
    let mut books: HashMap<InstrumentId, (mpsc::Sender<Command>, usize)> = HashMap::new();
    let mut connections = Vec::new();
    for (n, plan) in config.plans().into_iter().enumerate() {
        let (tx, rx) = mpsc::channel(1024);
        let carries_book = plan.channels.contains(&Channel::Book);
        let slots: Vec<Slot> = plan
            .symbols
            .iter()
            .enumerate()
            .map(|(slot, s)| {
                if carries_book {
                    books.insert(ids[s], (tx.clone(), slot));
                }
                Slot {
                    id: ids[s],
                    channels: plan.channels,
                }
            })
            .collect();
        let link = Link {
            name: format!("{}#{n}", config.venue.as_str()),
            url: format!("{}{}", config.ws_url, plan.path),
            slots,
            session: plan.session,
            timing: config.timing.clone(),
            input: ctx.input.clone(),
            clock: ctx.clock.clone(),
            rest: rest_tx.clone(),
            attempts: attempts.clone(),
            seed: seed ^ (n as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            ignored: session::Ignored::default(),
        };
        connections.push(tokio::spawn(connection::run(link, rx, stop.clone(), tx)));
    }
    drop(rest_tx);
    let mut poll = tokio::time::interval(Duration::from_millis(20));
    loop {
        tokio::select! {
            _ = poll.tick() => {
                while let Ok(id) = ctx.resync.try_recv() {
                    if let Some((tx, slot)) = books.get(&id) {
                        // A full queue already holds work for it; the book stays refused
                        // until a snapshot arrives either way.
                        let _ = tx.try_send(Command::Resync { slot: *slot });
                    }
                }
            }
            _ = stop.changed() => break,
        }
    }
    for c in connections {
        let _ = c.await;
    }
    info.abort();
    rest.abort();
}

/// Reads the venue's tick sizes into the catalog, retrying until it has them: Binance's
/// `exchangeInfo`, Coinbase's public product list, Kraken's `instrument` channel.
async fn tick_sizes(
    config: ExchangeConfig,
    ids: HashMap<String, InstrumentId>,
    catalog: super::Catalog,
    mut stop: watch::Receiver<bool>,
) {
    let backoff = pacing::Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
    let mut jitter = pacing::Jitter::new(ids.len() as u64);
    for attempt in 0.. {
        let read = match config.venue.market() {
            Some(market) => binance::tick_sizes(market, &config.rest_url).await,
            None if config.venue == Venue::Coinbase => {
                coinbase::tick_sizes(&config.rest_url, &config.symbols).await
            }
            None => kraken::tick_sizes(&config.ws_url, config.timing.connect_timeout).await,
        };
        match read {
            Ok(ticks) => {
                for (symbol, tick) in ticks {
                    if let Some(id) = ids.get(&symbol) {
                        catalog.set_tick_size(*id, tick);
                    }
                }
                return;
            }
            Err(e) => tracing::warn!(
                venue = config.venue.as_str(),
                error = %e,
                "tick sizes not read; retrying"
            ),
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff.delay(attempt, &mut jitter)) => {}
            _ = stop.changed() => return,
        }
    }
}

/// The body of a venue's reference-data `GET url`, or why there is none.
async fn reference(url: &str) -> Result<bytes::Bytes, String> {
    match transport::get(url, Duration::from_secs(10)).await {
        Ok(resp) if resp.status == 200 => Ok(resp.body),
        Ok(resp) => Err(format!("{url} answered {}", resp.status)),
        Err(e) => Err(format!("{url}: {e}")),
    }
}
