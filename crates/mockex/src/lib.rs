//! A mock exchange for the connector tests: Binance spot or USD-M futures, speaking the
//! venue's real protocols on one `127.0.0.1:0` listener (WebSocket combined streams with
//! `SUBSCRIBE`, server pings that require pongs, `serverShutdown`; REST depth snapshots
//! and `exchangeInfo` with used-weight headers and `Retry-After`), driven by a seeded book
//! process ([`truth`]) that records the true book at every update id.
//!
//! Faults are scripted from the test while the venue runs: drop or swap the next diffs
//! of a symbol, quiet a symbol, skip trade ids, close every connection abruptly, announce
//! `serverShutdown` then close 1001, go silent (neither read nor write, so client pings go
//! unanswered), serve stale or failing snapshots. Rules the venue enforces (control
//! frames per second, streams per `SUBSCRIBE` and per connection, pongs within a deadline)
//! are recorded as [`Stats::violations`] when broken, and the connection is closed as the
//! venue would.

mod coinbase;
pub mod http;
mod kraken;
pub mod truth;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
pub use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use truth::{DiffOut, Levels, Rng, SymbolTruth, TradeOut, Truths, price_text, qty_text};

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
    /// WebSocket connections accepted.
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
    /// Broken venue rules.
    pub violations: Vec<String>,
}

