//! The engine's two handles: [`EngineInput`] for feeds (batches split by owning shard,
//! blocking or handed back when a shard is full, so nothing accepted is dropped) and
//! [`EngineCommands`] for the API (commands refused as busy, or waited for in bounded
//! time, rather than queued without limit; tops of book read without asking a shard).

use std::time::Duration;

use crossbeam_channel::{Sender, TrySendError};
use raven_book::top::TopOfBook;
use raven_model::{FeedEvent, InstrumentId};

use super::{Command, EngineError, Input, Replicated, TopDirectory};

/// The first pause of a request waiting for room in a command queue, doubled up to
/// [`COMMAND_PAUSE_MAX`].
const COMMAND_PAUSE_MIN: Duration = Duration::from_millis(1);
const COMMAND_PAUSE_MAX: Duration = Duration::from_millis(20);

/// The feed side: sends batches to the owning shards, blocking when they are behind.
#[derive(Clone)]
pub struct EngineInput {
    pub(super) shards: Vec<Sender<Input>>,
}

/// What [`EngineInput::offer`] did with a batch.
#[derive(Debug)]
pub enum Offered {
    /// Every shard took its part.
    Taken,
    /// The events of the shards that were full, to send once they have room.
    Full(Vec<FeedEvent>),
    /// The engine has stopped.
    Stopped,
}

/// The API side: routes commands to the owning shard without blocking, and reads tops
/// of book without asking a shard.
#[derive(Clone)]
pub struct EngineCommands {
    pub(super) shards: Vec<Sender<Command>>,
    pub(super) tops: TopDirectory,
    pub(super) wait: Duration,
}

impl EngineInput {
    fn shard_of(&self, instrument: InstrumentId) -> usize {
        instrument.index() % self.shards.len()
    }

    /// `batch` split by owning shard: each shard's index and its non-empty part, in order.
    fn parts(&self, batch: Vec<FeedEvent>) -> impl Iterator<Item = (usize, Vec<FeedEvent>)> {
        let split = if self.shards.len() == 1 {
            vec![batch]
        } else {
            let mut split: Vec<Vec<FeedEvent>> = vec![Vec::new(); self.shards.len()];
            for e in batch {
                split[self.shard_of(e.instrument)].push(e);
            }
            split
        };
        split.into_iter().enumerate().filter(|(_, b)| !b.is_empty())
    }

    /// Sends a batch, split by owning shard. Blocks while a shard is full; returns false
    /// once the engine has stopped.
    pub fn send(&self, batch: Vec<FeedEvent>) -> bool {
        self.parts(batch)
            .all(|(i, b)| self.shards[i].send(Input::Feed(b)).is_ok())
    }

    /// Sends a batch, split by owning shard, where the shards have room: never blocks,
    /// so an async caller needs no blocking thread for the usual case. What full shards
    /// could not take comes back, in order, for [`EngineInput::send`].
    pub fn offer(&self, batch: Vec<FeedEvent>) -> Offered {
        let mut rest = Vec::new();
        for (i, part) in self.parts(batch) {
            match self.shards[i].try_send(Input::Feed(part)) {
                Ok(()) => {}
                Err(TrySendError::Full(Input::Feed(part))) => rest.extend(part),
                Err(_) => return Offered::Stopped,
            }
        }
        if rest.is_empty() {
            Offered::Taken
        } else {
            Offered::Full(rest)
        }
    }

    /// Sends what an edge read of the ingest node's shard `origin` to the shard that
    /// replicates it (`origin % shards`), unless that shard is behind (`Full`: it is
    /// handed back) or the engine has stopped. Never blocks: the edge's reader waits on
    /// its own runtime instead, where it keeps answering NATS.
    pub fn try_replicate(
        &self,
        origin: u32,
        replicated: Replicated,
    ) -> Result<(), TrySendError<Replicated>> {
        let shard = &self.shards[origin as usize % self.shards.len()];
        shard
            .try_send(Input::Replica(replicated))
            .map_err(|e| match e {
                TrySendError::Full(Input::Replica(r)) => TrySendError::Full(r),
                TrySendError::Disconnected(Input::Replica(r)) => TrySendError::Disconnected(r),
                _ => unreachable!("sent a replica input"),
            })
    }

    /// How many shards there are.
    pub fn shards(&self) -> usize {
        self.shards.len()
    }
}

impl EngineCommands {
    /// Sends a command concerning `instrument` to its shard, refused at once when the
    /// shard's queue is full.
    pub fn send(&self, instrument: InstrumentId, command: Command) -> Result<(), EngineError> {
        self.shard(instrument)
            .try_send(command)
            .map_err(|e| match e {
                TrySendError::Full(_) => EngineError::Busy,
                TrySendError::Disconnected(_) => EngineError::Stopped,
            })
    }

    /// Sends a command for a client's request: when the shard's queue is full it waits
    /// for room (pausing its task, never the thread) up to the configured
    /// `command_wait`, and only then refuses it as busy. A burst of requests is absorbed;
    /// a shard that stays stuck still answers its clients in bounded time.
    pub async fn send_waiting(
        &self,
        instrument: InstrumentId,
        mut command: Command,
    ) -> Result<(), EngineError> {
        let shard = self.shard(instrument);
        let deadline = tokio::time::Instant::now() + self.wait;
        let mut pause = COMMAND_PAUSE_MIN;
        loop {
            match shard.try_send(command) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Disconnected(_)) => return Err(EngineError::Stopped),
                Err(TrySendError::Full(back)) => {
                    let now = tokio::time::Instant::now();
                    if now >= deadline {
                        return Err(EngineError::Busy);
                    }
                    command = back;
                    tokio::time::sleep_until((now + pause).min(deadline)).await;
                    pause = (pause * 2).min(COMMAND_PAUSE_MAX);
                }
            }
        }
    }

    fn shard(&self, instrument: InstrumentId) -> &Sender<Command> {
        let listed = {
            let tops = self.tops.read().unwrap_or_else(|p| p.into_inner());
            tops.get(&instrument).map(|listed| listed.shard as usize)
        };
        // An instrument no shard has seen yet goes where its feed's events will.
        &self.shards[listed.unwrap_or(instrument.index() % self.shards.len())]
    }

    /// The latest top of book of an instrument (its level, sequence and times as a
    /// depth-1 snapshot would give them), read without a round trip to its shard;
    /// `None` until its shard has seen it.
    pub fn top_of_book(&self, instrument: InstrumentId) -> Option<TopOfBook> {
        let tops = self.tops.read().unwrap_or_else(|p| p.into_inner());
        tops.get(&instrument).map(|listed| listed.top.read())
    }

    /// Asks shard `shard` to tap a checkpoint of each of its books.
    pub fn checkpoint(&self, shard: u32) -> Result<(), EngineError> {
        let shard = self
            .shards
            .get(shard as usize)
            .ok_or(EngineError::Stopped)?;
        shard.try_send(Command::Checkpoint).map_err(|e| match e {
            TrySendError::Full(_) => EngineError::Busy,
            TrySendError::Disconnected(_) => EngineError::Stopped,
        })
    }

    /// Sends `Detach` to every shard. Best effort: a shard that misses it drops the
    /// subscriber the next time it finds the mailbox closed.
    pub fn detach(&self, subscriber: u64) {
        for shard in &self.shards {
            let _ = shard.try_send(Command::Detach { subscriber });
        }
    }
}
