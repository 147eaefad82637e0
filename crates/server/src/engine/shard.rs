//! One engine shard: the single writer for its instruments. Its loop applies feed events
//! to the books (`derive` turns each into sequenced, derived, encoded output) and, at the
//! end of every input batch (or of the batches that were already waiting), flushes the
//! encoded bytes to the subscribers (`subscribers`) and the events to the taps; between
//! batches it answers the API's commands.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use crossbeam_channel::TrySendError;
use raven_book::top::{self, TopWriter};
use raven_book::{BookError, OrderBook};
use raven_model::{
    Bbo, Channel, FeedEvent, FeedKind, InstrumentId, InstrumentName, PerChannel, Sequence,
    SnapshotKind, Status, StatusKind, UnixNanos,
};

use super::candles::Candles;
use super::derive::{Output, Scratch, Times};
use super::stats::ShardStats;
use super::subscribers::{
    Pending, Subscribers, bbo_event, flush_together, initial_state, snapshot_end, snapshot_event,
};
use super::{Command, ReplicaState, ShardContext, TapBuffer};

/// One instrument's state in its shard.
pub(super) struct Instrument {
    pub(super) id: InstrumentId,
    pub(super) name: InstrumentName,
    pub(super) book: OrderBook,
    /// After a refused update the book is stale until the feed sends a fresh snapshot (on
    /// an edge: after missed events, until the next checkpoint).
    pub(super) awaiting_snapshot: bool,
    /// Last sequence used, per channel.
    pub(super) seq: PerChannel<Sequence>,
    /// Times of the last book change, for snapshots served later.
    /// Exchange time, receive time and venue id of the book's last change.
    pub(super) book_times: (UnixNanos, UnixNanos, u64),
    pub(super) bbo: Bbo,
    pub(super) top: TopWriter,
    pub(super) candles: Candles,
    pub(super) subscribers: Subscribers,
    pub(super) dirty: bool,
    /// On an edge: the ingest node's shard that publishes it.
    pub(super) origin: u32,
    /// On an edge: its state came from a checkpoint or its first snapshot, so a channel
    /// at sequence 0 has had no event (otherwise the first one seen is taken as it is).
    pub(super) known: bool,
    /// Book events tapped since the last checkpoint snapshot.
    pub(super) since_checkpoint: u32,
    /// When the last checkpoint snapshot was tapped (or its first events came).
    checkpointed_at: UnixNanos,
    /// No event since the last [`Shard::sweep`]: a book with events is checkpointed by
    /// age at its next batch instead.
    quiet: bool,
}

impl Instrument {
    pub(super) fn next_seq(&mut self, channel: Channel) -> Sequence {
        let s = &mut self.seq[channel];
        *s = s.next();
        *s
    }
}

/// A shard's state. Driven by one thread (see `run_shard`); benchmarks drive it directly.
pub struct Shard {
    pub(super) ctx: ShardContext,
    pub(super) instruments: Vec<Option<Box<Instrument>>>,
    pub(super) dirty: Vec<InstrumentId>,
    /// Channels with output waiting for [`flush_together`], and the buffer it combines
    /// their chunks in.
    pending: Vec<Pending>,
    combined: BytesMut,
    tapped: TapBuffer,
    pub(super) now: UnixNanos,
    pub(super) scratch: Scratch,
    pub(super) stats: Arc<ShardStats>,
    /// On an edge: instrument ids by name as the stream spells them.
    pub(super) names: HashMap<Box<[u8]>, InstrumentId>,
}

/// The state of instrument `id`, created on first use. A free function over the table
/// (not a method) so callers can keep borrowing the shard's other fields.
pub(super) fn slot<'a>(
    instruments: &'a mut Vec<Option<Box<Instrument>>>,
    ctx: &ShardContext,
    id: InstrumentId,
) -> Option<&'a mut Instrument> {
    if instruments.len() <= id.index() {
        instruments.resize_with(id.index() + 1, || None);
    }
    if instruments[id.index()].is_none() {
        let name = ctx.catalog.registry().name(id)?;
        let (writer, reader) = top::channel();
        ctx.tops.write().unwrap_or_else(|p| p.into_inner()).insert(
            id,
            super::Listed {
                shard: ctx.index,
                top: reader,
            },
        );
        instruments[id.index()] = Some(Box::new(Instrument {
            id,
            name,
            book: OrderBook::new(),
            awaiting_snapshot: true,
            seq: PerChannel::default(),
            book_times: (UnixNanos::ZERO, UnixNanos::ZERO, 0),
            bbo: Bbo::default(),
            top: writer,
            candles: Candles::default(),
            subscribers: Subscribers::default(),
            dirty: false,
            origin: 0,
            known: false,
            since_checkpoint: 0,
            checkpointed_at: UnixNanos::ZERO,
            quiet: false,
        }));
    }
    instruments[id.index()].as_deref_mut()
}

