//! The engine: one writer per instrument. Instruments are sharded over plain worker
//! threads (`id % shards`); each shard owns its instruments' books outright, so the hot
//! path takes no locks. A shard applies feed events, assigns sequences, derives BBO and
//! candles, encodes each output event once and hands it to subscribers' mailboxes and to
//! lossless taps (the recorder's entry point, [`Tapped`]: the same bytes, with the
//! columns a store indexes). `shard` is the loop, `derive` what each event becomes,
//! `subscribers` who receives it, `input` the handles feeds and the API send through.
//! The top of book is also published through a seqlock for readers that must not wait
//! on a shard (`GetSnapshot` at depth 1). `stats` holds what each shard has done, for
//! metrics.
//!
//! Inputs are bounded: feed batches block the feed when a shard is behind (nothing
//! accepted is dropped), and commands from the API are refused with "busy" rather than
//! queued without limit.

mod candles;
mod derive;
mod input;
mod replica;
mod shard;
pub mod stats;
mod subscribers;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use crossbeam_channel::{Receiver, Sender, bounded};
use prost::Message;
use raven_book::top::{TopOfBook, TopReader};
use raven_model::{
    Channel, Event, FeedEvent, InstrumentId, InstrumentName, PerChannel, Sequence, UnixNanos,
};
use raven_proto::convert::body_from_pb;
use raven_proto::{pb, wire};
use tokio::sync::oneshot;

use crate::clock::Clock;
use crate::fanout::{Fanout, Mailbox};
use crate::feed::Catalog;

pub use input::{EngineCommands, EngineInput, Offered};
pub use replica::{ReplicaStats, Replicated};

/// What an edge node's shards share.
#[derive(Clone)]
pub struct ReplicaContext {
    /// The feed that stands for the ingest node in the catalog, under which replicated
    /// instruments are listed.
    pub feed: crate::feed::FeedId,
    /// Their counters.
    pub stats: Arc<ReplicaStats>,
}
pub use shard::{CHECKPOINT_AGE, Shard};

/// What a shard applies, in the order it was sent.
pub enum Input {
    /// A feed's events, which the shard validates, sequences and derives from.
    Feed(Vec<FeedEvent>),
    /// What an edge node reads from its ingest node's stream: events already sequenced,
    /// forwarded as they are.
    Replica(Replicated),
}

/// Requests the API sends to the shard that owns an instrument.
pub enum Command {
    /// Start delivering (instrument, channel) to a mailbox: queue the current state (the
    /// book snapshot at `depth`, the BBO) and a `SnapshotEnd` marker, then live events.
    Subscribe {
        /// Where to deliver.
        mailbox: Arc<Mailbox>,
        /// What.
        instrument: InstrumentId,
        /// Which channel.
        channel: Channel,
        /// Book levels per side, 0 = full.
        depth: u32,
        /// Queue the current state (book snapshot, BBO) before the `SnapshotEnd` marker;
        /// false when the subscriber gets recorded history instead.
        state: bool,
        /// Answered, with the channel's sequence at the marker, once the marker is queued
        /// and the subscription is live.
        done: oneshot::Sender<u64>,
    },
    /// Stop delivering (instrument, channel) to a subscriber.
    Unsubscribe {
        /// Subscriber id.
        subscriber: u64,
        /// What.
        instrument: InstrumentId,
        /// Which channel.
        channel: Channel,
        /// Answered once no further events will be queued.
        done: oneshot::Sender<()>,
    },
    /// A lagging subscriber's book view needs a fresh snapshot.
    Resync {
        /// The subscriber.
        mailbox: Arc<Mailbox>,
        /// Which book.
        instrument: InstrumentId,
        /// Which view.
        depth: u32,
    },
    /// The current book, at a consistent sequence.
    Snapshot {
        /// Which book.
        instrument: InstrumentId,
        /// Levels per side, 0 = full.
        depth: u32,
        /// The snapshot event.
        reply: oneshot::Sender<Event>,
    },
    /// Tap a checkpoint of every book in the shard now (an ingest node whose replicas
    /// missed batches: they resync from these).
    Checkpoint,
    /// Forget a subscriber everywhere in this shard.
    Detach {
        /// Subscriber id.
        subscriber: u64,
    },
    /// Finish the current batch and exit.
    Stop,
}

/// Why a command was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The shard's command queue is full (for a client's request: it stayed full for
    /// [`EngineConfig::command_wait`]).
    #[error("server busy: the engine's command queue is full, retry shortly")]
    Busy,
    /// The engine is shutting down.
    #[error("server is shutting down")]
    Stopped,
}

