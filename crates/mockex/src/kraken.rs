//! The Kraken v2 personality: `subscribe`/`unsubscribe` for `book` (a depth of 10, 25,
//! 100, 500 or 1000) and `trade`, `ping`; each book subscription gets a snapshot of its
//! view of the true book, then updates with what changed in that view (levels pushed out
//! of it get no message, levels coming into it do), each with the CRC32 of the top ten
//! levels computed here, independently of Raven's code. An `instrument` subscription
//! gets the pair list with each pair's price tick.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;

use super::truth::{Levels, price_text, qty_text};
use super::{Message, Shared, TrueSide, take};

/// A view: the top `depth` levels per side, best first, as (price ticks, qty units).
type View = (Vec<(i64, u64)>, Vec<(i64, u64)>);

fn view(book: &Levels, depth: usize) -> View {
    let bids = book
        .iter()
        .filter(|((bid, _), _)| *bid)
        .rev()
        .take(depth)
        .map(|(&(_, p), &q)| (p, q))
        .collect();
    let asks = book
        .iter()
        .filter(|((bid, _), _)| !*bid)
        .take(depth)
        .map(|(&(_, p), &q)| (p, q))
        .collect();
    (bids, asks)
}

/// Kraken's checksum: top ten asks then top ten bids, price then quantity, each as text
/// with the point removed and leading zeros stripped, CRC32 of the concatenation.
fn checksum(v: &View) -> u32 {
    let mut text = String::new();
    for &(p, q) in v.1.iter().take(10).chain(v.0.iter().take(10)) {
        for part in [price_text(p), qty_text(q)] {
            let digits: String = part.chars().filter(|c| *c != '.').collect();
            text.push_str(digits.trim_start_matches('0'));
        }
    }
    crc32fast::hash(text.as_bytes())
}

fn true_sides(v: &View) -> (TrueSide, TrueSide) {
    let text = |side: &Vec<(i64, u64)>| {
        side.iter()
            .map(|&(p, q)| (price_text(p), qty_text(q)))
            .collect()
    };
    (text(&v.0), text(&v.1))
}

