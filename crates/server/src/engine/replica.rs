//! An edge node's shards: replica books kept from the ingest node's stream. The ingest
//! node has already validated, sequenced and encoded every event, so a replica neither
//! validates nor sequences again: it applies book events to its copy of the book (its
//! depth-limited views and its top of book need one), checks each channel's sequence and
//! forwards the received bytes unchanged to the subscribers of the full channel, while
//! depth-limited views are derived by the ingest node's own code (`derive::views_changed`).
//!
//! Where an edge starts: each instrument from its checkpoint (the bucket's, handed over as
//! [`Replicated::Checkpoint`]); events at or below a channel's checkpointed sequence are
//! skipped. What it misses — a sequence that jumps, a gap marker, a message that does not
//! decode — costs only the instruments concerned: a book waits for its next checkpoint in
//! the stream and is resynced from it (its subscribers get a `RESYNC` snapshot), the other
//! channels go on with a gap event that counts what was missed. Status events an edge adds
//! (stale stream, resync pending, missed events) carry no sequence, like a lagging
//! subscriber's gap events: the sequences stay the ingest node's.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use raven_model::{
    Bbo, Channel, Event, EventBody, InstrumentId, InstrumentName, PerChannel, Price, Sequence,
    SnapshotKind, Status, StatusKind, UnixNanos,
};
use raven_proto::convert::{body_from_pb, channel_from_pb, delta_from_pb, snapshot_from_pb};
use raven_proto::pb;
use raven_proto::wire::scan::{self, EventHeader};

use super::derive::{publish_top, views_changed};
use super::shard::{Instrument, Shard, slot};
use crate::fanout::Closed;
use crate::feed::InstrumentInfo;
use crate::replication::Checkpoint;

/// What an edge hands a shard, from the ingest node's stream and bucket.
#[derive(Debug)]
pub enum Replicated {
    /// An instrument's checkpoint from the bucket: where a starting edge takes it from.
    Checkpoint(Box<Checkpoint>),
    /// One message of the ingest node's shard `origin`, at `stream_sequence`: one-event
    /// `StreamResponse`s end to end, as the ingest node's clients receive them.
    Batch {
        /// The message's position in the stream, for the log when it does not decode (0:
        /// its live copy, read before the stream stored it).
        stream_sequence: u64,
        /// Its number among the ingest shard's batches (the id's last part), for the log.
        batch: u64,
        /// The ingest node's shard.
        origin: u32,
        /// The events.
        bytes: Bytes,
    },
    /// The ingest node dropped batches of its shard `origin` (NATS was unreachable for
    /// longer than its buffer holds): those books wait for their next checkpoint.
    Gap {
        /// The ingest node's shard.
        origin: u32,
        /// Events the dropped batches held.
        events: u64,
    },
    /// Nothing has come from the stream for `silent`: subscribers are told their data is
    /// stale.
    Stale {
        /// How long it has been silent.
        silent: Duration,
    },
    /// The ingest node started a new run, whose sequences start again at 1: every stream
    /// of the shard's instruments ends (`UNAVAILABLE`, so that clients subscribe again)
    /// and the books start over from the new run's snapshots.
    NewRun,
    /// Answered once the shard has applied everything sent before it.
    Fence(tokio::sync::oneshot::Sender<()>),
}

/// What the replica shards have done, for metrics (written rarely but for `events`).
#[derive(Debug, Default)]
pub struct ReplicaStats {
    /// Events applied and forwarded.
    pub events: AtomicU64,
    /// Events at or below what the instrument's checkpoint already held, skipped.
    pub skipped: AtomicU64,
    /// Sequence gaps found, over every (instrument, channel).
    pub gaps: AtomicU64,
    /// Events those gaps missed, where the next event told how many.
    pub missed: AtomicU64,
    /// Books resynced from a checkpoint after a gap.
    pub resyncs: AtomicU64,
    /// Messages that did not decode (their shard's books resynced).
    pub undecodable: AtomicU64,
}

/// The `Event.body` field numbers a replica looks into.
const BODY_SNAPSHOT: u32 = 10;
const BODY_DELTA: u32 = 11;

impl Shard {
    /// Applies `first` and then `more`, and publishes their output together, as
    /// [`Shard::process_all`] does for feed batches.
    pub fn replicate_all(&mut self, first: Replicated, more: impl IntoIterator<Item = Replicated>) {
        let started = std::time::Instant::now();
        let mut events = 0;
        let mut batches = 0;
        for replicated in std::iter::once(first).chain(more) {
            batches += 1;
            self.tick();
            events += self.replicate(replicated);
        }
        self.flush();
        self.stats
            .batches(batches, events, started.elapsed().as_nanos() as u64);
    }

