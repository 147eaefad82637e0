//! The recorder's queue: batches between the intake, which takes the engine's output
//! and must never wait on the store, and the writer, which must lose none of them.
//!
//! Batches wait in three places, in this order: the one the writer has in hand (until
//! the store has it), the spill file (oldest), then memory (newest). A new batch goes to
//! memory; when memory is over its bound, its oldest batches move to the spill file's
//! end, which keeps the order. When the spill file's reservation is full too, the new
//! batch is dropped and the [`Ledger`] records it; the next batch that is kept ends the
//! stretch, and its gap batch goes to the spill file's headroom, kept for it, so that a
//! crash does not lose the record of the loss (to memory, past the bound, if even that
//! fails: it is small).
//!
//! Write order decides nothing a reader sees: a row's place in the store is its batch
//! number, so a gap batch written after later batches still reads back where its events
//! were. It only has to be complete, which the store's per-batch dedupe makes safe to
//! retry.
//!
//! A plain `std::sync::Mutex`: it is never held across a store call, only across memory
//! moves and spill-file reads and appends (page cache), and both sides are threads.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use super::RecorderStats;
use super::ledger::Ledger;
use crate::store::spill::{Kind, Spill, SpillError};
use crate::store::{Batch, StoreError};

/// A batch waiting, and what it holds.
struct Entry {
    batch: Arc<Batch>,
    kind: Kind,
}

/// The batch the writer has in hand.
struct InFlight {
    entry: Entry,
    /// It was read from the spill file, where it stays (the oldest there) until it is
    /// stored.
    from_spill: bool,
}

struct Pending {
    in_flight: Option<InFlight>,
    spill: Spill,
    memory: VecDeque<Entry>,
    memory_bytes: u64,
    memory_limit: u64,
    ledger: Ledger,
    /// The intake has ended: no batch will be added.
    closed: bool,
    /// Shutdown moved everything to the spill file past its deadline; the writer, if it
    /// ever returns from the store, must change nothing.
    abandoned: bool,
}

/// The queue, shared by the intake and the writer.
pub(super) struct Queue {
    state: Mutex<Pending>,
    changed: Condvar,
    stats: Arc<RecorderStats>,
}

/// What the writer gets next.
pub(super) enum Next {
    /// Write this (again, until [`Queue::written`]).
    Batch(Arc<Batch>),
    /// Nothing waits and nothing will come.
    Drained,
    /// Shutdown took over.
    Abandoned,
    /// The spill file could not be read: pause, then ask again.
    Unreadable(StoreError),
}

fn weight(batch: &Batch) -> u64 {
    batch.memory() as u64
}

