//! Coinbase Advanced Trade (`wss://advanced-trade-ws.coinbase.com`): subscribe frames
//! (one channel per message, sent within 5 s of connecting or the venue disconnects),
//! the wire types ([`wire`]), the connection's `sequence_num` check, and each product's
//! book and trade tape.
//!
//! The book comes in-band: subscribing `level2` sends a `snapshot` event per product,
//! then `update`s with absolute quantities. `heartbeats` keeps quiet connections open (one
//! message a second). Not confirmed by the docs, so chosen conservatively (connectors.md
//! §3.3): `sequence_num` is counted per connection across all channels and must rise by
//! one, so any jump is a lost message on this connection and every product on it is
//! resubscribed for a new snapshot, with a `Gap` of unknown size; `market_trades.side`
//! is taken to be the maker's side, as on Coinbase Exchange (c9s/bbgo PR #2148), so it is
//! inverted for the aggressor — the live smoke test checks this against the book.

pub mod wire;

use raven_model::{
    Aggressor, BookDelta, BookSnapshot, Channel, Level, LevelChange, Side, SnapshotKind,
    StatusKind, Trade, UnixNanos,
};

use crate::action::Action;
use crate::tape::TradeTape;
use crate::time::rfc3339;
use wire::{L2Event, MarketTrade};

/// The `VENUE` part of instrument names.
pub const VENUE: &str = "COINBASE";
/// The public WebSocket endpoint.
pub const DEFAULT_WS_URL: &str = "wss://advanced-trade-ws.coinbase.com";
/// The channels a connection subscribes for its products, each in its own message
/// (`heartbeats` is subscribed without products: [`subscribe_heartbeats`]).
pub const CHANNELS: [&str; 2] = ["level2", "market_trades"];

/// `{"type":"subscribe","channel":"heartbeats"}`: a message a second on this connection,
/// so quiet products do not let the venue close it (60–90 s idle otherwise).
pub fn subscribe_heartbeats() -> String {
    r#"{"type":"subscribe","channel":"heartbeats"}"#.to_owned()
}

/// `{"type":"subscribe","product_ids":[…],"channel":"…"}`; `heartbeats` takes no
/// products.
pub fn subscribe_frame(channel: &str, products: &[String]) -> String {
    request_frame("subscribe", channel, products)
}

/// `{"type":"unsubscribe","product_ids":[…],"channel":"…"}`.
pub fn unsubscribe_frame(channel: &str, products: &[String]) -> String {
    request_frame("unsubscribe", channel, products)
}

/// The public REST request listing `products` with their increments (no key needed):
/// `/api/v3/brokerage/market/products?product_ids=BTC-USD&product_ids=ETH-USD`.
pub fn products_path(products: &[String]) -> String {
    let ids: Vec<String> = products
        .iter()
        .map(|p| format!("product_ids={p}"))
        .collect();
    format!("/api/v3/brokerage/market/products?{}", ids.join("&"))
}

fn request_frame(kind: &str, channel: &str, products: &[String]) -> String {
    let ids = serde_json::to_string(products).unwrap_or_else(|_| "[]".to_owned());
    format!(r#"{{"type":"{kind}","product_ids":{ids},"channel":"{channel}"}}"#)
}

/// What the connection's message counter says about a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SequenceSeen {
    /// The next message (or the first).
    Next,
    /// Messages `expected..got` never arrived.
    Jump {
        /// The number that should have come.
        expected: u64,
        /// The number that came.
        got: u64,
    },
    /// Not above the last: a repeated or reordered message.
    Behind,
}

/// The last `sequence_num` of one connection.
#[derive(Debug, Clone, Default)]
pub struct SequenceCheck {
    last: Option<u64>,
}

impl SequenceCheck {
    /// Classifies `seq` and moves the mark.
    pub fn see(&mut self, seq: u64) -> SequenceSeen {
        let seen = match self.last {
            Some(last) if seq <= last => return SequenceSeen::Behind,
            Some(last) if seq > last + 1 => SequenceSeen::Jump {
                expected: last + 1,
                got: seq,
            },
            _ => SequenceSeen::Next,
        };
        self.last = Some(seq);
        seen
    }
}

/// One product's book state and trade tape.
#[derive(Debug, Clone, Default)]
pub struct Product {
    synced: bool,
    synced_once: bool,
    tape: TradeTape,
}

impl Product {
    /// Whether the product's book has had its snapshot.
    pub fn is_synced(&self) -> bool {
        self.synced
    }