    /// Applies one item; returns the events it held.
    fn replicate(&mut self, replicated: Replicated) -> usize {
        match replicated {
            Replicated::Checkpoint(checkpoint) => {
                if let Err(error) = self.start_from(&checkpoint) {
                    tracing::error!(%error, shard = checkpoint.shard, "checkpoint from the bucket skipped: it does not decode");
                }
                0
            }
            Replicated::Batch {
                stream_sequence,
                batch,
                origin,
                bytes,
            } => self.replicate_batch(stream_sequence, batch, origin, &bytes),
            Replicated::Gap { origin, events } => {
                let detail = format!(
                    "edge node: the ingest node dropped {events} events of its shard {origin}; the book resyncs from its next checkpoint"
                );
                self.origin_lost(origin, &detail);
                0
            }
            Replicated::Stale { silent } => {
                let detail = format!(
                    "edge node: nothing from the ingest node's stream for {} ms",
                    silent.as_millis()
                );
                let now = self.now;
                for inst in self.instruments.iter_mut().flatten() {
                    if inst.subscribers.is_empty() {
                        continue;
                    }
                    for channel in Channel::ALL {
                        tell(inst, channel, StatusKind::Stale, 0, &detail, now);
                    }
                    mark_dirty(&mut self.dirty, inst);
                }
                0
            }
            Replicated::NewRun => {
                let why = Closed::Refused(tonic::Status::unavailable(
                    "edge node: the ingest node restarted and its sequences start again; subscribe again",
                ));
                for inst in self.instruments.iter_mut().flatten() {
                    inst.subscribers.close_all(&why);
                    inst.seq = PerChannel::default();
                    inst.known = false;
                    inst.awaiting_snapshot = true;
                }
                0
            }
            Replicated::Fence(reached) => {
                let _ = reached.send(());
                0
            }
        }
    }

    fn replicate_batch(
        &mut self,
        stream_sequence: u64,
        batch: u64,
        origin: u32,
        bytes: &Bytes,
    ) -> usize {
        let mut events = 0;
        let mut published = 0;
        for item in scan::framed(bytes) {
            let result = item.map_err(|e| e.to_string()).and_then(|(own, header)| {
                published = header.publish_time;
                self.replicate_event(origin, own, &header)
            });
            if let Err(error) = result {
                tracing::error!(
                    stream_sequence,
                    batch,
                    shard = origin,
                    %error,
                    "a message from the ingest node does not decode; its shard's books resync from their next checkpoints"
                );
                if let Some(replica) = &self.ctx.replica {
                    replica.stats.undecodable.fetch_add(1, Ordering::Relaxed);
                }
                let detail = format!(
                    "edge node: batch {batch} of the ingest node's shard {origin} did not decode; the book resyncs from its next checkpoint"
                );
                self.origin_lost(origin, &detail);
                break;
            }
            events += 1;
        }
        if let Some(replica) = &self.ctx.replica {
            replica
                .stats
                .events
                .fetch_add(events as u64, Ordering::Relaxed);
        }
        if published > 0 {
            let lag = self.ctx.clock.now().0.saturating_sub(published);
            self.stats.replication_lag.record(lag);
        }
        events
    }

    /// The instrument a stream event names, created (and listed in the catalog) the
    /// first time.
    fn replica_instrument(&mut self, name: &[u8], origin: u32) -> Result<InstrumentId, String> {
        if let Some(&id) = self.names.get(name) {
            return Ok(id);
        }
        let text = std::str::from_utf8(name).map_err(|_| "instrument name is not UTF-8")?;
        let name = InstrumentName::parse(text).map_err(|e| format!("instrument {text:?}: {e}"))?;
        let id = self.ctx.catalog.registry().intern(&name);
        let inst = slot(&mut self.instruments, &self.ctx, id)
            .ok_or("an instrument just interned has a name (invariant)")?;
        inst.origin = origin;
        inst.awaiting_snapshot = true;
        if let Some(replica) = &self.ctx.replica {
            let info = InstrumentInfo {
                name: name.clone(),
                tick_size: Price::ZERO,
            };
            self.ctx.catalog.add(info, replica.feed);
        }
        self.names.insert(name.as_str().as_bytes().into(), id);
        Ok(id)
    }

