//! The ingest node's publisher: an engine tap (lossless, like the recorder's) and a
//! thread.
//!
//! - The **tap**, called on each engine shard's thread as it flushes a batch, moves the
//!   batch into the [`Outbox`] (cut into messages, numbered, bounded by `buffer_bytes`).
//!   It never waits on NATS, so neither does the engine; and no thread stands between
//!   the engine and the publisher (each hand-off is a wake-up, tens of µs here).
//! - The **publisher** (its own single-threaded runtime, with the NATS client) publishes
//!   the outbox in order, pipelined (up to [`IN_FLIGHT`] messages unacknowledged), each with
//!   its id and chained to the one before it (`Nats-Expected-Last-Msg-Id`): a message lost
//!   with a broken connection makes the stream refuse the next one rather than store it out
//!   of order. On any failure it goes back to the first unacknowledged message and
//!   publishes from there; whatever had landed is dropped by the stream as a duplicate (the
//!   id, within [`super::DUPLICATE_WINDOW`]). Acknowledged checkpoint snapshots go to the
//!   bucket, from a task of their own.
//!
//! If NATS cannot be reached the node serves its own clients as ever; the publisher
//! reconnects in the background and sets up the stream when it can.

use std::collections::VecDeque;
use std::future::IntoFuture;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, Context as JetStream, stream};
use bytes::Bytes;
use raven_proto::wire;

use super::outbox::{Outbox, Outgoing, Pending};
use super::{ReplicationConfig, checkpoint_key, checkpoint_value, differences};
use crate::clock::Clock;
use crate::engine::{EngineCommands, InlineTap, Tapped};

/// Messages published and not yet acknowledged, at most.
const IN_FLIGHT: usize = 1024;

/// How long the start waits for NATS before going on without it.
const CONNECT_WAIT: Duration = Duration::from_secs(2);

/// Between heartbeats.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);

/// After a failed publish or stream setup, before trying again.
const RETRY_AFTER: Duration = Duration::from_millis(250);

/// After the stream could not be set up (other settings, no JetStream), before trying
/// again: each try is logged as an error.
const SETUP_RETRY: Duration = Duration::from_secs(5);

/// How long an acknowledgement may take before the message counts as lost (and is
/// published again from there).
const ACK_WAIT: Duration = Duration::from_secs(2);

/// Why replication cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    /// The stream exists with settings Raven cannot use.
    #[error(
        "NATS stream {stream} exists with other settings: {}; delete it or change [replication]",
        differences.join("; ")
    )]
    StreamSettings {
        /// Its name.
        stream: String,
        /// Each setting that differs.
        differences: Vec<String>,
    },
    /// NATS answered, but not as expected.
    #[error("cannot set up NATS stream {stream}: {reason}")]
    Setup {
        /// Its name.
        stream: String,
        /// What went wrong.
        reason: String,
    },
    /// An edge could not reach NATS at its start.
    #[error("edge node: cannot reach NATS at {url}: {reason}")]
    Unreachable {
        /// `[replication] nats`.
        url: String,
        /// Why.
        reason: String,
    },
    /// A thread or the runtime could not start.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// What the publisher has done, for metrics and `/api/v1/stats`.
#[derive(Debug, Default)]
pub struct ReplicationStats {
    /// True while the stream takes messages.
    pub up: AtomicBool,
    /// Event messages the stream acknowledged.
    pub published: AtomicU64,
    /// Events in them.
    pub published_events: AtomicU64,
    /// Their payload bytes.
    pub published_bytes: AtomicU64,
    /// The stream sequence of the last acknowledged message.
    pub stream_sequence: AtomicU64,
    /// Bytes waiting in the outbox (published and unacknowledged included).
    pub buffered_bytes: AtomicU64,
    /// Event messages dropped because the outbox was full.
    pub dropped: AtomicU64,
    /// Events in them.
    pub dropped_events: AtomicU64,
    /// Gap markers queued (one per run of dropped messages of a shard).
    pub gaps: AtomicU64,
    /// Times the publisher went back to the first unacknowledged message.
    pub resends: AtomicU64,
    /// Checkpoints written to the bucket.
    pub checkpoints: AtomicU64,
    /// Checkpoints not written (the bucket failed, or too many waited); the instrument's
    /// next one replaces it.
    pub checkpoints_failed: AtomicU64,
}

