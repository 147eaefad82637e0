//! Property test of the Binance book sync (spot and USD-M) against a generated truth: a
//! random book process whose state is recorded at every venue update id, delivered with
//! drops, duplicates and swaps, and snapshots served late and sometimes stale. Whatever
//! the faults, every book the machine publishes equals the truth at its update id, and
//! once the faults stop the book catches up.

use std::collections::BTreeMap;

use proptest::prelude::*;
use raven_model::{Level, LevelChange, Price, Qty, Side, UnixNanos};
use raven_venues::Action;
use raven_venues::binance::Market;
use raven_venues::binance::sync::{BookSync, Diff, Snapshot};

type Book = BTreeMap<(bool, i64), i128>;
/// One venue event: how many ids it covers, ids skipped before it (USD-M), its changes
/// as (bid, price units, quantity units).
type Step = (u64, u64, Vec<(bool, i64, i128)>);

#[derive(Debug, Clone)]
struct Venue {
    diffs: Vec<Diff>,
    /// The book after each diff, by index.
    truth: Vec<Book>,
}

fn change(side: bool, price: i64, qty: i128) -> LevelChange {
    LevelChange {
        side: if side { Side::Bid } else { Side::Ask },
        price: Price::from_units(price),
        qty: Qty::from_units(qty),
    }
}

fn venue(market: Market, steps: Vec<Step>) -> Venue {
    let mut book = Book::new();
    let mut diffs = Vec::new();
    let mut truth = Vec::new();
    let mut last = 1000u64;
    for (len, skip, changes) in steps {
        // Spot ids are contiguous; USD-M events may skip ids, chained by `pu`.
        let first = last + 1 + if market == Market::UsdM { skip } else { 0 };
        let end = first + len - 1;
        for &(side, price, qty) in &changes {
            if qty == 0 {
                book.remove(&(side, price));
            } else {
                book.insert((side, price), qty);
            }
        }
        diffs.push(Diff {
            first,
            last: end,
            prev: (market == Market::UsdM).then_some(last),
            exchange_time: UnixNanos(end),
            changes: changes
                .into_iter()
                .map(|(s, p, q)| change(s, p, q))
                .collect(),
        });
        truth.push(book.clone());
        last = end;
    }
    Venue { diffs, truth }
}

impl Venue {
    fn snapshot(&self, index: usize) -> Snapshot {
        let book = &self.truth[index];
        let level = |(&(_, p), &q): (&(bool, i64), &i128)| Level {
            price: Price::from_units(p),
            qty: Qty::from_units(q),
        };
        Snapshot {
            id: self.diffs[index].last,
            exchange_time: UnixNanos::ZERO,
            bids: book
                .iter()
                .filter(|((s, _), _)| *s)
                .rev()
                .map(level)
                .collect(),
            asks: book.iter().filter(|((s, _), _)| !*s).map(level).collect(),
        }
    }

    fn truth_at(&self, id: u64) -> Option<&Book> {
        self.diffs
            .iter()
            .position(|d| d.last == id)
            .map(|i| &self.truth[i])
    }
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    None,
    Drop,
    Duplicate,
    Swap,
}

fn fault() -> impl Strategy<Value = Fault> {
    prop_oneof![
        12 => Just(Fault::None),
        1 => Just(Fault::Drop),
        1 => Just(Fault::Duplicate),
        1 => Just(Fault::Swap),
    ]
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    let change = (any::<bool>(), 1i64..12, 0i128..4);
    prop::collection::vec(
        (1u64..4, 0u64..3, prop::collection::vec(change, 1..4)),
        40..120,
    )
}

/// The client's view: the actions applied to a plain map, checked against the truth.
struct Client<'v> {
    venue: &'v Venue,
    book: Book,
    published: usize,
}

