//! The Binance session (spot and USD-M) a connection drives: its subscriptions, and its
//! instruments' book sync and trade tape fed from each frame, by symbol.

use std::collections::HashMap;

use raven_model::{Channel, Price, StatusKind, UnixNanos};
use raven_venues::Action;
use raven_venues::binance::sync::{BookSync, DEFAULT_BUFFER, Diff, Snapshot};
use raven_venues::binance::wire::{self, Frame};
use raven_venues::binance::{self, MAX_STREAMS_PER_FRAME, Market};
use raven_venues::tape::TradeTape;

use super::session::{Ignored, Session, Signal, tag, undecodable};

/// One connection's share of a Binance feed.
pub struct BinanceSession {
    market: Market,
    symbols: Vec<String>,
    slots: HashMap<String, usize>,
    books: Option<Vec<BookSync>>,
    tapes: Option<Vec<TradeTape>>,
    rest_url: String,
    depth_limit: u32,
    next_request: u64,
    ignored: Ignored,
}

impl BinanceSession {
    /// A session for `symbols` (upper case, in slot order) carrying their depth, their
    /// trades, or both.
    pub fn new(
        market: Market,
        symbols: Vec<String>,
        depth: bool,
        trades: bool,
        rest_url: String,
        depth_limit: u32,
    ) -> BinanceSession {
        let slots = symbols
            .iter()
            .enumerate()
            .map(|(i, s)| (s.clone(), i))
            .collect();
        let n = symbols.len();
        BinanceSession {
            market,
            symbols,
            slots,
            books: depth.then(|| {
                (0..n)
                    .map(|_| BookSync::new(market, DEFAULT_BUFFER))
                    .collect()
            }),
            tapes: trades.then(|| (0..n).map(|_| TradeTape::default()).collect()),
            rest_url,
            depth_limit,
            next_request: 1,
            ignored: Ignored::default(),
        }
    }

    fn slot(&self, symbol: &str) -> Option<usize> {
        self.slots.get(symbol).copied()
    }
}

impl Session for BinanceSession {
    fn subscriptions(&mut self) -> Vec<String> {
        let mut streams = Vec::new();
        for symbol in &self.symbols {
            if self.books.is_some() {
                streams.push(self.market.depth_stream(symbol));
            }
            if self.tapes.is_some() {
                streams.push(self.market.trade_stream(symbol));
            }
        }
        streams
            .chunks(MAX_STREAMS_PER_FRAME)
            .map(|chunk| {
                let id = self.next_request;
                self.next_request += 1;
                binance::subscribe_frame(id, chunk)
            })
            .collect()
    }

    fn on_text(&mut self, text: &str, _now: UnixNanos, out: &mut Vec<(usize, Action)>) -> Signal {
        let mut actions = Vec::new();
        match wire::decode(text) {
            Ok(Frame::Depth(d)) => {
                self.ignored.unknown_fields += u64::from(d.unknown);
                let (Some(slot), Some(books)) = (self.slot(d.symbol), self.books.as_mut()) else {
                    self.ignored.unhandled += 1;
                    return Signal::None;
                };
                books[slot].on_diff(Diff::from_wire(d, binance::millis), &mut actions);
                tag(slot, &mut actions, out);
            }
            Ok(Frame::AggTrade(t)) => {
                self.ignored.unknown_fields += u64::from(t.unknown);
                let (Some(slot), Some(tapes)) = (self.slot(t.symbol), self.tapes.as_mut()) else {
                    self.ignored.unhandled += 1;
                    return Signal::None;
                };
                binance::agg_trade(&mut tapes[slot], t, &mut actions);
                tag(slot, &mut actions, out);
            }
            Ok(Frame::Trade(t)) => {
                self.ignored.unknown_fields += u64::from(t.unknown);
                let (Some(slot), Some(tapes)) = (self.slot(t.symbol), self.tapes.as_mut()) else {
                    self.ignored.unhandled += 1;
                    return Signal::None;
                };
                binance::raw_trade(&mut tapes[slot], t, &mut actions);
                tag(slot, &mut actions, out);
            }
            Ok(Frame::ServerShutdown) => return Signal::Rotate,
            Ok(Frame::Ack { id }) => tracing::debug!(id, "subscription acknowledged"),
            Ok(Frame::Error { id, code, msg }) => {
                tracing::warn!(?id, code, msg, "the venue refused a request");
            }
            Ok(Frame::Unhandled) => self.ignored.unhandled += 1,
            Err(e) => {
                let slots: Vec<usize> = e
                    .symbol()
                    .and_then(|s| self.slot(&s.to_ascii_uppercase()))
                    .into_iter()
                    .collect();
                let detail = e.to_string();
                let books = &mut self.books;
                undecodable(
                    &slots,
                    !e.is_depth(),
                    &detail,
                    |slot, actions| {
                        if let Some(books) = books.as_mut() {
                            books[slot].resync(detail.clone(), actions);
                        }
                    },
                    out,
                );
            }
        }
        Signal::None
    }

    fn on_snapshot(&mut self, slot: usize, body: &[u8], out: &mut Vec<(usize, Action)>) {
        let Some(books) = self.books.as_mut() else {
            return;
        };
        let mut actions = Vec::new();
        match wire::decode_snapshot(body) {
            Ok(s) => books[slot].on_snapshot(Snapshot::from_wire(s, binance::millis), &mut actions),
            Err(e) => {
                actions.push(Action::status(
                    Channel::Book,
                    StatusKind::Rejected,
                    0,
                    format!("undecodable depth snapshot: {e}; asking again"),
                ));
                books[slot].snapshot_failed();
            }
        }
        tag(slot, &mut actions, out);
    }

    fn resync(&mut self, slot: usize, detail: String, out: &mut Vec<(usize, Action)>) {
        if let Some(books) = self.books.as_mut() {
            let mut actions = Vec::new();
            books[slot].resync(detail, &mut actions);
            tag(slot, &mut actions, out);
        }
    }

    fn snapshot_request(&self, slot: usize) -> Option<(String, u32)> {
        let symbol = self.symbols.get(slot)?;
        let weight = self.market.depth_weight(self.depth_limit)?;
        Some((
            format!(
                "{}{}",
                self.rest_url,
                self.market.depth_path(symbol, self.depth_limit)
            ),
            weight,
        ))
    }

    fn resubscribe(&mut self, _slots: &[usize]) -> Vec<String> {
        Vec::new()
    }

    fn disconnected(&mut self) {
        if let Some(books) = self.books.as_mut() {
            books.iter_mut().for_each(BookSync::disconnect);
        }
    }

    fn ignored(&self) -> Ignored {
        self.ignored
    }
}

/// Every symbol's price tick, from `exchangeInfo`'s `PRICE_FILTER`.
pub(super) async fn tick_sizes(
    market: Market,
    rest_url: &str,
) -> Result<Vec<(String, Price)>, String> {
    let body = super::reference(&format!("{rest_url}{}", market.exchange_info_path())).await?;
    let info =
        wire::decode_exchange_info(&body).map_err(|e| format!("undecodable exchangeInfo: {e}"))?;
    Ok(info
        .symbols
        .iter()
        .filter_map(|s| Some((s.symbol.to_owned(), s.tick_size()?)))
        .collect())
}
