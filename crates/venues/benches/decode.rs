//! Decode + normalize throughput of the venue codecs on recorded-shape payloads, one
//! core: Binance depth diffs (10 levels) through decode, normalization and the synced
//! book machine; Binance aggregate trades through decode and the trade tape; Coinbase
//! and Kraken book updates (Kraken's with its checksum verified). With
//! `--features compare-sonic`, serde_json and sonic-rs side by side on the same payloads.

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use raven_model::UnixNanos;
use raven_venues::binance::sync::{BookSync, DEFAULT_BUFFER, Diff, Snapshot};
use raven_venues::binance::{self, Market, wire};
use raven_venues::tape::TradeTape;
use raven_venues::{coinbase, kraken};

const BATCH: u64 = 1000;

/// A spot depth diff shaped like a real capture (barter-data's ETHUSDT), 5 bids + 5 asks.
fn depth_payload(first: u64) -> String {
    let level = |base: u32, i: u32| {
        format!(
            r#"["{}.{:02}000000","{}.{:04}0000"]"#,
            base,
            i * 7 % 100,
            1 + i,
            i * 1733 % 10000
        )
    };
    let bids: Vec<String> = (0..5).map(|i| level(1209, i)).collect();
    let asks: Vec<String> = (0..5).map(|i| level(1210, i + 5)).collect();
    format!(
        r#"{{"stream":"ethusdt@depth@100ms","data":{{"e":"depthUpdate","E":1671656397761,"s":"ETHUSDT","U":{first},"u":{},"b":[{}],"a":[{}]}}}}"#,
        first + 2,
        bids.join(","),
        asks.join(",")
    )
}

fn agg_payload(id: u64) -> String {
    format!(
        r#"{{"stream":"btcusdt@aggTrade","data":{{"e":"aggTrade","E":1712861210662,"a":{id},"s":"BTCUSDT","p":"70206.30","q":"0.052","f":4867106679,"l":4867106679,"T":1712861210592,"m":false}}}}"#
    )
}

fn synced_book() -> BookSync {
    let mut sync = BookSync::new(Market::Spot, DEFAULT_BUFFER);
    let mut out = Vec::new();
    sync.on_diff(
        Diff {
            first: 1,
            last: 1,
            prev: None,
            exchange_time: UnixNanos::ZERO,
            changes: vec![],
        },
        &mut out,
    );
    sync.on_snapshot(
        Snapshot {
            id: 0,
            exchange_time: UnixNanos::ZERO,
            bids: vec![],
            asks: vec![],
        },
        &mut out,
    );
    assert_eq!(sync.synced_at(), Some(1));
    sync
}

