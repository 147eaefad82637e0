//! Fan-out: the per-subscriber side of delivery.
//!
//! The engine encodes each event once (see `raven_proto::wire`) and pushes the shared
//! bytes into the [`Mailbox`] of every subscriber of that (instrument, channel); the
//! output of several channels with exactly the same subscribers goes as one chunk (one
//! push per subscriber per batch for a client taking the trades of many instruments). A
//! mailbox is a bounded queue; the gRPC stream drains whatever is queued into one message.
//! Pushing is a short critical section and never waits for the client, so a stalled client
//! costs the publisher exactly what a fast one does.
//!
//! Delivery policy lives here: queue bounds, overflow, message size and the write budget
//! ([`FanoutConfig`]). Overflow is a policy, never unbounded memory:
//! - book channels conflate: the subscriber is marked for resync, further book events for
//!   that view are dropped, and the engine later sends a fresh snapshot marked `resync`;
//! - other channels follow [`LagPolicy`]: drop and report the number missed in a `Status`
//!   gap event, or disconnect the client.

mod budget;
mod mailbox;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use prost::Message;
use raven_model::{Channel, InstrumentId, InstrumentName};
use raven_proto::pb;
use serde::Deserialize;
use tokio::sync::watch;
use tokio::time::Instant;

pub use budget::WriteBudget;
pub use mailbox::{Delivered, Drained, Mailbox};

/// How a mailbox's entries are encoded: what its stream writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// `events` entries of a gRPC `StreamResponse` ([`raven_proto::wire`]).
    Protobuf,
    /// One JSON object an entry ([`raven_proto::json`]): a WebSocket text message each.
    Json,
}

impl Form {
    /// `event` as one entry of this form.
    pub fn encode(self, event: &pb::Event) -> Bytes {
        match self {
            Form::Protobuf => pb::StreamResponse {
                events: vec![event.clone()],
            }
            .encode_to_vec()
            .into(),
            Form::Json => Form::json(event),
        }
    }

    /// `event` as its JSON object's text (empty for what JSON does not show: a heartbeat
    /// acknowledgement).
    pub fn json(event: &pb::Event) -> Bytes {
        match raven_proto::json::event(event) {
            Ok(Some(object)) => object.to_string().into(),
            Ok(None) => Bytes::new(),
            // The server's own events always convert; say so rather than send nothing.
            Err(e) => {
                serde_json::json!({"type": "error", "code": "INTERNAL", "message": e.to_string()})
                    .to_string()
                    .into()
            }
        }
    }
}

/// What happens to a non-book subscription whose queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LagPolicy {
    /// Drop events; when the client catches up it gets a gap status with the count.
    Gap,
    /// End the client's stream with `RESOURCE_EXHAUSTED`.
    Disconnect,
}

/// How much one subscriber may have queued before its overflow policy applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueBound {
    /// Data events.
    pub events: usize,
    /// Their encoded bytes.
    pub bytes: usize,
}

/// Fan-out settings, resolved.
#[derive(Debug, Clone, Copy)]
pub struct FanoutConfig {
    /// Per-subscriber queue bound.
    pub queue: QueueBound,
    /// Overflow policy for non-book channels.
    pub trade_overflow: LagPolicy,
    /// Largest stream message in bytes.
    pub max_batch_bytes: usize,
    /// Stream message bytes over all clients, if limited: each client's messages are at
    /// most this over the subscriber count (see [`FanoutConfig::batch_bytes`]).
    pub batch_budget_bytes: Option<usize>,
    /// Stream writes per second over all clients on a busy machine, if limited.
    pub write_budget_per_s: Option<u64>,
    /// The most it rises to while the machine's CPUs have room ([`WriteBudget`]).
    pub write_budget_max_per_s: Option<u64>,
}

/// The smallest message a batch budget leaves a client (a message still takes at least
/// one queued entry, whatever its size).
const MIN_BATCH_BYTES: usize = 4096;

impl FanoutConfig {
    /// The largest message for one of `subscribers` clients. A client that falls behind
    /// has a message of this size in flight at each layer below the mailbox (the gRPC
    /// encoder's buffer, HTTP/2's), where no overflow policy reaches it; the batch budget
    /// shares a fixed amount among all clients, so a thousand lagging clients hold a
    /// thousandth each while a hundred keep messages large enough for their highest rates.
    pub fn batch_bytes(&self, subscribers: usize) -> usize {
        match self.batch_budget_bytes {
            Some(budget) => (budget / subscribers.max(1)).clamp(
                MIN_BATCH_BYTES.min(self.max_batch_bytes),
                self.max_batch_bytes,
            ),
            None => self.max_batch_bytes,
        }
    }
}

