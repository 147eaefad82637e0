//! The engine's pushes into subscribers' mailboxes, on its own thread: channels that the
//! same subscribers take reach each of them as one chunk, what does not fit is dropped and
//! reported per instrument, and a closed subscriber is forgotten by every channel.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, bounded};
use prost::Message;
use raven_model::{
    Channel, FeedEvent, FeedKind, InstrumentId, InstrumentName, InstrumentRegistry, Price, Qty,
    Trade, UnixNanos,
};
use raven_proto::pb;
use raven_server::clock::SystemClock;
use raven_server::engine::{Command, Engine, EngineConfig, ShardContext, Tapped};
use raven_server::fanout::{Closed, Fanout, LagPolicy, Mailbox, QueueBound};

struct Harness {
    engine: Engine,
    fanout: Arc<Fanout>,
    tap: Receiver<Arc<Tapped>>,
    ids: Vec<InstrumentId>,
}

/// One shard over instruments `TEST:A`, `TEST:B`, `TEST:C`.
fn start() -> Harness {
    let registry = InstrumentRegistry::new();
    let ids = ["TEST:A", "TEST:B", "TEST:C"]
        .iter()
        .map(|n| registry.intern(&InstrumentName::parse(n).unwrap()))
        .collect();
    let (tap_tx, tap) = bounded(16);
    let fanout = Arc::new(Fanout::default());
    let mut ctx = ShardContext::new(
        raven_server::feed::Catalog::new(registry),
        Arc::new(SystemClock),
        fanout.clone(),
    );
    ctx.taps.push(tap_tx);
    let engine = Engine::start(EngineConfig::with_shards(1), ctx).unwrap();
    Harness {
        engine,
        fanout,
        tap,
        ids,
    }
}

impl Harness {
    /// A subscriber of the trades of `instruments` (indexes into `ids`), holding at most
    /// `events` queued.
    fn subscriber(&self, events: usize, instruments: &[usize]) -> Arc<Mailbox> {
        let mailbox = self.fanout.open(
            QueueBound {
                events,
                bytes: 1 << 20,
            },
            LagPolicy::Gap,
        );
        for &i in instruments {
            let (done, subscribed) = tokio::sync::oneshot::channel();
            let id = self.ids[i];
            let command = Command::Subscribe {
                mailbox: mailbox.clone(),
                instrument: id,
                channel: Channel::Trades,
                depth: 0,
                state: false,
                done,
            };
            self.engine.commands().send(id, command).unwrap();
            subscribed.blocking_recv().unwrap();
        }
        // The subscription markers, out of the way.
        mailbox.drain(usize::MAX);
        mailbox
    }

    /// Publishes one batch of trades, `(instrument index, quantity)`, and waits until
    /// its output has reached the mailboxes (they are pushed before the taps).
    fn publish(&self, trades: &[(usize, i128)]) {
        let batch = trades
            .iter()
            .map(|&(i, qty)| FeedEvent {
                instrument: self.ids[i],
                exchange_time: UnixNanos(1),
                receive_time: UnixNanos(1),
                venue_seq: 0,
                kind: FeedKind::Trade(Trade {
                    price: Price::from_units(100),
                    qty: Qty::from_units(qty),
                    aggressor: raven_model::Aggressor::Buy,
                    trade_id: qty.to_string(),
                }),
            })
            .collect();
        assert!(self.engine.input().send(batch));
        self.tap.recv_timeout(Duration::from_secs(30)).unwrap();
    }
}

/// What a drain hands out: each instrument's trade quantities in order, and the gaps
/// reported per instrument.
#[derive(Debug, Default, PartialEq, Eq)]
struct Received {
    trades: BTreeMap<String, Vec<u64>>,
    gaps: BTreeMap<String, u64>,
}