    fn replicate_event(
        &mut self,
        origin: u32,
        own: &[u8],
        header: &EventHeader<'_>,
    ) -> Result<(), String> {
        let channel = i32::try_from(header.channel)
            .ok()
            .and_then(|c| channel_from_pb(c).ok())
            .ok_or_else(|| format!("unknown channel {}", header.channel))?;
        let id = self.replica_instrument(header.instrument, origin)?;
        let stats = self.ctx.replica.as_ref().map(|r| r.stats.clone());
        let now = self.now;
        let inst = self.instruments[id.index()]
            .as_deref_mut()
            .expect("created above (invariant)");
        mark_dirty(&mut self.dirty, inst);
        let sequence = Sequence(header.sequence);
        let last = inst.seq[channel];
        if channel != Channel::Book {
            if sequence <= last {
                count(&stats, |s| &s.skipped, 1);
                return Ok(());
            }
            if (inst.known || last.0 > 0) && sequence != last.next() {
                let missed = sequence.0 - last.0 - 1;
                count(&stats, |s| &s.gaps, 1);
                count(&stats, |s| &s.missed, missed);
                let detail = format!(
                    "edge node: {missed} events missed in replication; resumed at {}",
                    sequence.0
                );
                tell(inst, channel, StatusKind::Gap, missed, &detail, now);
            }
            inst.seq[channel] = sequence;
            inst.subscribers.groups[channel].copy(own);
            return Ok(());
        }
        let event = match header.body {
            BODY_SNAPSHOT => {
                let snapshot = pb::BookSnapshot::decode(header.body_bytes)
                    .map_err(|e| format!("book snapshot: {e}"))?;
                Some(EventBody::Snapshot(snapshot_from_pb(&snapshot)))
            }
            BODY_DELTA => {
                let delta = pb::BookDelta::decode(header.body_bytes)
                    .map_err(|e| format!("book delta: {e}"))?;
                Some(EventBody::Delta(delta_from_pb(&delta)))
            }
            _ => None,
        }
        .map(|body| Event {
            instrument: id,
            sequence,
            exchange_time: UnixNanos(header.exchange_time),
            receive_time: UnixNanos(header.receive_time),
            publish_time: UnixNanos(header.publish_time),
            venue_seq: header.venue_seq,
            body,
        });
        let snapshot_kind = match &event {
            Some(Event {
                body: EventBody::Snapshot(s),
                ..
            }) => Some(s.kind),
            _ => None,
        };
        if snapshot_kind == Some(SnapshotKind::Checkpoint) {
            // For replicas only, never for clients: a book waiting for one resyncs from it.
            if inst.awaiting_snapshot && sequence >= last {
                let event = event.expect("a snapshot (matched above)");
                resync(inst, &mut self.scratch, event, now);
                count(&stats, |s| &s.resyncs, 1);
            }
            return Ok(());
        }
        if sequence <= last && (inst.known || last.0 > 0) {
            count(&stats, |s| &s.skipped, 1);
            return Ok(());
        }
        let contiguous = (inst.known || last.0 > 0) && sequence == last.next();
        if snapshot_kind.is_none() && (inst.awaiting_snapshot || !contiguous) {
            if !inst.awaiting_snapshot {
                count(&stats, |s| &s.gaps, 1);
                let detail = format!(
                    "edge node: book events {}..{} missed in replication; the book resyncs from its next checkpoint",
                    last.0 + 1,
                    sequence.0 - 1
                );
                tell(
                    inst,
                    Channel::Book,
                    StatusKind::Resync,
                    sequence.0 - last.0 - 1,
                    &detail,
                    now,
                );
                inst.awaiting_snapshot = true;
            }
            // Its sequence moves on, so that the checkpoint that ends the wait is known
            // for a later one.
            inst.seq[Channel::Book] = sequence;
            return Ok(());
        }
        inst.seq[Channel::Book] = sequence;
        inst.book_times = (
            UnixNanos(header.exchange_time),
            UnixNanos(header.receive_time),
            header.venue_seq,
        );
        let Some(event) = event else {
            // A status on the book: to the full book and every view alike.
            inst.subscribers.groups[Channel::Book].copy(own);
            for view in &mut inst.subscribers.views {
                view.group.copy(own);
            }
            publish_top(inst);
            return Ok(());
        };
        let next = inst.book.sequence().next();
        let applied = match &event.body {
            EventBody::Snapshot(snapshot) => inst.book.apply_snapshot(next, snapshot),
            EventBody::Delta(delta) => inst.book.apply_delta(next, delta),
            _ => Ok(()),
        };
        if let Err(error) = applied {
            // The ingest node applied it: the replica's book has drifted.
            count(&stats, |s| &s.gaps, 1);
            let detail = format!(
                "edge node: the replica book refused event {}: {error}; the book resyncs from its next checkpoint",
                sequence.0
            );
            tell(inst, Channel::Book, StatusKind::Resync, 0, &detail, now);
            inst.awaiting_snapshot = true;
            return Ok(());
        }
        if snapshot_kind.is_some() {
            inst.awaiting_snapshot = false;
            if sequence == Sequence(1) {
                inst.known = true;
            }
        }
        inst.subscribers.groups[Channel::Book].copy(own);
        views_changed(inst, &mut self.scratch, &event);
        inst.bbo = Bbo {
            bid: inst.book.best_bid(),
            ask: inst.book.best_ask(),
        };
        publish_top(inst);
        Ok(())
    }

