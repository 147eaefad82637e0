//! The ingest node's outbox: messages for the stream, in publishing order, bounded by
//! bytes. The intake fills it ([`Outbox::take`]: each shard's output batch cut into
//! messages of at most [`MAX_MESSAGE_BYTES`] between events, the engine's bytes never
//! encoded again, numbered per shard), heartbeats and gap markers go in it, and the
//! publisher takes from it and puts back what NATS did not acknowledge. A message's bytes
//! count until it is acknowledged. Past the bound a batch is dropped, never waited for: the
//! run of dropped batches of a shard becomes a [`Control::Gap`] marker right before that
//! shard's next batch, and the shard is asked for fresh checkpoints.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use async_nats::Subject;
use bytes::Bytes;

use super::publisher::ReplicationStats;
use super::{Control, MAX_MESSAGE_BYTES, ReplicationConfig, batch_id, control_id};
use crate::engine::{EngineCommands, ReplicaState, Tapped};

/// Kept free beside a batch for the gap marker that may have to precede it.
const GAP_MARKER_ROOM: usize = 256;

/// One message for the stream.
#[derive(Debug)]
pub(super) struct Outgoing {
    pub(super) subject: Subject,
    pub(super) id: String,
    pub(super) payload: Bytes,
    /// Events in it (0 for a control message).
    pub(super) events: u64,
    /// The checkpoint snapshots in it, written to the bucket once it is acknowledged
    /// (then its stream sequence is known).
    pub(super) checkpoints: Vec<Pending>,
}

/// A checkpoint waiting for its message's acknowledgement.
#[derive(Debug)]
pub(super) struct Pending {
    /// The checkpoint snapshot, a one-event `StreamResponse`.
    pub(super) book: Bytes,
    pub(super) state: ReplicaState,
}

/// A run of a shard's batches dropped and not yet marked.
#[derive(Debug, Clone, Copy)]
struct Dropped {
    first: u64,
    last: u64,
    events: u64,
}

/// Messages waiting for the stream (see the module doc).
pub(super) struct Outbox {
    state: Mutex<OutState>,
    /// Wakes the publisher when messages arrive or the outbox closes.
    pub(super) ready: tokio::sync::Notify,
    /// Wakes [`Outbox::given_up`] when a deadline is set.
    give_up: tokio::sync::Notify,
    limit: usize,
    run: u64,
    /// Where each shard's batches go, made once (a subject clones without copying).
    subjects: Vec<Subject>,
    control: Subject,
    stats: Arc<ReplicationStats>,
}

#[derive(Default)]
struct OutState {
    messages: VecDeque<Outgoing>,
    /// Bytes of `messages` and of those published and not yet acknowledged.
    bytes: usize,
    /// Batches numbered so far, by shard.
    numbered: Vec<u64>,
    /// By shard.
    dropped: Vec<Option<Dropped>>,
    /// Control messages numbered so far.
    controls: u64,
    /// Asked for fresh checkpoints after a gap, once attached.
    engine: Option<EngineCommands>,
    closed: bool,
    /// Past this, the publisher gives up on what is left.
    abandon_at: Option<Instant>,
}

impl Outbox {
    /// An empty outbox for `config`'s stream, the node's `run`, over `shards` shards.
    pub(super) fn new(
        config: &ReplicationConfig,
        run: u64,
        shards: usize,
        stats: Arc<ReplicationStats>,
    ) -> Outbox {
        Outbox {
            state: Mutex::new(OutState {
                numbered: vec![0; shards],
                dropped: vec![None; shards],
                ..OutState::default()
            }),
            ready: tokio::sync::Notify::new(),
            give_up: tokio::sync::Notify::new(),
            limit: config.buffer_bytes,
            run,
            subjects: (0..shards as u32)
                .map(|shard| Subject::from(config.event_subject(shard)))
                .collect(),
            control: Subject::from(config.control_subject()),
            stats,
        }
    }

    fn lock(&self) -> MutexGuard<'_, OutState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The node's run, which names its messages and checkpoints.
    pub(super) fn run(&self) -> u64 {
        self.run
    }

    /// The engine to ask for fresh checkpoints after a gap.
    pub(super) fn attach(&self, engine: EngineCommands) {
        self.lock().engine = Some(engine);
    }

    /// Cuts `batch` into messages and queues them (or drops them, recording the gap).
    pub(super) fn take(&self, batch: &Tapped, now_ns: u64) {
        let shard = batch.shard();
        let bytes = batch.bytes();
        let rows = batch.rows();
        let mut replicas = batch.replicas().iter().peekable();
        let mut checkpoints = Vec::new();
        let (mut start, mut events) = (0usize, 0u64);
        let mut state = self.lock();
        for (i, row) in rows.iter().enumerate() {
            let end = row.end as usize;
            events += 1;
            if let Some(replica) = replicas.next_if(|r| r.row as usize == i) {
                let row_start = i.checked_sub(1).map_or(0, |p| rows[p].end as usize);
                checkpoints.push(Pending {
                    book: bytes.slice(row_start..end),
                    state: replica.clone(),
                });
            }
            let next_too_big = rows
                .get(i + 1)
                .is_some_and(|next| next.end as usize - start > MAX_MESSAGE_BYTES);
            if next_too_big || i + 1 == rows.len() {
                let message = Outgoing {
                    subject: self.subjects[shard as usize].clone(),
                    id: String::new(),
                    payload: bytes.slice(start..end),
                    events,
                    checkpoints: std::mem::take(&mut checkpoints),
                };
                self.queue(&mut state, shard, message, now_ns);
                start = end;
                events = 0;
            }
        }
        drop(state);
        if !rows.is_empty() {
            self.ready.notify_one();
        }
    }

