//! The recorder: a lossless consumer of every event the engine publishes (an engine tap:
//! the engine waits for it rather than drop, and it is never conflated). Two threads:
//!
//! - the **intake** takes the tap's events (already encoded by the engine, with their
//!   columns: it copies them, never encodes or parses) and batches them by time window
//!   (default 5 ms from a batch's first event) or row count, whichever comes first, into
//!   the [`queue`]. It never waits on the store, so neither does the engine: a store that
//!   is down, slow, or being backfilled never pauses live streams.
//! - the **writer** writes the queue's batches to the store, oldest first, each in one
//!   transaction. When the store fails it keeps the batch and tries again every
//!   `retry_every` (every `refused_retry_every`, logged as recording being down, when the
//!   store refused rather than failed: `StoreError::is_transient`); meanwhile batches wait in memory (up to `queue_bytes`), then in the
//!   spill file (its reservation), and are backfilled when the store answers, beside
//!   live recording. Only when all of that is full are events dropped, and then the loss
//!   is recorded as gap events ([`ledger`]) that history queries return.
//!
//! A batch retried after an unacknowledged commit is skipped by the store if it had
//! landed (`store::Store::write`), so nothing is stored twice. A spill file left by a
//! crash is backfilled at the next start. At shutdown the writer gets a time budget;
//! what it has not stored by then goes to the spill file for the next start, even if
//! it is stuck in a store call (a frozen database), so shutdown always ends.

mod ledger;
mod queue;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, TryRecvError};
use raven_model::InstrumentRegistry;
use tokio::sync::watch;

use crate::clock::Clock;
use crate::engine::Tapped;
use crate::histogram::Histogram;
use crate::store::spill::Spill;
use crate::store::{Batch, MAX_BATCH_ROWS, Store};
use queue::{Next, Queue};

/// Recorder settings.
#[derive(Debug, Clone)]
pub struct RecorderConfig {
    /// A batch is written this long after its first event at the latest.
    pub window: Duration,
    /// ...or as soon as it holds this many events.
    pub max_rows: usize,
    /// How often a failed store is tried again.
    pub retry_every: Duration,
    /// How often a store that refused (rather than failed) is tried again: it will not
    /// pass by itself, and each try is logged as an error.
    pub refused_retry_every: Duration,
    /// Bytes of batches waiting in memory before they go to the spill file.
    pub queue_bytes: u64,
}

impl Default for RecorderConfig {
    fn default() -> Self {
        RecorderConfig {
            window: Duration::from_millis(5),
            max_rows: 50_000,
            retry_every: Duration::from_secs(1),
            refused_retry_every: Duration::from_secs(30),
            queue_bytes: 64 << 20,
        }
    }
}

/// What the recorder has done so far; shared with whoever watches it.
#[derive(Debug, Default)]
pub struct RecorderStats {
    /// Events taken from the engine's tap: everything the engine published.
    pub received: AtomicU64,
    /// Events in the store (written, or found already there on a retry).
    pub stored: AtomicU64,
    /// Events appended to the spill file.
    pub spilled: AtomicU64,
    /// Events written to the store from the spill file.
    pub backfilled: AtomicU64,
    /// Events dropped because the store, the memory queue and the spill file were all
    /// unavailable or full. Each is covered by a gap row.
    pub lost: AtomicU64,
    /// Gap rows stored: one per (instrument, channel) per stretch of loss.
    pub gaps: AtomicU64,
    /// Batches written to the store (gap batches included).
    pub batches: AtomicU64,
    /// Store failures seen.
    pub failures: AtomicU64,
    /// False while the store is failing (batches wait in the queue).
    pub store_up: AtomicBool,
    /// True while its last failure was a refusal that does not pass by itself
    /// ([`crate::store::StoreError::is_transient`] false): recording is down until
    /// someone acts.
    pub refused: AtomicBool,
    /// Bytes of batches waiting in memory.
    pub memory_bytes: AtomicU64,
    /// Bytes of batches waiting in the spill file.
    pub spill_bytes: AtomicU64,
    /// Bytes of damaged spill records skipped (their events are lost, unrecorded).
    pub damaged_bytes: AtomicU64,
    /// Longest time from a batch's first event being published to its commit, ns (a
    /// backfilled batch's lag includes the outage it waited out).
    pub max_lag_ns: AtomicU64,
    /// Every committed batch's lag, as `max_lag_ns` measures it (written by the writer
    /// thread alone).
    pub commit_lag: Histogram,
}

