//! Order-book hot path: one-level delta apply and top-10 reads at 20 and 1,000 levels per
//! side, against a `BTreeMap` ladder doing the same work in the same run; top-of-book
//! seqlock reads.

use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use raven_book::{OrderBook, top};
use raven_model::{
    Bbo, BookSnapshot, Level, LevelChange, Price, Qty, Sequence, Side, SnapshotKind,
};

const TICK: i64 = 10_000_000; // 0.01
const MID: i64 = 60_000 * 1_000_000_000;

fn level(side: Side, i: i64) -> Level {
    Level {
        price: Price::from_units(match side {
            Side::Bid => MID - TICK * (i + 1),
            Side::Ask => MID + TICK * (i + 1),
        }),
        qty: Qty::from_units(1_000_000_000 + i as i128),
    }
}

/// A book of `depth` levels per side around 60,000 with 0.01 ticks, and a realistic
/// stream of one-level deltas: 7 in 8 within the top 5 levels, the rest anywhere; one in
/// 16 removes its level (later changes put levels back). Bids stay below the mid and asks
/// above it, so no delta crosses the book.
fn setup(depth: i64) -> (BookSnapshot, Vec<LevelChange>) {
    let snapshot = BookSnapshot {
        bids: (0..depth).map(|i| level(Side::Bid, i)).collect(),
        asks: (0..depth).map(|i| level(Side::Ask, i)).collect(),
        kind: SnapshotKind::Initial,
    };
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let changes = (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let side = if x & 1 == 0 { Side::Bid } else { Side::Ask };
            let i = if x.is_multiple_of(8) {
                (x >> 8) as i64 % depth
            } else {
                (x >> 8) as i64 % 5
            };
            let qty = if x % 16 == 1 {
                0
            } else {
                1 + (x >> 20) as i128 % 5_000_000_000
            };
            LevelChange {
                side,
                price: level(side, i).price,
                qty: Qty::from_units(qty),
            }
        })
        .collect();
    (snapshot, changes)
}

/// The alternative layout: one ordered map per side, with the same crossed-book check.
#[derive(Default)]
struct MapBook {
    bids: BTreeMap<Reverse<Price>, Qty>,
    asks: BTreeMap<Price, Qty>,
}

impl MapBook {
    fn apply(&mut self, c: &LevelChange) -> bool {
        match (c.side, c.qty.is_zero()) {
            (Side::Bid, true) => drop(self.bids.remove(&Reverse(c.price))),
            (Side::Bid, false) => drop(self.bids.insert(Reverse(c.price), c.qty)),
            (Side::Ask, true) => drop(self.asks.remove(&c.price)),
            (Side::Ask, false) => drop(self.asks.insert(c.price, c.qty)),
        }
        match (self.bids.keys().next(), self.asks.keys().next()) {
            (Some(b), Some(a)) => b.0 < *a,
            _ => true,
        }
    }
}

fn apply(c: &mut Criterion) {
    let mut g = c.benchmark_group("book");
    for depth in [20, 1000] {
        let (snapshot, changes) = setup(depth);
        let mut book = OrderBook::new();
        book.apply_snapshot(Sequence(0), &snapshot).unwrap();
        let mut i = 0usize;
        g.bench_function(format!("apply_delta/sorted_vec/{depth}_levels"), |b| {
            b.iter(|| {
                let change = &changes[i % changes.len()];
                i += 1;
                let next = book.sequence().next();
                black_box(book.apply_changes(next, std::slice::from_ref(change)))
            })
        });
        let mut map = MapBook::default();
        for l in &snapshot.bids {
            map.bids.insert(Reverse(l.price), l.qty);
        }
        for l in &snapshot.asks {
            map.asks.insert(l.price, l.qty);
        }
        let mut i = 0usize;
        g.bench_function(format!("apply_delta/btreemap/{depth}_levels"), |b| {
            b.iter(|| {
                let change = &changes[i % changes.len()];
                i += 1;
                black_box(map.apply(change))
            })
        });
        // Depth views read the top 10 of both sides after every update.
        let mut out = Vec::with_capacity(10);
        g.bench_function(format!("top10_both_sides/sorted_vec/{depth}_levels"), |b| {
            b.iter(|| {
                book.top_into(Side::Bid, 10, &mut out);
                let n = out.len();
                book.top_into(Side::Ask, 10, &mut out);
                black_box(n + out.len())
            })
        });
        g.bench_function(format!("top10_both_sides/btreemap/{depth}_levels"), |b| {
            b.iter(|| {
                out.clear();
                out.extend(map.bids.iter().take(10).map(|(p, q)| Level {
                    price: p.0,
                    qty: *q,
                }));
                let n = out.len();
                out.clear();
                out.extend(
                    map.asks
                        .iter()
                        .take(10)
                        .map(|(p, q)| Level { price: *p, qty: *q }),
                );
                black_box(n + out.len())
            })
        });
    }
    g.finish();
}

fn top_read(c: &mut Criterion) {
    let (mut w, r) = top::channel();
    w.publish(&top::TopOfBook {
        bbo: Bbo {
            bid: Some(Level {
                price: Price::from_units(1),
                qty: Qty::from_units(2),
            }),
            ask: Some(Level {
                price: Price::from_units(3),
                qty: Qty::from_units(4),
            }),
        },
        ..Default::default()
    });
    c.bench_function("top/read", |b| b.iter(|| black_box(r.read())));
    let t = r.read();
    c.bench_function("top/publish", |b| b.iter(|| w.publish(black_box(&t))));
}

criterion_group!(benches, apply, top_read);
criterion_main!(benches);