    /// Numbers `message`, the shard's next batch, and queues it, or drops it when the
    /// outbox is full.
    fn queue(&self, state: &mut OutState, shard: u32, mut message: Outgoing, now_ns: u64) {
        let index = shard as usize;
        state.numbered[index] += 1;
        let batch = state.numbered[index];
        let size = message.payload.len();
        if state.bytes + size + GAP_MARKER_ROOM > self.limit {
            let dropped = state.dropped[index].get_or_insert(Dropped {
                first: batch,
                last: batch,
                events: 0,
            });
            dropped.last = batch;
            dropped.events += message.events;
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            self.stats
                .dropped_events
                .fetch_add(message.events, Ordering::Relaxed);
            return;
        }
        if let Some(dropped) = state.dropped[index].take() {
            self.mark_gap(state, shard, dropped, now_ns);
            // Fresh checkpoints after the marker: edges resync the shard's books from them
            // rather than wait for the next ones due.
            if let Some(engine) = &state.engine
                && let Err(error) = engine.checkpoint(shard)
            {
                tracing::warn!(shard, %error, "no fresh checkpoints after the replication gap; edges resync at the next ones due");
            }
        }
        message.id = batch_id(self.run, shard, batch);
        self.push(state, message);
    }

    /// Queues the marker of `shard`'s dropped batches.
    fn mark_gap(&self, state: &mut OutState, shard: u32, dropped: Dropped, now_ns: u64) {
        let Dropped {
            first,
            last,
            events,
        } = dropped;
        tracing::warn!(
            shard,
            first,
            last,
            events,
            "replication gap: batches dropped while NATS was unreachable or slow and the buffer full"
        );
        self.stats.gaps.fetch_add(1, Ordering::Relaxed);
        let gap = Control::Gap {
            run: self.run,
            shard,
            first,
            last,
            events,
            time_ns: now_ns,
        };
        self.push_control(state, &gap);
    }

    fn push_control(&self, state: &mut OutState, control: &Control) {
        state.controls += 1;
        let payload = Bytes::from(
            serde_json::to_vec(control).expect("control messages serialize (invariant)"),
        );
        let message = Outgoing {
            subject: self.control.clone(),
            id: control_id(self.run, state.controls),
            payload,
            events: 0,
            checkpoints: Vec::new(),
        };
        self.push(state, message);
    }

    fn push(&self, state: &mut OutState, message: Outgoing) {
        state.bytes += message.payload.len();
        self.stats
            .buffered_bytes
            .store(state.bytes as u64, Ordering::Relaxed);
        state.messages.push_back(message);
    }

    /// Queues a heartbeat, unless a control message still waits (it tells the edges the
    /// node is alive as well).
    pub(super) fn heartbeat(&self, now_ns: u64) {
        let mut state = self.lock();
        if state.messages.iter().any(|m| m.events == 0) {
            return;
        }
        let beat = Control::Heartbeat {
            run: self.run,
            time_ns: now_ns,
            batches: state.numbered.clone(),
        };
        self.push_control(&mut state, &beat);
        drop(state);
        self.ready.notify_one();
    }

    /// Up to `n` messages to publish, in order.
    pub(super) fn next(&self, n: usize) -> Vec<Outgoing> {
        let mut state = self.lock();
        let n = n.min(state.messages.len());
        state.messages.drain(..n).collect()
    }

    /// Puts unacknowledged messages back at the front, in their order.
    pub(super) fn requeue(&self, messages: impl DoubleEndedIterator<Item = Outgoing>) {
        let mut state = self.lock();
        for message in messages.rev() {
            state.messages.push_front(message);
        }
    }

    /// An acknowledged message's bytes are free.
    pub(super) fn acknowledged(&self, bytes: usize) {
        let mut state = self.lock();
        state.bytes -= bytes;
        self.stats
            .buffered_bytes
            .store(state.bytes as u64, Ordering::Relaxed);
    }

    /// No more batches: gaps not yet marked (no later batch of their shard came) are
    /// marked now.
    pub(super) fn close(&self, now_ns: u64) {
        let mut state = self.lock();
        if !state.closed {
            state.closed = true;
            for shard in 0..state.dropped.len() {
                if let Some(dropped) = state.dropped[shard].take() {
                    self.mark_gap(&mut state, shard as u32, dropped, now_ns);
                }
            }
        }
        drop(state);
        self.ready.notify_one();
    }

    /// The publisher gives up on what is left at `at`.
    pub(super) fn abandon_at(&self, at: Instant) {
        self.lock().abandon_at = Some(at);
        self.give_up.notify_one();
    }

    /// Ends at the deadline [`Outbox::abandon_at`] sets, whatever the publisher is
    /// waiting on (a frozen NATS).
    pub(super) async fn given_up(&self) {
        loop {
            let at = self.lock().abandon_at;
            match at {
                Some(at) => return tokio::time::sleep_until(at.into()).await,
                None => self.give_up.notified().await,
            }
        }
    }

    /// Closed, and everything acknowledged.
    pub(super) fn ended(&self) -> bool {
        let state = self.lock();
        state.closed && state.bytes == 0
    }
}
