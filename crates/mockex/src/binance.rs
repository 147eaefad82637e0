//! The Binance personality (spot and USD-M): combined-stream WebSocket sessions with
//! `SUBSCRIBE`, server pings that need pongs, `serverShutdown`, the venue's control-frame
//! and stream limits; REST depth snapshots and `exchangeInfo` with used-weight headers,
//! `Retry-After` and snapshot faults.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::truth::{DiffOut, TradeOut, price_text, qty_text};
use super::{Control, Market, Message, Shared, SnapshotFault, http, sides};

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

pub(super) fn render_diff(market: Market, symbol: &str, d: &DiffOut) -> String {
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

pub(super) fn render_trade(symbol: &str, t: &TradeOut) -> String {
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

pub(super) async fn rest(
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
        shared.state().stats.reference_reads += 1;
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

/// One WebSocket connection: subscriptions, the generated streams it asked for, pings,
/// and the venue's rules.
pub(super) async fn session(stream: TcpStream, path: String, shared: Arc<Shared>) {
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