/// Engine settings.
#[derive(Debug, Clone, Copy)]
pub struct EngineConfig {
    /// Worker threads.
    pub shards: usize,
    /// Feed batches a shard may have waiting.
    pub input_batches: usize,
    /// Commands a shard may have waiting.
    pub commands: usize,
    /// How long a request waits for room in a full command queue
    /// ([`EngineCommands::send_waiting`]) before it is refused as busy.
    pub command_wait: Duration,
}

impl EngineConfig {
    /// Defaults with `shards` workers.
    pub fn with_shards(shards: usize) -> EngineConfig {
        EngineConfig {
            shards,
            input_batches: 64,
            commands: 4096,
            // Thousands of clients reconnecting at once (after a restart, or a load
            // balancer's failover) each send a subscribe: 10,000 clients of 8 instruments
            // filled the 4,096 places of one shard's queue in the bench. A shard clears
            // such a burst in well under a second; waiting that long is better than
            // refusing most of them.
            command_wait: Duration::from_secs(2),
        }
    }
}

/// Which shard owns each instrument, with its lock-free top-of-book reader. Written when a
/// shard first sees an instrument; read by anyone.
pub type TopDirectory = Arc<RwLock<HashMap<InstrumentId, Listed>>>;

/// An instrument in the [`TopDirectory`].
pub struct Listed {
    /// The shard that owns it: `id % shards` where feeds send events, the shard its
    /// ingest node's shard maps to on an edge.
    shard: u32,
    top: TopReader,
}

/// Everything a shard needs from outside.
#[derive(Clone)]
pub struct ShardContext {
    /// The shard's number, `0..shards` (set by [`Engine::start`]).
    pub index: u32,
    /// Publish-time source.
    pub clock: Arc<dyn Clock>,
    /// Routes resync requests to the feed that owns the instrument.
    pub catalog: Catalog,
    /// Lossless consumers of every event, each on a thread of its own.
    pub taps: Vec<Sender<Arc<Tapped>>>,
    /// Consumers of every event called on the shard's thread, which must never wait (an
    /// ingest node's replication outbox: one thread hand-off less between the engine and
    /// NATS).
    pub inline_taps: Vec<InlineTap>,
    /// Taps also get a checkpoint snapshot of a book after this many of its events
    /// (`SnapshotKind::Checkpoint`), so a past book is rebuilt from the nearest one.
    pub checkpoint_every: u32,
    /// Taps also get each checkpoint's [`ReplicaState`] (an ingest node: edges start from
    /// the checkpoints).
    pub replica_checkpoints: bool,
    /// On an edge node: shards keep replicas of the ingest node's books.
    pub replica: Option<ReplicaContext>,
    /// Where shards register top-of-book readers.
    pub tops: TopDirectory,
    /// Subscriber stats.
    pub fanout: Arc<Fanout>,
}

/// One input batch's events for the taps, each encoded once (the bytes subscribers
/// receive, copied to them rather than encoded again) with the columns a store indexes,
/// so that the recorder neither encodes an event again nor parses its bytes back.
#[derive(Debug, Clone, Default)]
pub struct Tapped {
    shard: u32,
    bytes: Bytes,
    rows: Vec<TapRow>,
    replicas: Vec<ReplicaState>,
}

/// A tap called with each batch on the shard's own thread; see [`ShardContext::inline_taps`].
pub type InlineTap = Arc<dyn Fn(&Tapped) + Send + Sync>;

impl ShardContext {
    /// Whether anything taps the events.
    fn tapping(&self) -> bool {
        !self.taps.is_empty() || !self.inline_taps.is_empty()
    }
}

/// What a replica (an edge node) needs of an instrument at a checkpoint besides its book,
/// tapped with the checkpoint snapshot when [`ShardContext::replica_checkpoints`] is set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaState {
    /// The checkpoint snapshot's index in [`Tapped::rows`].
    pub row: u32,
    /// Each channel's last sequence at the checkpoint.
    pub sequences: PerChannel<Sequence>,
    /// The last BBO, as a one-event `StreamResponse`, once there is one.
    pub bbo: Option<Bytes>,
    /// The shard that publishes the instrument's events.
    pub shard: u32,
    /// The instrument's tick size, as its feed gave it.
    pub tick_size: raven_model::Price,
}

/// One tapped event's columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TapRow {
    /// Where its bytes end in [`Tapped::bytes`].
    pub end: u32,
    /// The instrument.
    pub instrument: InstrumentId,
    /// `raven.v1.Channel` number, or `store::CHECKPOINT_CHANNEL` for a checkpoint
    /// snapshot (stores keep those apart from the book's events).
    pub channel: u8,
    /// Sequence within (instrument, channel).
    pub sequence: u64,
    /// Publish time, ns.
    pub publish_time: u64,
}