/// The running publisher.
pub struct Replicator {
    outbox: Arc<Outbox>,
    stats: Arc<ReplicationStats>,
    clock: Arc<dyn Clock>,
    publisher: Option<JoinHandle<()>>,
}

impl Replicator {
    /// Connects to NATS (waiting up to [`CONNECT_WAIT`]) and sets up the stream when it
    /// answers; a stream with other settings fails the start. Then starts the threads:
    /// from here on NATS being away is reported (`up`) and waited out, never an error.
    /// The NATS client lives on the publisher thread's own runtime, off the one serving
    /// gRPC.
    pub async fn start(
        config: ReplicationConfig,
        (run, shards): (u64, usize),
        clock: Arc<dyn Clock>,
    ) -> Result<Replicator, ReplicationError> {
        let stats = Arc::new(ReplicationStats::default());
        let outbox = Arc::new(Outbox::new(&config, run, shards, stats.clone()));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (started_tx, started) = tokio::sync::oneshot::channel();
        let publisher = {
            let (outbox, stats, clock) = (outbox.clone(), stats.clone(), clock.clone());
            std::thread::Builder::new()
                .name("raven-replicate".into())
                .spawn(move || {
                    runtime.block_on(async move {
                        let publishing = match Publishing::connect(config, outbox, stats, clock).await {
                            Ok(publishing) => {
                                let _ = started_tx.send(Ok(()));
                                publishing
                            }
                            Err(e) => {
                                let _ = started_tx.send(Err(e));
                                return;
                            }
                        };
                        let stats = publishing.stats.clone();
                        let outbox = publishing.outbox.clone();
                        tokio::select! {
                            () = publishing.run() => {}
                            () = outbox.given_up() => tracing::warn!(
                                buffered_bytes = stats.buffered_bytes.load(Ordering::Relaxed),
                                "stopped with batches not replicated: NATS did not take them in time"
                            ),
                        }
                    })
                })?
        };
        let started = started.await.unwrap_or_else(|_| {
            Err(ReplicationError::Io(std::io::Error::other(
                "the replication thread ended while starting",
            )))
        });
        if let Err(e) = started {
            let _ = publisher.join();
            return Err(e);
        }
        Ok(Replicator {
            outbox,
            stats,
            clock,
            publisher: Some(publisher),
        })
    }

    /// The engine's tap: each shard's batch into the outbox, on the shard's thread.
    pub fn tap(&self) -> InlineTap {
        let (outbox, clock) = (self.outbox.clone(), self.clock.clone());
        Arc::new(move |batch: &Tapped| outbox.take(batch, clock.now().0))
    }

    /// The engine whose tap it reads, asked for fresh checkpoints after a replication
    /// gap (it starts after the publisher, which its tap needs).
    pub fn attach(&self, engine: EngineCommands) {
        self.outbox.attach(engine);
    }

    /// Its counters.
    pub fn stats(&self) -> Arc<ReplicationStats> {
        self.stats.clone()
    }

    /// After the engine has stopped (nothing more comes through the tap): publishes what
    /// waits for up to `budget`, then stops. What is still unacknowledged then is not
    /// replicated (edges see the node stop: its heartbeats end).
    pub fn finish(mut self, budget: Duration) {
        self.outbox.close(self.clock.now().0);
        let deadline = std::time::Instant::now() + budget;
        self.outbox.abandon_at(deadline);
        if let Some(publisher) = self.publisher.take() {
            let _ = publisher.join();
        }
    }
}

impl Drop for Replicator {
    /// Without [`Replicator::finish`]: the publisher stops at once.
    fn drop(&mut self) {
        self.outbox.abandon_at(std::time::Instant::now());
    }
}

/// Sets up the stream and the checkpoint bucket.
async fn ensure_stream(js: &JetStream, config: &ReplicationConfig) -> Result<(), ReplicationError> {
    stream_settings(js, config.stream_config()).await?;
    stream_settings(js, config.bucket_stream_config()).await
}

