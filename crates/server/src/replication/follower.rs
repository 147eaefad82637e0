//! The edge node's side: one thread (`raven-follow`, its own single-threaded runtime with
//! the NATS client) that reads the ingest node's stream in order and hands it to the
//! engine's replica shards (`engine::replica`).
//!
//! How an edge starts: it waits for the stream, reads every instrument's checkpoint from
//! the bucket (those of the newest run) and hands each to its shard, then consumes the
//! stream from the oldest checkpoint's message (from the start when there is none): each
//! shard skips what a checkpoint already holds. It is ready once the shards have applied
//! the checkpoints and it has read what the stream held when it started.
//!
//! Then, for each message in stream order: a shard's batch goes to the replica shard of
//! that ingest shard, unless its live copy went first (`live`: a core subscription to the
//! same subjects, on a connection of its own, gets each batch before JetStream has stored
//! it); a heartbeat only proves the ingest node alive; a gap marker makes
//! that shard's books wait for their next checkpoints. Silence for [`STALE_AFTER`] tells
//! subscribers their data is stale. A consumer that fails (NATS restarted, a missed
//! heartbeat) is made again from the next stream sequence, so nothing is read twice or
//! skipped; messages the stream no longer holds (its max age passed) count as a gap for
//! every shard. A new run of the ingest node (it restarted, sequences start again) ends
//! every client stream and starts the books over.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::{self, Context as JetStream};
use futures::StreamExt;

use super::{Control, ReplicationConfig, ReplicationError};
use crate::clock::Clock;
use crate::engine::{EngineInput, ReplicaStats, Replicated};
use crate::shutdown::Shutdown;

mod checkpoints;
mod live;

use live::{LIVE_QUEUE, Live, next_live, parse_batch_id};

/// How long the start waits for NATS before the edge gives up (exit 1).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Silence (no batch, no heartbeat) after which subscribers are told their data is stale:
/// two of the ingest node's heartbeats.
pub const STALE_AFTER: Duration = Duration::from_secs(2);

/// After a consumer failed, or while the stream does not exist yet, before trying again.
const RETRY_AFTER: Duration = Duration::from_millis(250);

/// Messages a pull may ask for at once.
const PULL_BATCH: usize = 1024;

/// Bytes a pull may ask for at once. NATS queues what a pull delivers in the connection's
/// outbound buffer (64 MiB by default) and drops a reader that lets it fill as a slow
/// consumer: 1,024 of the ingest node's messages (up to 256 KiB each) would. The next
/// pull goes out once half of this has arrived, so reading never waits on a round trip.
const PULL_BYTES: usize = 8 << 20;

/// Idle heartbeat of the consumer: a connection that lost it is noticed in two.
const CONSUMER_HEARTBEAT: Duration = Duration::from_millis(500);

/// What the edge has read, for metrics and `/api/v1/stats`.
#[derive(Debug, Default)]
pub struct FollowerStats {
    /// True while connected to NATS.
    pub up: AtomicBool,
    /// True once the checkpoints are applied and the stream read up to where it was at
    /// the start.
    pub ready: AtomicBool,
    /// True while the stream has been silent for longer than [`STALE_AFTER`].
    pub stale: AtomicBool,
    /// Checkpoints read from the bucket at the start.
    pub checkpoints: AtomicU64,
    /// Messages read from the stream.
    pub messages: AtomicU64,
    /// Batches handed on from the live subscription, before the stream delivered them.
    pub live: AtomicU64,
    /// Their payload bytes.
    pub bytes: AtomicU64,
    /// The stream sequence of the last message read.
    pub stream_sequence: AtomicU64,
    /// Messages the stream still held after it, at the last one read.
    pub pending: AtomicU64,
    /// How long the last message waited in the stream before it was read, ns.
    pub lag_ns: AtomicU64,
    /// Gap markers read (the ingest node dropped batches).
    pub gap_markers: AtomicU64,
    /// Times the consumer was made again after a failure.
    pub restarts: AtomicU64,
    /// Times the stream was silent for longer than [`STALE_AFTER`].
    pub stale_reports: AtomicU64,
    /// What the replica shards did with it.
    pub replica: Arc<ReplicaStats>,
}

/// The running follower.
pub struct Follower {
    stats: Arc<FollowerStats>,
    thread: Option<JoinHandle<()>>,
}

