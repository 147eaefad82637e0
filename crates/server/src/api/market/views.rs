//! The WebSocket gateway's views: each (instrument, channel, depth, interval) that
//! clients subscribe to is one subscriber of the engine whose events are transcoded to
//! JSON once and pushed into every client's mailbox — the bounded queues of the gRPC
//! streams, with their overflow policy: a lagging book view is resynced, a lagging trade
//! view gets a gap. A book view follows the book ([`BookFollower`]) so that a client that
//! joins late, or lags, gets a snapshot at the view's sequence, in order with the events
//! around it; a conflated book view (an interval) sends the latest depth-N book at most
//! once an interval instead of every change. A view ends with its last client.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use raven_book::{BookFollower, Step};
use raven_model::{
    Channel, Event, EventBody, InstrumentId, InstrumentName, Sequence, SnapshotKind, UnixNanos,
};
use raven_proto::convert::{body_from_pb, channel_to_pb, event_to_pb};
use raven_proto::pb;
use tokio::sync::{mpsc, oneshot};
use tokio::time::MissedTickBehavior;
use tonic::Status;

use super::engine_status;
use crate::clock::Clock;
use crate::engine::{Command, EngineCommands, EngineError};
use crate::fanout::{Closed, Fanout, Form, LagPolicy, Mailbox, Pushed, QueueBound, Route};

/// What a view serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ViewKey {
    /// The instrument.
    pub instrument: InstrumentId,
    /// The channel.
    pub channel: Channel,
    /// Book levels per side (0: all); 0 for other channels.
    pub depth: u32,
    /// Book only: the latest book at most once per this many ms (0: every change).
    pub interval_ms: u32,
}

/// Answers a join: the client is in, or why not.
type Reply = oneshot::Sender<Result<(), Status>>;

enum Op {
    Join { mailbox: Arc<Mailbox>, reply: Reply },
    Leave(u64),
    Resync(u64),
}

struct Entry {
    ops: mpsc::UnboundedSender<Op>,
    clients: usize,
}

/// The views open now, shared by every WebSocket client.
pub struct Views {
    open: Mutex<HashMap<ViewKey, Entry>>,
    commands: EngineCommands,
    fanout: Arc<Fanout>,
    queue: QueueBound,
    max_batch_bytes: usize,
    clock: Arc<dyn Clock>,
}