/// A changed book gets a checkpoint at least this often, however few its events, so that
/// a replica starting from the checkpoints replays at most this much of a quiet book.
pub const CHECKPOINT_AGE: UnixNanos = UnixNanos(60 * UnixNanos::PER_SECOND);

/// Taps a checkpoint snapshot of `inst` (for the taps only: subscribers never see
/// checkpoints), with its [`ReplicaState`] when `replica`.
fn tap_checkpoint(
    tapped: &mut TapBuffer,
    ctx: &ShardContext,
    inst: &mut Instrument,
    now: UnixNanos,
) {
    inst.since_checkpoint = 0;
    inst.checkpointed_at = now;
    let checkpoint = snapshot_event(inst, 0, SnapshotKind::Checkpoint, now);
    tapped.push(&inst.name, &checkpoint);
    if ctx.replica_checkpoints {
        tapped.replica(replica_state(ctx, inst, now));
    }
}

/// What a replica needs of `inst` besides its book, at a checkpoint.
fn replica_state(ctx: &ShardContext, inst: &Instrument, now: UnixNanos) -> ReplicaState {
    let bbo = (inst.seq[Channel::Bbo].0 > 0).then(|| {
        let mut buf = bytes::BytesMut::new();
        raven_proto::wire::put_event(&mut buf, inst.name.as_str(), &bbo_event(inst, now));
        buf.freeze()
    });
    ReplicaState {
        row: 0,
        sequences: inst.seq,
        bbo,
        shard: ctx.index,
        tick_size: ctx.catalog.tick_size(inst.id).unwrap_or_default(),
    }
}

impl Shard {
    /// A shard with no instruments yet; they are created on first use.
    pub fn new(ctx: ShardContext) -> Shard {
        Shard {
            ctx,
            instruments: Vec::new(),
            dirty: Vec::new(),
            pending: Vec::new(),
            combined: BytesMut::new(),
            tapped: TapBuffer::default(),
            now: UnixNanos::ZERO,
            scratch: Scratch::default(),
            stats: Arc::default(),
            names: HashMap::new(),
        }
    }

    /// Its counters, which only this shard writes.
    pub fn stats(&self) -> Arc<ShardStats> {
        self.stats.clone()
    }

    /// Applies one input batch and publishes its output. The batch is consumed: deltas
    /// and trades move into the events they produce instead of being copied.
    pub fn process(&mut self, batch: Vec<FeedEvent>) {
        self.process_all(batch, std::iter::empty());
    }

    /// Applies `first` and then `more`, and publishes their output together: each
    /// subscriber gets one chunk per instrument and channel for all of them, so a shard
    /// that fell behind pushes fewer, larger chunks instead of adding to its lag.
    pub fn process_all(
        &mut self,
        first: Vec<FeedEvent>,
        more: impl IntoIterator<Item = Vec<FeedEvent>>,
    ) {
        let started = std::time::Instant::now();
        let mut events = 0;
        let mut batches = 0;
        for batch in std::iter::once(first).chain(more) {
            events += batch.len();
            batches += 1;
            self.tick();
            for event in batch {
                self.apply(event);
            }
            self.checkpoint();
        }
        self.flush();
        self.stats
            .batches(batches, events, started.elapsed().as_nanos() as u64);
    }

    /// Reads the clock for the next publish stamp. Stamps never go backwards, even when
    /// the wall clock is stepped back: every instrument's events are then in publish-time
    /// order wherever they are recorded, which the store's time index relies on.
    pub(super) fn tick(&mut self) {
        self.now = self.now.max(self.ctx.clock.now());
    }