impl Follower {
    /// Connects to NATS, waiting up to [`CONNECT_TIMEOUT`] (an edge cannot serve without
    /// it: the error names the URL), then reads the stream into `engine` until `stop`.
    pub async fn start(
        config: ReplicationConfig,
        engine: EngineInput,
        stats: Arc<FollowerStats>,
        clock: Arc<dyn Clock>,
        stop: Shutdown,
    ) -> Result<Follower, ReplicationError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (started_tx, started) = tokio::sync::oneshot::channel();
        let thread = {
            let stats = stats.clone();
            std::thread::Builder::new()
                .name("raven-follow".into())
                .spawn(move || {
                    runtime.block_on(async move {
                        let (js, live) = match connect(&config, &stats).await {
                            Ok(connected) => {
                                let _ = started_tx.send(Ok(()));
                                connected
                            }
                            Err(e) => {
                                let _ = started_tx.send(Err(e));
                                return;
                            }
                        };
                        let following = Following {
                            config,
                            js,
                            live: Some(live),
                            order: Live::default(),
                            engine,
                            stats,
                            clock,
                            run: 0,
                            origins: 0,
                            heard: tokio::time::Instant::now(),
                        };
                        let mut stop = stop;
                        tokio::select! {
                            () = following.run() => {}
                            () = stop.wait() => {}
                        }
                    })
                })?
        };
        let started = started.await.unwrap_or_else(|_| {
            Err(ReplicationError::Io(std::io::Error::other(
                "the edge's thread ended while starting",
            )))
        });
        if let Err(e) = started {
            let _ = thread.join();
            return Err(e);
        }
        Ok(Follower {
            stats,
            thread: Some(thread),
        })
    }

    /// Its counters.
    pub fn stats(&self) -> Arc<FollowerStats> {
        self.stats.clone()
    }

    /// Waits for the thread, once the stop signal given to [`Follower::start`] fired.
    pub fn join(mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The stream's connection, and the live subscription to the ingest node's batches on a
/// connection of its own (a live path that falls behind loses only its own messages and
/// never gets the stream's connection dropped as a slow consumer).
async fn connect(
    config: &ReplicationConfig,
    stats: &Arc<FollowerStats>,
) -> Result<(JetStream, async_nats::Subscriber), ReplicationError> {
    let options = async_nats::ConnectOptions::new()
        .name("raven-edge")
        .event_callback({
            let stats = stats.clone();
            move |event| {
                let stats = stats.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => stats.up.store(true, Ordering::Relaxed),
                        async_nats::Event::Disconnected
                            if stats.up.swap(false, Ordering::Relaxed) =>
                        {
                            tracing::warn!("edge: lost the connection to NATS; reconnecting");
                        }
                        _ => {}
                    }
                }
            }
        });
    let client = connect_with(config, options).await?;
    let live = async_nats::ConnectOptions::new()
        .name("raven-edge-live")
        .subscription_capacity(LIVE_QUEUE);
    let live = connect_with(config, live)
        .await?
        .subscribe(config.events_subject())
        .await
        .map_err(|e| ReplicationError::Unreachable {
            url: config.nats.clone(),
            reason: e.to_string(),
        })?;
    stats.up.store(true, Ordering::Relaxed);
    tracing::info!(nats = %config.nats, stream = %config.stream(), "edge node: following the ingest node's stream");
    Ok((jetstream::new(client), live))
}

/// Connects with `options`, reconnecting for ever once connected.
async fn connect_with(
    config: &ReplicationConfig,
    options: async_nats::ConnectOptions,
) -> Result<async_nats::Client, ReplicationError> {
    let options = options
        .max_reconnects(None)
        .connection_timeout(CONNECT_TIMEOUT)
        .reconnect_delay_callback(|attempts| Duration::from_millis(50 * attempts.min(5) as u64));
    tokio::time::timeout(CONNECT_TIMEOUT, options.connect(config.nats.as_str()))
        .await
        .map_err(|_| format!("no answer in {} s", CONNECT_TIMEOUT.as_secs()))
        .and_then(|connected| connected.map_err(|e| e.to_string()))
        .map_err(|reason| ReplicationError::Unreachable {
            url: config.nats.clone(),
            reason,
        })
}