/// A running recorder.
pub struct Recorder {
    intake: JoinHandle<()>,
    writer: JoinHandle<()>,
    written: Receiver<()>,
    queue: Arc<Queue>,
    stats: Arc<RecorderStats>,
    run: u64,
    committed: watch::Receiver<u64>,
}

impl Recorder {
    /// Starts recording what arrives on `input` (an engine tap) into `store`, with
    /// `spill` for when it fails. `run` identifies this server run in the store.
    pub fn start(
        config: RecorderConfig,
        store: Box<dyn Store>,
        spill: Spill,
        registry: InstrumentRegistry,
        input: Receiver<Arc<Tapped>>,
        run: u64,
        clock: Arc<dyn Clock>,
    ) -> std::io::Result<Recorder> {
        let stats = Arc::new(RecorderStats::default());
        stats.store_up.store(true, Ordering::Relaxed);
        if !spill.is_empty() {
            tracing::warn!(
                batches = spill.batches(),
                path = %spill.path().display(),
                "the spill file holds batches from an earlier run; backfilling"
            );
        }
        let queue = Arc::new(Queue::new(spill, config.queue_bytes, stats.clone()));
        let (done, written) = crossbeam_channel::bounded(1);
        let (commits, committed) = watch::channel(0);
        let writer = {
            let (queue, stats, retry) = (queue.clone(), stats.clone(), config.clone());
            std::thread::Builder::new()
                .name("raven-writer".into())
                .spawn(move || {
                    write(store, &queue, &stats, &commits, &*clock, &retry);
                    let _ = done.send(());
                })?
        };
        let intake = {
            let (queue, stats) = (queue.clone(), stats.clone());
            std::thread::Builder::new()
                .name("raven-recorder".into())
                .spawn(move || intake(&config, &queue, &stats, &registry, &input, run))?
        };
        Ok(Recorder {
            intake,
            writer,
            written,
            queue,
            stats,
            run,
            committed,
        })
    }

    /// This server run's id in the store.
    pub fn run(&self) -> u64 {
        self.run
    }

    /// The count of batches committed to the store, which moves after every commit: the
    /// watermark readers wait on for what they know was published.
    pub fn committed(&self) -> watch::Receiver<u64> {
        self.committed.clone()
    }

    /// The shared counters.
    pub fn stats(&self) -> Arc<RecorderStats> {
        self.stats.clone()
    }