impl Tapped {
    /// The shard that published it (a shard's batches reach a tap in order).
    pub fn shard(&self) -> u32 {
        self.shard
    }

    /// Every event's bytes (one-event `StreamResponse`s), concatenated.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// Every event's columns, in order.
    pub fn rows(&self) -> &[TapRow] {
        &self.rows
    }

    /// What replicas need beside the checkpoint snapshots in it, in row order.
    pub fn replicas(&self) -> &[ReplicaState] {
        &self.replicas
    }

    /// Decodes the events: for tests and tools (the recorder never does).
    pub fn events(&self) -> Vec<Event> {
        let mut start = 0;
        self.rows
            .iter()
            .map(|row| {
                let bytes = &self.bytes[start..row.end as usize];
                start = row.end as usize;
                let event = pb::StreamResponse::decode(bytes)
                    .ok()
                    .and_then(|r| r.events.into_iter().next())
                    .expect("the engine's own encoding decodes (invariant)");
                Event {
                    instrument: row.instrument,
                    sequence: Sequence(event.sequence),
                    exchange_time: UnixNanos(event.exchange_time),
                    receive_time: UnixNanos(event.receive_time),
                    publish_time: UnixNanos(event.publish_time),
                    venue_seq: event.venue_seq,
                    body: body_from_pb(&event)
                        .ok()
                        .flatten()
                        .expect("the engine's own events have bodies (invariant)"),
                }
            })
            .collect()
    }
}

/// Where a shard collects the taps' share of one input batch.
#[derive(Default)]
struct TapBuffer {
    bytes: BytesMut,
    rows: Vec<TapRow>,
    replicas: Vec<ReplicaState>,
}

/// Tap buffers grow in blocks this large (flushed bytes are shared slices of a block).
const TAP_BLOCK: usize = 256 * 1024;

impl TapBuffer {
    /// Encodes `event` of `name`; returns where its bytes are.
    fn push(&mut self, name: &InstrumentName, event: &Event) -> std::ops::Range<usize> {
        if self.bytes.capacity() - self.bytes.len() < TAP_BLOCK / 16 {
            self.bytes.reserve(TAP_BLOCK);
        }
        let start = self.bytes.len();
        wire::put_event(&mut self.bytes, name.as_str(), event);
        let end = self.bytes.len();
        self.rows.push(TapRow {
            end: u32::try_from(end).expect("one input batch encodes to far less than 4 GiB"),
            instrument: event.instrument,
            channel: crate::store::channel_column(event),
            sequence: event.sequence.0,
            publish_time: event.publish_time.0,
        });
        start..end
    }

    /// Adds what a replica needs beside the checkpoint snapshot just pushed.
    fn replica(&mut self, state: ReplicaState) {
        let row = self.rows.len() - 1;
        self.replicas.push(ReplicaState {
            row: u32::try_from(row).expect("rows of one batch fit in u32"),
            ..state
        });
    }

    fn take(&mut self, shard: u32) -> Option<Tapped> {
        if self.rows.is_empty() {
            return None;
        }
        Some(Tapped {
            shard,
            bytes: self.bytes.split().freeze(),
            rows: std::mem::take(&mut self.rows),
            replicas: std::mem::take(&mut self.replicas),
        })
    }
}

/// Book events between checkpoint snapshots, unless configured.
pub const DEFAULT_CHECKPOINT_EVERY: u32 = 10_000;

impl ShardContext {
    /// A context over `catalog`'s instruments with no taps and a fresh top-of-book
    /// directory.
    pub fn new(catalog: Catalog, clock: Arc<dyn Clock>, fanout: Arc<Fanout>) -> ShardContext {
        ShardContext {
            index: 0,
            clock,
            catalog,
            taps: Vec::new(),
            inline_taps: Vec::new(),
            checkpoint_every: DEFAULT_CHECKPOINT_EVERY,
            replica_checkpoints: false,
            replica: None,
            tops: TopDirectory::default(),
            fanout,
        }
    }
}

/// The running engine.
pub struct Engine {
    input: EngineInput,
    commands: EngineCommands,
    threads: Vec<JoinHandle<()>>,
    stats: Vec<Arc<stats::ShardStats>>,
}