/// The follower thread's state.
struct Following {
    config: ReplicationConfig,
    js: JetStream,
    /// The live copies of the batches (`None` once the subscription ended).
    live: Option<async_nats::Subscriber>,
    /// Which copy of each batch goes on.
    order: Live,
    engine: EngineInput,
    stats: Arc<FollowerStats>,
    clock: Arc<dyn Clock>,
    /// The ingest node's run being followed (0 before the first).
    run: u64,
    /// One past the highest ingest shard seen.
    origins: u32,
    /// When the stream last said anything.
    heard: tokio::time::Instant,
}

/// Why reading stopped.
enum Interrupted {
    /// The stream is read up to where it was at the start.
    CaughtUp,
    /// The consumer failed; made again from the next sequence.
    Consumer(String),
    /// The engine has stopped.
    Stopped,
}

/// While a replica shard is behind, how long the reader waits before handing it the next
/// item again (it reads nothing meanwhile, which NATS sees as a slower consumer).
const SHARD_BEHIND_WAIT: Duration = Duration::from_micros(200);

impl Following {
    /// Hands `replicated` to the shard replicating the ingest node's shard `origin`,
    /// waiting while it is behind without blocking the runtime (the NATS connection's
    /// pings and heartbeats are answered meanwhile); false once the engine has stopped.
    async fn hand(&self, origin: u32, mut replicated: Replicated) -> bool {
        loop {
            match self.engine.try_replicate(origin, replicated) {
                Ok(()) => return true,
                Err(crossbeam_channel::TrySendError::Full(back)) => {
                    replicated = back;
                    tokio::time::sleep(SHARD_BEHIND_WAIT).await;
                }
                Err(crossbeam_channel::TrySendError::Disconnected(_)) => return false,
            }
        }
    }

    /// Hands each shard what `make` makes for it; false once the engine has stopped.
    async fn hand_all(&self, make: impl Fn() -> Replicated) -> bool {
        for shard in 0..self.engine.shards() as u32 {
            if !self.hand(shard, make()).await {
                return false;
            }
        }
        true
    }