/// Snapshot faults, consumed one request at a time.
#[derive(Debug, Clone)]
pub enum SnapshotFault {
    /// Serve the book this many diffs old.
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
                (
                    s.clone(),
                    SymbolTruth::new(&mut rng, config.market == Market::UsdM, config.history),
                )
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

fn levels_json(levels: &[(String, String)]) -> String {
    let items: Vec<String> = levels
        .iter()
        .map(|(p, q)| format!(r#"["{p}","{q}"]"#))
        .collect();
    format!("[{}]", items.join(","))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn render_diff(market: Market, symbol: &str, d: &DiffOut) -> String {
    if matches!(market, Market::Kraken | Market::Coinbase) {
        // Their sessions render what they send themselves.
        return String::new();
    }
    let side = |bid: bool| {
        let items: Vec<String> = d
            .changes
            .iter()
            .filter(|c| c.0 == bid)
            .map(|&(_, p, q)| format!(r#"["{}","{}"]"#, price_text(p), qty_text(q)))
            .collect();
        format!("[{}]", items.join(","))
    };
    let ms = now_ms();
    match market {
        Market::Spot => format!(
            r#"{{"e":"depthUpdate","E":{ms},"s":"{symbol}","U":{},"u":{},"b":{},"a":{}}}"#,
            d.first,
            d.last,
            side(true),
            side(false)
        ),
        Market::UsdM | Market::Kraken | Market::Coinbase => format!(
            r#"{{"e":"depthUpdate","E":{ms},"T":{ms},"s":"{symbol}","U":{},"u":{},"pu":{},"b":{},"a":{}}}"#,
            d.first,
            d.last,
            d.prev,
            side(true),
            side(false)
        ),
    }
}

fn render_trade(symbol: &str, t: &TradeOut) -> String {
    let ms = now_ms();
    format!(
        r#"{{"e":"aggTrade","E":{ms},"s":"{symbol}","a":{},"p":"{}","q":"{}","f":{},"l":{},"T":{ms},"m":{},"M":true}}"#,
        t.id,
        price_text(t.price),
        qty_text(t.qty),
        t.id * 3,
        t.id * 3 + 2,
        t.buyer_is_maker
    )
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
                let data = render_diff(shared.config.market, symbol, &diff);
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
                    let text = render_trade(symbol, &trade);
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
            Market::Spot | Market::UsdM => session(stream, path, shared).await,
        }
        Ok(())
    } else {
        let request = http::read_request(&mut stream).await?;
        rest(stream, request, shared).await
    }
}

async fn rest(
    mut stream: TcpStream,
    request: http::Request,
    shared: Arc<Shared>,
) -> std::io::Result<()> {
    let market = shared.config.market;
    let (depth_path, info_path) = match market {
        Market::Spot => ("/api/v3/depth", "/api/v3/exchangeInfo"),
        Market::UsdM => ("/fapi/v1/depth", "/fapi/v1/exchangeInfo"),
        Market::Kraken | Market::Coinbase => ("", ""),
    };
    if request.path() == info_path {
        let symbols: Vec<String> = shared
            .config
            .symbols
            .iter()
            .map(|s| {
                format!(
                    r#"{{"symbol":"{s}","status":"TRADING","filters":[{{"filterType":"PRICE_FILTER","minPrice":"0.01000000","maxPrice":"1000000.00000000","tickSize":"0.01000000"}}]}}"#
                )
            })
            .collect();
        let body = format!(
            r#"{{"timezone":"UTC","rateLimits":[{{"rateLimitType":"REQUEST_WEIGHT","interval":"MINUTE","intervalNum":1,"limit":6000}}],"symbols":[{}]}}"#,
            symbols.join(",")
        );
        return http::respond(&mut stream, 200, &[], &body).await;
    }
    if request.path() != depth_path {
        return http::respond(&mut stream, 404, &[], r#"{"code":-1,"msg":"no such path"}"#).await;
    }
    let symbol = request.query("symbol").unwrap_or("").to_owned();
    let limit: usize = request
        .query("limit")
        .and_then(|l| l.parse().ok())
        .unwrap_or(100);
    let weight = match limit {
        0..=100 => 5,
        101..=500 => 25,
        501..=1000 => 50,
        _ => 250,
    };
    let delay = shared.state().faults.snapshot_delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let (status, headers, body) = {
        let mut state = shared.state();
        let now = Instant::now();
        state.stats.depth_requests += 1;
        if state
            .faults
            .retry_after_until
            .is_some_and(|until| now < until)
        {
            state.stats.early_retries += 1;
            state
                .stats
                .violations
                .push("request before Retry-After passed".to_owned());
        }
        while state
            .weight
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > Duration::from_secs(60))
        {
            state.weight.pop_front();
        }
        state.weight.push_back((now, weight));
        let used: u32 = state.weight.iter().map(|(_, w)| w).sum();
        state.stats.max_weight_1m = state.stats.max_weight_1m.max(used);
        let used_header = ("X-MBX-USED-WEIGHT-1M", used.to_string());
        match state.faults.snapshots.pop_front() {
            Some(SnapshotFault::Fail(status, retry_after)) => {
                state.faults.retry_after_until = Some(now + Duration::from_secs(retry_after));
                (
                    status,
                    vec![used_header, ("Retry-After", retry_after.to_string())],
                    format!(
                        r#"{{"code":-1003,"msg":"Way too many requests; retry after {retry_after} s"}}"#
                    ),
                )
            }
            fault => {
                let back = match fault {
                    Some(SnapshotFault::Stale(back)) => back,
                    _ => 0,
                };
                match state.truths.get(&symbol) {
                    None => (
                        400,
                        vec![used_header],
                        r#"{"code":-1121,"msg":"Invalid symbol."}"#.to_owned(),
                    ),
                    Some(truth) => {
                        let (id, book) = truth.behind(back);
                        let (mut bids, mut asks) = sides(book);
                        bids.truncate(limit);
                        asks.truncate(limit);
                        state.stats.depth_served += 1;
                        let times = match market {
                            Market::Spot | Market::Kraken | Market::Coinbase => String::new(),
                            Market::UsdM => format!(r#""E":{0},"T":{0},"#, now_ms()),
                        };
                        (
                            200,
                            vec![used_header],
                            format!(
                                r#"{{"lastUpdateId":{id},{times}"bids":{},"asks":{}}}"#,
                                levels_json(&bids),
                                levels_json(&asks)
                            ),
                        )
                    }
                }
            }
        }
    };
    http::respond(&mut stream, status, &headers, &body).await
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

/// One WebSocket connection: subscriptions, the generated streams it asked for, pings,
/// and the venue's rules.
async fn session(stream: TcpStream, path: String, shared: Arc<Shared>) {
    let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
        return;
    };
    let config = shared.config.clone();
    shared.connected();
    let violation = |what: String| shared.state().stats.violations.push(what);
    // Stream names by lower-case symbol: (depth stream, trade stream).
    let mut subs: HashMap<String, (Option<String>, Option<String>)> = HashMap::new();
    let mut count = 0usize;
    let add = |stream: &str, subs: &mut HashMap<String, (Option<String>, Option<String>)>| {
        let Some((symbol, kind)) = stream.split_once('@') else {
            return;
        };
        let entry = subs.entry(symbol.to_owned()).or_default();
        if kind.starts_with("depth") {
            entry.0 = Some(stream.to_owned());
        } else if kind == "aggTrade" {
            entry.1 = Some(stream.to_owned());
        }
    };
    if let Some((_, query)) = path.split_once("?streams=") {
        for s in query.split('/') {
            add(s, &mut subs);
            count += 1;
        }
    }
    let mut events = shared.events.subscribe();
    let mut control = shared.control.subscribe();
    let mut ping = config
        .ping_every
        .map(|every| tokio::time::interval_at(tokio::time::Instant::now() + every, every));
    let mut awaiting_pong: Option<(Vec<u8>, tokio::time::Instant)> = None;
    let mut ping_seq = 0u64;
    let mut frames: VecDeque<Instant> = VecDeque::new();
    let age_limit = config
        .max_conn_age
        .map(|age| tokio::time::Instant::now() + age);
    let mut shutdown_at: Option<tokio::time::Instant> = None;
    let far = tokio::time::Instant::now() + Duration::from_secs(86_400);
    loop {
        let pong_deadline = awaiting_pong.as_ref().map_or(far, |(_, d)| *d);
        let close_at = shutdown_at.unwrap_or(far).min(age_limit.unwrap_or(far));
        tokio::select! {
            incoming = ws.next() => {
                let Some(Ok(msg)) = incoming else { return };
                if matches!(msg, Message::Text(_) | Message::Ping(_) | Message::Pong(_)) {
                    let now = Instant::now();
                    frames.push_back(now);
                    while frames.front().is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1)) {
                        frames.pop_front();
                    }
                    if config.control_frames_per_s > 0 && frames.len() > config.control_frames_per_s {
                        violation(format!("{} control frames within a second", frames.len()));
                        let _ = ws.close(Some(CloseFrame { code: CloseCode::Policy, reason: "Too many requests".into() })).await;
                        return;
                    }
                }
                match msg {
                    Message::Text(text) => {
                        let Ok(v) = serde_json::from_str::<serde_json::Value>(text.as_str()) else {
                            violation(format!("undecodable request {text}"));
                            continue;
                        };
                        let id = v.get("id").cloned().unwrap_or(serde_json::Value::Null);
                        let params: Vec<String> = v.get("params").and_then(|p| p.as_array()).map(|a| {
                            a.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect()
                        }).unwrap_or_default();
                        if v.get("method").and_then(|m| m.as_str()) == Some("SUBSCRIBE") {
                            {
                                let mut state = shared.state();
                                state.stats.subscribe_frames += 1;
                                state.stats.max_params = state.stats.max_params.max(params.len());
                            }
                            if params.len() > 200 {
                                violation(format!("{} streams in one SUBSCRIBE", params.len()));
                            }
                            count += params.len();
                            if count > config.max_streams {
                                violation(format!("{count} streams on one connection"));
                            }
                            for p in &params {
                                if config.market == Market::UsdM {
                                    let depth = p.contains("@depth");
                                    if depth != path.starts_with("/public") {
                                        violation(format!("{p} subscribed on {path}"));
                                    }
                                }
                                add(p, &mut subs);
                            }
                        }
                        let ack = format!(r#"{{"result":null,"id":{id}}}"#);
                        if ws.send(Message::text(ack)).await.is_err() {
                            return;
                        }
                    }
                    Message::Pong(payload)
                        if awaiting_pong.as_ref().is_some_and(|(p, _)| p[..] == payload[..]) =>
                    {
                        awaiting_pong = None;
                        shared.state().stats.pongs += 1;
                    }
                    Message::Close(_) => return,
                    _ => {}
                }
            }
            event = shared.next_event(&mut events) => {
                let Some(event) = event else { return };
                let Some((depth, trade)) = subs.get(&event.symbol.to_ascii_lowercase()) else { continue };
                let stream = if event.depth { depth } else { trade };
                let Some(stream) = stream else { continue };
                let text = format!(r#"{{"stream":"{stream}","data":{}}}"#, event.data);
                if ws.send(Message::text(text)).await.is_err() {
                    return;
                }
            }
            _ = async { ping.as_mut().expect("guarded").tick().await }, if ping.is_some() => {
                ping_seq += 1;
                let payload = ping_seq.to_string().into_bytes();
                awaiting_pong = Some((payload.clone(), tokio::time::Instant::now() + config.pong_within));
                shared.state().stats.pings += 1;
                if ws.send(Message::Ping(payload.into())).await.is_err() {
                    return;
                }
            }
            _ = tokio::time::sleep_until(pong_deadline), if awaiting_pong.is_some() => {
                shared.state().stats.no_pong_closes += 1;
                return;
            }
            _ = tokio::time::sleep_until(close_at), if shutdown_at.is_some() || age_limit.is_some() => {
                let _ = ws.close(Some(CloseFrame { code: CloseCode::Away, reason: "going away".into() })).await;
                return;
            }
            c = control.recv() => {
                match c {
                    Ok(Control::CloseAbrupt) | Err(_) => return,
                    Ok(Control::ServerShutdown) => {
                        let text = format!(r#"{{"stream":"!serverShutdown","data":{{"e":"serverShutdown","E":{}}}}}"#, now_ms());
                        if ws.send(Message::text(text)).await.is_err() {
                            return;
                        }
                        shutdown_at = Some(tokio::time::Instant::now() + Duration::from_secs(1));
                    }
                    Ok(Control::Raw(message)) => {
                        if ws.send(message).await.is_err() {
                            return;
                        }
                    }
                    Ok(Control::Silence(d)) => {
                        tokio::time::sleep(d).await;
                        // What was generated meanwhile was never sent: the stream has a hole.
                        events = events.resubscribe();
                    }
                }
            }
        }
    }
}
