//! The Kraken v2 session a connection drives: `book` and `trade` subscriptions for its
//! pairs, each pair's checksummed book and trade tape fed from each frame, and the
//! unsubscribe/subscribe that rebuilds one pair's book.

use std::collections::HashMap;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use raven_model::{Price, UnixNanos};
use raven_venues::Action;
use raven_venues::kraken::wire::{self, Data, Frame};
use raven_venues::kraken::{self, Book};
use tokio_tungstenite::tungstenite::Message;

use super::session::{Ignored, Session, Signal, tag, undecodable};

/// One connection's share of a Kraken feed.
pub struct KrakenSession {
    symbols: Vec<String>,
    slots: HashMap<String, usize>,
    books: Vec<Book>,
    depth: u32,
    next_request: u64,
    ignored: Ignored,
}

impl KrakenSession {
    /// A session for `symbols` (`BTC/USD`, in slot order) at book depth `depth`.
    pub fn new(symbols: Vec<String>, depth: u32) -> KrakenSession {
        KrakenSession {
            slots: symbols
                .iter()
                .enumerate()
                .map(|(i, s)| (s.clone(), i))
                .collect(),
            books: symbols.iter().map(|_| Book::new(depth)).collect(),
            symbols,
            depth,
            next_request: 1,
            ignored: Ignored::default(),
        }
    }

    fn request_id(&mut self) -> u64 {
        let id = self.next_request;
        self.next_request += 1;
        id
    }
}

impl Session for KrakenSession {
    fn subscriptions(&mut self) -> Vec<String> {
        let (book, trades) = (self.request_id(), self.request_id());
        vec![
            kraken::subscribe_book(book, &self.symbols, self.depth),
            kraken::subscribe_trades(trades, &self.symbols),
        ]
    }

    fn on_text(&mut self, text: &str, now: UnixNanos, out: &mut Vec<(usize, Action)>) -> Signal {
        let mut actions = Vec::new();
        match wire::decode(text) {
            Ok(Frame::Channel {
                kind,
                data: Data::Book(items),
                ..
            }) => {
                for item in items {
                    self.ignored.unknown_fields += u64::from(item.unknown);
                    let Some(&slot) = self.slots.get(item.symbol) else {
                        self.ignored.unhandled += 1;
                        continue;
                    };
                    self.books[slot].on_book(kind, item, now, &mut actions);
                    tag(slot, &mut actions, out);
                }
            }
            Ok(Frame::Channel {
                data: Data::Trades(trades),
                ..
            }) => {
                for t in &trades {
                    self.ignored.unknown_fields += u64::from(t.unknown);
                    let Some(&slot) = self.slots.get(t.symbol) else {
                        self.ignored.unhandled += 1;
                        continue;
                    };
                    self.books[slot].on_trade(t, &mut actions);
                    tag(slot, &mut actions, out);
                }
            }
            // Heartbeats and the connection's status are expected; anything else is not.
            Ok(Frame::Channel { channel, .. }) => {
                if !matches!(channel, "heartbeat" | "status") {
                    self.ignored.unhandled += 1;
                }
            }
            Ok(Frame::Reply {
                method,
                success,
                error,
                ..
            }) => {
                if !success {
                    tracing::warn!(method, error, "Kraken refused a request");
                }
            }
            Err(e) => {
                let (channel, listed) = wire::symbols_of(text);
                let detail = format!("undecodable {} message: {e}", channel.unwrap_or("Kraken"));
                let slots: Vec<usize> = listed
                    .iter()
                    .filter_map(|s| self.slots.get(*s).copied())
                    .collect();
                let books = &mut self.books;
                undecodable(
                    &slots,
                    channel == Some("trade"),
                    &detail,
                    |slot, actions| books[slot].lost(detail.clone(), actions),
                    out,
                );
            }
        }
        Signal::None
    }

    fn resync(&mut self, slot: usize, detail: String, out: &mut Vec<(usize, Action)>) {
        let mut actions = Vec::new();
        self.books[slot].lost(detail, &mut actions);
        tag(slot, &mut actions, out);
    }

    fn resubscribe(&mut self, slots: &[usize]) -> Vec<String> {
        let pairs: Vec<String> = slots
            .iter()
            .filter_map(|&s| self.symbols.get(s).cloned())
            .collect();
        if pairs.is_empty() {
            return Vec::new();
        }
        let (off, on) = (self.request_id(), self.request_id());
        vec![
            kraken::unsubscribe_book(off, &pairs, self.depth),
            kraken::subscribe_book(on, &pairs, self.depth),
        ]
    }

    fn disconnected(&mut self) {
        self.books.iter_mut().for_each(Book::disconnect);
    }

    fn ignored(&self) -> Ignored {
        self.ignored
    }
}

/// Every pair's price tick, from the `instrument` channel's snapshot on a connection of
/// its own, closed once read (the REST pair list spells pairs as v1 did: `XBT/USD`).
pub(super) async fn tick_sizes(
    ws_url: &str,
    deadline: Duration,
) -> Result<Vec<(String, Price)>, String> {
    let read = async {
        let mut ws = super::transport::websocket(ws_url, deadline)
            .await
            .map_err(|e| format!("{ws_url}: {e}"))?;
        ws.send(Message::text(kraken::subscribe_instruments(1)))
            .await
            .map_err(|e| format!("{ws_url}: {e}"))?;
        while let Some(message) = ws.next().await {
            let Message::Text(text) = message.map_err(|e| format!("{ws_url}: {e}"))? else {
                continue;
            };
            match wire::decode(text.as_str()) {
                Ok(Frame::Channel {
                    data: Data::Instruments(data),
                    ..
                }) => {
                    let _ = ws.close(None).await;
                    return Ok(data
                        .pairs
                        .iter()
                        .filter_map(|p| Some((p.symbol.to_owned(), p.tick_size()?)))
                        .collect());
                }
                Ok(Frame::Reply {
                    success: false,
                    error,
                    ..
                }) => return Err(format!("instrument subscription refused: {error}")),
                _ => {}
            }
        }
        Err(format!("{ws_url} closed before the instrument snapshot"))
    };
    tokio::time::timeout(deadline * 3, read)
        .await
        .map_err(|_| format!("no instrument snapshot from {ws_url} in time"))?
}
