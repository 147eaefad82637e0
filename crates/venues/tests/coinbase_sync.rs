//! Property test of the Coinbase Advanced Trade book against a generated truth: one
//! connection's `l2_data` messages for two products, numbered by `sequence_num`, with
//! messages dropped at random. A drop is seen at the next message's number; every product
//! on the connection is resubscribed and rebuilt from its new snapshot. After every
//! message, each product the codec calls synced equals the truth.

use std::collections::BTreeMap;

use proptest::prelude::*;
use raven_model::Side;
use raven_venues::Action;
use raven_venues::coinbase::wire::{Events, Frame, decode};
use raven_venues::coinbase::{Product, SequenceCheck, SequenceSeen};

type Book = BTreeMap<(bool, u32), u32>;

const PRODUCTS: [&str; 2] = ["BTC-USD", "ETH-USD"];

/// Quantity `q` is `q.5`, and 0 removes the level.
fn update_json(bid: bool, p: u32, q: u32) -> String {
    let qty = if q == 0 {
        "0".to_owned()
    } else {
        format!("{q}.5")
    };
    format!(
        r#"{{"side":"{}","event_time":"2026-04-07T14:30:00Z","price_level":"{}.{:02}","new_quantity":"{qty}"}}"#,
        if bid { "bid" } else { "offer" },
        100 + p / 100,
        p % 100,
    )
}

fn message(seq: u64, kind: &str, product: &str, updates: &[String]) -> String {
    format!(
        r#"{{"channel":"l2_data","client_id":"","timestamp":"2026-04-07T14:30:00Z","sequence_num":{seq},"events":[{{"type":"{kind}","product_id":"{product}","updates":[{}]}}]}}"#,
        updates.join(",")
    )
}

fn snapshot_json(seq: u64, product: &str, book: &Book) -> String {
    let updates: Vec<String> = book
        .iter()
        .map(|(&(bid, p), &q)| update_json(bid, p, q))
        .collect();
    message(seq, "snapshot", product, &updates)
}

/// The truth in the client's units.
fn units(book: &Book) -> BTreeMap<(bool, i64), i128> {
    book.iter()
        .map(|(&(bid, p), &q)| {
            let price: raven_model::Price =
                format!("{}.{:02}", 100 + p / 100, p % 100).parse().unwrap();
            let qty: raven_model::Qty = format!("{q}.5").parse().unwrap();
            ((bid, price.units()), qty.units())
        })
        .collect()
}

struct Connection {
    check: SequenceCheck,
    products: [Product; 2],
    clients: [BTreeMap<(bool, i64), i128>; 2],
    resubscribed: bool,
    /// Products that published a book since the last look.
    published: [bool; 2],
}

impl Connection {
    fn receive(&mut self, text: &str) {
        let Frame::Message {
            sequence_num,
            events: Events::L2(events),
            ..
        } = decode(text).unwrap()
        else {
            panic!("not l2")
        };
        let mut out = Vec::new();
        if let SequenceSeen::Jump { expected, got } = self.check.see(sequence_num) {
            for p in &mut self.products {
                p.lost(
                    format!("messages {expected}..{got} never arrived"),
                    &mut out,
                );
            }
            self.apply(0, &out);
            out.clear();
        }
        for e in events {
            let i = PRODUCTS.iter().position(|&p| p == e.product_id).unwrap();
            self.products[i].on_l2(e, sequence_num, &mut out);
            self.apply(i, &out);
            out.clear();
        }
    }

    fn apply(&mut self, i: usize, out: &[Action]) {
        for a in out {
            match a {
                Action::Snapshot { book, .. } => {
                    self.published[i] = true;
                    let client = &mut self.clients[i];
                    client.clear();
                    for l in &book.bids {
                        client.insert((true, l.price.units()), l.qty.units());
                    }
                    for l in &book.asks {
                        client.insert((false, l.price.units()), l.qty.units());
                    }
                }
                Action::Delta { delta, .. } => {
                    self.published[i] = true;
                    for c in &delta.changes {
                        let key = (c.side == Side::Bid, c.price.units());
                        if c.qty.is_zero() {
                            self.clients[i].remove(&key);
                        } else {
                            self.clients[i].insert(key, c.qty.units());
                        }
                    }
                }
                Action::Resubscribe => self.resubscribed = true,
                Action::Status { .. } => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn coinbase_books_equal_the_truth_whatever_is_dropped(
        steps in prop::collection::vec(
            (0usize..2, prop::collection::vec((any::<bool>(), 0u32..30, 0u32..4), 1..4), prop::bool::weighted(0.05)),
            10..150,
        ),
    ) {
        let mut truth: [Book; 2] = Default::default();
        let mut conn = Connection {
            check: SequenceCheck::default(),
            products: Default::default(),
            clients: Default::default(),
            resubscribed: false,
            published: [false; 2],
        };
        // Messages still in flight on the old subscription when a resubscription's
        // snapshots are due: 0, 1 or 2, in turn.
        let mut late = (0..3).cycle();
        let mut snapshots_due: Option<usize> = None;
        let mut seq = 0u64;
        for (i, product) in PRODUCTS.iter().enumerate() {
            conn.receive(&snapshot_json(seq, product, &truth[i]));
            seq += 1;
        }
        for (i, changes, dropped) in steps {
            let updates: Vec<String> = changes
                .iter()
                .map(|&(bid, p, q)| {
                    let p = if bid { p } else { p + 30 };
                    if q == 0 {
                        truth[i].remove(&(bid, p));
                    } else {
                        truth[i].insert((bid, p), q);
                    }
                    update_json(bid, p, q)
                })
                .collect();
            let text = message(seq, "update", PRODUCTS[i], &updates);
            seq += 1;
            if dropped {
                continue;
            }
            conn.receive(&text);
            if std::mem::take(&mut conn.resubscribed) {
                snapshots_due = Some(late.next().unwrap_or(0));
            }
            match snapshots_due {
                Some(0) => {
                    // The venue answers a resubscription with a snapshot of each product.
                    snapshots_due = None;
                    for (j, product) in PRODUCTS.iter().enumerate() {
                        conn.receive(&snapshot_json(seq, product, &truth[j]));
                        seq += 1;
                    }
                }
                Some(n) => snapshots_due = Some(n - 1),
                None => {}
            }
            // Whatever a product published is the truth.
            for (j, book) in truth.iter().enumerate() {
                if std::mem::take(&mut conn.published[j]) {
                    prop_assert_eq!(&conn.clients[j], &units(book));
                }
            }
        }
        if snapshots_due.is_some() {
            for (j, product) in PRODUCTS.iter().enumerate() {
                conn.receive(&snapshot_json(seq, product, &truth[j]));
                seq += 1;
            }
        }
        // Every drop that a later message revealed was answered with fresh snapshots.
        prop_assert!(conn.products.iter().all(Product::is_synced));
    }
}