    async fn run(mut self) {
        let stream = self.config.stream();
        let mut waited = false;
        let info = loop {
            let info = match self.js.get_stream(&stream).await {
                Ok(mut s) => s.info().await.cloned().map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match info {
                Ok(info) => break info,
                Err(error) if !waited => {
                    tracing::warn!(%stream, %error, "edge: waiting for the ingest node's stream");
                    waited = true;
                }
                Err(_) => {}
            }
            tokio::time::sleep(RETRY_AFTER).await;
        };
        let Some(mut next) = self.load_checkpoints().await else {
            return;
        };
        // What the stream held at the start: ready once read up to here.
        let mut until = info.state.last_sequence;
        if next == 0 {
            next = info.state.first_sequence.max(1);
        }
        self.heard = tokio::time::Instant::now();
        // Logged once until the stream is read again, not at every retry of an outage.
        let mut failing = false;
        loop {
            if !self.stats.ready.load(Ordering::Relaxed) && next > until {
                if !self.fence().await {
                    return;
                }
                self.stats.ready.store(true, Ordering::Relaxed);
                tracing::info!(
                    stream_sequence = next - 1,
                    instruments = self.stats.checkpoints.load(Ordering::Relaxed),
                    "edge node ready: checkpoints applied, stream read up to where it was at the start"
                );
                until = 0;
            }
            let from = next;
            let interrupted = self.consume(&mut next, until).await;
            failing &= next == from;
            match interrupted {
                Interrupted::Stopped => return,
                Interrupted::CaughtUp => {}
                Interrupted::Consumer(error) => {
                    self.stats.restarts.fetch_add(1, Ordering::Relaxed);
                    if !failing {
                        tracing::warn!(%error, next, "edge: reading the stream again from the next message");
                    }
                    failing = true;
                    tokio::time::sleep(RETRY_AFTER).await;
                    // No consumer to wait on while NATS is away: silence is noticed here.
                    if !self.stats.stale.load(Ordering::Relaxed)
                        && self.heard.elapsed() >= STALE_AFTER
                        && !self.stale().await
                    {
                        return;
                    }
                    next = self.after_restart(next).await;
                }
            }
        }
    }

    /// Waits until every shard has applied what it was sent; false once the engine has
    /// stopped.
    async fn fence(&self) -> bool {
        let mut reached = Vec::new();
        for shard in 0..self.engine.shards() as u32 {
            let (tx, rx) = tokio::sync::oneshot::channel();
            if !self.hand(shard, Replicated::Fence(tx)).await {
                return false;
            }
            reached.push(rx);
        }
        for rx in reached {
            if rx.await.is_err() {
                return false;
            }
        }
        true
    }

    /// Reads the stream from `next` until the consumer fails; past `until` (when not 0)
    /// returns so that readiness can be declared.
    async fn consume(&mut self, next: &mut u64, until: u64) -> Interrupted {
        let stream = match self.js.get_stream(self.config.stream()).await {
            Ok(stream) => stream,
            Err(e) => return Interrupted::Consumer(e.to_string()),
        };
        let consumer = stream
            .create_consumer(pull::Config {
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: *next,
                },
                ack_policy: AckPolicy::None,
                inactive_threshold: Duration::from_secs(30),
                memory_storage: true,
                ..Default::default()
            })
            .await;
        let consumer = match consumer {
            Ok(consumer) => consumer,
            Err(e) => return Interrupted::Consumer(e.to_string()),
        };
        let messages = consumer
            .stream()
            .max_messages_per_batch(PULL_BATCH)
            .max_bytes_per_batch(PULL_BYTES)
            .heartbeat(CONSUMER_HEARTBEAT)
            .expires(CONSUMER_HEARTBEAT * 4)
            .messages()
            .await;
        let mut messages = match messages {
            Ok(messages) => messages,
            Err(e) => return Interrupted::Consumer(e.to_string()),
        };
        loop {
            let stale_at = self.heard + STALE_AFTER;
            let stale = self.stats.stale.load(Ordering::Relaxed);
            let message = tokio::select! {
                message = messages.next() => message,
                live = next_live(&mut self.live) => {
                    if !self.took_live(live).await {
                        return Interrupted::Stopped;
                    }
                    continue;
                }
                () = tokio::time::sleep_until(stale_at), if !stale => {
                    if !self.stale().await {
                        return Interrupted::Stopped;
                    }
                    continue;
                }
            };
            let message = match message {
                Some(Ok(message)) => message,
                Some(Err(e)) => return Interrupted::Consumer(e.to_string()),
                None => return Interrupted::Consumer("the consumer ended".into()),
            };
            // Live copies that arrived with it go first: this batch's may be among them
            // (the reader, woken late, often finds both).
            if !self.live_waiting().await {
                return Interrupted::Stopped;
            }
            let Ok(info) = message.info() else {
                return Interrupted::Consumer("a message without its stream position".into());
            };
            let (sequence, pending) = (info.stream_sequence, info.pending);
            let published = info.published.unix_timestamp_nanos();
            if sequence < *next {
                continue;
            }
            if sequence > *next {
                // Delivered while the connection was down (a pull consumer without
                // acknowledgements does not deliver them again): read them again from the
                // stream, unless it no longer holds them.
                match self.first_sequence().await {
                    Some(first) if first <= *next => {
                        return Interrupted::Consumer(format!(
                            "messages {}..{} were delivered but not received",
                            *next,
                            sequence - 1
                        ));
                    }
                    _ => {
                        if !self.lost(*next, sequence).await {
                            return Interrupted::Stopped;
                        }
                    }
                }
            }
            *next = sequence + 1;
            self.heard = tokio::time::Instant::now();
            if self.stats.stale.swap(false, Ordering::Relaxed) {
                tracing::info!(
                    stream_sequence = sequence,
                    "edge: the ingest node's stream is back"
                );
            }
            let now = i128::from(self.clock.now().0);
            self.stats
                .lag_ns
                .store((now - published).max(0) as u64, Ordering::Relaxed);
            self.stats.messages.fetch_add(1, Ordering::Relaxed);
            self.stats
                .bytes
                .fetch_add(message.payload.len() as u64, Ordering::Relaxed);
            self.stats
                .stream_sequence
                .store(sequence, Ordering::Relaxed);
            self.stats.pending.store(pending, Ordering::Relaxed);
            let id = message
                .headers
                .as_ref()
                .and_then(|h| h.get("Nats-Msg-Id"))
                .map(|v| v.as_str());
            if !self
                .handle(sequence, &message.subject, id, message.payload.clone())
                .await
            {
                return Interrupted::Stopped;
            }
            if until != 0 && sequence >= until {
                return Interrupted::CaughtUp;
            }
        }
    }