/// Where a pushed chunk belongs, for the overflow policy.
#[derive(Debug, Clone, Copy)]
pub struct Route<'a> {
    /// The instrument.
    pub instrument: InstrumentId,
    /// Its name (for gap reports).
    pub name: &'a InstrumentName,
    /// The channel.
    pub channel: Channel,
    /// Book view depth (0 = full); 0 for other channels.
    pub depth: u32,
}

/// Outcome of a push, for the publisher's bookkeeping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Queued.
    Queued,
    /// Dropped under the overflow policy; the subscriber stays.
    Dropped,
    /// Overflowed under the `disconnect` policy: the subscriber is being closed.
    Disconnected,
    /// The subscriber is gone (left, or disconnected for being slow): forget it.
    Closed,
}

/// Why a mailbox closed.
#[derive(Debug, Clone)]
pub enum Closed {
    /// The client went away.
    ClientLeft,
    /// The client could not keep up and the policy is to disconnect.
    TooSlow {
        /// Events queued when it overflowed.
        queued: usize,
    },
    /// A request was refused; the stream ends with this status.
    Refused(tonic::Status),
}

/// Why subscriber streams ended, counted as they are removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Disconnects {
    /// The client went away.
    pub client_left: u64,
    /// The client could not keep up under the `disconnect` policy.
    pub too_slow: u64,
    /// The server ended it with a status (a refused request, a shutdown).
    pub refused: u64,
}

/// Server-wide view of the subscribers, for stats and tests.
#[derive(Default)]
pub struct Fanout {
    next_id: AtomicU64,
    mailboxes: Mutex<HashMap<u64, Arc<Mailbox>>>,
    count: watch::Sender<usize>,
    resyncs: AtomicU64,
    lagged: AtomicU64,
    /// Subscriptions held over all streams (each stream's session keeps it).
    subscriptions: AtomicUsize,
    /// Deliveries of the streams that ended, and why they ended.
    retired: Mutex<(Delivered, Disconnects)>,
    budget: Arc<WriteBudget>,
}

impl Fanout {
    /// No subscribers yet, sharing `budget`.
    pub fn with_budget(budget: WriteBudget) -> Fanout {
        Fanout {
            budget: Arc::new(budget),
            ..Fanout::default()
        }
    }

    /// The write budget the subscribers share.
    pub fn budget(&self) -> &Arc<WriteBudget> {
        &self.budget
    }

    /// When a client that last wrote at `last` may write again (see [`WriteBudget`]).
    pub fn next_write(&self, last: Instant) -> Option<Instant> {
        self.budget.next_write(self.subscribers(), last)
    }

    /// Registers a new subscriber, a gRPC stream.
    pub fn open(&self, bound: QueueBound, policy: LagPolicy) -> Arc<Mailbox> {
        self.open_as(bound, policy, Form::Protobuf)
    }

    /// Registers a new subscriber whose stream writes `form`.
    pub fn open_as(&self, bound: QueueBound, policy: LagPolicy, form: Form) -> Arc<Mailbox> {
        let mailbox = Arc::new(self.unlisted(bound, policy, form));
        let mut all = self.mailboxes.lock().unwrap_or_else(|p| p.into_inner());
        all.insert(mailbox.id(), mailbox.clone());
        self.count.send_replace(all.len());
        mailbox
    }

    /// A mailbox with a subscriber id of its own that is not counted among the
    /// subscribers: the server's own subscriptions (the WebSocket gateway's views), whose
    /// clients are.
    pub fn unlisted(&self, bound: QueueBound, policy: LagPolicy, form: Form) -> Mailbox {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        Mailbox::with_form(id, bound, policy, form)
    }

    /// Forgets a subscriber whose stream ended, keeping its counts.
    pub fn remove(&self, id: u64) {
        let mut all = self.mailboxes.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(mailbox) = all.remove(&id) {
            let (delivered, closed) = mailbox.outcome();
            let mut retired = self.retired.lock().unwrap_or_else(|p| p.into_inner());
            retired.0.add(delivered);
            match closed {
                Some(Closed::TooSlow { .. }) => retired.1.too_slow += 1,
                Some(Closed::Refused(_)) => retired.1.refused += 1,
                Some(Closed::ClientLeft) | None => retired.1.client_left += 1,
            }
        }
        self.count.send_replace(all.len());
    }

    /// Everything delivered so far, to streams open and ended.
    pub fn delivered(&self) -> Delivered {
        let all = self.mailboxes.lock().unwrap_or_else(|p| p.into_inner());
        let mut total = self.retired.lock().unwrap_or_else(|p| p.into_inner()).0;
        for m in all.values() {
            total.add(m.delivered());
        }
        total
    }