impl Views {
    /// No views yet; each takes events from `commands`' engine in batches of up to
    /// `max_batch_bytes`, through a queue bounded like a client's (`queue`).
    pub fn new(
        commands: EngineCommands,
        fanout: Arc<Fanout>,
        queue: QueueBound,
        max_batch_bytes: usize,
        clock: Arc<dyn Clock>,
    ) -> Views {
        Views {
            open: Mutex::new(HashMap::new()),
            commands,
            fanout,
            queue,
            max_batch_bytes,
            clock,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ViewKey, Entry>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds `mailbox` to the view of `key` (opening it): the view first queues its
    /// current state there (the book snapshot, the BBO, and a `snapshot_end` marker), then
    /// every event. On an error the mailbox is not a client.
    pub async fn join(
        &self,
        key: ViewKey,
        name: &InstrumentName,
        mailbox: Arc<Mailbox>,
    ) -> Result<(), Status> {
        let id = mailbox.id();
        let (reply, answer) = oneshot::channel();
        let sent = {
            let mut open = self.lock();
            let entry = open
                .entry(key)
                .or_insert_with(|| self.spawn(key, name.clone()));
            entry.clients += 1;
            entry.ops.send(Op::Join { mailbox, reply }).is_ok()
        };
        let stopped = || engine_status(EngineError::Stopped);
        let answer = match sent {
            true => answer.await.unwrap_or_else(|_| Err(stopped())),
            false => Err(stopped()),
        };
        if answer.is_err() {
            self.leave(key, id);
        }
        answer
    }

    /// Takes the client `id` out of the view of `key`; the view ends with its last client.
    pub fn leave(&self, key: ViewKey, id: u64) {
        let mut open = self.lock();
        if let Some(entry) = open.get_mut(&key) {
            let _ = entry.ops.send(Op::Leave(id));
            entry.clients -= 1;
            if entry.clients == 0 {
                // Its task sees the channel close after the leave, and unsubscribes.
                open.remove(&key);
            }
        }
    }

    /// Asks the view of `key` for a resync snapshot for the client `id`, whose queue
    /// overflowed.
    pub fn resync(&self, key: ViewKey, id: u64) {
        if let Some(entry) = self.lock().get(&key) {
            let _ = entry.ops.send(Op::Resync(id));
        }
    }

    /// Views open now.
    pub fn count(&self) -> usize {
        self.lock().len()
    }

    fn spawn(&self, key: ViewKey, name: InstrumentName) -> Entry {
        let (ops, receiver) = mpsc::unbounded_channel();
        let upstream = self
            .fanout
            .unlisted(self.queue, LagPolicy::Gap, Form::Protobuf);
        let view = View {
            key,
            name,
            upstream: Arc::new(upstream),
            fanout: self.fanout.clone(),
            commands: self.commands.clone(),
            clock: self.clock.clone(),
            max_batch_bytes: self.max_batch_bytes,
            clients: Vec::new(),
            waiting: Vec::new(),
            resyncs: Vec::new(),
            started: false,
            follower: BookFollower::new(),
            times: (0, 0),
            sequence: 0,
            latest: None,
            changed: false,
        };
        tokio::spawn(view.run(receiver));
        Entry { ops, clients: 0 }
    }
}

/// One view's task: the engine's subscriber and its clients' publisher.
struct View {
    key: ViewKey,
    name: InstrumentName,
    upstream: Arc<Mailbox>,
    /// Where resyncs are counted.
    fanout: Arc<Fanout>,
    commands: EngineCommands,
    clock: Arc<dyn Clock>,
    max_batch_bytes: usize,
    clients: Vec<Arc<Mailbox>>,
    /// Joins waiting for the view's state: before the engine's first, or while the book
    /// is unknown (after a refused event, until the resync snapshot).
    waiting: Vec<(Arc<Mailbox>, Reply)>,
    /// Clients whose resync waits for the book to be known again.
    resyncs: Vec<u64>,
    /// The engine's initial state has come (its `SnapshotEnd` marker).
    started: bool,
    follower: BookFollower,
    /// Exchange and receive times of the book's last event, for snapshots built here.
    times: (u64, u64),
    /// The channel's last sequence.
    sequence: u64,
    /// The last BBO, which a joining client starts from (as the engine's own state does).
    latest: Option<Bytes>,
    /// Conflated: the book changed since the last one sent.
    changed: bool,
}

impl View {
    async fn run(mut self, mut ops: mpsc::UnboundedReceiver<Op>) {
        if let Err(status) = self.subscribe().await {
            // Every join until the last client leaves gets the refusal.
            while let Some(op) = ops.recv().await {
                if let Op::Join { reply, .. } = op {
                    let _ = reply.send(Err(status.clone()));
                }
            }
            return;
        }
        let conflated = self.key.channel == Channel::Book && self.key.interval_ms > 0;
        let mut tick = tokio::time::interval(Duration::from_millis(u64::from(
            self.key.interval_ms.max(1),
        )));
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // Drained before every wait: whatever woke the task, nothing queued is left behind.
        while self.forward() {
            tokio::select! {
                op = ops.recv() => match op {
                    Some(op) => self.op(op),
                    None => break,
                },
                () = self.upstream.ready() => {}
                _ = tick.tick(), if conflated => self.send_conflated(),
            }
        }
        self.upstream.close(Closed::ClientLeft);
        self.commands.detach(self.upstream.id());
        for (_, reply) in self.waiting.drain(..) {
            let _ = reply.send(Err(engine_status(EngineError::Stopped)));
        }
    }

    async fn subscribe(&self) -> Result<(), Status> {
        let (done, finished) = oneshot::channel();
        let command = Command::Subscribe {
            mailbox: self.upstream.clone(),
            instrument: self.key.instrument,
            channel: self.key.channel,
            depth: self.key.depth,
            state: true,
            done,
        };
        self.commands
            .send_waiting(self.key.instrument, command)
            .await
            .map_err(engine_status)?;
        finished
            .await
            .map(drop)
            .map_err(|_| engine_status(EngineError::Stopped))
    }

    fn op(&mut self, op: Op) {
        match op {
            Op::Join { mailbox, reply } => {
                self.waiting.push((mailbox, reply));
                self.admit();
            }
            Op::Leave(id) => {
                self.clients.retain(|m| m.id() != id);
                self.waiting.retain(|(m, _)| m.id() != id);
                self.resyncs.retain(|&r| r != id);
            }
            Op::Resync(id) => {
                self.resyncs.push(id);
                self.serve_resyncs();
            }
        }
    }

    /// Takes what the engine sent; false once the engine closed the subscription (the
    /// view's clients are closed with it).
    fn forward(&mut self) -> bool {
        let drained = self.upstream.drain(self.max_batch_bytes);
        for (instrument, depth) in drained.resync_requests {
            let command = Command::Resync {
                mailbox: self.upstream.clone(),
                instrument,
                depth,
            };
            if self.commands.send(instrument, command).is_err() {
                self.upstream.rearm_resync(instrument, depth);
            }
        }
        if let Some(why) = drained.closed {
            for client in self.clients.drain(..) {
                client.close(why.clone());
            }
            return false;
        }
        for chunk in drained.batch.into_chunks() {
            // A chunk is whole `events` entries: a `StreamResponse` of its own.
            let events = match pb::StreamResponse::decode(chunk) {
                Ok(response) => response.events,
                Err(e) => {
                    tracing::error!(error = %e, "the gateway could not decode an engine chunk");
                    continue;
                }
            };
            for event in &events {
                self.event(event);
            }
        }
        true
    }

    fn event(&mut self, event: &pb::Event) {
        if let Some(pb::event::Body::SnapshotEnd(_)) = event.body {
            if !self.started {
                self.started = true;
                self.sequence = event.sequence;
                self.admit();
            }
            return;
        }
        if matches!(
            event.body,
            Some(pb::event::Body::HistoryEnd(_) | pb::event::Body::HeartbeatAck(_))
        ) {
            return;
        }
        if event.sequence != 0 {
            // Gap reports of the view's own queue have none: the next event jumps.
            self.sequence = event.sequence;
        }
        let status = matches!(event.body, Some(pb::event::Body::Status(_)));
        if self.key.channel == Channel::Book {
            self.follow(event);
            if !self.started {
                return;
            }
            if self.key.interval_ms > 0 && !status {
                self.changed = true;
                return;
            }
        } else if !self.started {
            if self.key.channel == Channel::Bbo && !status {
                self.latest = Some(Form::json(event));
            }
            return;
        }
        if let Some(pb::event::Body::Status(gap)) = &event.body
            && event.sequence == 0
            && gap.kind == pb::StatusKind::Gap as i32
        {
            // The view's own queue overflowed: each client counts the loss with its own
            // (a report pushed like an event could itself be dropped, and its count lost).
            let route = View::route(&self.key, &self.name);
            for client in &self.clients {
                client.add_missed(route, gap.missed);
            }
            return;
        }
        let json = Form::json(event);
        if self.key.channel == Channel::Bbo && !status {
            self.latest = Some(json.clone());
        }
        self.publish(&json);
    }

    /// Applies a book event to the view's book.
    fn follow(&mut self, event: &pb::Event) {
        let body = match body_from_pb(event) {
            Ok(Some(body)) => body,
            Ok(None) => return,
            Err(e) => {
                tracing::error!(error = %e, instrument = %self.name, "the gateway could not read a book event");
                return;
            }
        };
        match self.follower.apply(event.sequence, &body) {
            Ok(Step::Replaced { .. }) => {
                self.times = (event.exchange_time, event.receive_time);
                self.admit();
                self.serve_resyncs();
            }
            Ok(Step::Applied) => self.times = (event.exchange_time, event.receive_time),
            Ok(_) => {}
            Err(e) => {
                // The engine's channel is whole; if it ever is not, the view asks for
                // the book again rather than serve a wrong one.
                tracing::warn!(error = %e, instrument = %self.name, "gateway view out of step with the engine; resyncing");
                let command = Command::Resync {
                    mailbox: self.upstream.clone(),
                    instrument: self.key.instrument,
                    depth: self.key.depth,
                };
                let _ = self.commands.send(self.key.instrument, command);
            }
        }
    }

    /// Where the view's pushes belong (a function of the two fields, so that the clients
    /// can be changed while it is held).
    fn route<'a>(key: &ViewKey, name: &'a InstrumentName) -> Route<'a> {
        Route {
            instrument: key.instrument,
            name,
            channel: key.channel,
            depth: key.depth,
        }
    }

