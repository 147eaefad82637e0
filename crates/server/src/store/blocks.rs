//! Blocks: how a batch is cut into the rows of `events` ([`blocks`]), and how a read
//! picks a query's events back out of them ([`Selection`]). See the `store` module doc
//! for the layout.

use raven_proto::wire;

use super::{
    Batch, CHECKPOINT_BIT, MAX_BLOCK_ROWS, Picker, Query, Row, StoreError, channel_bit, position,
    to_i64,
};

/// Consecutive events of one batch, stored as one row of `events`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Block<'a, I> {
    /// The first event's position; the others follow it.
    pub position: i64,
    /// The instrument's id, when every event is of one.
    pub instrument: Option<I>,
    /// Bit `c` set for each channel `c` among the events ([`channel_bit`]).
    pub channels: i32,
    /// The earliest publish time among the events.
    pub publish_time: i64,
    /// Events in the block.
    pub rows: i32,
    /// The events' bytes, end to end.
    pub bytes: &'a [u8],
}

/// Cuts `batch` (its `rows`, their instrument `ids`) into blocks: a new one starts at a
/// checkpoint snapshot (always a block of its own, so its position is where `BookAt`
/// starts and the partial index finds it), after one, and where adding the next event
/// would pass `max_bytes` or [`MAX_BLOCK_ROWS`]. Blocks span instruments: a shard
/// interleaves them (about two events in a row of one instrument in the simulator's
/// output), so blocks of one instrument would hold two events.
pub(crate) fn blocks<'a, I: Copy + Eq>(
    batch: &'a Batch,
    rows: &[Row<'a>],
    ids: &[I],
    max_bytes: usize,
) -> Result<Vec<Block<'a, I>>, StoreError> {
    let checkpoint = CHECKPOINT_BIT;
    let (bytes, ends) = (batch.bytes(), batch.ends());
    let mut out: Vec<Block<'a, I>> = Vec::new();
    // Where the last block's bytes start in the batch's.
    let mut from = 0;
    for (index, (row, &id)) in rows.iter().zip(ids).enumerate() {
        let start = index.checked_sub(1).map_or(0, |i| ends[i] as usize);
        let end = ends[index] as usize;
        if row.channel >= 31 {
            return Err(StoreError::Corrupt(format!(
                "batch {}/{}: channel {} out of range",
                batch.run, batch.number, row.channel
            )));
        }
        let bit = channel_bit(row.channel);
        let time = to_i64(row.publish_time, "publish time")?;
        match out.last_mut() {
            Some(block)
                if bit != checkpoint
                    && block.channels != checkpoint
                    && (block.rows as usize) < MAX_BLOCK_ROWS
                    && end - from <= max_bytes =>
            {
                if block.instrument != Some(id) {
                    block.instrument = None;
                }
                block.channels |= bit;
                block.publish_time = block.publish_time.min(time);
                block.rows += 1;
                block.bytes = &bytes[from..end];
            }
            _ => {
                from = start;
                out.push(Block {
                    position: position(batch.number, index),
                    instrument: Some(id),
                    channels: bit,
                    publish_time: time,
                    rows: 1,
                    bytes: &bytes[start..end],
                });
            }
        }
    }
    Ok(out)
}

/// A read's events picked out of blocks: each block is split (`wire::scan`) and each
/// event checked for the query's instruments, channels and times and the stretch's
/// positions; the picked events wait, end to end, for the hand that gives them to the
/// reader.
pub(super) struct Selection<'q, 'e> {
    names: Vec<&'q [u8]>,
    pub(super) channels: i32,
    /// Publish times `[from, to)`.
    times: (u64, u64),
    pub(super) run: i64,
    /// Positions `[start, end)` of `run`.
    pub(super) positions: (i64, i64),
    /// Events still wanted; `None` is no limit.
    pub(super) left: Option<u64>,
    picked: Vec<u8>,
    ends: Vec<usize>,
    each: &'e mut dyn FnMut(u64, &[u8]) -> bool,
    /// The reader wants no more.
    pub(super) done: bool,
}

impl<'q, 'e> Selection<'q, 'e> {
    /// Picks for `query`, handing to `each`; set `run` and `positions` per run.
    pub(super) fn new(query: &'q Query, each: &'e mut dyn FnMut(u64, &[u8]) -> bool) -> Self {
        Selection {
            names: query.instruments.iter().map(|n| n.as_bytes()).collect(),
            channels: if query.channels.is_empty() {
                !CHECKPOINT_BIT
            } else {
                query
                    .channels
                    .iter()
                    .filter(|&&c| c < 31)
                    .fold(0, |bits, &c| bits | channel_bit(c))
            },
            times: (query.from, query.to),
            run: 0,
            positions: (0, 0),
            left: (query.limit > 0).then_some(query.limit),
            picked: Vec::new(),
            ends: Vec::new(),
            each,
            done: false,
        }
    }
}

/// Bytes of picked events one hand carries at most (about: a block's events go whole).
const HAND_BYTES: usize = 1 << 20;