    /// An `l2_data` event for this product, carried by message `sequence_num`.
    pub fn on_l2(&mut self, event: L2Event<'_>, sequence_num: u64, out: &mut Vec<Action>) {
        let time = event
            .updates
            .iter()
            .filter_map(|u| rfc3339(u.event_time))
            .max()
            .unwrap_or(UnixNanos::ZERO);
        let mut changes = Vec::with_capacity(event.updates.len());
        for u in &event.updates {
            let side = match u.side {
                "bid" => Side::Bid,
                "offer" | "ask" => Side::Ask,
                other => {
                    self.lost(format!("level with unknown side {other:?}"), out);
                    return;
                }
            };
            changes.push(LevelChange {
                side,
                price: u.price.0,
                qty: u.qty.0,
            });
        }
        match event.kind {
            "snapshot" => {
                let (mut bids, mut asks) = (Vec::new(), Vec::new());
                for c in changes.into_iter().filter(|c| !c.qty.is_zero()) {
                    let level = Level {
                        price: c.price,
                        qty: c.qty,
                    };
                    match c.side {
                        Side::Bid => bids.push(level),
                        Side::Ask => asks.push(level),
                    }
                }
                bids.sort_by_key(|l| std::cmp::Reverse(l.price));
                asks.sort_by_key(|l| l.price);
                out.push(Action::Snapshot {
                    venue_id: sequence_num,
                    exchange_time: time,
                    book: BookSnapshot {
                        bids,
                        asks,
                        kind: if self.synced_once {
                            SnapshotKind::Resync
                        } else {
                            SnapshotKind::Initial
                        },
                    },
                });
                self.synced = true;
                self.synced_once = true;
            }
            // Updates before the (re)subscription's snapshot continue nothing.
            "update" if !self.synced => {}
            "update" => {
                if !changes.is_empty() {
                    out.push(Action::Delta {
                        venue_id: sequence_num,
                        exchange_time: time,
                        delta: BookDelta { changes },
                    });
                }
            }
            other => self.lost(format!("l2_data event of unknown type {other:?}"), out),
        }
    }

    /// A book message for this product was lost (the connection's counter jumped, or it
    /// could not be decoded): the book waits for the snapshot a resubscription brings.
    pub fn lost(&mut self, detail: String, out: &mut Vec<Action>) {
        if self.synced {
            out.push(Action::status(
                Channel::Book,
                StatusKind::Gap,
                0,
                detail.clone(),
            ));
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

    /// The connection carrying this product is gone.
    pub fn disconnect(&mut self) {
        self.synced = false;
    }

    /// A trade of this product onto its tape: a repeat (the recent trades a subscription
    /// resends) is dropped, a jump in ids is a `Gap` on the trades channel first.
    pub fn on_trade(&mut self, t: &MarketTrade<'_>, out: &mut Vec<Action>) {
        let Ok(id) = t.trade_id.parse::<u64>() else {
            out.push(Action::status(
                Channel::Trades,
                StatusKind::Rejected,
                0,
                format!("trade id {:?} is not a number; trade dropped", t.trade_id),
            ));
            return;
        };
        let Some(aggressor) = aggressor(t.side) else {
            out.push(Action::status(
                Channel::Trades,
                StatusKind::Rejected,
                0,
                format!("trade {id} has unknown side {:?}; trade dropped", t.side),
            ));
            return;
        };
        if !self.tape.admit(id, out) {
            return;
        }
        out.push(Action::Trade {
            exchange_time: rfc3339(t.time).unwrap_or(UnixNanos::ZERO),
            trade: Trade {
                price: t.price.0,
                qty: t.size.0,
                aggressor,
                trade_id: t.trade_id.to_owned(),
            },
        });
    }
}

/// `market_trades.side` is the maker's side: a `BUY` maker was hit by a seller.
pub fn aggressor(side: &str) -> Option<Aggressor> {
    match side {
        "BUY" | "buy" => Some(Aggressor::Sell),
        "SELL" | "sell" => Some(Aggressor::Buy),
        "UNKNOWN_ORDER_SIDE" | "" => Some(Aggressor::Unknown),
        _ => None,
    }
}

/// A trades event's trades in id order (an update may carry several, newest first).
pub fn in_id_order<'a, 'b>(trades: &'b [MarketTrade<'a>]) -> Vec<&'b MarketTrade<'a>> {
    let mut sorted: Vec<_> = trades.iter().collect();
    sorted.sort_by_key(|t| t.trade_id.parse::<u64>().unwrap_or(0));
    sorted
}

#[cfg(test)]
mod tests {
    use super::wire::{Events, Frame, decode};
    use super::*;

    fn l2(seq: u64, kind: &str, product: &str, updates: &str) -> String {
        format!(
            r#"{{"channel":"l2_data","client_id":"","timestamp":"2026-04-07T14:30:00Z","sequence_num":{seq},"events":[{{"type":"{kind}","product_id":"{product}","updates":[{updates}]}}]}}"#
        )
    }

    fn run(product: &mut Product, text: &str) -> Vec<Action> {
        let mut out = Vec::new();
        let Frame::Message {
            sequence_num,
            events: Events::L2(events),
            ..
        } = decode(text).unwrap()
        else {
            panic!("not l2")
        };
        for e in events {
            product.on_l2(e, sequence_num, &mut out);
        }
        out
    }

    #[test]
    fn subscribe_frames_carry_one_channel_each() {
        let products = vec!["BTC-USD".to_owned(), "ETH-USD".to_owned()];
        assert_eq!(
            subscribe_frame("level2", &products),
            r#"{"type":"subscribe","product_ids":["BTC-USD","ETH-USD"],"channel":"level2"}"#
        );
        assert_eq!(
            unsubscribe_frame("level2", &products[..1]),
            r#"{"type":"unsubscribe","product_ids":["BTC-USD"],"channel":"level2"}"#
        );
        assert_eq!(
            subscribe_heartbeats(),
            r#"{"type":"subscribe","channel":"heartbeats"}"#
        );
    }

