//! Property test of the Kraken v2 book against a generated truth: a venue keeps a full
//! book and sends each subscription of depth `d` what changed in its top `d` (levels that
//! fall out of scope get no message, levels that come into it do), with checksums from
//! the independent reference function. Messages are dropped at random. Whatever is
//! dropped, the published book's top ten (all the checksum can vouch for) equals the
//! truth after every message, and a mismatch resyncs rather than publishing.

use std::collections::BTreeMap;

use proptest::prelude::*;
use raven_model::{Side, UnixNanos};
use raven_venues::Action;
use raven_venues::kraken::wire::{Data, Frame, decode};
use raven_venues::kraken::{Book, reference_checksum};

/// price index → quantity index, per side (true = bids).
type Levels = BTreeMap<(bool, u32), u32>;
/// Bids then asks, best first: (price index, quantity index).
type View = (Vec<(u32, u32)>, Vec<(u32, u32)>);
/// Bids then asks, best first, in fixed-point units.
type Top = (Vec<(i64, i128)>, Vec<(i64, i128)>);
/// One venue step: changes as (bid, price index, quantity index), and whether its message
/// is dropped.
type Step = (Vec<(bool, u32, u32)>, bool);

fn price_text(p: u32) -> String {
    format!("{}.{}", 100 + p / 10, p % 10)
}

fn qty_text(q: u32) -> String {
    format!("{}.{:08}", q / 4, (q % 4) * 25_000_000)
}

/// The top `depth` levels per side, best first: bids by descending price.
fn view(book: &Levels, depth: usize) -> View {
    let bids = book
        .iter()
        .filter(|((s, _), _)| *s)
        .rev()
        .take(depth)
        .map(|((_, p), q)| (*p, *q))
        .collect();
    let asks = book
        .iter()
        .filter(|((s, _), _)| !*s)
        .take(depth)
        .map(|((_, p), q)| (*p, *q))
        .collect();
    (bids, asks)
}

fn checksum(bids: &[(u32, u32)], asks: &[(u32, u32)]) -> u32 {
    let text = |l: &[(u32, u32)]| {
        l.iter()
            .map(|&(p, q)| (price_text(p), qty_text(q)))
            .collect::<Vec<_>>()
    };
    let (b, a) = (text(bids), text(asks));
    let refs = |l: &[(String, String)]| {
        l.iter()
            .map(|(p, q)| (p.clone(), q.clone()))
            .collect::<Vec<_>>()
    };
    let (b, a) = (refs(&b), refs(&a));
    let b: Vec<(&str, &str)> = b.iter().map(|(p, q)| (p.as_str(), q.as_str())).collect();
    let a: Vec<(&str, &str)> = a.iter().map(|(p, q)| (p.as_str(), q.as_str())).collect();
    reference_checksum(&a, &b)
}

