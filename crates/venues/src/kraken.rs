//! Kraken spot WebSocket v2 (`wss://ws.kraken.com/v2`): subscribe frames, the wire types
//! ([`wire`]), and each pair's book kept with the venue's exact decimal text so that its
//! CRC32 checksum can be verified after every message, plus the trade tape.
//!
//! Facts relied on (docs.kraken.com "Book checksum (WebSocket v2)"; connectors.md §3.4):
//! the checksum covers the top ten asks (price ascending) then the top ten bids (price
//! descending), each level's price then quantity as text with the `.` removed and
//! leading zeros stripped, CRC32 (IEEE) of the concatenation; after every update the book
//! is truncated to the subscribed depth (levels falling out of scope get no message);
//! a resync is unsubscribe then subscribe with `snapshot: true`, for that pair only;
//! `trade.side` is the taker's; `trade_id` is a sequence per book.
//!
//! Kraken's book messages carry no update id: the `venue_id` of Kraken book output is the
//! venue's checksum of the book after the message, which a client can audit just as well.
//! Repeated mismatches right after fresh snapshots mean the checksum itself is unreliable
//! for the pair (precision edge cases have been reported, ccxt/ccxt#24461): after
//! [`UNRELIABLE_AFTER`] within [`UNRELIABLE_WINDOW_NS`] the pair reports it, stops
//! resyncing on mismatches (the engine's crossed-book refusal still guards it) and checks
//! again after [`UNRELIABLE_QUIET_NS`].

pub mod wire;

use std::cmp::Reverse;
use std::collections::{BTreeMap, VecDeque};

use raven_model::{
    Aggressor, BookDelta, BookSnapshot, Channel, Level, LevelChange, Price, Qty, Side,
    SnapshotKind, StatusKind, Trade, UnixNanos,
};

use crate::action::Action;
use crate::json::{parse_price, parse_qty};
use crate::tape::TradeTape;
use crate::time::rfc3339;
use wire::{BookData, KLevel, KTrade};

/// The `VENUE` part of instrument names (`KRAKEN:BTC/USD`).
pub const VENUE: &str = "KRAKEN";
/// The public WebSocket endpoint.
pub const DEFAULT_WS_URL: &str = "wss://ws.kraken.com/v2";
/// Book depths the venue serves.
pub const DEPTHS: [u32; 5] = [10, 25, 100, 500, 1000];
/// Levels per side the checksum covers, whatever the depth.
pub const CHECKSUM_LEVELS: usize = 10;
/// Mismatches right after fresh snapshots that make the checksum "unreliable".
pub const UNRELIABLE_AFTER: usize = 3;
/// ... within this window.
pub const UNRELIABLE_WINDOW_NS: u64 = 60 * UnixNanos::PER_SECOND;
/// How long checks stay off for a pair whose checksum was found unreliable.
pub const UNRELIABLE_QUIET_NS: u64 = 600 * UnixNanos::PER_SECOND;
/// Updates after a snapshot during which a mismatch counts as "right after" it.
const EARLY_UPDATES: u32 = 3;

/// `{"method":"subscribe","params":{"channel":"book","symbol":[…],"depth":d,"snapshot":true},"req_id":id}`.
pub fn subscribe_book(req_id: u64, symbols: &[String], depth: u32) -> String {
    let symbols = serde_json::to_string(symbols).unwrap_or_else(|_| "[]".to_owned());
    format!(
        r#"{{"method":"subscribe","params":{{"channel":"book","symbol":{symbols},"depth":{depth},"snapshot":true}},"req_id":{req_id}}}"#
    )
}

/// `{"method":"unsubscribe","params":{"channel":"book","symbol":[…],"depth":d},"req_id":id}`.
pub fn unsubscribe_book(req_id: u64, symbols: &[String], depth: u32) -> String {
    let symbols = serde_json::to_string(symbols).unwrap_or_else(|_| "[]".to_owned());
    format!(
        r#"{{"method":"unsubscribe","params":{{"channel":"book","symbol":{symbols},"depth":{depth}}},"req_id":{req_id}}}"#
    )
}