/// Creates the stream `wanted`, or checks that the one there has its settings.
async fn stream_settings(js: &JetStream, wanted: stream::Config) -> Result<(), ReplicationError> {
    let setup = |reason: String| ReplicationError::Setup {
        stream: wanted.name.clone(),
        reason,
    };
    match js.get_stream(&wanted.name).await {
        Ok(stream) => {
            let differ = differences(&wanted, &stream.cached_info().config);
            if differ.is_empty() {
                Ok(())
            } else {
                Err(ReplicationError::StreamSettings {
                    stream: wanted.name.clone(),
                    differences: differ,
                })
            }
        }
        Err(e) if super::stream_not_found(&e) => js
            .create_stream(wanted.clone())
            .await
            .map(|_| ())
            .map_err(|e| setup(e.to_string())),
        Err(e) => Err(setup(e.to_string())),
    }
}

/// The publisher thread's state.
struct Publishing {
    /// What the task that writes checkpoints to the bucket has still to write.
    checkpoints: Arc<Waiting>,
    config: ReplicationConfig,
    js: JetStream,
    connected: tokio::sync::watch::Receiver<bool>,
    outbox: Arc<Outbox>,
    stats: Arc<ReplicationStats>,
    clock: Arc<dyn Clock>,
    /// The stream is set up.
    ready: bool,
}

type Ack = Pin<
    Box<
        dyn std::future::Future<
                Output = Result<
                    async_nats::jetstream::publish::PublishAck,
                    async_nats::jetstream::context::PublishError,
                >,
            > + Send,
    >,
>;

impl Publishing {
    /// Connects, waiting up to [`CONNECT_WAIT`] for NATS, and sets up the stream if it
    /// answered.
    async fn connect(
        config: ReplicationConfig,
        outbox: Arc<Outbox>,
        stats: Arc<ReplicationStats>,
        clock: Arc<dyn Clock>,
    ) -> Result<Publishing, ReplicationError> {
        let (connected_tx, connected) = tokio::sync::watch::channel(false);
        let options = async_nats::ConnectOptions::new()
            .name("raven-ingest")
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connection_timeout(CONNECT_WAIT)
            // Back within a quarter second of NATS returning, rather than the default
            // backoff's seconds.
            .reconnect_delay_callback(|attempts| Duration::from_millis(50 * attempts.min(5) as u64))
            .event_callback({
                let stats = stats.clone();
                move |event| {
                    let (connected_tx, stats) = (connected_tx.clone(), stats.clone());
                    async move {
                        match event {
                            async_nats::Event::Connected => {
                                let _ = connected_tx.send(true);
                            }
                            async_nats::Event::Disconnected => {
                                let _ = connected_tx.send(false);
                                if stats.up.swap(false, Ordering::Relaxed) {
                                    tracing::warn!("replication down: lost the connection to NATS; buffering batches until it answers");
                                }
                            }
                            _ => {}
                        }
                    }
                }
            });
        let client =
            options
                .connect(config.nats.as_str())
                .await
                .map_err(|e| ReplicationError::Setup {
                    stream: config.stream(),
                    reason: format!("cannot use NATS URL {}: {e}", config.nats),
                })?;
        let js = jetstream::ContextBuilder::new()
            .timeout(ACK_WAIT)
            .build(client);
        let mut waiting = connected.clone();
        let reached = tokio::time::timeout(CONNECT_WAIT, waiting.wait_for(|c| *c))
            .await
            .is_ok();
        if reached {
            ensure_stream(&js, &config).await?;
            stats.up.store(true, Ordering::Relaxed);
            tracing::info!(nats = %config.nats, stream = %config.stream(), "replicating to NATS JetStream");
        } else {
            tracing::warn!(
                nats = %config.nats,
                buffer_mb = config.buffer_bytes >> 20,
                "replication down: NATS unreachable; serving this node's clients, buffering batches until it answers"
            );
        }
        let checkpoints = Arc::new(Waiting::default());
        let written = checkpoints.clone();
        tokio::spawn(write_checkpoints(
            js.clone(),
            config.bucket(),
            written,
            stats.clone(),
        ));
        Ok(Publishing {
            checkpoints,
            config,
            js,
            connected,
            outbox,
            stats,
            clock,
            ready: reached,
        })
    }

