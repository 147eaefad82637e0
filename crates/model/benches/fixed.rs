//! Price and quantity parsing/formatting cost.

use criterion::{Criterion, criterion_group, criterion_main};
use raven_model::{Price, Qty};
use std::hint::black_box;

fn parse(c: &mut Criterion) {
    let inputs = [
        "65000.10",
        "0.000001234",
        "1209.67000000",
        "123456789.123456789",
    ];
    let mut g = c.benchmark_group("fixed");
    for s in inputs {
        g.bench_function(format!("parse_price/{s}"), |b| {
            b.iter(|| black_box(s).parse::<Price>())
        });
    }
    g.bench_function("parse_qty/85.48210000", |b| {
        b.iter(|| black_box("85.48210000").parse::<Qty>())
    });
    let p: Price = "65000.1".parse().unwrap();
    g.bench_function("format_price/65000.1", |b| {
        b.iter(|| black_box(p).to_string())
    });
    g.finish();
}

criterion_group!(benches, parse);
criterion_main!(benches);
