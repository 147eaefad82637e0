//! A mock exchange for the connector tests, speaking one venue's real protocols on one
//! `127.0.0.1:0` listener, driven by a seeded book process ([`truth`]) that records the
//! true book at every update id. This file owns the venue's configuration, state, faults,
//! the generator and the listener; each personality its sessions: `binance` (spot and
//! USD-M: combined streams, `SUBSCRIBE`, pings, `serverShutdown`, REST depth and
//! `exchangeInfo` with weights and `Retry-After`), `coinbase` (Advanced Trade, and its
//! product list) and `kraken` (v2 with its checksum, and its instrument list).
//!
//! Faults are scripted from the test while the venue runs: drop or swap the next diffs
//! of a symbol, quiet a symbol, skip trade ids, close every connection abruptly, announce
//! `serverShutdown` then close 1001, go silent (neither read nor write, so client pings go
//! unanswered), serve stale or failing snapshots. Rules the venue enforces (control
//! frames per second, streams per `SUBSCRIBE` and per connection, pongs within a deadline)
//! are recorded as [`Stats::violations`] when broken, and the connection is closed as the
//! venue would.

mod binance;
mod coinbase;
pub mod http;
mod kraken;
pub mod truth;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::SinkExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
pub use tokio_tungstenite::tungstenite::Message;

use truth::{Levels, Rng, SymbolTruth, TradeOut, Truths, price_text, qty_text};

/// Which Binance market the mock plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Market {
    /// Spot: `/stream`, `/api/v3/...`, contiguous update ids.
    Spot,
    /// USD-M: `/public/stream` for depth, `/market/stream` for trades, `/fapi/v1/...`,
    /// ids chained by `pu`.
    UsdM,
    /// Kraken spot v2: `/v2`, book views of the subscribed depth with a CRC32 over the
    /// top ten levels, trades; no REST.
    Kraken,
    /// Coinbase Advanced Trade: `level2` snapshots in-band then updates, `market_trades`,
    /// `heartbeats`, every message numbered per connection (`sequence_num`); no REST.
    Coinbase,
}

/// How the mock behaves.
#[derive(Debug, Clone)]
pub struct MockConfig {
    /// The market.
    pub market: Market,
    /// Upper-case symbols.
    pub symbols: Vec<String>,
    /// Seeds the book process.
    pub seed: u64,
    /// Each tick, every symbol gets a diff (and a trade one tick in three).
    pub tick: Duration,
    /// Server pings at this interval, each needing a pong within `pong_within`.
    pub ping_every: Option<Duration>,
    /// See `ping_every`.
    pub pong_within: Duration,
    /// Incoming control frames (text, ping, pong) allowed per second and connection;
    /// 0 leaves it unenforced.
    pub control_frames_per_s: usize,
    /// Streams allowed per connection.
    pub max_streams: usize,
    /// Connections close with 1001 at this age.
    pub max_conn_age: Option<Duration>,
    /// Coinbase: a connection with no subscription this long is closed (the venue's 5 s).
    pub subscribe_within: Duration,
    /// Update ids per symbol whose true book is kept for [`MockExchange::truth_at`].
    pub history: usize,
}

impl MockConfig {
    /// Spot defaults for `symbols`: a diff every 5 ms, no pings, limits as the venue's.
    pub fn spot(symbols: &[&str]) -> MockConfig {
        MockConfig {
            market: Market::Spot,
            symbols: symbols.iter().map(|s| s.to_ascii_uppercase()).collect(),
            seed: 7,
            tick: Duration::from_millis(5),
            ping_every: None,
            pong_within: Duration::from_secs(60),
            control_frames_per_s: 5,
            max_streams: 1024,
            max_conn_age: None,
            subscribe_within: Duration::from_secs(5),
            history: 200_000,
        }
    }
}

impl MockConfig {
    /// USD-M defaults for `symbols`: as [`MockConfig::spot`], with ten control frames a
    /// second and ids chained by `pu`.
    pub fn usdm(symbols: &[&str]) -> MockConfig {
        MockConfig {
            market: Market::UsdM,
            control_frames_per_s: 10,
            ..MockConfig::spot(symbols)
        }
    }
}