    /// Waits for the last batch: the intake ends once every sender of its input (the
    /// engine's shards) is gone, then the writer stores what waits, for at most
    /// `budget`. What it has not stored by then goes to the spill file, to be backfilled
    /// at the next start, and this returns even if the writer is stuck in the store.
    pub fn finish(self, budget: Duration) {
        if self.intake.join().is_err() {
            tracing::error!("the recorder's intake thread panicked");
            self.queue.close();
        }
        match self.written.recv_timeout(budget) {
            Ok(()) | Err(RecvTimeoutError::Disconnected) => {
                if self.writer.join().is_err() {
                    tracing::error!("the recorder's writer thread panicked");
                    self.queue.spill_everything(true);
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                let lost = self.queue.spill_everything(true);
                tracing::error!(
                    budget_ms = budget.as_millis() as u64,
                    lost,
                    spilled_batches = self.queue.spilled_batches(),
                    "the store did not take the last batches in time; they wait in the spill file for the next start"
                );
            }
        }
        log_totals(&self.stats);
        let spilled = self.queue.spilled_batches();
        if spilled > 0 {
            tracing::warn!(
                batches = spilled,
                "batches wait in the spill file; they are backfilled at the next start"
            );
        }
    }
}

/// The recorder's totals, in one line that scripts read.
fn log_totals(stats: &RecorderStats) {
    let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
    tracing::info!(
        received = load(&stats.received),
        stored = load(&stats.stored),
        batches = load(&stats.batches),
        spilled = load(&stats.spilled),
        backfilled = load(&stats.backfilled),
        lost = load(&stats.lost),
        gaps = load(&stats.gaps),
        damaged_bytes = load(&stats.damaged_bytes),
        max_lag_ms = load(&stats.max_lag_ns) as f64 / 1e6,
        mean_lag_ms = stats.commit_lag.sum_ns() as f64
            / 1e6
            / stats.commit_lag.buckets().iter().sum::<u64>().max(1) as f64,
        "recorder stopped"
    );
}

/// The longest the intake sleeps with a batch open before it looks at the tap: the tap
/// holds `TAP_BATCHES` (4,096) engine batches, so the engine waits on it only past
/// ~800k engine batches a second, far beyond any feed's frames.
const INTAKE_NAP: Duration = Duration::from_millis(5);

/// The intake thread: engine events into batches into the queue. It wakes for the first
/// event of a batch, then sleeps until the batch is due and takes everything the tap
/// holds, rather than waking for every engine batch (a thread wake-up per engine batch
/// was a large part of an idle server's recording cost).
fn intake(
    config: &RecorderConfig,
    queue: &Queue,
    stats: &RecorderStats,
    registry: &InstrumentRegistry,
    input: &Receiver<Arc<Tapped>>,
    run: u64,
) {
    let mut filling = Filling {
        config,
        queue,
        stats,
        registry,
        run,
        number: 0,
        batch: Batch::new(run, 0),
        due: None,
    };
    let mut open = true;
    while open {
        match filling.due {
            Some(at) => {
                let now = Instant::now();
                if at > now {
                    std::thread::sleep((at - now).min(INTAKE_NAP));
                }
                loop {
                    match input.try_recv() {
                        Ok(tapped) => filling.take(&tapped),
                        Err(TryRecvError::Empty) => break,
                        Err(TryRecvError::Disconnected) => {
                            open = false;
                            break;
                        }
                    }
                }
            }
            None => match input.recv() {
                Ok(tapped) => filling.take(&tapped),
                Err(_) => open = false,
            },
        }
        if filling.due.is_some_and(|d| Instant::now() >= d) {
            filling.push();
        }
    }
    // The engine has stopped: queue what is left.
    if !filling.batch.is_empty() {
        filling.push();
    }
    queue.close();
}

/// The batch the intake fills, and where it goes when full or due.
struct Filling<'a> {
    config: &'a RecorderConfig,
    queue: &'a Queue,
    stats: &'a RecorderStats,
    registry: &'a InstrumentRegistry,
    run: u64,
    number: u64,
    batch: Batch,
    /// When the batch must be queued: its first event's arrival plus the window.
    due: Option<Instant>,
}

impl Filling<'_> {
    /// Adds an engine batch's rows, queueing each batch that reaches `max_rows`.
    fn take(&mut self, tapped: &Tapped) {
        let max_rows = self.config.max_rows.clamp(1, MAX_BATCH_ROWS);
        let rows = tapped.rows().len();
        self.stats
            .received
            .fetch_add(rows as u64, Ordering::Relaxed);
        let registry = self.registry;
        let name = |id| {
            registry
                .name(id)
                .expect("the engine taps only instruments it found in the registry")
        };
        let mut taken = 0;
        while taken < rows {
            let n = (max_rows - self.batch.len()).min(rows - taken);
            self.batch.extend(tapped, taken..taken + n, name);
            taken += n;
            if self.batch.len() >= max_rows {
                self.push();
            }
        }
        if !self.batch.is_empty() && self.due.is_none() {
            self.due = Some(Instant::now() + self.config.window);
        }
    }

    /// Queues the batch and starts the next.
    fn push(&mut self) {
        self.number += 1;
        let next = Batch::new(self.run, self.number);
        self.queue.push(std::mem::replace(&mut self.batch, next));
        self.due = None;
    }
}