    fn apply(&mut self, fe: FeedEvent) {
        let now = self.now;
        let tapping = self.ctx.tapping();
        let Some(inst) = slot(&mut self.instruments, &self.ctx, fe.instrument) else {
            tracing::warn!(
                instrument = fe.instrument.0,
                "feed event for an unregistered instrument dropped"
            );
            return;
        };
        if !inst.dirty {
            inst.dirty = true;
            self.dirty.push(inst.id);
        }
        inst.quiet = false;
        if fe.receive_time.0 > 0 {
            self.stats.latency(fe.receive_time.0, now.0);
        }
        let times = Times {
            exchange: fe.exchange_time,
            receive: fe.receive_time,
            venue_seq: fe.venue_seq,
        };
        let mut out = Output {
            now,
            tapped: tapping.then_some(&mut self.tapped),
            scratch: &mut self.scratch,
        };
        match fe.kind {
            FeedKind::Snapshot(s) => {
                let next = inst.book.sequence().next();
                match inst.book.apply_snapshot(next, &s) {
                    Ok(()) => {
                        let kind =
                            if inst.awaiting_snapshot && inst.seq[Channel::Book] == Sequence(0) {
                                SnapshotKind::Initial
                            } else {
                                SnapshotKind::Resync
                            };
                        inst.awaiting_snapshot = false;
                        out.book_changed(inst, &times, None, kind);
                    }
                    Err(e) => self.ctx.reject(inst, &mut out, &times, &e),
                }
            }
            FeedKind::Delta(d) => {
                if inst.awaiting_snapshot {
                    return;
                }
                let next = inst.book.sequence().next();
                match inst.book.apply_delta(next, &d) {
                    Ok(()) => out.book_changed(inst, &times, Some(d), SnapshotKind::Initial),
                    Err(e) => self.ctx.reject(inst, &mut out, &times, &e),
                }
            }
            FeedKind::Trade(t) => {
                if t.qty.is_zero() || t.qty.is_negative() {
                    let detail = format!("trade {} with quantity {} refused", t.trade_id, t.qty);
                    let status = Status {
                        kind: StatusKind::Rejected,
                        channel: Channel::Trades,
                        missed: 0,
                        detail,
                    };
                    out.status(inst, &times, status);
                    return;
                }
                out.trade(inst, &times, t);
            }
            FeedKind::Status(s) => {
                out.status(inst, &times, s);
            }
        }
    }

    /// Whether [`Shard::sweep`] has anything to do: on an ingest node, whose edges start
    /// from the checkpoints.
    pub fn sweeps(&self) -> bool {
        self.ctx.replica_checkpoints
    }

    /// Taps a checkpoint of every quiet book (no event since the last sweep) whose last
    /// one is [`CHECKPOINT_AGE`] old: an edge reads the stream from its oldest checkpoint,
    /// so a quiet book's must not fall behind, nor a new book that went quiet go without
    /// one. A book with events is checkpointed by age at its next batch. Between batches.
    pub fn sweep(&mut self) {
        if !self.sweeps() {
            return;
        }
        self.tick();
        let mut tapped = false;
        for inst in self.instruments.iter_mut().flatten() {
            let age = self.now.0.saturating_sub(inst.checkpointed_at.0);
            let due = inst.checkpointed_at.0 > 0 && age >= CHECKPOINT_AGE.0;
            if inst.quiet && due && !inst.awaiting_snapshot {
                tap_checkpoint(&mut self.tapped, &self.ctx, inst, self.now);
                tapped = true;
            }
            inst.quiet = true;
        }
        if tapped {
            self.flush();
        }
    }

    /// Taps a checkpoint of each changed book that is due one ([`ShardContext`]'s
    /// `checkpoint_every` book events, or [`CHECKPOINT_AGE`] since its last one). After every input batch,
    /// not every flush: batches published together keep the checkpoint spacing.
    fn checkpoint(&mut self) {
        if !self.ctx.tapping() {
            return;
        }
        for id in &self.dirty {
            let Some(inst) = self.instruments[id.index()].as_deref_mut() else {
                continue;
            };
            if inst.checkpointed_at == UnixNanos::ZERO {
                // The age counts from the book's first events.
                inst.checkpointed_at = self.now;
            }
            let due = inst.since_checkpoint >= self.ctx.checkpoint_every
                || (inst.since_checkpoint > 0
                    && self.now.0.saturating_sub(inst.checkpointed_at.0) >= CHECKPOINT_AGE.0);
            if due && !inst.awaiting_snapshot {
                tap_checkpoint(&mut self.tapped, &self.ctx, inst, self.now);
            }
        }
    }