    /// Hands the checkpoint in a message the stream holds at `stream_sequence` to the
    /// bucket's writer.
    fn checkpoint(&self, pending: &Pending, stream_sequence: u64) {
        let instrument = wire::scan::instrument(&pending.book)
            .ok()
            .and_then(|name| std::str::from_utf8(name).ok())
            .expect("the engine's own encoding names the instrument (invariant)");
        let value = checkpoint_value(
            self.outbox.run(),
            stream_sequence,
            &pending.book,
            &pending.state,
        );
        self.checkpoints
            .put(checkpoint_key(instrument), Bytes::from(value));
    }

    async fn run(mut self) {
        let mut in_flight: VecDeque<(Outgoing, Ack)> = VecDeque::new();
        // The id of the last message published, which the next one names as the one the
        // stream must hold last; none for the run's first (or after a stream was set up
        // again).
        let mut previous: Option<String> = None;
        let mut last_acknowledged: Option<String> = None;
        // The message the stream last refused as out of order.
        let mut refused: Option<String> = None;
        let mut heartbeat = tokio::time::interval(HEARTBEAT_EVERY);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            if self.outbox.ended() {
                return;
            }
            if !self.ready {
                if *self.connected.borrow() {
                    match ensure_stream(&self.js, &self.config).await {
                        Ok(()) => {
                            self.ready = true;
                            self.stats.up.store(true, Ordering::Relaxed);
                            previous = None;
                            last_acknowledged = None;
                            tracing::info!(stream = %self.config.stream(), "replication up: NATS answers");
                            continue;
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "replication down");
                            tokio::time::sleep(SETUP_RETRY).await;
                            continue;
                        }
                    }
                }
                let _ = tokio::time::timeout(RETRY_AFTER, self.connected.changed()).await;
                continue;
            }
            let room = IN_FLIGHT - in_flight.len();
            tokio::select! {
                biased;
                acked = async { (&mut in_flight.front_mut().expect("guarded").1).await }, if !in_flight.is_empty() => {
                    let (message, _) = in_flight.pop_front().expect("guarded");
                    match acked {
                        Ok(ack) => {
                            self.stats.stream_sequence.store(ack.sequence, Ordering::Relaxed);
                            if message.events > 0 {
                                self.stats.published.fetch_add(1, Ordering::Relaxed);
                                self.stats.published_events.fetch_add(message.events, Ordering::Relaxed);
                                self.stats.published_bytes.fetch_add(message.payload.len() as u64, Ordering::Relaxed);
                            }
                            self.outbox.acknowledged(message.payload.len());
                            for pending in &message.checkpoints {
                                self.checkpoint(pending, ack.sequence);
                            }
                            last_acknowledged = Some(message.id);
                            // An acknowledgement read after the connection was lost
                            // (it was already here) does not make replication up.
                            if *self.connected.borrow() && !self.stats.up.swap(true, Ordering::Relaxed) {
                                tracing::info!("replication up: NATS takes batches again");
                            }
                        }
                        Err(e) => {
                            self.stats.resends.fetch_add(1, Ordering::Relaxed);
                            if self.stats.up.swap(false, Ordering::Relaxed) {
                                tracing::warn!(error = %e, id = %message.id, "replication down: NATS did not take a batch; resending from it when it answers");
                            }
                            previous = last_acknowledged.clone();
                            match e.kind() {
                                PublishErrorKind::StreamNotFound => self.ready = false,
                                // Refused twice in a row as not following the last message
                                // acknowledged: the stream's last message is not this node's
                                // (another node publishes to the cluster's stream). Said, and
                                // the chain starts again from whatever the stream holds.
                                PublishErrorKind::WrongLastMessageId
                                    if refused.as_ref() == Some(&message.id) =>
                                {
                                    tracing::error!(stream = %self.config.stream(), id = %message.id, "the stream's last message is not this node's: is another ingest node publishing to this cluster?");
                                    previous = None;
                                }
                                PublishErrorKind::WrongLastMessageId => refused = Some(message.id.clone()),
                                _ => {}
                            }
                            // Everything after it goes again, in order, after it.
                            let rest = std::mem::take(&mut in_flight);
                            self.outbox.requeue(std::iter::once(message).chain(rest.into_iter().map(|(m, _)| m)));
                            let _ = tokio::time::timeout(RETRY_AFTER, self.connected.wait_for(|c| *c)).await;
                        }
                    }
                }
                _ = heartbeat.tick() => {
                    if *self.connected.borrow() {
                        self.outbox.heartbeat(self.clock.now().0);
                    }
                }
                _ = self.outbox.ready.notified(), if room > 0 => {}
            }
            if room == 0 || !*self.connected.borrow() {
                continue;
            }
            let mut waiting = self.outbox.next(IN_FLIGHT - in_flight.len()).into_iter();
            while let Some(message) = waiting.next() {
                let mut publish = PublishMessage::build()
                    .payload(message.payload.clone())
                    .message_id(&message.id);
                if let Some(previous) = &previous {
                    publish = publish.expected_last_message_id(previous);
                }
                match self.js.send_publish(message.subject.clone(), publish).await {
                    Ok(ack) => {
                        previous = Some(message.id.clone());
                        in_flight.push_back((message, ack.into_future()));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot publish to NATS; retrying");
                        // It and those after it wait, in order.
                        self.outbox
                            .requeue(std::iter::once(message).chain(waiting.by_ref()));
                        break;
                    }
                }
            }
        }
    }
}

