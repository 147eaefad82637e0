//! The Coinbase Advanced Trade session a connection drives: `heartbeats`, `level2` and
//! `market_trades` subscriptions (one channel per message, sent at once: the venue closes
//! a connection with no subscription after 5 s), the connection's `sequence_num` check,
//! and each product's in-band book and trade tape. A jump in `sequence_num` means this
//! connection lost messages: every product on it is resubscribed for fresh snapshots.

use std::collections::HashMap;

use raven_model::{Price, UnixNanos};
use raven_venues::Action;
use raven_venues::coinbase::wire::{self, Events, Frame};
use raven_venues::coinbase::{self, Product, SequenceCheck, SequenceSeen};

use super::session::{Ignored, Session, Signal, tag, undecodable};

/// One connection's share of a Coinbase feed.
pub struct CoinbaseSession {
    products: Vec<String>,
    slots: HashMap<String, usize>,
    books: Vec<Product>,
    sequence: SequenceCheck,
    ignored: Ignored,
}

impl CoinbaseSession {
    /// A session for `products` (`BTC-USD`, in slot order).
    pub fn new(products: Vec<String>) -> CoinbaseSession {
        CoinbaseSession {
            slots: products
                .iter()
                .enumerate()
                .map(|(i, s)| (s.clone(), i))
                .collect(),
            books: products.iter().map(|_| Product::default()).collect(),
            products,
            sequence: SequenceCheck::default(),
            ignored: Ignored::default(),
        }
    }
}

impl Session for CoinbaseSession {
    fn subscriptions(&mut self) -> Vec<String> {
        let mut frames = vec![coinbase::subscribe_heartbeats()];
        frames.extend(
            coinbase::CHANNELS
                .iter()
                .map(|channel| coinbase::subscribe_frame(channel, &self.products)),
        );
        frames
    }

    fn on_text(&mut self, text: &str, _now: UnixNanos, out: &mut Vec<(usize, Action)>) -> Signal {
        let mut actions = Vec::new();
        match wire::decode(text) {
            Ok(Frame::Message {
                channel,
                sequence_num,
                events,
                ..
            }) => {
                match self.sequence.see(sequence_num) {
                    SequenceSeen::Behind => return Signal::None,
                    SequenceSeen::Jump { expected, got } => {
                        let detail =
                            format!("messages {expected}..{got} of this connection never arrived");
                        for (slot, book) in self.books.iter_mut().enumerate() {
                            book.lost(detail.clone(), &mut actions);
                            tag(slot, &mut actions, out);
                        }
                    }
                    SequenceSeen::Next => {}
                }
                match events {
                    Events::L2(events) => {
                        for event in events {
                            self.ignored.unknown_fields += u64::from(event.unknown);
                            let Some(&slot) = self.slots.get(event.product_id) else {
                                self.ignored.unhandled += 1;
                                continue;
                            };
                            self.books[slot].on_l2(event, sequence_num, &mut actions);
                            tag(slot, &mut actions, out);
                        }
                    }
                    Events::Trades(events) => {
                        for event in &events {
                            self.ignored.unknown_fields += u64::from(event.unknown);
                            for t in coinbase::in_id_order(&event.trades) {
                                self.ignored.unknown_fields += u64::from(t.unknown);
                                let Some(&slot) = self.slots.get(t.product_id) else {
                                    self.ignored.unhandled += 1;
                                    continue;
                                };
                                self.books[slot].on_trade(t, &mut actions);
                                tag(slot, &mut actions, out);
                            }
                        }
                    }
                    // Heartbeats and subscription acknowledgements are expected.
                    Events::Other => {
                        if !matches!(channel, "heartbeats" | "subscriptions") {
                            self.ignored.unhandled += 1;
                        }
                    }
                }
            }
            Ok(Frame::Error { message }) => tracing::warn!(message, "Coinbase reported an error"),
            Err(e) => {
                let (channel, listed) = wire::products_of(text);
                let detail = format!("undecodable {} message: {e}", channel.unwrap_or("Coinbase"));
                let slots: Vec<usize> = listed
                    .iter()
                    .filter_map(|s| self.slots.get(*s).copied())
                    .collect();
                let books = &mut self.books;
                undecodable(
                    &slots,
                    channel == Some("market_trades"),
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
        let products: Vec<String> = slots
            .iter()
            .filter_map(|&s| self.products.get(s).cloned())
            .collect();
        if products.is_empty() {
            return Vec::new();
        }
        vec![
            coinbase::unsubscribe_frame("level2", &products),
            coinbase::subscribe_frame("level2", &products),
        ]
    }

    fn overlapping_rotation(&self) -> bool {
        false
    }

    fn disconnected(&mut self) {
        self.sequence = SequenceCheck::default();
        self.books.iter_mut().for_each(Product::disconnect);
    }

    fn ignored(&self) -> Ignored {
        self.ignored
    }
}

/// Each product's price tick, from the public product list.
pub(super) async fn tick_sizes(
    rest_url: &str,
    products: &[String],
) -> Result<Vec<(String, Price)>, String> {
    let body =
        super::reference(&format!("{rest_url}{}", coinbase::products_path(products))).await?;
    let list =
        wire::decode_products(&body).map_err(|e| format!("undecodable product list: {e}"))?;
    Ok(list
        .products
        .iter()
        .filter_map(|p| Some((p.product_id.to_owned(), p.price_increment?.0)))
        .collect())
}