fn levels_json(levels: &[(i64, u64)]) -> String {
    let items: Vec<String> = levels
        .iter()
        .map(|&(p, q)| format!(r#"{{"price":{},"qty":{}}}"#, price_text(p), qty_text(q)))
        .collect();
    format!("[{}]", items.join(","))
}

/// What changed from `before` to `after` on one side: new or changed levels, and levels
/// removed from the book (not those only pushed out of the view).
fn side_changes(
    before: &[(i64, u64)],
    after: &[(i64, u64)],
    book: &Levels,
    bid: bool,
) -> Vec<(i64, u64)> {
    let mut out: Vec<(i64, u64)> = after
        .iter()
        .filter(|l| !before.contains(l))
        .copied()
        .collect();
    for &(p, _) in before {
        if !after.iter().any(|&(ap, _)| ap == p) && !book.contains_key(&(bid, p)) {
            out.push((p, 0));
        }
    }
    out
}

/// The `instrument` snapshot: an asset, then every pair with a price tick of 0.01 and
/// the venue's other reference fields.
fn instruments(symbols: &[String]) -> String {
    let pairs: Vec<String> = symbols
        .iter()
        .map(|s| {
            let (base, quote) = s.split_once('/').unwrap_or((s, ""));
            format!(
                r#"{{"symbol":"{s}","base":"{base}","quote":"{quote}","status":"online","qty_precision":8,"qty_increment":0.00000001,"price_precision":2,"cost_precision":5,"marginable":false,"has_index":true,"cost_min":0.5,"price_increment":0.01,"qty_min":0.0001}}"#
            )
        })
        .collect();
    format!(
        r#"{{"channel":"instrument","type":"snapshot","data":{{"assets":[{{"id":"USD","status":"enabled","precision":4,"precision_display":2,"borrowable":false,"collateral_value":1.0,"margin_rate":0.0}}],"pairs":[{}]}}}}"#,
        pairs.join(",")
    )
}

struct Sub {
    depth: usize,
    view: View,
}

/// One connection.
pub(super) async fn session(stream: TcpStream, shared: Arc<Shared>) {
    let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
        return;
    };
    // Counted once it asks for market data: the feed reads the instrument list on a
    // connection of its own.
    let mut counted = false;
    let mut books: HashMap<String, Sub> = HashMap::new();
    let mut trades: HashSet<String> = HashSet::new();
    let mut events = shared.events.subscribe();
    let mut control = shared.control.subscribe();
    loop {
        let mut out: Vec<String> = Vec::new();
        tokio::select! {
            incoming = ws.next() => {
                let Some(Ok(msg)) = incoming else { return };
                let Message::Text(text) = msg else { continue };
                let Ok(v) = serde_json::from_str::<serde_json::Value>(text.as_str()) else {
                    shared.state().stats.violations.push(format!("undecodable request {text}"));
                    continue;
                };
                let method = v["method"].as_str().unwrap_or("");
                let req_id = v["req_id"].as_u64().unwrap_or(0);
                let channel = v["params"]["channel"].as_str().unwrap_or("");
                let symbols: Vec<String> = v["params"]["symbol"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect())
                    .unwrap_or_default();
                if !counted && matches!(channel, "book" | "trade") {
                    shared.connected();
                    counted = true;
                }
                match (method, channel) {
                    ("ping", _) => out.push(format!(r#"{{"method":"pong","req_id":{req_id}}}"#)),
                    ("subscribe", "instrument") => {
                        shared.state().stats.reference_reads += 1;
                        out.push(format!(r#"{{"method":"subscribe","result":{{"channel":"instrument","snapshot":true}},"success":true,"req_id":{req_id}}}"#));
                        out.push(instruments(&shared.config.symbols));
                    }
                    ("subscribe", "book") => {
                        let depth = v["params"]["depth"].as_u64().unwrap_or(10) as usize;
                        let mut state = shared.state();
                        state.stats.subscribe_frames += 1;
                        for symbol in symbols {
                            let Some(truth) = state.truths.get(&symbol) else {
                                out.push(format!(r#"{{"method":"subscribe","error":"Currency pair not supported {symbol}","success":false,"req_id":{req_id}}}"#));
                                continue;
                            };
                            let v = view(truth.book(), depth);
                            out.push(format!(r#"{{"method":"subscribe","result":{{"channel":"book","depth":{depth},"snapshot":true,"symbol":"{symbol}"}},"success":true,"req_id":{req_id}}}"#));
                            let mut sum = checksum(&v);
                            state.checksums.entry(symbol.clone()).or_default().insert(sum, true_sides(&v));
                            if take(&mut state.faults.bad_snapshot_checksum, &symbol) {
                                sum = sum.wrapping_add(1);
                            }
                            out.push(format!(
                                r#"{{"channel":"book","type":"snapshot","data":[{{"symbol":"{symbol}","bids":{},"asks":{},"checksum":{sum}}}]}}"#,
                                levels_json(&v.0),
                                levels_json(&v.1)
                            ));
                            books.insert(symbol, Sub { depth, view: v });
                        }
                    }
                    ("unsubscribe", "book") => {
                        for symbol in symbols {
                            books.remove(&symbol);
                            out.push(format!(r#"{{"method":"unsubscribe","result":{{"channel":"book","symbol":"{symbol}"}},"success":true,"req_id":{req_id}}}"#));
                        }
                    }
                    ("subscribe", "trade") => {
                        for symbol in symbols {
                            out.push(format!(r#"{{"method":"subscribe","result":{{"channel":"trade","symbol":"{symbol}"}},"success":true,"req_id":{req_id}}}"#));
                            trades.insert(symbol);
                        }
                    }
                    _ => shared.state().stats.violations.push(format!("unknown request {text}")),
                }
            }
            event = shared.next_event(&mut events) => {
                let Some(event) = event else { return };
                if let (Some(book), Some(sub)) = (&event.book, books.get_mut(&event.symbol)) {
                    let next = view(book, sub.depth);
                    let bids = side_changes(&sub.view.0, &next.0, book, true);
                    let asks = side_changes(&sub.view.1, &next.1, book, false);
                    sub.view = next;
                    if bids.is_empty() && asks.is_empty() {
                        continue;
                    }
                    let mut state = shared.state();
                    let mut sum = checksum(&sub.view);
                    state.checksums.entry(event.symbol.clone()).or_default().insert(sum, true_sides(&sub.view));
                    if take(&mut state.faults.drop_depth, &event.symbol) {
                        continue;
                    }
                    if take(&mut state.faults.bad_checksum, &event.symbol) {
                        sum = sum.wrapping_add(1);
                    }
                    out.push(format!(
                        r#"{{"channel":"book","type":"update","data":[{{"symbol":"{}","bids":{},"asks":{},"checksum":{sum},"timestamp":"2026-12-02T12:00:00.000000Z"}}]}}"#,
                        event.symbol,
                        levels_json(&bids),
                        levels_json(&asks)
                    ));
                }
                if let Some(t) = event.trade.as_ref().filter(|_| trades.contains(&event.symbol)) {
                    // The maker buyer was hit: the taker sold.
                    let side = if t.buyer_is_maker { "sell" } else { "buy" };
                    out.push(format!(
                        r#"{{"channel":"trade","type":"update","data":[{{"symbol":"{}","side":"{side}","price":{},"qty":{},"ord_type":"market","trade_id":{},"timestamp":"2026-12-02T12:00:00.000000Z"}}]}}"#,
                        event.symbol,
                        price_text(t.price),
                        qty_text(t.qty),
                        t.id
                    ));
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