fn message(kind: &str, bids: &[(u32, u32)], asks: &[(u32, u32)], sum: u32) -> String {
    let side = |l: &[(u32, u32)]| {
        l.iter()
            .map(|&(p, q)| format!(r#"{{"price":{},"qty":{}}}"#, price_text(p), qty_text(q)))
            .collect::<Vec<_>>()
            .join(",")
    };
    format!(
        r#"{{"channel":"book","type":"{kind}","data":[{{"symbol":"A/B","bids":[{}],"asks":[{}],"checksum":{sum},"timestamp":"2024-01-01T00:00:00Z"}}]}}"#,
        side(bids),
        side(asks)
    )
}

/// What changed in a side's view: new or changed levels, and removed ones (qty 0) that
/// were deleted rather than pushed out of scope.
fn side_diff(
    before: &[(u32, u32)],
    after: &[(u32, u32)],
    book: &Levels,
    bid: bool,
) -> Vec<(u32, u32)> {
    let mut out: Vec<(u32, u32)> = after
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

struct Client {
    book: BTreeMap<(bool, i64), i128>,
}

impl Client {
    fn apply(&mut self, out: &[Action]) -> (bool, bool) {
        let (mut published, mut resubscribe) = (false, false);
        for a in out {
            match a {
                Action::Snapshot { book, .. } => {
                    self.book.clear();
                    for l in &book.bids {
                        self.book.insert((true, l.price.units()), l.qty.units());
                    }
                    for l in &book.asks {
                        self.book.insert((false, l.price.units()), l.qty.units());
                    }
                    published = true;
                }
                Action::Delta { delta, .. } => {
                    for c in &delta.changes {
                        let key = (c.side == Side::Bid, c.price.units());
                        if c.qty.is_zero() {
                            self.book.remove(&key);
                        } else {
                            self.book.insert(key, c.qty.units());
                        }
                    }
                    published = true;
                }
                Action::Resubscribe => resubscribe = true,
                Action::Status { .. } => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        (published, resubscribe)
    }

    fn top(&self, n: usize) -> Top {
        let bids = self
            .book
            .iter()
            .filter(|((s, _), _)| *s)
            .rev()
            .take(n)
            .map(|((_, p), q)| (*p, *q))
            .collect();
        let asks = self
            .book
            .iter()
            .filter(|((s, _), _)| !*s)
            .take(n)
            .map(|((_, p), q)| (*p, *q))
            .collect();
        (bids, asks)
    }
}

fn units(l: &[(u32, u32)], n: usize) -> Vec<(i64, i128)> {
    l.iter()
        .take(n)
        .map(|&(p, q)| {
            let price: raven_model::Price = price_text(p).parse().unwrap();
            let qty: raven_model::Qty = qty_text(q).parse().unwrap();
            (price.units(), qty.units())
        })
        .collect()
}

fn run(depth: usize, steps: Vec<Step>) {
    let mut truth = Levels::new();
    let mut book = Book::new(depth as u32);
    let mut client = Client {
        book: BTreeMap::new(),
    };
    // A minute between messages: the breaker for an unreliable checksum (three mismatches
    // right after snapshots within 60 s, unit-tested beside the book) stays out of this.
    let mut now = 0u64;
    let mut feed = |book: &mut Book, text: &str, client: &mut Client| {
        now += 61 * UnixNanos::PER_SECOND;
        let Frame::Channel {
            kind,
            data: Data::Book(items),
            ..
        } = decode(text).unwrap()
        else {
            panic!("not a book message")
        };
        let mut out = Vec::new();
        for item in items {
            book.on_book(kind, item, UnixNanos(now), &mut out);
        }
        client.apply(&out)
    };
    let snapshot = |truth: &Levels| {
        let (b, a) = view(truth, depth);
        message("snapshot", &b, &a, checksum(&b, &a))
    };
    feed(&mut book, &snapshot(&truth), &mut client);
    let mut resyncs = 0;
    // Whether every message since the last snapshot was delivered: then the whole book,
    // not only the top ten the checksum covers, must equal the truth.
    let mut clean = true;
    for (changes, dropped) in steps {
        let before = view(&truth, depth);
        for (bid, p, q) in changes {
            if q == 0 {
                truth.remove(&(bid, p));
            } else {
                truth.insert((bid, p), q);
            }
        }
        let after = view(&truth, depth);
        let bids = side_diff(&before.0, &after.0, &truth, true);
        let asks = side_diff(&before.1, &after.1, &truth, false);
        if bids.is_empty() && asks.is_empty() {
            continue;
        }
        if dropped {
            clean = false;
            continue;
        }
        let update = message("update", &bids, &asks, checksum(&after.0, &after.1));
        let (published, resubscribe) = feed(&mut book, &update, &mut client);
        if resubscribe {
            resyncs += 1;
            let (published, _) = feed(&mut book, &snapshot(&truth), &mut client);
            assert!(published, "the resubscription's snapshot was not published");
            clean = true;
        } else {
            assert!(published || !book.is_synced());
        }
        if book.is_synced() {
            let n = if clean { usize::MAX } else { 10 };
            assert_eq!(client.top(n), (units(&after.0, n), units(&after.1, n)));
        }
    }
    assert!(resyncs < 1000);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn kraken_books_equal_the_truth_whatever_is_dropped(
        depth in prop_oneof![Just(10usize), Just(25usize)],
        steps in prop::collection::vec(
            (prop::collection::vec((any::<bool>(), 0u32..60, 0u32..8), 1..4), prop::bool::weighted(0.05)),
            20..150,
        ),
    ) {
        // Bids below asks, so the generated book never crosses.
        let steps = steps
            .into_iter()
            .map(|(changes, dropped)| {
                let changes = changes
                    .into_iter()
                    .map(|(bid, p, q)| (bid, if bid { p } else { p + 60 }, q))
                    .collect();
                (changes, dropped)
            })
            .collect();
        run(depth, steps);
    }
}