    #[test]
    fn the_snapshot_is_sorted_and_updates_follow_it() {
        let mut p = Product::default();
        // An update before any snapshot continues nothing.
        let early = l2(
            0,
            "update",
            "BTC-USD",
            r#"{"side":"bid","event_time":"","price_level":"1","new_quantity":"1"}"#,
        );
        assert_eq!(run(&mut p, &early), vec![]);
        let snap = l2(
            1,
            "snapshot",
            "BTC-USD",
            r#"{"side":"bid","event_time":"2026-04-07T14:30:00.5Z","price_level":"99","new_quantity":"1"},{"side":"bid","event_time":"","price_level":"100","new_quantity":"2"},{"side":"offer","event_time":"","price_level":"102","new_quantity":"3"},{"side":"offer","event_time":"","price_level":"101","new_quantity":"0"}"#,
        );
        let lvl = |p: &str, q: &str| Level {
            price: p.parse().unwrap(),
            qty: q.parse().unwrap(),
        };
        assert_eq!(
            run(&mut p, &snap),
            vec![Action::Snapshot {
                venue_id: 1,
                exchange_time: UnixNanos(1_775_572_200_500_000_000),
                book: BookSnapshot {
                    bids: vec![lvl("100", "2"), lvl("99", "1")],
                    asks: vec![lvl("102", "3")],
                    kind: SnapshotKind::Initial,
                },
            }]
        );
        let upd = l2(
            2,
            "update",
            "BTC-USD",
            r#"{"side":"offer","event_time":"2026-04-07T14:30:01Z","price_level":"102","new_quantity":"0"}"#,
        );
        assert_eq!(
            run(&mut p, &upd),
            vec![Action::Delta {
                venue_id: 2,
                exchange_time: UnixNanos(1_775_572_201_000_000_000),
                delta: BookDelta {
                    changes: vec![LevelChange {
                        side: Side::Ask,
                        price: "102".parse().unwrap(),
                        qty: raven_model::Qty::ZERO,
                    }]
                },
            }]
        );
    }

    #[test]
    fn a_lost_message_resubscribes_and_the_next_snapshot_is_a_resync() {
        let mut check = SequenceCheck::default();
        assert_eq!(check.see(4), SequenceSeen::Next);
        assert_eq!(check.see(5), SequenceSeen::Next);
        assert_eq!(check.see(5), SequenceSeen::Behind);
        assert_eq!(
            check.see(8),
            SequenceSeen::Jump {
                expected: 6,
                got: 8
            }
        );
        let mut p = Product::default();
        run(&mut p, &l2(1, "snapshot", "X-Y", ""));
        let mut out = Vec::new();
        p.lost("messages 6..8 never arrived".to_owned(), &mut out);
        assert!(matches!(
            &out[..],
            [
                Action::Status {
                    kind: StatusKind::Gap,
                    missed: 0,
                    ..
                },
                Action::Status {
                    kind: StatusKind::Resync,
                    ..
                },
                Action::Resubscribe
            ]
        ));
        assert!(!p.is_synced());
        let again = run(&mut p, &l2(9, "snapshot", "X-Y", ""));
        assert!(matches!(
            &again[..],
            [Action::Snapshot {
                book: BookSnapshot {
                    kind: SnapshotKind::Resync,
                    ..
                },
                ..
            }]
        ));
    }

    #[test]
    fn trades_are_deduplicated_inverted_and_gaps_reported() {
        let mut p = Product::default();
        let text = r#"{"channel":"market_trades","client_id":"","timestamp":"t","sequence_num":1,"events":[{"type":"snapshot","trades":[{"trade_id":"12","product_id":"BTC-USD","price":"1","size":"2","side":"SELL","time":"2026-04-07T14:30:00Z"},{"trade_id":"11","product_id":"BTC-USD","price":"1","size":"1","side":"BUY","time":"2026-04-07T14:30:00Z"}]},{"type":"update","trades":[{"trade_id":"12","product_id":"BTC-USD","price":"1","size":"2","side":"SELL","time":"2026-04-07T14:30:00Z"},{"trade_id":"15","product_id":"BTC-USD","price":"3","size":"1","side":"BUY","time":"2026-04-07T14:30:00Z"}]}]}"#;
        let Frame::Message {
            events: Events::Trades(events),
            ..
        } = decode(text).unwrap()
        else {
            panic!("not trades")
        };
        let mut out = Vec::new();
        for e in &events {
            for t in in_id_order(&e.trades) {
                p.on_trade(t, &mut out);
            }
        }
        let ids: Vec<String> = out
            .iter()
            .map(|a| match a {
                Action::Trade { trade, .. } => format!("{} {:?}", trade.trade_id, trade.aggressor),
                Action::Status { kind, missed, .. } => format!("{kind:?} {missed}"),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(ids, ["11 Sell", "12 Buy", "Gap 2", "15 Sell"]);
    }
}