/// `{"method":"subscribe","params":{"channel":"trade","symbol":[…],"snapshot":true},"req_id":id}`:
/// the recent-trades snapshot fills what a reconnect missed; the tape drops repeats.
pub fn subscribe_trades(req_id: u64, symbols: &[String]) -> String {
    let symbols = serde_json::to_string(symbols).unwrap_or_else(|_| "[]".to_owned());
    format!(
        r#"{{"method":"subscribe","params":{{"channel":"trade","symbol":{symbols},"snapshot":true}},"req_id":{req_id}}}"#
    )
}

/// `{"method":"subscribe","params":{"channel":"instrument","snapshot":true},"req_id":id}`:
/// reference data for every pair in one snapshot (v2 spellings, which the REST
/// `AssetPairs` list does not use: it says `XBT/USD` where v2 says `BTC/USD`).
pub fn subscribe_instruments(req_id: u64) -> String {
    format!(
        r#"{{"method":"subscribe","params":{{"channel":"instrument","snapshot":true}},"req_id":{req_id}}}"#
    )
}

/// `{"method":"ping","req_id":id}`: Kraken's application-level keepalive.
pub fn ping(req_id: u64) -> String {
    format!(r#"{{"method":"ping","req_id":{req_id}}}"#)
}

/// A level's share of the checksum text: digits without the point, leading zeros gone.
fn fragment(price: &str, qty: &str) -> String {
    let mut out = String::with_capacity(price.len() + qty.len());
    for text in [price, qty] {
        let start = out.len();
        out.extend(text.chars().filter(|&c| c != '.'));
        let zeros = out[start..].bytes().take_while(|&b| b == b'0').count();
        out.replace_range(start..start + zeros, "");
    }
    out
}

/// The CRC32 of a book's top levels, from their fragments.
fn checksum<'a>(asks: impl Iterator<Item = &'a str>, bids: impl Iterator<Item = &'a str>) -> u32 {
    let mut crc = crc32fast::Hasher::new();
    for f in asks.take(CHECKSUM_LEVELS).chain(bids.take(CHECKSUM_LEVELS)) {
        crc.update(f.as_bytes());
    }
    crc.finalize()
}

#[derive(Debug, Clone)]
struct TextLevel {
    qty: Qty,
    fragment: String,
}

/// The checksum's circuit breaker for one pair.
#[derive(Debug, Clone, Default)]
struct Breaker {
    early_mismatches: VecDeque<UnixNanos>,
    off_until: Option<UnixNanos>,
}

impl Breaker {
    fn checking(&mut self, now: UnixNanos) -> bool {
        match self.off_until {
            Some(until) if now < until => false,
            Some(_) => {
                self.off_until = None;
                self.early_mismatches.clear();
                true
            }
            None => true,
        }
    }

    /// Records a mismatch right after a snapshot; true when that makes the checksum
    /// unreliable.
    fn trips(&mut self, now: UnixNanos) -> bool {
        while self
            .early_mismatches
            .front()
            .is_some_and(|&t| now.0.saturating_sub(t.0) > UNRELIABLE_WINDOW_NS)
        {
            self.early_mismatches.pop_front();
        }
        self.early_mismatches.push_back(now);
        if self.early_mismatches.len() >= UNRELIABLE_AFTER {
            self.off_until = Some(UnixNanos(now.0.saturating_add(UNRELIABLE_QUIET_NS)));
            return true;
        }
        false
    }
}

/// One pair's book, with the text the checksum needs, and its trade tape.
#[derive(Debug, Clone)]
pub struct Book {
    depth: usize,
    bids: BTreeMap<Reverse<Price>, TextLevel>,
    asks: BTreeMap<Price, TextLevel>,
    synced: bool,
    synced_once: bool,
    since_snapshot: u32,
    breaker: Breaker,
    tape: TradeTape,
}

impl Book {
    /// An empty book for a subscription of `depth` levels.
    pub fn new(depth: u32) -> Book {
        Book {
            depth: depth as usize,
            bids: BTreeMap::new(),
            asks: BTreeMap::new(),
            synced: false,
            synced_once: false,
            since_snapshot: 0,
            breaker: Breaker::default(),
            tape: TradeTape::default(),
        }
    }

    /// Whether the book has had its snapshot.
    pub fn is_synced(&self) -> bool {
        self.synced
    }

