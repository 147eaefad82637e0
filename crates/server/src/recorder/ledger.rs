//! The loss ledger: what the recorder had to drop, kept as ranges so that it can be
//! recorded. Loss happens only when the store is failing and both the in-memory queue
//! and the spill file's reservation are full. Each (instrument, channel) gets one range
//! per stretch of loss; when the stretch ends the ranges become a *gap batch*: one
//! `Status` event of kind `Gap` per range, carrying the count in `missed`, stored like
//! any other batch. A history query over the stretch then returns the gap, with its
//! count, where the events would have been, instead of a silent hole.
//!
//! A gap row's sequence is the last lost sequence of its range (the next stored event
//! continues from it), its times are the first lost event's publish time, and its
//! position is that of the first lost batch, whose number no stored batch uses.

use std::collections::BTreeMap;

use raven_model::{
    Channel, Event, EventBody, InstrumentId, InstrumentName, Sequence, Status, StatusKind,
    UnixNanos,
};
use raven_proto::convert::channel_from_pb;

use crate::store::{Batch, CHECKPOINT_CHANNEL};

/// One (instrument, channel)'s lost events in a stretch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Range {
    first_sequence: u64,
    last_sequence: u64,
    count: u64,
    first_time: u64,
    last_time: u64,
}

/// Lost events since the stretch began.
#[derive(Debug, Default)]
pub struct Ledger {
    /// (run, number) of the stretch's first lost batch.
    first: Option<(u64, u64)>,
    ranges: BTreeMap<(InstrumentName, u8), Range>,
    /// Events lost in the stretch, checkpoint snapshots included (they have no
    /// sequence of their own, so they appear in no range).
    events: u64,
}

impl Ledger {
    /// Adds a dropped batch to the stretch.
    pub fn record(&mut self, batch: &Batch) {
        self.first.get_or_insert((batch.run, batch.number));
        for (row, instrument) in batch.rows().zip(batch.instruments()) {
            self.events += 1;
            if row.channel == CHECKPOINT_CHANNEL {
                continue;
            }
            self.ranges
                .entry((instrument.clone(), row.channel))
                .and_modify(|r| {
                    r.first_sequence = r.first_sequence.min(row.sequence);
                    r.last_sequence = r.last_sequence.max(row.sequence);
                    r.count += 1;
                    r.first_time = r.first_time.min(row.publish_time);
                    r.last_time = r.last_time.max(row.publish_time);
                })
                .or_insert(Range {
                    first_sequence: row.sequence,
                    last_sequence: row.sequence,
                    count: 1,
                    first_time: row.publish_time,
                    last_time: row.publish_time,
                });
        }
    }

    /// Events lost in the stretch so far.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// Ends the stretch: its gap batch, or `None` when nothing was lost.
    pub fn close(&mut self) -> Option<Batch> {
        let (run, number) = self.first.take()?;
        self.events = 0;
        let mut batch = Batch::new(run, number);
        for ((instrument, channel), range) in std::mem::take(&mut self.ranges) {
            let Ok(channel) = channel_from_pb(i32::from(channel)) else {
                continue;
            };
            batch.push(&instrument, &gap_event(channel, range));
        }
        Some(batch)
    }
}

fn gap_event(channel: Channel, range: Range) -> Event {
    let time = UnixNanos(range.first_time);
    Event {
        instrument: InstrumentId(0),
        sequence: Sequence(range.last_sequence),
        exchange_time: time,
        receive_time: time,
        publish_time: time,
        venue_seq: 0,
        body: EventBody::Status(Status {
            kind: StatusKind::Gap,
            channel,
            missed: range.count,
            detail: format!(
                "not recorded: sequences {}-{} published {}-{} ns were lost (store failing, spill file full)",
                range.first_sequence, range.last_sequence, range.first_time, range.last_time
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;
    use raven_model::{Aggressor, Trade};

    use super::*;

    fn name(name: &str) -> InstrumentName {
        InstrumentName::parse(name).unwrap()
    }

    fn trade(sequence: u64, time: u64) -> Event {
        Event {
            instrument: InstrumentId(0),
            sequence: Sequence(sequence),
            exchange_time: UnixNanos(time),
            receive_time: UnixNanos(time),
            publish_time: UnixNanos(time),
            venue_seq: 0,
            body: EventBody::Trade(Trade {
                price: "1".parse().unwrap(),
                qty: "2".parse().unwrap(),
                aggressor: Aggressor::Sell,
                trade_id: String::new(),
            }),
        }
    }

    #[test]
    fn dropped_batches_become_one_gap_row_per_instrument_and_channel() {
        let mut ledger = Ledger::default();
        assert!(ledger.close().is_none());
        let mut first = Batch::new(9, 4);
        let (a, b) = (name("X:A"), name("X:B"));
        first.push(&a, &trade(10, 100));
        first.push(&b, &trade(3, 110));
        first.push(&a, &trade(11, 120));
        let mut second = Batch::new(9, 5);
        second.push(&a, &trade(12, 130));
        ledger.record(&first);
        ledger.record(&second);
        assert_eq!(ledger.events(), 4);
        let gaps = ledger.close().unwrap();
        assert_eq!((gaps.run, gaps.number, gaps.len()), (9, 4, 2));
        let rows: Vec<_> = gaps.rows().collect();
        assert_eq!(
            rows.iter()
                .map(|r| (r.instrument, r.channel, r.sequence, r.publish_time))
                .collect::<Vec<_>>(),
            [("X:A", 3, 12, 100), ("X:B", 3, 3, 110)]
        );
        let decoded = raven_proto::pb::StreamResponse::decode(rows[0].bytes).unwrap();
        let Some(raven_proto::pb::event::Body::Status(status)) = &decoded.events[0].body else {
            panic!("a gap row is a status: {decoded:?}");
        };
        assert_eq!(
            (status.kind, status.missed),
            (raven_proto::pb::StatusKind::Gap as i32, 3)
        );
        assert_eq!(
            status.detail,
            "not recorded: sequences 10-12 published 100-130 ns were lost (store failing, spill file full)"
        );
        assert!(ledger.close().is_none(), "a closed stretch starts over");
    }
}