    /// Why the streams that ended so far ended.
    pub fn disconnects(&self) -> Disconnects {
        self.retired.lock().unwrap_or_else(|p| p.into_inner()).1
    }

    /// Connected subscribers.
    pub fn subscribers(&self) -> usize {
        *self.count.borrow()
    }

    /// Watches the subscriber count.
    pub fn watch_subscribers(&self) -> watch::Receiver<usize> {
        self.count.subscribe()
    }

    /// The most events, and the most bytes, any subscriber has queued right now (the two
    /// may be different subscribers').
    pub fn max_queued(&self) -> (usize, usize) {
        let all = self.mailboxes.lock().unwrap_or_else(|p| p.into_inner());
        all.values()
            .map(|m| m.queued())
            .fold((0, 0), |(e, b), (events, bytes)| {
                (e.max(events), b.max(bytes))
            })
    }

    /// Every subscriber's id, queued events and their bytes, by id.
    pub fn queues(&self) -> Vec<(u64, usize, usize)> {
        let all = self.mailboxes.lock().unwrap_or_else(|p| p.into_inner());
        let mut queues: Vec<_> = all
            .values()
            .map(|m| {
                let (events, bytes) = m.queued();
                (m.id(), events, bytes)
            })
            .collect();
        queues.sort_unstable();
        queues
    }

    /// Queues `event` (a control event) on every open stream, in each one's form;
    /// returns how many.
    pub fn broadcast_control(&self, event: &pb::Event) -> usize {
        let protobuf = Form::Protobuf.encode(event);
        let json = Form::Json.encode(event);
        let all = self.mailboxes.lock().unwrap_or_else(|p| p.into_inner());
        all.values()
            .filter(|m| {
                let bytes = match m.form() {
                    Form::Protobuf => protobuf.clone(),
                    Form::Json => json.clone(),
                };
                matches!(m.push_control(bytes), Pushed::Queued)
            })
            .count()
    }

    /// Ends every stream with `why`.
    pub fn close_all(&self, why: Closed) {
        let all = self.mailboxes.lock().unwrap_or_else(|p| p.into_inner());
        for m in all.values() {
            m.close(why.clone());
        }
    }

    /// Counts a resync snapshot sent to a lagging subscriber.
    pub fn record_resync(&self) {
        self.resyncs.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts pushes a full mailbox refused (conflated, dropped, or disconnected under the
    /// policy).
    pub fn record_lagged(&self, pushes: u64) {
        self.lagged.fetch_add(pushes, Ordering::Relaxed);
    }

    /// Pushes refused for lag so far.
    pub fn lagged(&self) -> u64 {
        self.lagged.load(Ordering::Relaxed)
    }

    /// Counts `n` subscriptions a stream took.
    pub fn subscribed(&self, n: usize) {
        self.subscriptions.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts `n` subscriptions a stream gave up (or held when it ended).
    pub fn unsubscribed(&self, n: usize) {
        self.subscriptions.fetch_sub(n, Ordering::Relaxed);
    }

    /// Subscriptions held now, over all streams.
    pub fn subscriptions(&self) -> usize {
        self.subscriptions.load(Ordering::Relaxed)
    }

    /// Resync snapshots sent so far.
    pub fn resyncs(&self) -> u64 {
        self.resyncs.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_batch_budget_shares_message_bytes_among_subscribers_within_the_bounds() {
        let config = FanoutConfig {
            queue: QueueBound {
                events: 1,
                bytes: 1,
            },
            trade_overflow: LagPolicy::Gap,
            max_batch_bytes: 64 << 10,
            batch_budget_bytes: Some(16 << 20),
            write_budget_per_s: None,
            write_budget_max_per_s: None,
        };
        // 1,000 clients share 16 MiB: 16,777 bytes each.
        assert_eq!(config.batch_bytes(1000), 16_777);
        // 100 clients would get 164 KiB: capped at the largest message.
        assert_eq!(config.batch_bytes(100), 64 << 10);
        // 10,000 would get 1.6 KiB: raised to the smallest.
        assert_eq!(config.batch_bytes(10_000), MIN_BATCH_BYTES);
        // Not yet counted (a stream's first drain can run before its registration is
        // seen): as one.
        assert_eq!(config.batch_bytes(0), 64 << 10);
        let unlimited = FanoutConfig {
            batch_budget_bytes: None,
            ..config
        };
        assert_eq!(unlimited.batch_bytes(100_000), 64 << 10);
    }
}