    /// The checksum of the book as kept.
    pub fn checksum(&self) -> u32 {
        checksum(
            self.asks.values().map(|l| l.fragment.as_str()),
            self.bids.values().map(|l| l.fragment.as_str()),
        )
    }

    /// A `book` message's part for this pair; `kind` is `snapshot` or `update`; `now` (the
    /// receive time) paces the checksum breaker.
    pub fn on_book(
        &mut self,
        kind: &str,
        data: BookData<'_>,
        now: UnixNanos,
        out: &mut Vec<Action>,
    ) {
        let time = rfc3339(data.timestamp).unwrap_or(UnixNanos::ZERO);
        match kind {
            "snapshot" => {
                self.bids.clear();
                self.asks.clear();
                for level in data.bids.iter().filter(|l| !l.qty.is_zero()) {
                    self.bids.insert(Reverse(level.price), text_level(level));
                }
                for level in data.asks.iter().filter(|l| !l.qty.is_zero()) {
                    self.asks.insert(level.price, text_level(level));
                }
                self.truncate(&mut Vec::new());
                self.since_snapshot = 0;
                // `synced` still says whether clients hold a book: a mismatch reports a
                // resync only then.
                if !self.verify(data.checksum, now, out) {
                    return;
                }
                self.synced = true;
                out.push(Action::Snapshot {
                    venue_id: u64::from(data.checksum),
                    exchange_time: time,
                    book: BookSnapshot {
                        bids: self.levels(Side::Bid),
                        asks: self.levels(Side::Ask),
                        kind: if self.synced_once {
                            SnapshotKind::Resync
                        } else {
                            SnapshotKind::Initial
                        },
                    },
                });
                self.synced_once = true;
            }
            "update" if self.synced => {
                let mut changes = Vec::with_capacity(data.bids.len() + data.asks.len());
                for level in &data.bids {
                    self.set(Side::Bid, level, &mut changes);
                }
                for level in &data.asks {
                    self.set(Side::Ask, level, &mut changes);
                }
                self.truncate(&mut changes);
                self.since_snapshot = self.since_snapshot.saturating_add(1);
                if !self.verify(data.checksum, now, out) {
                    return;
                }
                if !changes.is_empty() {
                    out.push(Action::Delta {
                        venue_id: u64::from(data.checksum),
                        exchange_time: time,
                        delta: BookDelta { changes },
                    });
                }
            }
            // Updates before the (re)subscription's snapshot continue nothing.
            "update" => {}
            other => self.lost(format!("book message of unknown type {other:?}"), out),
        }
    }

    /// A book message for this pair was lost or refused (undecodable, or the engine
    /// refused the book): resubscribe for a fresh snapshot.
    pub fn lost(&mut self, detail: String, out: &mut Vec<Action>) {
        if self.synced {
            out.push(Action::status(
                Channel::Book,
                StatusKind::Resync,
                0,
                format!("{detail}; resubscribing for a fresh snapshot"),
            ));
        }
        self.synced = false;
        out.push(Action::Resubscribe);
    }

    /// The connection carrying this pair is gone.
    pub fn disconnect(&mut self) {
        self.synced = false;
    }

    /// A trade of this pair onto its tape: repeats (the recent trades a subscription
    /// resends) dropped, a jump in ids reported as a `Gap` on the trades channel first.
    pub fn on_trade(&mut self, t: &KTrade<'_>, out: &mut Vec<Action>) {
        let refused =
            |detail: String| Action::status(Channel::Trades, StatusKind::Rejected, 0, detail);
        let aggressor = match t.side {
            "buy" => Aggressor::Buy,
            "sell" => Aggressor::Sell,
            other => {
                out.push(refused(format!(
                    "trade {} has unknown side {other:?}; dropped",
                    t.trade_id
                )));
                return;
            }
        };
        let parsed = parse_price::<serde_json::Error>(t.price.0)
            .and_then(|p| parse_qty::<serde_json::Error>(t.qty.0).map(|q| (p, q)));
        let (price, qty) = match parsed {
            Ok(pq) => pq,
            Err(e) => {
                out.push(refused(format!("trade {}: {e}; dropped", t.trade_id)));
                return;
            }
        };
        if !self.tape.admit(t.trade_id, out) {
            return;
        }
        out.push(Action::Trade {
            exchange_time: rfc3339(t.timestamp).unwrap_or(UnixNanos::ZERO),
            trade: Trade {
                price,
                qty,
                aggressor,
                trade_id: t.trade_id.to_string(),
            },
        });
    }