/// The writer thread: the queue into the store, retrying while it fails.
fn write(
    mut store: Box<dyn Store>,
    queue: &Queue,
    stats: &RecorderStats,
    commits: &watch::Sender<u64>,
    clock: &dyn Clock,
    retry: &RecorderConfig,
) {
    let retry_every = retry.retry_every;
    let mut up = true;
    // Batches waited (a failure, or a spill file from an earlier run) and not all are
    // stored yet: said once they are, so an operator knows the store caught up.
    let mut behind = !queue.is_drained();
    loop {
        let batch = match queue.next() {
            Next::Batch(batch) => batch,
            Next::Drained | Next::Abandoned => return,
            Next::Unreadable(e) => {
                tracing::error!(error = %e, "cannot read the spill file; retrying");
                if queue.closed_by(Instant::now() + retry_every) {
                    queue.spill_everything(false);
                    return;
                }
                continue;
            }
        };
        let result = if up {
            store.write(&batch)
        } else {
            store.reconnect().and_then(|()| store.write(&batch))
        };
        match result {
            Ok(()) => {
                if !up {
                    up = true;
                    stats.store_up.store(true, Ordering::Relaxed);
                    stats.refused.store(false, Ordering::Relaxed);
                    tracing::info!(store = %store.describe(), "store back; backfilling what waited");
                }
                note_lag(stats, clock, &batch);
                commits.send_modify(|n| *n += 1);
                if !queue.written() {
                    return;
                }
                if behind && queue.is_drained() {
                    behind = false;
                    tracing::info!(
                        stored = stats.stored.load(Ordering::Relaxed),
                        backfilled = stats.backfilled.load(Ordering::Relaxed),
                        "caught up: every batch that waited is stored"
                    );
                }
            }
            Err(error) => {
                behind = true;
                stats.failures.fetch_add(1, Ordering::Relaxed);
                let transient = error.is_transient();
                stats.refused.store(!transient, Ordering::Relaxed);
                let wait = if transient {
                    retry_every
                } else {
                    retry.refused_retry_every
                };
                if !transient {
                    // Not something that passes: said every time, at error level, so
                    // that it is never a quiet retry loop.
                    tracing::error!(
                        store = %store.describe(),
                        %error,
                        retry_secs = wait.as_secs(),
                        "recording is down: the store refused the batch and will until someone acts; live streaming goes on, batches wait in memory, then in the spill file"
                    );
                } else if up {
                    tracing::warn!(store = %store.describe(), %error, "store failed; batches wait in memory, then in the spill file");
                } else {
                    tracing::debug!(%error, "store still failing");
                }
                if up {
                    up = false;
                    stats.store_up.store(false, Ordering::Relaxed);
                }
                // While the store is down, shutdown is the one reason not to wait.
                if queue.closed_by(Instant::now() + wait) {
                    // One last try, then everything waits in the spill file.
                    let last = store.reconnect().and_then(|()| store.write(&batch));
                    if last.is_ok() {
                        up = true;
                        stats.store_up.store(true, Ordering::Relaxed);
                        stats.refused.store(false, Ordering::Relaxed);
                        if !queue.written() {
                            return;
                        }
                        continue;
                    }
                    queue.spill_everything(false);
                    return;
                }
            }
        }
    }
}

/// Records how long `batch`'s first event waited to be stored.
fn note_lag(stats: &RecorderStats, clock: &dyn Clock, batch: &Batch) {
    let Some(first) = batch.rows().next() else {
        return;
    };
    let lag = clock.now().0.saturating_sub(first.publish_time);
    stats.max_lag_ns.fetch_max(lag, Ordering::Relaxed);
    stats.commit_lag.record(lag);
}
