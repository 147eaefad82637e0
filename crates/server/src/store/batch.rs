//! A recorder batch: events in their wire encoding (each a one-event `StreamResponse`,
//! exactly what a subscriber receives), concatenated, with where each one ends. Stores
//! read the columns they index (instrument, channel, sequence, times, body kind) from
//! the bytes with `wire::scan`; the spill file writes the bytes as they are. So the bytes
//! are the one source of truth, from the engine to the database and back.

use bytes::BytesMut;
use prost::Message;
use raven_model::Event;
use raven_proto::pb;
use raven_proto::wire::{self, scan};

use super::{CHECKPOINT_CHANNEL, StoreError};

/// `Event.body` field number of a book snapshot.
const SNAPSHOT: u32 = 10;

/// One batch of the recorder, numbered within its run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// The server run that recorded it (its start time, ns): sequences restart per run.
    pub run: u64,
    /// Position in the run, from 0: a store that already holds (run, number) skips it.
    pub number: u64,
    bytes: BytesMut,
    ends: Vec<u32>,
}

/// One stored event's columns and bytes.
#[derive(Debug, Clone, Copy)]
pub struct Row<'a> {
    /// `VENUE:SYMBOL`.
    pub instrument: &'a str,
    /// `raven.v1.Channel` number; `CHECKPOINT_CHANNEL` for checkpoint snapshots.
    pub channel: u8,
    /// Sequence within (run, instrument, channel).
    pub sequence: u64,
    /// Publish time, ns.
    pub publish_time: u64,
    /// Body field number in `raven.v1.Event` (10 snapshot, 11 delta, 12 trade, …).
    pub kind: u8,
    /// The event's wire bytes (a one-event `StreamResponse`).
    pub bytes: &'a [u8],
}

impl Batch {
    /// An empty batch.
    pub fn new(run: u64, number: u64) -> Batch {
        Batch {
            run,
            number,
            bytes: BytesMut::new(),
            ends: Vec::new(),
        }
    }

    /// Rebuilds a batch from its parts (the spill file); checks every row scans.
    pub fn from_parts(
        run: u64,
        number: u64,
        bytes: Vec<u8>,
        ends: Vec<u32>,
    ) -> Result<Batch, StoreError> {
        let batch = Batch {
            run,
            number,
            bytes: BytesMut::from(&bytes[..]),
            ends,
        };
        let mut start = 0;
        for &end in &batch.ends {
            if end < start || end as usize > batch.bytes.len() {
                return Err(StoreError::Corrupt(format!(
                    "batch {run}/{number}: row ends at {end}, after {start}, in {} bytes",
                    batch.bytes.len()
                )));
            }
            start = end;
        }
        if start as usize != batch.bytes.len() {
            return Err(StoreError::Corrupt(format!(
                "batch {run}/{number}: rows cover {start} of {} bytes",
                batch.bytes.len()
            )));
        }
        for row in batch.rows() {
            row?;
        }
        Ok(batch)
    }

    /// Appends an event of instrument `name`.
    pub fn push(&mut self, name: &str, event: &Event) {
        // Encoded straight onto the batch: no buffer per event.
        wire::put_event(&mut self.bytes, name, event);
        self.ends.push(
            u32::try_from(self.bytes.len()).expect("a batch stays far below 4 GiB (invariant)"),
        );
    }

    /// Events in the batch.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// True when it holds no event.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// All events' bytes, concatenated: itself a valid `StreamResponse`.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Where each event's bytes end.
    pub fn ends(&self) -> &[u32] {
        &self.ends
    }

    /// The rows, in order.
    pub fn rows(&self) -> impl Iterator<Item = Result<Row<'_>, StoreError>> + '_ {
        let mut start = 0usize;
        self.ends.iter().map(move |&end| {
            let bytes = &self.bytes[start..end as usize];
            start = end as usize;
            row(bytes)
        })
    }
}

/// Reads one event's columns from its bytes.
pub fn row(bytes: &[u8]) -> Result<Row<'_>, StoreError> {
    let corrupt = |why: String| StoreError::Corrupt(why);
    let mut events = scan::events(bytes);
    let header = events
        .next()
        .ok_or_else(|| corrupt("an empty row".into()))?
        .map_err(|e| corrupt(format!("a row does not scan: {e}")))?;
    if events.next().is_some() {
        return Err(corrupt("a row holds more than one event".into()));
    }
    let instrument = std::str::from_utf8(header.instrument)
        .map_err(|_| corrupt("an instrument name is not UTF-8".into()))?;
    // Checkpoint snapshots are stored under channel 0, apart from the book's events
    // (queries for channels never see them). Snapshots are rare, so decoding one to
    // tell is cheap.
    let checkpoint = header.body == SNAPSHOT
        && pb::BookSnapshot::decode(header.body_bytes)
            .map_err(|e| corrupt(format!("a stored snapshot does not decode: {e}")))?
            .checkpoint;
    Ok(Row {
        instrument,
        channel: if checkpoint {
            CHECKPOINT_CHANNEL
        } else {
            u8::try_from(header.channel)
                .map_err(|_| corrupt(format!("channel {} out of range", header.channel)))?
        },
        sequence: header.sequence,
        publish_time: header.publish_time,
        kind: u8::try_from(header.body)
            .map_err(|_| corrupt(format!("body kind {} out of range", header.body)))?,
        bytes,
    })
}
