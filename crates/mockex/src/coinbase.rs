//! The Coinbase Advanced Trade personality: `subscribe`/`unsubscribe` with one channel
//! per message (`level2`, `market_trades`, `heartbeats`); a `level2` subscription gets a
//! snapshot of each product's whole book in-band, then updates; `market_trades` resends
//! the latest trades on subscribe; every message of a connection is numbered by
//! `sequence_num`, and a dropped one leaves a hole in those numbers. A connection that
//! subscribes to nothing within `subscribe_within` is closed, as the venue does. REST
//! serves the public product list with each product's price tick.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;

use super::truth::{Levels, TradeOut, price_text, qty_text};
use super::{Message, Shared, http, sides, take};

/// The public product list's path.
const PRODUCTS: &str = "/api/v3/brokerage/market/products";

const TIME: &str = "2026-12-02T12:00:00.000000Z";

fn update_json(bid: bool, price: i64, qty: u64) -> String {
    format!(
        r#"{{"side":"{}","event_time":"{TIME}","price_level":"{}","new_quantity":"{}"}}"#,
        if bid { "bid" } else { "offer" },
        price_text(price),
        qty_text(qty)
    )
}

fn l2(seq: u64, kind: &str, product: &str, updates: &[String]) -> String {
    format!(
        r#"{{"channel":"l2_data","client_id":"","timestamp":"{TIME}","sequence_num":{seq},"events":[{{"type":"{kind}","product_id":"{product}","updates":[{}]}}]}}"#,
        updates.join(",")
    )
}

fn trades_json(seq: u64, kind: &str, product: &str, trades: &[TradeOut]) -> String {
    let items: Vec<String> = trades
        .iter()
        .map(|t| {
            // The maker's side, as Coinbase reports it.
            let side = if t.buyer_is_maker { "BUY" } else { "SELL" };
            format!(
                r#"{{"trade_id":"{}","product_id":"{product}","price":"{}","size":"{}","side":"{side}","time":"{TIME}"}}"#,
                t.id,
                price_text(t.price),
                qty_text(t.qty)
            )
        })
        .collect();
    format!(
        r#"{{"channel":"market_trades","client_id":"","timestamp":"{TIME}","sequence_num":{seq},"events":[{{"type":"{kind}","trades":[{}]}}]}}"#,
        items.join(",")
    )
}

