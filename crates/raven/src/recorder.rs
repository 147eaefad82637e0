//! The recorder: a lossless consumer of every event the engine publishes (an engine tap:
//! the engine waits for it rather than drop, and it is never conflated). It batches by
//! time window (default 5 ms from a batch's first event) or row count, whichever comes
//! first, and writes each batch in one transaction.
//!
//! When the store fails, live streaming goes on: batches are appended to the spill file
//! instead, in order, and the store is retried every `retry_every`; once it answers, the
//! spill file is backfilled into it in order before any newer batch, then emptied. A
//! batch whose commit was not acknowledged is retried, and the store skips it if it had
//! landed (see `store::Store::write`), so nothing is stored twice. A spill file left by
//! a crash is backfilled at the next start.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use raven_model::{Event, InstrumentRegistry};

use crate::clock::{Clock, SystemClock};
use crate::store::spill::Spill;
use crate::store::{Batch, MAX_BATCH_ROWS, Store, StoreError};

/// Recorder settings.
#[derive(Debug, Clone)]
pub struct RecorderConfig {
    /// A batch is written this long after its first event at the latest.
    pub window: Duration,
    /// ...or as soon as it holds this many events.
    pub max_rows: usize,
    /// How often a failed store is tried again.
    pub retry_every: Duration,
}

impl Default for RecorderConfig {
    fn default() -> Self {
        RecorderConfig {
            window: Duration::from_millis(5),
            max_rows: 50_000,
            retry_every: Duration::from_secs(1),
        }
    }
}

/// What the recorder has done so far; shared with whoever watches it.
#[derive(Debug, Default)]
pub struct RecorderStats {
    /// Events taken from the engine's tap: everything the engine published.
    pub received: AtomicU64,
    /// Events handed to the store (or found already there on a retry).
    pub stored: AtomicU64,
    /// Events appended to the spill file.
    pub spilled: AtomicU64,
    /// Events taken from the spill file into the store.
    pub backfilled: AtomicU64,
    /// Batches written to the store.
    pub batches: AtomicU64,
    /// Store failures seen.
    pub failures: AtomicU64,
    /// False while the store is failing (batches go to the spill file).
    pub store_up: AtomicBool,
    /// Longest time from a batch's first event being published to its commit, ns.
    pub max_lag_ns: AtomicU64,
    /// The same summed over every batch written directly, ns (mean: divide by `batches`).
    pub total_lag_ns: AtomicU64,
}

/// A running recorder thread.
pub struct Recorder {
    thread: JoinHandle<()>,
    stats: Arc<RecorderStats>,
    run: u64,
}

impl Recorder {
    /// Starts recording what arrives on `input` (an engine tap) into `store`, spilling to
    /// `spill` when it fails. `run` identifies this server run in the store.
    pub fn start(
        config: RecorderConfig,
        store: Box<dyn Store>,
        spill: Spill,
        registry: InstrumentRegistry,
        input: Receiver<Arc<[Event]>>,
        run: u64,
    ) -> std::io::Result<Recorder> {
        let stats = Arc::new(RecorderStats::default());
        stats.store_up.store(true, Ordering::Relaxed);
        let mut sink = Sink {
            store,
            spill,
            spilling: false,
            retry_at: Instant::now(),
            retry_every: config.retry_every,
            stats: stats.clone(),
            confirmed: 0,
        };
        if sink.spill.batches() > 0 {
            tracing::warn!(
                batches = sink.spill.batches(),
                path = %sink.spill.path().display(),
                "the spill file holds batches from an earlier run; backfilling"
            );
            sink.spilling = true;
        }
        let thread = std::thread::Builder::new()
            .name("raven-recorder".into())
            .spawn(move || record(config, sink, &registry, &input, run))?;
        Ok(Recorder { thread, stats, run })
    }

    /// This server run's id in the store.
    pub fn run(&self) -> u64 {
        self.run
    }

    /// The shared counters.
    pub fn stats(&self) -> Arc<RecorderStats> {
        self.stats.clone()
    }

    /// Waits until the recorder has written its last batch: it ends once every sender of
    /// its input (the engine's shards) is gone.
    pub fn join(self) {
        if self.thread.join().is_err() {
            tracing::error!("the recorder thread panicked");
        }
    }
}

