//! Order-book hot path: delta apply at 20 and 1,000 levels, top-of-book reads.

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use raven_book::{OrderBook, top};
use raven_model::{
    Bbo, BookSnapshot, Level, LevelChange, Price, Qty, Sequence, Side, SnapshotKind,
};
use std::hint::black_box;

/// A book of `depth` levels per side around 60,000 with 0.01 ticks, and a stream of
/// realistic deltas: mostly quantity changes near the top, some level adds/removes.
fn setup(depth: i64) -> (OrderBook, Vec<LevelChange>) {
    let tick = 10_000_000; // 0.01
    let mid = 60_000 * 1_000_000_000i64;
    let level = |side: Side, i: i64| Level {
        price: Price::from_units(match side {
            Side::Bid => mid - tick * (i + 1),
            Side::Ask => mid + tick * (i + 1),
        }),
        qty: Qty::from_units(1_000_000_000 + i as i128),
    };
    let snapshot = BookSnapshot {
        bids: (0..depth).map(|i| level(Side::Bid, i)).collect(),
        asks: (0..depth).map(|i| level(Side::Ask, i)).collect(),
        kind: SnapshotKind::Initial,
    };
    let mut book = OrderBook::new();
    book.apply_snapshot(Sequence(0), &snapshot).unwrap();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let changes = (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let side = if x & 1 == 0 { Side::Bid } else { Side::Ask };
            // Near the top most of the time, anywhere in the book sometimes.
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
    (book, changes)
}

fn apply(c: &mut Criterion) {
    let mut g = c.benchmark_group("book");
    for depth in [20, 1000] {
        let (book, changes) = setup(depth);
        g.bench_function(format!("apply_delta_1_level/{depth}_levels"), |b| {
            b.iter_batched_ref(
                || (book.clone(), 0usize),
                |(book, i)| {
                    for c in changes.chunks(1).take(256) {
                        *i += 1;
                        let _ = black_box(book.apply_changes(Sequence(*i as u64), c));
                    }
                },
                BatchSize::LargeInput,
            )
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
    c.bench_function("top/publish", |b| {
        let t = r.read();
        b.iter(|| w.publish(black_box(&t)))
    });
}

criterion_group!(benches, apply, top_read);
criterion_main!(benches);
