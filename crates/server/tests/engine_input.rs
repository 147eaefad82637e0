//! The engine's input as the ingest API feeds it: a batch is offered without blocking,
//! each shard with room takes its part, and what full shards could not take comes back,
//! in order, for the blocking send.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::bounded;
use raven_model::{
    EventBody, FeedEvent, FeedKind, InstrumentId, InstrumentName, InstrumentRegistry, Price, Qty,
    Trade, UnixNanos,
};
use raven_server::clock::SystemClock;
use raven_server::engine::{Engine, EngineConfig, Offered, ShardContext, Tapped};
use raven_server::fanout::Fanout;
use raven_server::feed::Catalog;

fn trade(instrument: InstrumentId, n: i128) -> FeedEvent {
    FeedEvent {
        instrument,
        exchange_time: UnixNanos(1),
        receive_time: UnixNanos(1),
        venue_seq: 0,
        kind: FeedKind::Trade(Trade {
            price: Price::from_units(100),
            qty: Qty::from_units(n),
            aggressor: raven_model::Aggressor::Buy,
            trade_id: n.to_string(),
        }),
    }
}

fn trade_ids(events: &[FeedEvent]) -> Vec<String> {
    events
        .iter()
        .map(|e| match &e.kind {
            FeedKind::Trade(t) => t.trade_id.clone(),
            other => panic!("{other:?}"),
        })
        .collect()
}

#[test]
fn an_offered_batch_goes_where_shards_have_room_and_the_rest_comes_back_in_order() {
    let registry = InstrumentRegistry::new();
    // Two shards: instrument ids 0 and 1 belong to shards 0 and 1.
    let a = registry.intern(&InstrumentName::parse("TEST:A").unwrap());
    let b = registry.intern(&InstrumentName::parse("TEST:B").unwrap());
    assert_eq!((a.index() % 2, b.index() % 2), (0, 1));
    // While the test holds the gate, a shard that has applied a batch waits in its flush.
    let gate = Arc::new(Mutex::new(()));
    let (entered_tx, entered) = bounded(16);
    let (tap_tx, tap) = bounded(64);
    let mut ctx = ShardContext::new(
        Catalog::new(registry.clone()),
        Arc::new(SystemClock),
        Arc::new(Fanout::default()),
    );
    let held_by = gate.clone();
    ctx.inline_taps.push(Arc::new(move |_: &Tapped| {
        let _ = entered_tx.try_send(());
        drop(held_by.lock().unwrap());
    }));
    ctx.taps.push(tap_tx);
    let config = EngineConfig {
        input_batches: 2,
        ..EngineConfig::with_shards(2)
    };
    let engine = Engine::start(config, ctx).unwrap();
    let input = engine.input();

    let held = gate.lock().unwrap();
    // Shard 0 takes trade 1 and waits; trades 2 and 3 fill its input.
    assert!(matches!(input.offer(vec![trade(a, 1)]), Offered::Taken));
    entered.recv_timeout(Duration::from_secs(30)).unwrap();
    assert!(input.send(vec![trade(a, 2)]));
    assert!(input.send(vec![trade(a, 3)]));
    // Shard 1 has room for its part; shard 0's part comes back, in order.
    let offered = input.offer(vec![trade(a, 4), trade(b, 1), trade(a, 5), trade(b, 2)]);
    let Offered::Full(rest) = offered else {
        panic!("{offered:?}")
    };
    assert_eq!(trade_ids(&rest), ["4", "5"]);
    assert!(rest.iter().all(|e| e.instrument == a));
    drop(held);
    assert!(input.send(rest));

    // Each instrument's trades were applied once each, in order.
    let mut applied: BTreeMap<InstrumentId, Vec<String>> = BTreeMap::new();
    while applied.values().map(Vec::len).sum::<usize>() < 7 {
        let batch = tap.recv_timeout(Duration::from_secs(30)).unwrap();
        for event in batch.events() {
            if let EventBody::Trade(t) = event.body {
                applied
                    .entry(event.instrument)
                    .or_default()
                    .push(t.trade_id);
            }
        }
    }
    assert_eq!(applied[&a], ["1", "2", "3", "4", "5"]);
    assert_eq!(applied[&b], ["1", "2"]);
    engine.shutdown();
    assert!(matches!(input.offer(vec![trade(b, 3)]), Offered::Stopped));
}