impl MockConfig {
    /// Coinbase Advanced Trade defaults for `products` (`BTC-USD`).
    pub fn coinbase(products: &[&str]) -> MockConfig {
        MockConfig {
            market: Market::Coinbase,
            ..MockConfig::kraken(products)
        }
    }

    /// Kraken v2 defaults for `symbols` (`BTC/USD`).
    pub fn kraken(symbols: &[&str]) -> MockConfig {
        MockConfig {
            market: Market::Kraken,
            symbols: symbols.iter().map(|s| s.to_string()).collect(),
            control_frames_per_s: 0,
            ..MockConfig::spot(&[])
        }
    }
}

/// What the venue saw and did.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Market-data WebSocket connections accepted (Kraken's: once one subscribes to a
    /// book or trades; one that only reads the instrument list is in `reference_reads`).
    pub connections: u64,
    /// When each was accepted.
    pub connected_at: Vec<Instant>,
    /// `SUBSCRIBE` frames.
    pub subscribe_frames: u64,
    /// The most streams in one `SUBSCRIBE`.
    pub max_params: usize,
    /// Pings sent, and pongs that echoed them.
    pub pings: u64,
    /// See `pings`.
    pub pongs: u64,
    /// Connections closed for a missing pong.
    pub no_pong_closes: u64,
    /// REST depth requests, and how many were answered with a book.
    pub depth_requests: u64,
    /// See `depth_requests`.
    pub depth_served: u64,
    /// The highest used weight in any minute.
    pub max_weight_1m: u32,
    /// Requests that came before a `Retry-After` had passed.
    pub early_retries: u64,
    /// Reference-data requests answered: Binance `exchangeInfo`, the Coinbase product
    /// list, Kraken `instrument` snapshots.
    pub reference_reads: u64,
    /// Broken venue rules.
    pub violations: Vec<String>,
}

/// Snapshot faults, consumed one request at a time.
#[derive(Debug, Clone)]
pub enum SnapshotFault {
    /// Serve the book this many diffs old, or the oldest kept: one from before any
    /// connection (stale to all of them).
    Stale(usize),
    /// Answer with this status and `Retry-After` seconds.
    Fail(u16, u64),
}

#[derive(Debug, Default)]
struct Faults {
    drop_depth: HashMap<String, u32>,
    swap_depth: HashMap<String, Option<String>>,
    quiet: HashMap<String, Instant>,
    snapshots: VecDeque<SnapshotFault>,
    snapshot_delay: Duration,
    retry_after_until: Option<Instant>,
    duplicate: HashMap<String, u32>,
    phantom_cross: HashMap<String, u32>,
    bad_checksum: HashMap<String, u32>,
    bad_snapshot_checksum: HashMap<String, u32>,
}

#[derive(Debug, Clone)]
enum Control {
    CloseAbrupt,
    ServerShutdown,
    Silence(Duration),
    Raw(Message),
}

/// A generated message: the `data` object of a combined-stream envelope.
#[derive(Debug)]
struct Generated {
    symbol: String,
    depth: bool,
    /// Binance's rendering.
    data: String,
    /// The whole book after a depth change (venues that send views of it, Kraken).
    book: Option<Arc<Levels>>,
    /// The changes of a depth change, for venues that render them themselves (Coinbase).
    changes: Vec<(bool, i64, u64)>,
    /// The trade, for venues that render it themselves.
    trade: Option<TradeOut>,
}

struct State {
    rng: Rng,
    truths: Truths,
    /// Kraken: the book view each checksum sent stood for, by symbol.
    checksums: HashMap<String, HashMap<u32, (TrueSide, TrueSide)>>,
    /// Coinbase: the book each `l2_data` message left, by product and `sequence_num`.
    by_message: HashMap<(String, u64), (TrueSide, TrueSide)>,
    /// Coinbase: the latest trades of each product, resent on subscribe.
    recent_trades: HashMap<String, VecDeque<TradeOut>>,
    faults: Faults,
    stats: Stats,
    weight: VecDeque<(Instant, u32)>,
}