/// Checkpoints waiting for the bucket: each instrument's latest only. A burst (thousands
/// of books checkpointed at once) waits in memory bounded by the number of instruments,
/// and an instrument's older checkpoint is never written after its newer one.
#[derive(Default)]
struct Waiting {
    latest: std::sync::Mutex<std::collections::HashMap<String, Bytes>>,
    ready: tokio::sync::Notify,
}

impl Waiting {
    fn put(&self, key: String, value: Bytes) {
        let mut latest = self.latest.lock().unwrap_or_else(|p| p.into_inner());
        latest.insert(key, value);
        drop(latest);
        self.ready.notify_one();
    }

    fn take(&self) -> std::collections::HashMap<String, Bytes> {
        std::mem::take(&mut *self.latest.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// Checkpoints written to the bucket at once (each a different instrument's).
const CHECKPOINT_WRITES: usize = 64;

/// Writes what waits to the bucket, many instruments at a time; an instrument's later
/// checkpoint waits for the next round.
async fn write_checkpoints(
    js: JetStream,
    bucket: String,
    waiting: Arc<Waiting>,
    stats: Arc<ReplicationStats>,
) {
    use futures::StreamExt;
    let mut store = None;
    let mut failing = false;
    loop {
        waiting.ready.notified().await;
        let round = waiting.take();
        if round.is_empty() {
            continue;
        }
        if store.is_none() {
            store = js.get_key_value(bucket.as_str()).await.ok();
        }
        let Some(kv) = &store else {
            stats
                .checkpoints_failed
                .fetch_add(round.len() as u64, Ordering::Relaxed);
            if !failing {
                tracing::warn!(%bucket, "checkpoints not written: no bucket; each instrument's next one replaces its");
            }
            failing = true;
            continue;
        };
        let written: Vec<_> = futures::stream::iter(round)
            .map(|(key, value)| async move { kv.put(key.as_str(), value).await })
            .buffer_unordered(CHECKPOINT_WRITES)
            .collect()
            .await;
        let mut error = None;
        for result in written {
            match result {
                Ok(_) => {
                    stats.checkpoints.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    stats.checkpoints_failed.fetch_add(1, Ordering::Relaxed);
                    error = Some(e.to_string());
                }
            }
        }
        match error {
            Some(error) => {
                if !failing {
                    tracing::warn!(%error, %bucket, "checkpoint not written; the instrument's next one replaces it");
                }
                failing = true;
                store = None;
            }
            None => failing = false,
        }
    }
}