/// One connection.
pub(super) async fn session(stream: TcpStream, shared: Arc<Shared>) {
    let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
        return;
    };
    let connection = shared.connected();
    // Numbers of different connections never meet, so the truth can be kept by number.
    let mut seq = connection * 1_000_000_000;
    let mut level2: HashSet<String> = HashSet::new();
    let mut trades: HashSet<String> = HashSet::new();
    let mut heartbeats = false;
    let mut subscribed = false;
    let deadline = tokio::time::Instant::now() + shared.config.subscribe_within;
    let mut beat = tokio::time::interval(Duration::from_secs(1));
    let mut events = shared.events.subscribe();
    let mut control = shared.control.subscribe();
    loop {
        let mut out: Vec<String> = Vec::new();
        tokio::select! {
            _ = tokio::time::sleep_until(deadline), if !subscribed => {
                shared.state().stats.violations.push("no subscription within the deadline".into());
                return;
            }
            incoming = ws.next() => {
                let Some(Ok(msg)) = incoming else { return };
                let Message::Text(text) = msg else { continue };
                let Ok(v) = serde_json::from_str::<serde_json::Value>(text.as_str()) else {
                    shared.state().stats.violations.push(format!("undecodable request {text}"));
                    continue;
                };
                let kind = v["type"].as_str().unwrap_or("");
                let channel = v["channel"].as_str().unwrap_or("");
                let products: Vec<String> = v["product_ids"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect())
                    .unwrap_or_default();
                if v.get("channels").is_some() {
                    shared.state().stats.violations.push(format!("more than one channel in {text}"));
                }
                subscribed |= kind == "subscribe";
                let mut state = shared.state();
                if kind == "subscribe" {
                    state.stats.subscribe_frames += 1;
                }
                seq += 1;
                out.push(format!(
                    r#"{{"channel":"subscriptions","client_id":"","timestamp":"{TIME}","sequence_num":{seq},"events":[{{"subscriptions":{{"{channel}":{}}}}}]}}"#,
                    serde_json::to_string(&products).unwrap_or_default()
                ));
                match (kind, channel) {
                    ("subscribe", "heartbeats") => heartbeats = true,
                    ("subscribe", "level2") => {
                        for p in products {
                            let Some(truth) = state.truths.get(&p) else { continue };
                            let book: Levels = truth.book().clone();
                            let updates: Vec<String> = book.iter().map(|(&(bid, price), &qty)| update_json(bid, price, qty)).collect();
                            seq += 1;
                            state.by_message.insert((p.clone(), seq), sides(&book));
                            out.push(l2(seq, "snapshot", &p, &updates));
                            level2.insert(p);
                        }
                    }
                    ("unsubscribe", "level2") => {
                        for p in products {
                            level2.remove(&p);
                        }
                    }
                    ("subscribe", "market_trades") => {
                        for p in products {
                            let recent: Vec<TradeOut> = state.recent_trades.get(&p).map(|r| r.iter().rev().cloned().collect()).unwrap_or_default();
                            seq += 1;
                            out.push(trades_json(seq, "snapshot", &p, &recent));
                            trades.insert(p);
                        }
                    }
                    _ => state.stats.violations.push(format!("unknown request {text}")),
                }
            }
            _ = beat.tick(), if heartbeats => {
                seq += 1;
                out.push(format!(
                    r#"{{"channel":"heartbeats","client_id":"","timestamp":"{TIME}","sequence_num":{seq},"events":[{{"current_time":"2026-12-02 12:00:00.0 +0000 UTC","heartbeat_counter":{seq}}}]}}"#
                ));
            }
            event = shared.next_event(&mut events) => {
                let Some(event) = event else { return };
                if let Some(book) = event.book.as_ref().filter(|_| level2.contains(&event.symbol)) {
                    seq += 1;
                    let mut state = shared.state();
                    state.by_message.insert((event.symbol.clone(), seq), sides(book));
                    if take(&mut state.faults.drop_depth, &event.symbol) {
                        continue;
                    }
                    let updates: Vec<String> = event.changes.iter().map(|&(bid, p, q)| update_json(bid, p, q)).collect();
                    out.push(l2(seq, "update", &event.symbol, &updates));
                }
                if let Some(t) = event.trade.as_ref().filter(|_| trades.contains(&event.symbol)) {
                    seq += 1;
                    out.push(trades_json(seq, "update", &event.symbol, std::slice::from_ref(t)));
                }
            }
            c = control.recv() => {
                if !super::on_control(&mut ws, c, &mut events).await {
                    return;
                }
            }
        }
        for text in out {
            if ws.send(Message::text(text)).await.is_err() {
                return;
            }
        }
    }
}

/// The public product list (`GET /api/v3/brokerage/market/products?product_ids=…`): the
/// products asked for that the venue lists, with a price tick of 0.01 and an order-amount
/// step (`quote_increment`) that differs from it.
pub(super) async fn rest(
    mut stream: TcpStream,
    request: http::Request,
    shared: Arc<Shared>,
) -> std::io::Result<()> {
    if request.path() != PRODUCTS {
        return http::respond(&mut stream, 404, &[], r#"{"error":"NOT_FOUND"}"#).await;
    }
    let products: Vec<String> = request
        .queries("product_ids")
        .filter(|p| shared.config.symbols.iter().any(|s| s == p))
        .map(|p| {
            format!(
                r#"{{"product_id":"{p}","price":"30000.00","base_increment":"0.00000001","quote_increment":"0.00000001","price_increment":"0.01","status":"online"}}"#
            )
        })
        .collect();
    shared.state().stats.reference_reads += 1;
    let body = format!(
        r#"{{"products":[{}],"num_products":{}}}"#,
        products.join(","),
        products.len()
    );
    http::respond(&mut stream, 200, &[], &body).await
}