impl Client<'_> {
    fn apply(&mut self, actions: Vec<Action>, fetches: &mut Vec<u32>) {
        for a in actions {
            match a {
                Action::Snapshot { venue_id, book, .. } => {
                    self.book.clear();
                    for l in book.bids {
                        self.book.insert((true, l.price.units()), l.qty.units());
                    }
                    for l in book.asks {
                        self.book.insert((false, l.price.units()), l.qty.units());
                    }
                    self.check(venue_id);
                }
                Action::Delta {
                    venue_id, delta, ..
                } => {
                    for c in delta.changes {
                        let key = (c.side == Side::Bid, c.price.units());
                        if c.qty.is_zero() {
                            self.book.remove(&key);
                        } else {
                            self.book.insert(key, c.qty.units());
                        }
                    }
                    self.check(venue_id);
                }
                Action::FetchSnapshot { attempt } => fetches.push(attempt),
                Action::Status { .. } => {}
                Action::Trade { .. } | Action::Resubscribe => panic!("unexpected {a:?}"),
            }
        }
    }

    fn check(&mut self, id: u64) {
        let truth = self
            .venue
            .truth_at(id)
            .expect("published at a venue id that exists");
        assert_eq!(&self.book, truth, "book differs from the truth at {id}");
        self.published += 1;
    }
}

fn run(market: Market, steps: Vec<Step>, faults: Vec<Fault>, delays: Vec<(u8, u8)>) {
    let venue = venue(market, steps);
    let mut sync = BookSync::new(market, 64);
    let mut client = Client {
        venue: &venue,
        book: Book::new(),
        published: 0,
    };
    let mut fetches = Vec::new();
    // Snapshot requests in flight: (diffs still to deliver before the answer, staleness).
    let mut in_flight: Vec<(u8, u8)> = Vec::new();
    let mut delays = delays.into_iter().cycle();
    let mut order: Vec<usize> = Vec::new();
    let mut i = 0;
    let n = venue.diffs.len();
    // The faulted delivery order; the last ten diffs are delivered clean.
    while i < n {
        match faults[i % faults.len()] {
            _ if i + 10 >= n => order.push(i),
            Fault::None => order.push(i),
            Fault::Drop => {}
            Fault::Duplicate => order.extend([i, i]),
            Fault::Swap if i + 1 < n && i + 11 < n => {
                order.extend([i + 1, i]);
                i += 1;
            }
            Fault::Swap => order.push(i),
        }
        i += 1;
    }
    let mut delivered_max = 0;
    for (step, &index) in order.iter().enumerate() {
        let mut out = Vec::new();
        sync.on_diff(venue.diffs[index].clone(), &mut out);
        delivered_max = delivered_max.max(index);
        client.apply(out, &mut fetches);
        let clean = step + 10 >= order.len();
        for _ in fetches.drain(..) {
            let (delay, stale) = delays.next().unwrap_or((0, 0));
            in_flight.push(if clean {
                (0, 0)
            } else {
                (delay % 4, stale % 3)
            });
        }
        let mut answered = Vec::new();
        in_flight.retain_mut(|(wait, stale)| {
            if *wait == 0 {
                answered.push(*stale);
                false
            } else {
                *wait -= 1;
                true
            }
        });
        for stale in answered {
            // The venue's book as of the last diff it sent, or a few diffs older.
            let at = delivered_max.saturating_sub(usize::from(stale));
            let mut out = Vec::new();
            sync.on_snapshot(venue.snapshot(at), &mut out);
            client.apply(out, &mut fetches);
        }
    }
    // Clean tail: whatever is still asked for is answered fresh, then one more diff.
    for _ in 0..4 {
        if fetches.is_empty() && in_flight.is_empty() {
            break;
        }
        fetches.clear();
        in_flight.clear();
        let mut out = Vec::new();
        sync.on_snapshot(venue.snapshot(n - 2), &mut out);
        client.apply(out, &mut fetches);
        let mut out = Vec::new();
        sync.on_diff(venue.diffs[n - 1].clone(), &mut out);
        client.apply(out, &mut fetches);
    }
    assert_eq!(
        sync.synced_at(),
        Some(venue.diffs[n - 1].last),
        "not caught up at the end"
    );
    assert_eq!(&client.book, venue.truth.last().unwrap());
    assert!(client.published > 0);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn spot_books_equal_the_truth_under_faults(
        steps in steps(),
        faults in prop::collection::vec(fault(), 1..50),
        delays in prop::collection::vec((any::<u8>(), any::<u8>()), 1..20),
    ) {
        run(Market::Spot, steps, faults, delays);
    }

    #[test]
    fn usdm_books_equal_the_truth_under_faults(
        steps in steps(),
        faults in prop::collection::vec(fault(), 1..50),
        delays in prop::collection::vec((any::<u8>(), any::<u8>()), 1..20),
    ) {
        run(Market::UsdM, steps, faults, delays);
    }
}