    pub(super) fn flush(&mut self) {
        let mut lagged = 0;
        for id in std::mem::take(&mut self.dirty) {
            let Some(inst) = self.instruments[id.index()].as_deref_mut() else {
                continue;
            };
            inst.dirty = false;
            lagged += inst.subscribers.flush(id, &inst.name, &mut self.pending);
        }
        lagged += flush_together(&mut self.instruments, &mut self.pending, &mut self.combined);
        if lagged > 0 {
            self.ctx.fanout.record_lagged(lagged);
        }
        if let Some(batch) = self.tapped.take(self.ctx.index) {
            for tap in &self.ctx.inline_taps {
                tap(&batch);
            }
            let batch = Arc::new(batch);
            for tap in &self.ctx.taps {
                // Blocking: taps are lossless, a slow one slows the engine (and the feed).
                if let Err(TrySendError::Full(batch)) = tap.try_send(batch.clone()) {
                    let waited = std::time::Instant::now();
                    let _ = tap.send(batch);
                    self.stats.tap_wait(waited.elapsed().as_nanos() as u64);
                }
            }
        }
    }

    /// Handles an API command between batches, when no output is pending.
    pub fn command(&mut self, command: Command) {
        self.tick();
        match command {
            Command::Subscribe {
                mailbox,
                instrument,
                channel,
                depth,
                state,
                done,
            } => {
                let mut sequence = 0;
                if let Some(inst) = slot(&mut self.instruments, &self.ctx, instrument) {
                    inst.subscribers.remove(mailbox.id(), Some(channel));
                    let now = self.now;
                    let initial = if state {
                        initial_state(inst, channel, depth, SnapshotKind::Initial, now)
                    } else {
                        snapshot_end(inst, channel, now)
                    };
                    mailbox.push_control(initial);
                    sequence = inst.seq[channel].0;
                    inst.subscribers.add(channel, depth, mailbox, &inst.book);
                }
                let _ = done.send(sequence);
            }
            Command::Checkpoint => {
                for inst in self.instruments.iter_mut().flatten() {
                    if !inst.awaiting_snapshot {
                        tap_checkpoint(&mut self.tapped, &self.ctx, inst, self.now);
                    }
                }
                // Between batches nothing else is pending: this taps the checkpoints alone.
                self.flush();
            }
            Command::Unsubscribe {
                subscriber,
                instrument,
                channel,
                done,
            } => {
                if let Some(inst) = slot(&mut self.instruments, &self.ctx, instrument) {
                    inst.subscribers.remove(subscriber, Some(channel));
                }
                let _ = done.send(());
            }
            Command::Resync {
                mailbox,
                instrument,
                depth,
            } => {
                let now = self.now;
                if let Some(inst) = slot(&mut self.instruments, &self.ctx, instrument) {
                    let subscribed = inst.subscribers.has_book(mailbox.id(), depth);
                    let bytes = if subscribed {
                        initial_state(inst, Channel::Book, depth, SnapshotKind::Resync, now)
                    } else {
                        Bytes::new()
                    };
                    mailbox.complete_resync(instrument, depth, bytes);
                    if subscribed {
                        self.ctx.fanout.record_resync();
                    }
                }
            }
            Command::Snapshot {
                instrument,
                depth,
                reply,
            } => {
                let now = self.now;
                if let Some(inst) = slot(&mut self.instruments, &self.ctx, instrument) {
                    let _ = reply.send(snapshot_event(inst, depth, SnapshotKind::Initial, now));
                }
            }
            Command::Detach { subscriber } => {
                for inst in self.instruments.iter_mut().flatten() {
                    if !inst.subscribers.is_empty() {
                        inst.subscribers.remove(subscriber, None);
                    }
                }
            }
            Command::Stop => {}
        }
    }
}

impl ShardContext {
    fn reject(
        &self,
        inst: &mut Instrument,
        out: &mut Output<'_>,
        times: &Times,
        error: &BookError,
    ) {
        inst.awaiting_snapshot = true;
        let detail = format!("{error}; update refused, book resyncing from a fresh snapshot");
        tracing::warn!(instrument = %inst.name, %error, "feed update refused");
        let status = Status {
            kind: StatusKind::Rejected,
            channel: Channel::Book,
            missed: 0,
            detail,
        };
        out.status(inst, times, status);
        self.catalog.request_resync(inst.id);
    }
}