fn binance(c: &mut Criterion) {
    let depth: Vec<String> = (0..BATCH).map(|i| depth_payload(2 + i * 3)).collect();
    let mut g = c.benchmark_group("binance");
    g.throughput(Throughput::Elements(BATCH));
    g.bench_function("depth10_decode_normalize_sync", |b| {
        b.iter_batched(
            synced_book,
            |mut sync| {
                let mut out = Vec::with_capacity(1);
                for text in &depth {
                    let wire::Frame::Depth(d) = wire::decode(text).expect("depth") else {
                        unreachable!()
                    };
                    sync.on_diff(Diff::from_wire(d, binance::millis), &mut out);
                    out.clear();
                }
                sync
            },
            BatchSize::SmallInput,
        )
    });
    let trades: Vec<String> = (0..BATCH).map(|i| agg_payload(2_125_892_846 + i)).collect();
    g.bench_function("agg_trade_decode_normalize_dedupe", |b| {
        b.iter_batched(
            TradeTape::default,
            |mut tape| {
                let mut out = Vec::with_capacity(1);
                for text in &trades {
                    let wire::Frame::AggTrade(t) = wire::decode(text).expect("trade") else {
                        unreachable!()
                    };
                    binance::agg_trade(&mut tape, t, &mut out);
                    out.clear();
                }
                tape
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn coinbase_and_kraken(c: &mut Criterion) {
    let mut g = c.benchmark_group("venues");
    g.throughput(Throughput::Elements(BATCH));
    let l2: Vec<String> = (0..BATCH)
        .map(|i| {
            format!(
                r#"{{"channel":"l2_data","client_id":"","timestamp":"2026-04-07T14:30:01.456789Z","sequence_num":{i},"events":[{{"type":"update","product_id":"BTC-USD","updates":[{{"side":"bid","event_time":"2026-04-07T14:30:01.456789Z","price_level":"68900.{:02}","new_quantity":"2.00000000"}},{{"side":"offer","event_time":"2026-04-07T14:30:01.456789Z","price_level":"68901.00","new_quantity":"0.00000000"}}]}}]}}"#,
                i % 100
            )
        })
        .collect();
    g.bench_function("coinbase_l2_update_decode_normalize", |b| {
        let mut product = coinbase::Product::default();
        let mut out = Vec::new();
        let snap = r#"{"channel":"l2_data","client_id":"","timestamp":"t","sequence_num":0,"events":[{"type":"snapshot","product_id":"BTC-USD","updates":[]}]}"#;
        if let Ok(coinbase::wire::Frame::Message { events: coinbase::wire::Events::L2(ev), .. }) =
            coinbase::wire::decode(snap)
        {
            for e in ev {
                product.on_l2(e, 0, &mut out);
            }
        }
        b.iter(|| {
            for text in &l2 {
                let Ok(coinbase::wire::Frame::Message {
                    sequence_num,
                    events: coinbase::wire::Events::L2(events),
                    ..
                }) = coinbase::wire::decode(text)
                else {
                    unreachable!()
                };
                for e in events {
                    product.on_l2(e, sequence_num, &mut out);
                }
                out.clear();
            }
        })
    });
    // A ten-level Kraken book and updates that keep its checksum right.
    let snapshot = r#"{"channel":"book","type":"snapshot","data":[{"symbol":"BTC/USD","bids":[{"price":45283.5,"qty":0.10000000},{"price":45283.4,"qty":1.54582015},{"price":45282.1,"qty":0.10000000},{"price":45281.0,"qty":0.10000000},{"price":45280.3,"qty":1.54592586},{"price":45279.0,"qty":0.07990000},{"price":45277.6,"qty":0.03310103},{"price":45277.5,"qty":0.30000000},{"price":45277.3,"qty":1.54602737},{"price":45276.6,"qty":0.15445238}],"asks":[{"price":45285.2,"qty":0.00100000},{"price":45286.4,"qty":1.54571953},{"price":45286.6,"qty":1.54571109},{"price":45289.6,"qty":1.54560911},{"price":45290.2,"qty":0.15890660},{"price":45291.8,"qty":1.54553491},{"price":45294.7,"qty":0.04454749},{"price":45296.1,"qty":0.35380000},{"price":45297.5,"qty":0.09945542},{"price":45299.5,"qty":0.18772827}],"checksum":3310070434,"timestamp":"2023-10-06T17:35:55.440295Z"}]}"#;
    let kraken_book = || {
        let mut book = kraken::Book::new(10);
        let mut out = Vec::new();
        if let Ok(kraken::wire::Frame::Channel {
            kind,
            data: kraken::wire::Data::Book(items),
            ..
        }) = kraken::wire::decode(snapshot)
        {
            for item in items {
                book.on_book(kind, item, UnixNanos::ZERO, &mut out);
            }
        }
        assert!(book.is_synced());
        book
    };
    let mut probe = kraken_book();
    let updates: Vec<String> = (0..BATCH)
        .map(|i| {
            let qty = format!("1.{:08}", 54_582_015 + i);
            let body = |sum: u32| {
                format!(
                    r#"{{"channel":"book","type":"update","data":[{{"symbol":"BTC/USD","bids":[{{"price":45283.4,"qty":{qty}}}],"asks":[],"checksum":{sum},"timestamp":"2023-10-06T17:35:56.440295Z"}}]}}"#
                )
            };
            // Learn the checksum the venue would send by applying the update once.
            let mut trial = probe.clone();
            let mut out = Vec::new();
            if let Ok(kraken::wire::Frame::Channel { kind, data: kraken::wire::Data::Book(items), .. }) =
                kraken::wire::decode(&body(0))
            {
                for item in items {
                    trial.on_book(kind, item, UnixNanos(u64::MAX), &mut out);
                }
            }
            let sum = trial.checksum();
            let text = body(sum);
            let mut out = Vec::new();
            if let Ok(kraken::wire::Frame::Channel { kind, data: kraken::wire::Data::Book(items), .. }) =
                kraken::wire::decode(&text)
            {
                for item in items {
                    probe.on_book(kind, item, UnixNanos::ZERO, &mut out);
                }
            }
            text
        })
        .collect();
    g.bench_function("kraken_book_update_decode_checksum", |b| {
        b.iter_batched(
            kraken_book,
            |mut book| {
                let mut out = Vec::with_capacity(1);
                for text in &updates {
                    let Ok(kraken::wire::Frame::Channel {
                        kind,
                        data: kraken::wire::Data::Book(items),
                        ..
                    }) = kraken::wire::decode(text)
                    else {
                        unreachable!()
                    };
                    for item in items {
                        book.on_book(kind, item, UnixNanos::ZERO, &mut out);
                    }
                    assert!(
                        matches!(out[..], [raven_venues::Action::Delta { .. }]),
                        "{out:?}"
                    );
                    out.clear();
                }
                book
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

/// The payload structs alone, serde_json and sonic-rs on the same bytes.
#[cfg(feature = "compare-sonic")]
fn parsers(c: &mut Criterion) {
    let data = |text: &str| {
        let start = text.find(r#""data":"#).expect("envelope") + 7;
        text[start..text.len() - 1].to_owned()
    };
    let depth: Vec<String> = (0..BATCH)
        .map(|i| data(&depth_payload(2 + i * 3)))
        .collect();
    let trades: Vec<String> = (0..BATCH).map(|i| data(&agg_payload(i))).collect();
    let mut g = c.benchmark_group("parser");
    g.throughput(Throughput::Elements(BATCH));
    g.bench_function("depth10/serde_json", |b| {
        b.iter(|| {
            for t in &depth {
                std::hint::black_box(
                    serde_json::from_str::<wire::DepthUpdate<'_>>(t).expect("depth"),
                );
            }
        })
    });
    g.bench_function("depth10/sonic_rs", |b| {
        b.iter(|| {
            for t in &depth {
                std::hint::black_box(
                    sonic_rs::from_str::<wire::DepthUpdate<'_>>(t).expect("depth"),
                );
            }
        })
    });
    g.bench_function("agg_trade/serde_json", |b| {
        b.iter(|| {
            for t in &trades {
                std::hint::black_box(serde_json::from_str::<wire::AggTrade<'_>>(t).expect("trade"));
            }
        })
    });
    g.bench_function("agg_trade/sonic_rs", |b| {
        b.iter(|| {
            for t in &trades {
                std::hint::black_box(sonic_rs::from_str::<wire::AggTrade<'_>>(t).expect("trade"));
            }
        })
    });
    g.finish();
}

#[cfg(feature = "compare-sonic")]
criterion_group!(benches, binance, coinbase_and_kraken, parsers);
#[cfg(not(feature = "compare-sonic"))]
criterion_group!(benches, binance, coinbase_and_kraken);
criterion_main!(benches);