impl Engine {
    /// Starts `config.shards` worker threads.
    pub fn start(config: EngineConfig, ctx: ShardContext) -> std::io::Result<Engine> {
        let mut inputs = Vec::new();
        let mut commands = Vec::new();
        let mut threads = Vec::new();
        let mut stats = Vec::new();
        for n in 0..config.shards {
            let (input_tx, input_rx) = bounded(config.input_batches);
            let (command_tx, command_rx) = bounded(config.commands);
            let shard = Shard::new(ShardContext {
                index: n as u32,
                ..ctx.clone()
            });
            stats.push(shard.stats());
            threads.push(
                std::thread::Builder::new()
                    .name(format!("raven-shard-{n}"))
                    .spawn(move || run_shard(shard, input_rx, command_rx))?,
            );
            inputs.push(input_tx);
            commands.push(command_tx);
        }
        Ok(Engine {
            input: EngineInput { shards: inputs },
            commands: EngineCommands {
                shards: commands,
                tops: ctx.tops,
                wait: config.command_wait,
            },
            threads,
            stats,
        })
    }

    /// Every shard's counters, for metrics.
    pub fn stats(&self) -> stats::EngineStats {
        stats::EngineStats {
            shards: self.stats.clone(),
            input: self.input.clone(),
        }
    }

    /// A handle for feeds.
    pub fn input(&self) -> EngineInput {
        self.input.clone()
    }

    /// A handle for the API.
    pub fn commands(&self) -> EngineCommands {
        self.commands.clone()
    }

    /// The latest top of book of an instrument, read without locking the writer.
    pub fn top_of_book(&self, instrument: InstrumentId) -> Option<TopOfBook> {
        self.commands.top_of_book(instrument)
    }

    /// Lets each shard finish what it has queued, then joins the threads.
    pub fn shutdown(self) {
        for shard in &self.commands.shards {
            // A full queue still drains: block until Stop fits.
            let _ = shard.send(Command::Stop);
        }
        drop(self.input);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Input batches a shard applies before one flush, when they are already waiting.
const COALESCE_BATCHES: usize = 64;

/// How often an ingest node's shard looks for books whose checkpoint is due by age alone.
const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

fn run_shard(mut shard: Shard, input: Receiver<Input>, commands: Receiver<Command>) {
    let never = crossbeam_channel::never();
    let mut input = &input;
    // Only an ingest node checkpoints quiet books; elsewhere an idle shard stays asleep.
    let sweep = if shard.sweeps() {
        crossbeam_channel::tick(SWEEP_EVERY)
    } else {
        crossbeam_channel::never()
    };
    loop {
        crossbeam_channel::select! {
            recv(sweep) -> _ => shard.sweep(),
            recv(commands) -> c => match c {
                Ok(Command::Stop) | Err(_) => {
                    // Everything accepted before the stop is processed (and reaches
                    // the taps): the feeds have stopped, so this ends.
                    while let Ok(next) = input.try_recv() {
                        apply(&mut shard, next, &never);
                    }
                    return;
                }
                Ok(c) => shard.command(c),
            },
            recv(input) -> b => match b {
                Ok(first) => apply(&mut shard, first, input),
                // Feeds gone: keep answering commands until told to stop.
                Err(_) => input = &never,
            },
        }
    }
}

/// Applies `first` and what already waits behind it of the same kind (at most a bounded
/// number, so commands are answered between, and never anything not yet sent), with one
/// flush for all of them.
fn apply(shard: &mut Shard, first: Input, input: &Receiver<Input>) {
    let mut carried = Some(first);
    while let Some(next) = carried.take() {
        match next {
            Input::Feed(batch) => {
                let more = waiting(input, &mut carried, |i| match i {
                    Input::Feed(batch) => Ok(batch),
                    other => Err(other),
                });
                shard.process_all(batch, more);
            }
            Input::Replica(replicated) => {
                let more = waiting(input, &mut carried, |i| match i {
                    Input::Replica(replicated) => Ok(replicated),
                    other => Err(other),
                });
                shard.replicate_all(replicated, more);
            }
        }
    }
}

/// What already waits in `input` of the kind `kind` takes, at most enough to fill
/// [`COALESCE_BATCHES`]; the first of another kind is left in `carried`, for next.
fn waiting<'a, T: 'a>(
    input: &'a Receiver<Input>,
    carried: &'a mut Option<Input>,
    kind: fn(Input) -> Result<T, Input>,
) -> impl Iterator<Item = T> + 'a {
    std::iter::from_fn(move || match kind(input.try_recv().ok()?) {
        Ok(item) => Some(item),
        Err(other) => {
            *carried = Some(other);
            None
        }
    })
    .take(COALESCE_BATCHES - 1)
}