impl Queue {
    /// A queue holding what `spill` already holds, with `memory_limit` bytes of batches
    /// in memory before they spill.
    pub(super) fn new(spill: Spill, memory_limit: u64, stats: Arc<RecorderStats>) -> Queue {
        stats.spill_bytes.store(spill.used(), Ordering::Relaxed);
        Queue {
            state: Mutex::new(Pending {
                in_flight: None,
                spill,
                memory: VecDeque::new(),
                memory_bytes: 0,
                memory_limit,
                ledger: Ledger::default(),
                closed: false,
                abandoned: false,
            }),
            changed: Condvar::new(),
            stats,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Pending> {
        // A panic elsewhere leaves the queue consistent between calls: keep going.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a batch of events (intake). Never waits for the store.
    pub(super) fn push(&self, batch: Batch) {
        let mut state = self.lock();
        if state.abandoned {
            return;
        }
        let rows = batch.len() as u64;
        match state.admit(batch, &self.stats) {
            Ok(()) => {
                if let Some(gaps) = state.ledger.close() {
                    state.push_gaps(gaps, &self.stats);
                }
            }
            Err(batch) => {
                self.stats.lost.fetch_add(rows, Ordering::Relaxed);
                let first = state.ledger.events() == 0;
                state.ledger.record(&batch);
                if first {
                    tracing::error!(
                        memory_mb = state.memory_bytes >> 20,
                        spill_mb = state.spill.used() >> 20,
                        "the store is failing and the queue and spill file are full: events are being lost, and recorded as gaps"
                    );
                }
            }
        }
        self.publish_sizes(&state);
        drop(state);
        self.changed.notify_all();
    }

    /// The intake has ended (intake); a loss stretch still open is closed.
    pub(super) fn close(&self) {
        let mut state = self.lock();
        if let Some(gaps) = state.ledger.close() {
            state.push_gaps(gaps, &self.stats);
        }
        state.closed = true;
        drop(state);
        self.changed.notify_all();
    }

    /// The batch to write next (writer), waiting for one. The same batch comes back
    /// until [`Queue::written`] says it is stored.
    pub(super) fn next(&self) -> Next {
        let mut state = self.lock();
        loop {
            if state.abandoned {
                return Next::Abandoned;
            }
            if let Some(in_flight) = &state.in_flight {
                return Next::Batch(in_flight.entry.batch.clone());
            }
            if !state.spill.is_empty() {
                match state.spill.read_next() {
                    Ok(Some((batch, kind))) => {
                        state.in_flight = Some(InFlight {
                            entry: Entry {
                                batch: Arc::new(batch),
                                kind,
                            },
                            from_spill: true,
                        });
                        self.stats
                            .damaged_bytes
                            .store(state.spill.damage().bytes, Ordering::Relaxed);
                        continue;
                    }
                    // Only damage was left: the file can start over.
                    Ok(None) => {
                        if let Err(e) = state.spill.reclaim() {
                            tracing::warn!(error = %e, "cannot start the spill file over");
                        }
                    }
                    // The records stay where they are; the writer pauses and asks again.
                    Err(e) => return Next::Unreadable(e),
                }
            }
            if let Some(entry) = state.memory.pop_front() {
                state.memory_bytes -= weight(&entry.batch);
                state.in_flight = Some(InFlight {
                    entry,
                    from_spill: false,
                });
                self.publish_sizes(&state);
                continue;
            }
            if state.closed {
                return Next::Drained;
            }
            state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// The batch from [`Queue::next`] is in the store (writer). False when shutdown
    /// took over meanwhile.
    pub(super) fn written(&self) -> bool {
        let mut state = self.lock();
        if state.abandoned {
            return false;
        }
        if let Some(done) = state.in_flight.take() {
            let rows = done.entry.batch.len() as u64;
            match done.entry.kind {
                Kind::Events => {
                    self.stats.stored.fetch_add(rows, Ordering::Relaxed);
                    if done.from_spill {
                        self.stats.backfilled.fetch_add(rows, Ordering::Relaxed);
                    }
                }
                Kind::Gaps => {
                    self.stats.gaps.fetch_add(rows, Ordering::Relaxed);
                }
            }
            self.stats.batches.fetch_add(1, Ordering::Relaxed);
            if done.from_spill {
                state.spill.release();
            }
            if done.from_spill && state.spill.is_empty() {
                match state.spill.reclaim() {
                    Ok(()) => tracing::info!(
                        backfilled = self.stats.backfilled.load(Ordering::Relaxed),
                        "spill file backfilled; it is empty again"
                    ),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot start the spill file over; it stays as it is");
                    }
                }
            }
            self.publish_sizes(&state);
        }
        true
    }

    /// Waits until `until`, or until the intake closes; true when it has (writer, while
    /// the store is down).
    pub(super) fn closed_by(&self, until: Instant) -> bool {
        let mut state = self.lock();
        while !state.closed && !state.abandoned {
            let now = Instant::now();
            if now >= until {
                return false;
            }
            state = self
                .changed
                .wait_timeout(state, until - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }

    /// Moves everything still waiting into the spill file for the next start: at
    /// shutdown, when the store is down (writer) or past the deadline (`abandon`: the
    /// writer may be stuck in the store and must change nothing after this). Returns the
    /// events that did not fit and are lost.
    pub(super) fn spill_everything(&self, abandon: bool) -> u64 {
        let mut state = self.lock();
        if state.abandoned {
            return 0;
        }
        state.abandoned = abandon;
        // A batch in hand from the spill file is still its oldest there.
        let mut waiting: Vec<Entry> = state
            .in_flight
            .take()
            .filter(|f| !f.from_spill)
            .map(|f| f.entry)
            .into_iter()
            .collect();
        waiting.extend(state.memory.drain(..));
        state.memory_bytes = 0;
        let mut lost = 0;
        for entry in waiting {
            match state.spill.append(&entry.batch, entry.kind) {
                Ok(()) => {
                    if entry.kind == Kind::Events {
                        self.stats
                            .spilled
                            .fetch_add(entry.batch.len() as u64, Ordering::Relaxed);
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, rows = entry.batch.len(), "at shutdown a batch fits neither the store nor the spill file; it is lost");
                    if entry.kind == Kind::Events {
                        lost += entry.batch.len() as u64;
                    }
                }
            }
        }
        self.stats.lost.fetch_add(lost, Ordering::Relaxed);
        self.publish_sizes(&state);
        drop(state);
        self.changed.notify_all();
        lost
    }

    /// Nothing waits: no batch in hand, in the spill file or in memory.
    pub(super) fn is_drained(&self) -> bool {
        let state = self.lock();
        state.in_flight.is_none() && state.spill.is_empty() && state.memory.is_empty()
    }

    /// Batches waiting in the spill file.
    pub(super) fn spilled_batches(&self) -> u64 {
        self.lock().spill.batches()
    }

    fn publish_sizes(&self, state: &Pending) {
        self.stats
            .memory_bytes
            .store(state.memory_bytes, Ordering::Relaxed);
        self.stats
            .spill_bytes
            .store(state.spill.used(), Ordering::Relaxed);
    }
}

impl Pending {
    /// Keeps `batch` (in memory, moving older batches to the spill file if memory is
    /// over its bound), or hands it back when there is no room anywhere.
    fn admit(&mut self, batch: Batch, stats: &RecorderStats) -> Result<(), Batch> {
        let size = weight(&batch);
        while !self.memory.is_empty() && self.memory_bytes + size > self.memory_limit {
            let Some(oldest) = self.memory.front() else {
                break;
            };
            match self.spill.append(&oldest.batch, oldest.kind) {
                Ok(()) => {
                    let oldest = self.memory.pop_front().expect("the front was just read");
                    self.memory_bytes -= weight(&oldest.batch);
                    if oldest.kind == Kind::Events {
                        stats
                            .spilled
                            .fetch_add(oldest.batch.len() as u64, Ordering::Relaxed);
                    }
                }
                Err(SpillError::Full { .. }) => return Err(batch),
                Err(e @ SpillError::Io(_)) => {
                    tracing::error!(error = %e, "cannot spill; the newest batch is dropped");
                    return Err(batch);
                }
            }
        }
        self.memory_bytes += size;
        self.memory.push_back(Entry {
            batch: Arc::new(batch),
            kind: Kind::Events,
        });
        Ok(())
    }

    /// Queues a gap batch: the spill file's headroom, or memory, whatever the bound
    /// (it is a row per instrument and channel that lost events).
    fn push_gaps(&mut self, gaps: Batch, stats: &RecorderStats) {
        tracing::warn!(
            rows = gaps.len(),
            lost = stats.lost.load(Ordering::Relaxed),
            "recording resumed; the lost events are recorded as gaps"
        );
        match self.spill.append(&gaps, Kind::Gaps) {
            Ok(()) => return,
            Err(e) => {
                tracing::error!(error = %e, "cannot spill the gap rows; they wait in memory");
            }
        }
        self.memory_bytes += weight(&gaps);
        self.memory.push_back(Entry {
            batch: Arc::new(gaps),
            kind: Kind::Gaps,
        });
    }
}