    /// Hands one message on; false once the engine has stopped.
    async fn handle(
        &mut self,
        sequence: u64,
        subject: &str,
        id: Option<&str>,
        payload: bytes::Bytes,
    ) -> bool {
        let run = id
            .and_then(|id| id.split('.').next())
            .and_then(|run| run.parse::<u64>().ok());
        if let Some(run) = run
            && run != self.run
        {
            if self.run != 0 && run < self.run {
                // A message of an older run still in the stream: what the checkpoints of
                // the newer one already replace.
                return true;
            }
            if self.run != 0 {
                tracing::warn!(
                    previous = self.run,
                    run,
                    "edge: the ingest node restarted; client streams end and the books start over"
                );
                if !self.hand_all(|| Replicated::NewRun).await {
                    return false;
                }
            }
            self.order.forget();
            self.run = run;
        }
        let Some(rest) = subject
            .strip_prefix("raven.")
            .and_then(|s| s.strip_prefix(self.config.cluster.as_str()))
            .and_then(|s| s.strip_prefix('.'))
        else {
            return true;
        };
        if let Some(shard) = rest.strip_prefix("ev.") {
            let Ok(origin) = shard.parse::<u32>() else {
                tracing::error!(stream_sequence = sequence, %subject, "edge: a message on an unknown subject; skipped");
                return true;
            };
            self.origins = self.origins.max(origin + 1);
            let number = id.and_then(parse_batch_id).map(|(_, _, batch)| batch);
            if let Some(number) = number
                && !self.order.streamed(origin, number)
            {
                return true;
            }
            let batch = Replicated::Batch {
                stream_sequence: sequence,
                batch: number.unwrap_or(0),
                origin,
                bytes: payload,
            };
            return self.hand(origin, batch).await && self.hand_held(origin).await;
        }
        match serde_json::from_slice::<Control>(&payload) {
            Ok(Control::Heartbeat { .. }) => true,
            Ok(Control::Gap {
                shard,
                first,
                last,
                events,
                ..
            }) => {
                self.stats.gap_markers.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    shard,
                    first,
                    last,
                    events,
                    "edge: the ingest node dropped batches; their books resync from the next checkpoints"
                );
                let gap = Replicated::Gap {
                    origin: shard,
                    events,
                };
                self.order.dropped(shard, last);
                self.hand(shard, gap).await && self.hand_held(shard).await
            }
            Err(e) => {
                tracing::error!(stream_sequence = sequence, error = %e, "edge: a control message does not decode; skipped");
                true
            }
        }
    }

    /// Messages `next..found` are gone from the stream (its max age passed before they
    /// were read): every shard's books resync. False once the engine has stopped.
    async fn lost(&mut self, next: u64, found: u64) -> bool {
        tracing::warn!(
            from = next,
            to = found - 1,
            "edge: messages left the stream before they were read; every book resyncs from its next checkpoint"
        );
        self.order.forget();
        for origin in 0..self.origins {
            if !self
                .hand(origin, Replicated::Gap { origin, events: 0 })
                .await
            {
                return false;
            }
        }
        true
    }

    /// The first sequence the stream holds, when NATS says.
    async fn first_sequence(&self) -> Option<u64> {
        let mut stream = self.js.get_stream(self.config.stream()).await.ok()?;
        Some(stream.info().await.ok()?.state.first_sequence)
    }

    /// Tells every shard the stream is silent; false once the engine has stopped.
    async fn stale(&mut self) -> bool {
        let silent = self.heard.elapsed();
        self.stats.stale.store(true, Ordering::Relaxed);
        self.stats.stale_reports.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            silent_ms = silent.as_millis() as u64,
            "edge: nothing from the ingest node's stream; subscribers told their data is stale"
        );
        self.hand_all(|| Replicated::Stale { silent }).await
    }

    /// Where to read from after the consumer failed: `next`, unless the stream was made
    /// again meanwhile (a NATS without storage restarted) and holds less than that.
    async fn after_restart(&mut self, next: u64) -> u64 {
        let Ok(mut stream) = self.js.get_stream(self.config.stream()).await else {
            return next;
        };
        let Ok(info) = stream.info().await else {
            return next;
        };
        if info.state.last_sequence + 1 >= next {
            return next;
        }
        tracing::warn!(
            last_sequence = info.state.last_sequence,
            next,
            "edge: the stream was made again; reading it from its start"
        );
        self.lost(next, next + 1).await;
        info.state.first_sequence.max(1)
    }
}