fn record(
    config: RecorderConfig,
    mut sink: Sink,
    registry: &InstrumentRegistry,
    input: &Receiver<Arc<[Event]>>,
    run: u64,
) {
    let max_rows = config.max_rows.clamp(1, MAX_BATCH_ROWS);
    let mut number = 0;
    let mut batch = Batch::new(run, number);
    let mut due: Option<Instant> = None;
    loop {
        if sink.spilling && Instant::now() >= sink.retry_at {
            sink.recover();
        }
        let wake = match (due, sink.spilling) {
            (Some(d), true) => Some(d.min(sink.retry_at)),
            (Some(d), false) => Some(d),
            (None, true) => Some(sink.retry_at),
            (None, false) => None,
        };
        let received = match wake {
            Some(at) => input.recv_deadline(at),
            None => input.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match received {
            Ok(events) => {
                sink.stats
                    .received
                    .fetch_add(events.len() as u64, Ordering::Relaxed);
                for event in events.iter() {
                    let name = registry.name(event.instrument);
                    let name = name.as_ref().map_or("", |n| n.as_str());
                    batch.push(name, event);
                    if batch.len() >= max_rows {
                        number += 1;
                        sink.write(std::mem::replace(&mut batch, Batch::new(run, number)));
                        due = None;
                    }
                }
                if !batch.is_empty() && due.is_none() {
                    due = Some(Instant::now() + config.window);
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        if due.is_some_and(|d| Instant::now() >= d) {
            number += 1;
            sink.write(std::mem::replace(&mut batch, Batch::new(run, number)));
            due = None;
        }
    }
    // The engine has stopped: write what is left, and try once more to empty the spill.
    if !batch.is_empty() {
        sink.write(batch);
    }
    if sink.spilling {
        sink.recover();
    }
    let stats = &sink.stats;
    tracing::info!(
        received = stats.received.load(Ordering::Relaxed),
        stored = stats.stored.load(Ordering::Relaxed),
        batches = stats.batches.load(Ordering::Relaxed),
        spilled = stats.spilled.load(Ordering::Relaxed),
        backfilled = stats.backfilled.load(Ordering::Relaxed),
        max_lag_ms = stats.max_lag_ns.load(Ordering::Relaxed) as f64 / 1e6,
        mean_lag_ms = stats.total_lag_ns.load(Ordering::Relaxed) as f64
            / 1e6
            / stats.batches.load(Ordering::Relaxed).max(1) as f64,
        "recorder stopped"
    );
    if sink.spilling {
        tracing::error!(
            batches = sink.spill.batches(),
            path = %sink.spill.path().display(),
            "the store is still failing at shutdown; events stay in the spill file and are backfilled at the next start"
        );
    }
}

/// The store, and the spill file for when it fails.
struct Sink {
    store: Box<dyn Store>,
    spill: Spill,
    spilling: bool,
    retry_at: Instant,
    retry_every: Duration,
    stats: Arc<RecorderStats>,
    /// Batches at the start of the spill file already in the store (a backfill that
    /// failed part way), so a retry neither rewrites nor recounts them.
    confirmed: u64,
}

impl Sink {
    fn write(&mut self, batch: Batch) {
        if !self.spilling {
            match self.store.write(&batch) {
                Ok(()) => {
                    let first = batch.rows().next().and_then(Result::ok);
                    if let Some(row) = first {
                        let lag = SystemClock.now().0.saturating_sub(row.publish_time);
                        self.stats.max_lag_ns.fetch_max(lag, Ordering::Relaxed);
                        self.stats.total_lag_ns.fetch_add(lag, Ordering::Relaxed);
                    }
                    self.stats
                        .stored
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    self.stats.batches.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Err(e) => self.failed(&e),
            }
        }
        // Spilling keeps order: nothing newer reaches the store before the spill does.
        match self.spill.append(&batch) {
            Ok(()) => {
                self.stats
                    .spilled
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
            }
            Err(e) => {
                // Neither the store nor the disk takes it: nothing else can be done with
                // the batch, and saying so loudly is all that is left.
                tracing::error!(error = %e, rows = batch.len(), "cannot spill a batch; it is lost");
            }
        }
    }

    fn failed(&mut self, error: &StoreError) {
        if !self.spilling {
            tracing::warn!(store = %self.store.describe(), %error, "store failed; spilling to {}", self.spill.path().display());
        }
        self.stats.failures.fetch_add(1, Ordering::Relaxed);
        self.stats.store_up.store(false, Ordering::Relaxed);
        self.spilling = true;
        self.retry_at = Instant::now() + self.retry_every;
    }

    /// Reconnects and backfills the spill file; on success, direct writes resume.
    fn recover(&mut self) {
        let result = self.store.reconnect().and_then(|()| {
            let (store, stats, confirmed) = (&mut self.store, &self.stats, &mut self.confirmed);
            let mut index = 0;
            self.spill.replay(|batch| {
                index += 1;
                if index <= *confirmed {
                    // Stored by an earlier, interrupted backfill.
                    return Ok(());
                }
                store.write(&batch)?;
                *confirmed += 1;
                stats
                    .backfilled
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                stats
                    .stored
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                stats.batches.fetch_add(1, Ordering::Relaxed);
                Ok(())
            })
        });
        match result.and_then(|()| self.spill.clear()) {
            Ok(()) => {
                tracing::info!(store = %self.store.describe(), "store back; spill file backfilled");
                self.confirmed = 0;
                self.spilling = false;
                self.stats.store_up.store(true, Ordering::Relaxed);
            }
            Err(e) => {
                self.stats.failures.fetch_add(1, Ordering::Relaxed);
                self.retry_at = Instant::now() + self.retry_every;
                tracing::debug!(error = %e, "store still failing");
            }
        }
    }
}