impl Picker for Selection<'_, '_> {
    fn pick(&mut self, position: i64, channels: i32, bytes: &[u8]) -> Result<bool, StoreError> {
        let corrupt = |e| {
            StoreError::Corrupt(format!(
                "run {}, block at {position}: an event does not scan: {e}",
                self.run
            ))
        };
        let (start, end) = self.positions;
        for (index, own) in wire::scan::split(bytes).enumerate() {
            let own = own.map_err(corrupt)?;
            let at = position + index as i64;
            // Most events a read passes over are other instruments': their instrument,
            // the first field, settles it without the rest.
            if at < start
                || at >= end
                || !self
                    .names
                    .contains(&wire::scan::instrument(own).map_err(corrupt)?)
            {
                continue;
            }
            let header = match wire::scan::events(own).next() {
                Some(header) => header.map_err(corrupt)?,
                None => continue,
            };
            // A checkpoint's own header says the book channel: its block says what it is.
            let bit = if channels == CHECKPOINT_BIT {
                CHECKPOINT_BIT
            } else {
                u32::try_from(header.channel)
                    .ok()
                    .and_then(|c| 1i32.checked_shl(c))
                    .unwrap_or(0)
            };
            if bit & self.channels == 0
                || header.publish_time < self.times.0
                || header.publish_time >= self.times.1
            {
                continue;
            }
            self.picked.extend_from_slice(own);
            self.ends.push(self.picked.len());
        }
        let enough = self.left.is_some_and(|l| self.ends.len() as u64 >= l);
        Ok(!enough && self.picked.len() < HAND_BYTES)
    }

    fn hand(&mut self) -> bool {
        let mut from = 0;
        for &to in &self.ends {
            if self.left == Some(0) || !(self.each)(self.run as u64, &self.picked[from..to]) {
                self.done = true;
                break;
            }
            from = to;
            if let Some(l) = self.left.as_mut() {
                *l -= 1;
            }
        }
        self.picked.clear();
        self.ends.clear();
        self.done |= self.left == Some(0);
        !self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_cut_into_blocks_at_each_checkpoint_and_at_the_size() {
        use raven_model::{
            Aggressor, BookSnapshot, Event, EventBody, InstrumentId, InstrumentName, Sequence,
            SnapshotKind, Trade, UnixNanos,
        };
        let event = |sequence: u64, body| Event {
            instrument: InstrumentId(0),
            sequence: Sequence(sequence),
            exchange_time: UnixNanos(sequence),
            receive_time: UnixNanos(sequence),
            publish_time: UnixNanos(1_000 + sequence),
            venue_seq: 0,
            body,
        };
        let trade = |sequence| {
            event(
                sequence,
                EventBody::Trade(Trade {
                    price: "1.5".parse().unwrap(),
                    qty: "2".parse().unwrap(),
                    aggressor: Aggressor::Sell,
                    trade_id: String::new(),
                }),
            )
        };
        let checkpoint = event(
            9,
            EventBody::Snapshot(BookSnapshot {
                bids: vec![],
                asks: vec![],
                kind: SnapshotKind::Checkpoint,
            }),
        );
        let (a, b) = (
            InstrumentName::parse("T:A").unwrap(),
            InstrumentName::parse("T:B").unwrap(),
        );
        let mut batch = Batch::new(7, 3);
        for (name, event) in [
            (&a, trade(1)),
            (&a, trade(2)),
            (&b, trade(3)),
            (&b, checkpoint),
            (&b, trade(4)),
            (&b, trade(5)),
            (&b, trade(6)),
            (&a, trade(5)),
        ] {
            batch.push(name, &event);
        }
        let rows: Vec<Row<'_>> = batch.rows().collect();
        let ids: Vec<u8> = rows.iter().map(|r| r.instrument.as_bytes()[2]).collect();
        // Room for two of these trades a block, not three.
        let max = rows[4].bytes.len() * 2;
        let blocks = blocks(&batch, &rows, &ids, max).unwrap();
        let trades = channel_bit(3);
        assert_eq!(
            blocks
                .iter()
                .map(|b| (b.position - (3 << 24), b.instrument, b.channels, b.rows))
                .collect::<Vec<_>>(),
            vec![
                (0, Some(b'A'), trades, 2),
                (2, Some(b'B'), trades, 1),
                (3, Some(b'B'), CHECKPOINT_BIT, 1),
                (4, Some(b'B'), trades, 2),
                (6, None, trades, 2),
            ]
        );
        // The earliest time of each (the last block's second event is its earliest).
        assert_eq!(
            blocks.iter().map(|b| b.publish_time).collect::<Vec<_>>(),
            vec![1_001, 1_003, 1_009, 1_004, 1_005]
        );
        // The blocks' bytes are the batch's, cut where the rows end.
        assert_eq!(
            blocks.iter().map(|b| b.bytes).collect::<Vec<_>>().concat(),
            batch.bytes()
        );
        for block in &blocks {
            assert_eq!(wire::scan::framed(block.bytes).count(), block.rows as usize);
        }
    }
}