fn drain(mailbox: &Mailbox) -> Received {
    let bytes = mailbox.drain(usize::MAX).batch.encode_to_vec();
    let mut received = Received::default();
    for event in pb::StreamResponse::decode(bytes.as_slice()).unwrap().events {
        match event.body {
            Some(pb::event::Body::Trade(t)) => {
                received
                    .trades
                    .entry(event.instrument)
                    .or_default()
                    .push(t.qty);
            }
            Some(pb::event::Body::Status(s)) => {
                assert_eq!(s.kind, pb::StatusKind::Gap as i32);
                assert_eq!(received.gaps.insert(event.instrument, s.missed), None);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    received
}

fn received(trades: &[(&str, &[u64])], gaps: &[(&str, u64)]) -> Received {
    Received {
        trades: trades
            .iter()
            .map(|(n, q)| (format!("TEST:{n}"), q.to_vec()))
            .collect(),
        gaps: gaps
            .iter()
            .map(|(n, m)| (format!("TEST:{n}"), *m))
            .collect(),
    }
}

#[test]
fn channels_shared_by_the_same_subscribers_go_as_one_chunk_and_drops_are_reported_per_instrument() {
    let h = start();
    // B's and C's trades have the same subscribers; A's have one more.
    let all = h.subscriber(1024, &[0, 1, 2]);
    let leaving = h.subscriber(1024, &[2, 1, 0]);
    // Two events fit, though a larger chunk goes to an empty queue whole.
    let small = h.subscriber(2, &[1, 0, 2]);
    let only_a = h.subscriber(1024, &[0]);

    h.publish(&[(0, 1), (1, 2), (2, 3), (1, 4), (0, 5)]);
    let everything = received(&[("A", &[1, 5]), ("B", &[2, 4]), ("C", &[3])], &[]);
    assert_eq!(drain(&all), everything);
    assert_eq!(drain(&leaving), everything);
    assert_eq!(drain(&only_a), received(&[("A", &[1, 5])], &[]));
    // B's and C's three events reached `small` as one chunk, into its empty queue (as
    // chunks of their own, C's would not have fitted after B's two). A's did not fit.
    assert_eq!(
        drain(&small),
        received(&[("B", &[2, 4]), ("C", &[3])], &[("A", 2)])
    );

    // A combined chunk that does not fit is dropped whole and counted per instrument.
    h.publish(&[(1, 6), (2, 7)]);
    assert_eq!(small.queued().0, 2);
    h.publish(&[(1, 8), (2, 9), (2, 10), (0, 11)]);
    assert_eq!(
        drain(&small),
        received(&[("B", &[6]), ("C", &[7])], &[("B", 1), ("C", 2), ("A", 1)])
    );
    let everything = received(&[("A", &[11]), ("B", &[6, 8]), ("C", &[7, 9, 10])], &[]);
    assert_eq!(drain(&all), everything);
    assert_eq!(drain(&leaving), everything);
    assert_eq!(drain(&only_a), received(&[("A", &[11])], &[]));

    // A closed subscriber is forgotten by each channel as it next publishes; the others
    // go on receiving, together.
    leaving.close(Closed::ClientLeft);
    h.publish(&[(1, 12), (2, 13)]);
    h.publish(&[(0, 14), (1, 15), (2, 16)]);
    let after = received(&[("A", &[14]), ("B", &[12, 15]), ("C", &[13, 16])], &[]);
    assert_eq!(drain(&all), after);
    assert_eq!(drain(&small), {
        // Two events queued from the first batch, so the second's three were dropped.
        received(
            &[("B", &[12]), ("C", &[13])],
            &[("A", 1), ("B", 1), ("C", 1)],
        )
    });
    assert_eq!(drain(&leaving), Received::default());
    assert_eq!(drain(&only_a), received(&[("A", &[14])], &[]));
    let delivered = h.fanout.delivered();
    // Each batch's drains above, and nothing else.
    assert_eq!(
        delivered.events,
        (5 + 5 + 2 + 3) + (2 + 6 + 6 + 1) + (5 + 2 + 1)
    );
    h.engine.shutdown();
}
