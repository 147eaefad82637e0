//! The engine's bounded queues, filled while a shard is held in its flush: a batch offered
//! to the input (as the ingest API does) goes where shards have room and the rest comes
//! back in order for the blocking send; a client's command waits for room in a full
//! command queue and is refused as busy only after the configured wait.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::{Receiver, bounded};
use raven_model::{
    EventBody, FeedEvent, FeedKind, InstrumentId, InstrumentName, InstrumentRegistry, Price, Qty,
    Trade, UnixNanos,
};
use raven_server::clock::SystemClock;
use raven_server::engine::{Command, Engine, EngineConfig, Offered, ShardContext, Tapped};
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

/// A context over `registry` whose shards, once they have applied a batch, wait in their
/// flush while the test holds the returned gate; the receiver says when one has.
fn gated(registry: &InstrumentRegistry) -> (ShardContext, Arc<Mutex<()>>, Receiver<()>) {
    let gate = Arc::new(Mutex::new(()));
    let (entered_tx, entered) = bounded(16);
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
    (ctx, gate, entered)
}

/// `f`'s result, run on its own thread: a call that should not block (the shard is held,
/// so a blocked call would never return) fails the test after 30 s instead of hanging it.
fn promptly<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (done_tx, done) = bounded(1);
    std::thread::spawn(move || done_tx.send(f()).unwrap());
    done.recv_timeout(Duration::from_secs(30))
        .expect("blocked with the shard held")
}

#[test]
fn an_offered_batch_goes_where_shards_have_room_and_the_rest_comes_back_in_order() {
    let registry = InstrumentRegistry::new();
    // Two shards: instrument ids 0 and 1 belong to shards 0 and 1.
    let a = registry.intern(&InstrumentName::parse("TEST:A").unwrap());
    let b = registry.intern(&InstrumentName::parse("TEST:B").unwrap());
    assert_eq!((a.index() % 2, b.index() % 2), (0, 1));
    let (mut ctx, gate, entered) = gated(&registry);
    let (tap_tx, tap) = bounded(64);
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
    let sending = input.clone();
    assert!(promptly(
        move || sending.send(vec![trade(a, 2)]) && sending.send(vec![trade(a, 3)])
    ));
    // Shard 1 has room for its part; shard 0's part comes back, in order.
    let offering = input.clone();
    let offered =
        promptly(move || offering.offer(vec![trade(a, 4), trade(b, 1), trade(a, 5), trade(b, 2)]));
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

/// A client's request that meets a full command queue (thousands of clients subscribing
/// at once) waits for room rather than being refused, and is refused as busy only once
/// the queue has stayed full for the whole `command_wait`. Time is the test runtime's
/// paused clock, so the two-second wait takes none.
#[test]
fn a_request_waits_for_room_in_a_full_command_queue_and_is_refused_busy_only_after_the_wait() {
    use futures::FutureExt;
    use raven_server::engine::EngineError;

    let registry = InstrumentRegistry::new();
    let id = registry.intern(&InstrumentName::parse("TEST:X").unwrap());
    // While the test holds the gate, the shard waits in its flush: it takes no command.
    let (ctx, gate, entered) = gated(&registry);
    let config = EngineConfig {
        commands: 2,
        ..EngineConfig::with_shards(1)
    };
    assert_eq!(config.command_wait, Duration::from_secs(2));
    let engine = Engine::start(config, ctx).unwrap();
    let commands = engine.commands();
    let snapshot = || {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let command = Command::Snapshot {
            instrument: id,
            depth: 0,
            reply,
        };
        (command, answer)
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();

    // Holds the shard inside the flush of trade `n` and fills its queue with two
    // snapshot requests, whose answers it returns.
    let hold_and_fill = |n| {
        let held = gate.lock().unwrap();
        assert!(engine.input().send(vec![trade(id, n)]));
        entered.recv_timeout(Duration::from_secs(30)).unwrap();
        let answers: Vec<_> = (0..2)
            .map(|_| {
                let (command, answer) = snapshot();
                commands.send(id, command).unwrap();
                answer
            })
            .collect();
        (held, answers)
    };

    // The shard is held; its queue takes two commands and `send` refuses a third at once.
    let (held, answers) = hold_and_fill(1);
    let (third, _) = snapshot();
    assert!(matches!(commands.send(id, third), Err(EngineError::Busy)));
    // `send_waiting` waits instead, and gets in once the shard moves on.
    let (waiting, waiting_answer) = snapshot();
    runtime.block_on(async {
        let mut send = std::pin::pin!(commands.send_waiting(id, waiting));
        assert!(
            (&mut send).now_or_never().is_none(),
            "sent into a full queue"
        );
        drop(held);
        for answer in answers {
            answer.await.unwrap();
        }
        send.await.unwrap();
        let answered = waiting_answer.await.unwrap();
        assert_eq!(answered.instrument, id);
        assert!(matches!(answered.body, EventBody::Snapshot(_)));
    });

    // Held again and full again: the wait runs out and the request is refused, after
    // exactly `command_wait` and not before.
    let (held, answers) = hold_and_fill(2);
    let (refused, refused_answer) = snapshot();
    let waited = runtime.block_on(async {
        let started = tokio::time::Instant::now();
        let sent = commands.send_waiting(id, refused).await;
        assert!(matches!(sent, Err(EngineError::Busy)), "{sent:?}");
        started.elapsed()
    });
    assert_eq!(waited, Duration::from_secs(2));
    drop(held);
    // What was queued is answered; what was refused never reached the shard.
    runtime.block_on(async {
        for answer in answers {
            answer.await.unwrap();
        }
        assert!(refused_answer.await.is_err());
    });
    engine.shutdown();
}