struct Shared {
    config: MockConfig,
    state: Mutex<State>,
    events: broadcast::Sender<Arc<Generated>>,
    control: broadcast::Sender<Control>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a new connection; returns how many there have been.
    fn connected(&self) -> u64 {
        let mut state = self.state();
        state.stats.connections += 1;
        state.stats.connected_at.push(Instant::now());
        state.stats.connections
    }

    /// The next generated message for a session: `None` when the venue stopped. A session
    /// that fell behind the generator would have a hole it did not choose: a violation.
    async fn next_event(
        &self,
        events: &mut broadcast::Receiver<Arc<Generated>>,
    ) -> Option<Arc<Generated>> {
        loop {
            match events.recv().await {
                Ok(e) => return Some(e),
                Err(broadcast::error::RecvError::Lagged(n)) => self
                    .state()
                    .stats
                    .violations
                    .push(format!("the mock's own session lagged by {n} messages")),
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

/// A running mock exchange; dropped, it stops.
pub struct MockExchange {
    addr: SocketAddr,
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for MockExchange {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// One side of a true book, best first, as the venue writes prices and quantities.
pub type TrueSide = Vec<(String, String)>;

impl MockExchange {
    /// Starts the venue on `127.0.0.1:0` (inside a tokio runtime).
    pub async fn start(config: MockConfig) -> std::io::Result<MockExchange> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let mut rng = Rng::new(config.seed);
        let truths: Truths = config
            .symbols
            .iter()
            .map(|s| {
                let mut truth =
                    SymbolTruth::new(&mut rng, config.market == Market::UsdM, config.history);
                // One step before anyone connects: the oldest book kept (what a `Stale`
                // snapshot falls back to) is then older than any diff a connection gets,
                // so it is stale to every connection, however early it subscribes.
                truth.step(&mut rng);
                (s.clone(), truth)
            })
            .collect();
        let (events, _) = broadcast::channel(1 << 16);
        let (control, _) = broadcast::channel(64);
        let shared = Arc::new(Shared {
            config,
            state: Mutex::new(State {
                rng,
                truths,
                checksums: HashMap::new(),
                by_message: HashMap::new(),
                recent_trades: HashMap::new(),
                faults: Faults::default(),
                stats: Stats::default(),
                weight: VecDeque::new(),
            }),
            events,
            control,
        });
        let accept = tokio::spawn(accept_loop(listener, shared.clone()));
        let generate = tokio::spawn(generate_loop(shared.clone()));
        Ok(MockExchange {
            addr,
            shared,
            tasks: vec![accept, generate],
        })
    }

    /// `ws://127.0.0.1:port`, the base a connector's `ws_url` takes.
    pub fn ws_url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// `http://127.0.0.1:port`, the base a connector's `rest_url` takes.
    pub fn rest_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The venue's current update id of `symbol`.
    pub fn last_id(&self, symbol: &str) -> u64 {
        self.shared
            .state()
            .truths
            .get(symbol)
            .map_or(0, SymbolTruth::last_id)
    }

    /// The true book of `symbol` at update id `id` (bids, asks; best first), if a diff
    /// ended there. Kraken has no ids: `id` is the checksum the venue sent, and the book
    /// is the subscribed view it stood for.
    pub fn truth_at(&self, symbol: &str, id: u64) -> Option<(TrueSide, TrueSide)> {
        let state = self.shared.state();
        match self.shared.config.market {
            Market::Kraken => {
                let sum = u32::try_from(id).ok()?;
                return state.checksums.get(symbol)?.get(&sum).cloned();
            }
            Market::Coinbase => {
                return state.by_message.get(&(symbol.to_owned(), id)).cloned();
            }
            Market::Spot | Market::UsdM => {}
        }
        state.truths.get(symbol)?.at(id).map(sides)
    }

    /// Kraken: the next `n` book updates of `symbol` carry a wrong checksum.
    pub fn bad_checksum(&self, symbol: &str, n: u32) {
        self.shared
            .state()
            .faults
            .bad_checksum
            .insert(symbol.to_owned(), n);
    }

    /// Kraken: the next `n` book snapshots of `symbol` carry a wrong checksum.
    pub fn bad_snapshot_checksum(&self, symbol: &str, n: u32) {
        self.shared
            .state()
            .faults
            .bad_snapshot_checksum
            .insert(symbol.to_owned(), n);
    }

    /// What the venue saw.
    pub fn stats(&self) -> Stats {
        self.shared.state().stats.clone()
    }

    /// The next `n` diffs of `symbol` are never sent.
    pub fn drop_depth(&self, symbol: &str, n: u32) {
        self.shared
            .state()
            .faults
            .drop_depth
            .insert(symbol.to_owned(), n);
    }

    /// The next two diffs of `symbol` are sent in reverse order.
    pub fn swap_depth(&self, symbol: &str) {
        self.shared
            .state()
            .faults
            .swap_depth
            .insert(symbol.to_owned(), None);
    }

    /// `symbol` gets no diffs and no trades for `d`.
    pub fn quiet(&self, symbol: &str, d: Duration) {
        self.shared
            .state()
            .faults
            .quiet
            .insert(symbol.to_owned(), Instant::now() + d);
    }

    /// The next trade of `symbol` skips `n` ids.
    pub fn skip_trades(&self, symbol: &str, n: u64) {
        if let Some(t) = self.shared.state().truths.get_mut(symbol) {
            t.skip_trades(n);
        }
    }

    /// The next snapshot requests meet these faults, in order.
    pub fn snapshot_faults(&self, faults: impl IntoIterator<Item = SnapshotFault>) {
        self.shared.state().faults.snapshots.extend(faults);
    }

    /// Every snapshot is answered after `d`.
    pub fn snapshot_delay(&self, d: Duration) {
        self.shared.state().faults.snapshot_delay = d;
    }

    /// The next `n` diffs and trades of `symbol` are each sent twice.
    pub fn duplicate(&self, symbol: &str, n: u32) {
        self.shared
            .state()
            .faults
            .duplicate
            .insert(symbol.to_owned(), n);
    }

    /// The next diff of `symbol` also carries a bid above the best ask, which the true
    /// book never had (a venue glitch): a crossed book if applied.
    pub fn phantom_cross(&self, symbol: &str) {
        self.shared
            .state()
            .faults
            .phantom_cross
            .insert(symbol.to_owned(), 1);
    }

    /// Every connection is sent `message` as it is (text that is not a venue message,
    /// binary frames, invalid UTF-8 in a text frame, oversize frames).
    pub fn send_raw(&self, message: Message) {
        let _ = self.shared.control.send(Control::Raw(message));
    }

    /// Every connection is dropped without a close frame.
    pub fn close_abruptly(&self) {
        let _ = self.shared.control.send(Control::CloseAbrupt);
    }

    /// Every connection is told `serverShutdown`, then closed with 1001 a second later.
    pub fn server_shutdown(&self) {
        let _ = self.shared.control.send(Control::ServerShutdown);
    }

    /// Every connection goes silent for `d`: nothing sent, nothing read (client pings
    /// go unanswered), TCP left open.
    pub fn silence(&self, d: Duration) {
        let _ = self.shared.control.send(Control::Silence(d));
    }
}

fn sides(book: &Levels) -> (TrueSide, TrueSide) {
    let text = |(&(_, p), &q): (&(bool, i64), &u64)| (price_text(p), qty_text(q));
    let bids = book
        .iter()
        .filter(|((b, _), _)| *b)
        .rev()
        .map(text)
        .collect();
    let asks = book.iter().filter(|((b, _), _)| !*b).map(text).collect();
    (bids, asks)
}

/// Consumes one of a symbol's pending faults.
fn take(faults: &mut HashMap<String, u32>, symbol: &str) -> bool {
    match faults.get_mut(symbol) {
        Some(n) if *n > 0 => {
            *n -= 1;
            true
        }
        _ => false,
    }
}

async fn generate_loop(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(shared.config.tick);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut symbols = shared.config.symbols.clone();
    symbols.sort();
    loop {
        tick.tick().await;
        let mut out: Vec<Generated> = Vec::new();
        {
            let mut guard = shared.state();
            let State {
                rng,
                truths,
                faults,
                recent_trades: guard_recent,
                ..
            } = &mut *guard;
            let now = Instant::now();
            for symbol in &symbols {
                if faults.quiet.get(symbol).is_some_and(|&until| now < until) {
                    continue;
                }
                let Some(truth) = truths.get_mut(symbol) else {
                    continue;
                };
                let mut diff = truth.step(rng);
                if take(&mut faults.phantom_cross, symbol) {
                    // Sent, never applied to the truth.
                    diff.changes.push((true, truth::MID + 2, 100_000_000));
                }
                let data = binance::render_diff(shared.config.market, symbol, &diff);
                let book = Arc::new(truth.book().clone());
                let depth_event = |data: String| Generated {
                    symbol: symbol.clone(),
                    depth: true,
                    data,
                    book: Some(book.clone()),
                    changes: diff.changes.clone(),
                    trade: None,
                };
                let twice = take(&mut faults.duplicate, symbol);
                if twice {
                    out.push(depth_event(data.clone()));
                }
                // Kraken's and Coinbase's sessions drop what they send themselves (they
                // keep a view, or number their messages).
                let dropped = matches!(shared.config.market, Market::Spot | Market::UsdM)
                    && take(&mut faults.drop_depth, symbol);
                if !dropped {
                    match faults.swap_depth.get_mut(symbol) {
                        Some(held @ None) => *held = Some(data),
                        Some(Some(_)) => {
                            let first = faults.swap_depth.remove(symbol).flatten();
                            out.push(depth_event(data));
                            if let Some(first) = first {
                                out.push(depth_event(first));
                            }
                        }
                        None => out.push(depth_event(data)),
                    }
                }
                if rng.below(3) == 0 || twice {
                    let trade = truth.trade(rng);
                    let text = binance::render_trade(symbol, &trade);
                    let recent = guard_recent.entry(symbol.clone()).or_default();
                    recent.push_back(trade.clone());
                    if recent.len() > 5 {
                        recent.pop_front();
                    }
                    let trade_event = |data: String| Generated {
                        symbol: symbol.clone(),
                        depth: false,
                        data,
                        book: None,
                        changes: Vec::new(),
                        trade: Some(trade.clone()),
                    };
                    if twice {
                        out.push(trade_event(text.clone()));
                    }
                    out.push(trade_event(text));
                }
            }
        }
        for event in out {
            let _ = shared.events.send(Arc::new(event));
        }
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    while let Ok((stream, _)) = listener.accept().await {
        let shared = shared.clone();
        tokio::spawn(async move {
            let _ = serve(stream, shared).await;
        });
    }
}

/// Peeks at the request head to tell a WebSocket upgrade from a REST call.
async fn serve(mut stream: TcpStream, shared: Arc<Shared>) -> std::io::Result<()> {
    let mut buf = vec![0u8; 8192];
    let head = loop {
        let n = stream.peek(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") || n == buf.len() {
            break String::from_utf8_lossy(&buf[..n]).into_owned();
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    if head.to_ascii_lowercase().contains("upgrade: websocket") {
        let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
        match shared.config.market {
            Market::Kraken => kraken::session(stream, shared).await,
            Market::Coinbase => coinbase::session(stream, shared).await,
            Market::Spot | Market::UsdM => binance::session(stream, path, shared).await,
        }
        Ok(())
    } else {
        let request = http::read_request(&mut stream).await?;
        match shared.config.market {
            Market::Coinbase => coinbase::rest(stream, request, shared).await,
            _ => binance::rest(stream, request, shared).await,
        }
    }
}

/// A fault for the Kraken and Coinbase sessions (Binance announces its shutdowns, see
/// [`session`]); false when the connection is to end.
async fn on_control(
    ws: &mut tokio_tungstenite::WebSocketStream<TcpStream>,
    control: Result<Control, broadcast::error::RecvError>,
    events: &mut broadcast::Receiver<Arc<Generated>>,
) -> bool {
    match control {
        Ok(Control::CloseAbrupt) | Err(_) => false,
        Ok(Control::ServerShutdown) => {
            let _ = ws.close(None).await;
            false
        }
        Ok(Control::Raw(message)) => ws.send(message).await.is_ok(),
        Ok(Control::Silence(d)) => {
            tokio::time::sleep(d).await;
            // What was generated meanwhile was never sent: the stream has a hole.
            *events = events.resubscribe();
            true
        }
    }
}