    /// Whether the book matches the venue's `expected` checksum, or checks are off; on a
    /// mismatch that resyncs, the statuses and the resubscription are pushed.
    fn verify(&mut self, expected: u32, now: UnixNanos, out: &mut Vec<Action>) -> bool {
        if !self.breaker.checking(now) {
            return true;
        }
        let computed = self.checksum();
        if computed == expected {
            return true;
        }
        if self.since_snapshot <= EARLY_UPDATES && self.breaker.trips(now) {
            out.push(Action::status(
                Channel::Book,
                StatusKind::Rejected,
                0,
                format!(
                    "checksum unreliable: {UNRELIABLE_AFTER} mismatches right after fresh \
                     snapshots within {} s (venue {expected}, computed {computed}); checks \
                     off for {} s, the book continues on the venue's updates",
                    UNRELIABLE_WINDOW_NS / UnixNanos::PER_SECOND,
                    UNRELIABLE_QUIET_NS / UnixNanos::PER_SECOND,
                ),
            ));
            return true;
        }
        self.lost(
            format!("checksum mismatch (venue {expected}, computed {computed})"),
            out,
        );
        false
    }

    fn set(&mut self, side: Side, level: &KLevel<'_>, changes: &mut Vec<LevelChange>) {
        let removed = level.qty.is_zero();
        match (side, removed) {
            (Side::Bid, true) => {
                self.bids.remove(&Reverse(level.price));
            }
            (Side::Bid, false) => {
                self.bids.insert(Reverse(level.price), text_level(level));
            }
            (Side::Ask, true) => {
                self.asks.remove(&level.price);
            }
            (Side::Ask, false) => {
                self.asks.insert(level.price, text_level(level));
            }
        }
        changes.push(LevelChange {
            side,
            price: level.price,
            qty: level.qty,
        });
    }

    /// Drops levels beyond the subscribed depth, as the venue does without a message.
    fn truncate(&mut self, changes: &mut Vec<LevelChange>) {
        while self.bids.len() > self.depth {
            if let Some((Reverse(price), _)) = self.bids.pop_last() {
                changes.push(LevelChange {
                    side: Side::Bid,
                    price,
                    qty: Qty::ZERO,
                });
            }
        }
        while self.asks.len() > self.depth {
            if let Some((price, _)) = self.asks.pop_last() {
                changes.push(LevelChange {
                    side: Side::Ask,
                    price,
                    qty: Qty::ZERO,
                });
            }
        }
    }

    fn levels(&self, side: Side) -> Vec<Level> {
        match side {
            Side::Bid => self
                .bids
                .iter()
                .map(|(Reverse(price), l)| Level {
                    price: *price,
                    qty: l.qty,
                })
                .collect(),
            Side::Ask => self
                .asks
                .iter()
                .map(|(price, l)| Level {
                    price: *price,
                    qty: l.qty,
                })
                .collect(),
        }
    }
}

fn text_level(level: &KLevel<'_>) -> TextLevel {
    TextLevel {
        qty: level.qty,
        fragment: fragment(level.price_text, level.qty_text),
    }
}

/// The reference checksum over text levels, written independently of [`Book`] (no
/// stored fragments): for the mock exchange and the tests.
pub fn reference_checksum(asks: &[(&str, &str)], bids: &[(&str, &str)]) -> u32 {
    let mut text = String::new();
    for (price, qty) in asks
        .iter()
        .take(CHECKSUM_LEVELS)
        .chain(bids.iter().take(CHECKSUM_LEVELS))
    {
        for part in [price, qty] {
            let digits: String = part.chars().filter(char::is_ascii_digit).collect();
            text.push_str(digits.trim_start_matches('0'));
        }
    }
    crc32fast::hash(text.as_bytes())
}

#[cfg(test)]
mod tests;
