//! A recorder batch: events in their wire encoding (each a one-event `StreamResponse`,
//! exactly what a subscriber receives), concatenated, with where each one ends and the
//! columns the recorder and stores use (instrument, channel, sequence, publish time). Both
//! come from the engine, which encoded each event once ([`crate::engine::Tapped`]): the
//! recorder copies them, and never encodes an event again nor parses its bytes back. The
//! spill file keeps only the bytes; a batch read back from it derives its columns from
//! them with `wire::scan` ([`row`]), so the bytes stay the one source of truth.

use bytes::BytesMut;
use prost::Message;
use raven_model::{Event, EventBody, InstrumentId, InstrumentName, SnapshotKind};
use raven_proto::pb;
use raven_proto::wire::{self, scan};

use super::{CHECKPOINT_CHANNEL, StoreError};
use crate::engine::Tapped;

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
    columns: Vec<Columns>,
}

/// One event's indexed columns (its bytes are in the batch's).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Columns {
    instrument: InstrumentName,
    channel: u8,
    sequence: u64,
    publish_time: u64,
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
            columns: Vec::new(),
        }
    }

    /// Rebuilds a batch from its parts (the spill file), deriving the columns from the
    /// bytes; checks every row scans.
    pub fn from_parts(
        run: u64,
        number: u64,
        bytes: Vec<u8>,
        ends: Vec<u32>,
    ) -> Result<Batch, StoreError> {
        let mut start = 0;
        for &end in &ends {
            if end < start || end as usize > bytes.len() {
                return Err(StoreError::Corrupt(format!(
                    "batch {run}/{number}: row ends at {end}, after {start}, in {} bytes",
                    bytes.len()
                )));
            }
            start = end;
        }
        if start as usize != bytes.len() {
            return Err(StoreError::Corrupt(format!(
                "batch {run}/{number}: rows cover {start} of {} bytes",
                bytes.len()
            )));
        }
        let mut columns = Vec::with_capacity(ends.len());
        let mut start = 0;
        for &end in &ends {
            let row = row(&bytes[start..end as usize])?;
            start = end as usize;
            columns.push(Columns {
                instrument: InstrumentName::parse(row.instrument)
                    .map_err(|e| StoreError::Corrupt(format!("batch {run}/{number}: {e}")))?,
                channel: row.channel,
                sequence: row.sequence,
                publish_time: row.publish_time,
            });
        }
        Ok(Batch {
            run,
            number,
            bytes: BytesMut::from(&bytes[..]),
            ends,
            columns,
        })
    }

    /// Appends an event of instrument `name`, encoding it (gap records; the engine's
    /// events come encoded, through [`Batch::extend`]).
    pub fn push(&mut self, name: &InstrumentName, event: &Event) {
        // Encoded straight onto the batch: no buffer per event.
        wire::put_event(&mut self.bytes, name.as_str(), event);
        self.ends.push(
            u32::try_from(self.bytes.len()).expect("a batch stays far below 4 GiB (invariant)"),
        );
        self.columns.push(Columns {
            instrument: name.clone(),
            channel: channel_column(event),
            sequence: event.sequence.0,
            publish_time: event.publish_time.0,
        });
    }

    /// Appends rows `rows` of `tapped` as they are: their bytes copied, their columns
    /// taken, their instruments' names from `name`.
    pub fn extend(
        &mut self,
        tapped: &Tapped,
        rows: std::ops::Range<usize>,
        mut name: impl FnMut(InstrumentId) -> InstrumentName,
    ) {
        let all = &tapped.rows()[rows.clone()];
        let Some(last) = all.last() else {
            return;
        };
        let from = match rows.start {
            0 => 0,
            i => tapped.rows()[i - 1].end as usize,
        };
        let base = self.bytes.len();
        self.bytes
            .extend_from_slice(&tapped.bytes()[from..last.end as usize]);
        let mut previous: Option<(InstrumentId, InstrumentName)> = None;
        for row in all {
            self.ends.push(
                u32::try_from(base + row.end as usize - from)
                    .expect("a batch stays far below 4 GiB (invariant)"),
            );
            // An instrument's events come in runs: its name is looked up once per run.
            let instrument = match &previous {
                Some((id, known)) if *id == row.instrument => known.clone(),
                _ => {
                    let found = name(row.instrument);
                    previous = Some((row.instrument, found.clone()));
                    found
                }
            };
            self.columns.push(Columns {
                instrument,
                channel: row.channel,
                sequence: row.sequence,
                publish_time: row.publish_time,
            });
        }
    }

    /// Bytes it holds in memory: the events' bytes, their ends and their columns.
    pub fn memory(&self) -> usize {
        self.bytes.len() + self.len() * (size_of::<u32>() + size_of::<Columns>())
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

    /// Each row's instrument, in order.
    pub fn instruments(&self) -> impl Iterator<Item = &InstrumentName> + '_ {
        self.columns.iter().map(|c| &c.instrument)
    }

    /// The rows, in order.
    pub fn rows(&self) -> impl Iterator<Item = Row<'_>> + '_ {
        let mut start = 0usize;
        self.ends
            .iter()
            .zip(&self.columns)
            .map(move |(&end, columns)| {
                let bytes = &self.bytes[start..end as usize];
                start = end as usize;
                Row {
                    instrument: columns.instrument.as_str(),
                    channel: columns.channel,
                    sequence: columns.sequence,
                    publish_time: columns.publish_time,
                    bytes,
                }
            })
    }
}

/// The `channel` column of `event`: its `raven.v1.Channel` number, or
/// [`CHECKPOINT_CHANNEL`] for a checkpoint snapshot, stored apart from the book's events.
pub fn channel_column(event: &Event) -> u8 {
    match &event.body {
        EventBody::Snapshot(s) if s.kind == SnapshotKind::Checkpoint => CHECKPOINT_CHANNEL,
        body => wire::channel_number(body.channel()) as u8,
    }
}

/// Reads one event's columns from its bytes (a spilled batch, a stored row).
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
        bytes,
    })
}