    /// Pushes one JSON object to every client, under each one's bound.
    fn publish(&mut self, json: &Bytes) {
        let route = View::route(&self.key, &self.name);
        self.clients
            .retain(|client| client.push(json, 1, route) != Pushed::Closed);
    }

    fn send_conflated(&mut self) {
        if !self.changed {
            return;
        }
        if let Some(book) = self.book_event(SnapshotKind::Initial) {
            self.changed = false;
            self.publish(&book);
        }
    }

    /// The view's book as a snapshot event's JSON, if the book is known.
    fn book_event(&self, kind: SnapshotKind) -> Option<Bytes> {
        let book = self.follower.book()?;
        let event = Event {
            instrument: self.key.instrument,
            sequence: Sequence(self.follower.sequence()),
            exchange_time: UnixNanos(self.times.0),
            receive_time: UnixNanos(self.times.1),
            publish_time: self.clock.now(),
            venue_seq: 0,
            body: EventBody::Snapshot(book.snapshot(self.key.depth as usize, kind)),
        };
        Some(Form::json(&event_to_pb(self.name.as_str(), &event)))
    }

    /// Queues the view's state on the joins waiting for it, if it is known.
    fn admit(&mut self) {
        if !self.started || self.waiting.is_empty() {
            return;
        }
        let state = match self.key.channel {
            Channel::Book => match self.book_event(SnapshotKind::Initial) {
                Some(book) => Some(book),
                None => return,
            },
            Channel::Bbo => self.latest.clone(),
            Channel::Trades | Channel::Candles => None,
        };
        let end = Form::json(&pb::Event {
            instrument: self.name.to_string(),
            channel: channel_to_pb(self.key.channel) as i32,
            sequence: match self.key.channel {
                Channel::Book => self.follower.sequence(),
                _ => self.sequence,
            },
            publish_time: self.clock.now().0,
            body: Some(pb::event::Body::SnapshotEnd(pb::SnapshotEnd {})),
            ..Default::default()
        });
        for (mailbox, reply) in self.waiting.drain(..) {
            if let Some(state) = &state {
                mailbox.push_control(state.clone());
            }
            mailbox.push_control(end.clone());
            self.clients.push(mailbox);
            let _ = reply.send(Ok(()));
        }
    }

    /// Sends the resync snapshots asked for, if the book is known.
    fn serve_resyncs(&mut self) {
        if self.resyncs.is_empty() {
            return;
        }
        let Some(book) = self.book_event(SnapshotKind::Resync) else {
            return;
        };
        for id in self.resyncs.drain(..) {
            if let Some(client) = self.clients.iter().find(|c| c.id() == id) {
                client.complete_resync(self.key.instrument, self.key.depth, book.clone());
                self.fanout.record_resync();
            }
        }
    }
}