    /// Takes an instrument from its checkpoint in the bucket, unless the shard already
    /// holds it at that point or later.
    fn start_from(&mut self, checkpoint: &Checkpoint) -> Result<(), String> {
        let book = checkpoint.book.as_ref().ok_or("no book")?;
        let id = self.replica_instrument(book.instrument.as_bytes(), checkpoint.shard)?;
        self.ctx
            .catalog
            .set_tick_size(id, Price::from_units(checkpoint.tick_size));
        let now = self.now;
        let inst = self.instruments[id.index()]
            .as_deref_mut()
            .expect("created above (invariant)");
        if inst.known && inst.seq[Channel::Book].0 >= book.sequence {
            return Ok(());
        }
        let Some(EventBody::Snapshot(snapshot)) = body_from_pb(book).map_err(|e| e.to_string())?
        else {
            return Err("the book is not a snapshot".into());
        };
        for (channel, &sequence) in Channel::ALL.iter().zip(&checkpoint.sequences) {
            inst.seq[*channel] = Sequence(sequence);
        }
        let event = Event {
            instrument: id,
            sequence: Sequence(book.sequence),
            exchange_time: UnixNanos(book.exchange_time),
            receive_time: UnixNanos(book.receive_time),
            publish_time: UnixNanos(book.publish_time),
            venue_seq: book.venue_seq,
            body: EventBody::Snapshot(snapshot),
        };
        resync(inst, &mut self.scratch, event, now);
        inst.known = true;
        Ok(())
    }

    /// The books of the ingest node's shard `origin` missed events: each waits for its
    /// next checkpoint, and its book subscribers are told.
    fn origin_lost(&mut self, origin: u32, detail: &str) {
        let now = self.now;
        for inst in self.instruments.iter_mut().flatten() {
            if inst.origin != origin || inst.awaiting_snapshot {
                continue;
            }
            inst.awaiting_snapshot = true;
            tell(inst, Channel::Book, StatusKind::Resync, 0, detail, now);
            mark_dirty(&mut self.dirty, inst);
        }
    }
}

/// Replaces `inst`'s book with the checkpoint snapshot `event` (at its book sequence) and
/// sends every book subscriber, full and depth-limited, a `RESYNC` snapshot of it.
fn resync(
    inst: &mut Instrument,
    scratch: &mut super::derive::Scratch,
    event: Event,
    now: UnixNanos,
) {
    let EventBody::Snapshot(mut snapshot) = event.body else {
        return;
    };
    snapshot.kind = SnapshotKind::Resync;
    let next = inst.book.sequence().next();
    if let Err(error) = inst.book.apply_snapshot(next, &snapshot) {
        tracing::error!(instrument = %inst.name, %error, "checkpoint refused by the replica book; waiting for the next one");
        return;
    }
    inst.awaiting_snapshot = false;
    inst.seq[Channel::Book] = event.sequence;
    inst.book_times = (event.exchange_time, event.receive_time, event.venue_seq);
    inst.bbo = Bbo {
        bid: inst.book.best_bid(),
        ask: inst.book.best_ask(),
    };
    let resynced = Event {
        publish_time: now,
        body: EventBody::Snapshot(snapshot),
        ..event
    };
    let name = inst.name.clone();
    inst.subscribers.groups[Channel::Book].encode(&name, &resynced);
    views_changed(inst, scratch, &resynced);
    publish_top(inst);
}

/// Queues an unsequenced status event for `channel`'s subscribers of `inst` (on the book:
/// every view's too), in line with its events.
fn tell(
    inst: &mut Instrument,
    channel: Channel,
    kind: StatusKind,
    missed: u64,
    detail: &str,
    now: UnixNanos,
) {
    let event = Event {
        instrument: inst.id,
        sequence: Sequence(0),
        exchange_time: UnixNanos::ZERO,
        receive_time: UnixNanos::ZERO,
        publish_time: now,
        venue_seq: 0,
        body: EventBody::Status(Status {
            kind,
            channel,
            missed,
            detail: detail.to_owned(),
        }),
    };
    let name = inst.name.clone();
    inst.subscribers.groups[channel].encode(&name, &event);
    if channel == Channel::Book {
        for view in &mut inst.subscribers.views {
            view.group.encode(&name, &event);
        }
    }
}

fn mark_dirty(dirty: &mut Vec<InstrumentId>, inst: &mut Instrument) {
    if !inst.dirty {
        inst.dirty = true;
        dirty.push(inst.id);
    }
}

fn count(
    stats: &Option<std::sync::Arc<ReplicaStats>>,
    counter: impl Fn(&ReplicaStats) -> &AtomicU64,
    n: u64,
) {
    if let Some(stats) = stats {
        counter(stats).fetch_add(n, Ordering::Relaxed);
    }
}
