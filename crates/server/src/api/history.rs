//! `raven.v1.History`: what the recorder stored, read back. Each request opens its own
//! store connection on a blocking thread (the recorder keeps its own for writing) and
//! streams rows in record order. Rows are the wire bytes subscribers received, so a
//! history message is stored rows concatenated, never decoded and re-encoded; only
//! `BookAt` decodes, to rebuild the book.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use prost::Message;
use raven_book::{BookFollower, OrderBook, Step};
use raven_model::{
    Event, EventBody, InstrumentError, InstrumentId, InstrumentName, Sequence, SnapshotKind,
    StatusKind, UnixNanos,
};
use raven_proto::convert::{body_from_pb, channel_to_pb, event_to_pb};
use raven_proto::history_server::History;
use raven_proto::limits::{
    MAX_HISTORY_INSTRUMENTS, MAX_HISTORY_LIMIT, MAX_REPLAY_SPEED, MAX_START_BACKLOG,
};
use raven_proto::pb;
use raven_proto::wire::{EncodedBatch, scan};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::market::{EventStream, channel, depth};
use crate::clock::Clock;
use crate::config::StoreConfig;
use crate::shutdown::Shutdown;
use crate::store::{self, Query, Store};

/// A history message holds about this many bytes of rows.
const MESSAGE_BYTES: usize = 256 << 10;

/// The tonic service.
#[derive(Clone)]
pub struct HistoryApi {
    store: Option<StoreConfig>,
    clock: Arc<dyn Clock>,
    shutdown: Shutdown,
}

impl HistoryApi {
    /// Reads from the store `store` describes; `None` when recording is off (every call
    /// then fails with `FAILED_PRECONDITION`). `clock` says what is in the future;
    /// streams end when `shutdown` fires.
    pub fn new(
        store: Option<StoreConfig>,
        clock: Arc<dyn Clock>,
        shutdown: Shutdown,
    ) -> HistoryApi {
        HistoryApi {
            store,
            clock,
            shutdown,
        }
    }

    /// Opens a connection of its own, off the runtime (PostgreSQL's client blocks).
    async fn open(&self) -> Result<Box<dyn Store>, Status> {
        let config = self.store.clone().ok_or_else(|| {
            Status::failed_precondition(
                "recording is off on this server (store.url = \"off\"): there is no history",
            )
        })?;
        tokio::task::spawn_blocking(move || store::open(&config.url, &config.schema))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::unavailable(format!("the store is unavailable: {e}")))
    }

    /// Validates a query and checks its instruments were recorded.
    async fn prepare(
        &self,
        request: &pb::HistoryRequest,
    ) -> Result<(Box<dyn Store>, Query), Status> {
        let query = validate(request)?;
        let mut store = self.open().await?;
        let (store, known) = tokio::task::spawn_blocking(move || {
            let known = store.instruments();
            (store, known)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
        let known =
            known.map_err(|e| Status::unavailable(format!("the store is unavailable: {e}")))?;
        for name in &query.instruments {
            if known.binary_search(name).is_err() {
                return Err(Status::not_found(format!(
                    "no recorded events for instrument {name:?}"
                )));
            }
        }
        Ok((store, query))
    }
}

fn validate(request: &pb::HistoryRequest) -> Result<Query, Status> {
    if request.instruments.is_empty() {
        return Err(Status::invalid_argument("the query names no instruments"));
    }
    if request.instruments.len() > MAX_HISTORY_INSTRUMENTS {
        return Err(Status::resource_exhausted(format!(
            "the query names {} instruments; at most {MAX_HISTORY_INSTRUMENTS} are allowed",
            request.instruments.len()
        )));
    }
    for name in &request.instruments {
        parse_name(name)?;
    }
    let channels = request
        .channels
        .iter()
        .map(|&c| channel(c).map(|c| channel_to_pb(c) as u8))
        .collect::<Result<Vec<_>, _>>()?;
    // 0 (unset) means no end.
    let to = if request.to == 0 {
        u64::MAX
    } else {
        request.to
    };
    if request.from > to {
        return Err(Status::invalid_argument(format!(
            "from ({}) is after to ({})",
            request.from, request.to
        )));
    }
    if request.limit > MAX_HISTORY_LIMIT {
        return Err(Status::invalid_argument(format!(
            "limit {} is too large; use 1..={MAX_HISTORY_LIMIT}, or 0 for no limit",
            request.limit
        )));
    }
    Ok(Query {
        instruments: request.instruments.clone(),
        channels,
        from: request.from,
        to,
        limit: request.limit,
        after: None,
    })
}

fn parse_name(name: &str) -> Result<InstrumentName, Status> {
    InstrumentName::parse(name).map_err(|e| match e {
        InstrumentError::Empty => Status::invalid_argument(
            "instrument name is empty; expected VENUE:SYMBOL, e.g. SIM:BTC-USD",
        ),
        other => Status::invalid_argument(other.to_string()),
    })
}

/// Longest a paced replay sleeps before looking at the shutdown signal again.
const PACING_SLICE: Duration = Duration::from_millis(100);

/// Streams the query's rows in messages of about `MESSAGE_BYTES`, paced by publish time
/// when `speed` is above 0; ends with `UNAVAILABLE` when `shutdown` fires.
fn stream_rows(
    mut store: Box<dyn Store>,
    query: Query,
    speed: f64,
    shutdown: Shutdown,
) -> EventStream {
    let (tx, rx) = mpsc::channel::<Result<EncodedBatch, Status>>(8);
    tokio::task::spawn_blocking(move || {
        let mut buf = BytesMut::with_capacity(MESSAGE_BYTES);
        let send = |buf: &mut BytesMut| {
            let mut batch = EncodedBatch::new();
            batch.push(buf.split().freeze());
            tx.blocking_send(Ok(batch)).is_ok()
        };
        let mut clock: Option<(Instant, u64)> = None;
        let mut open = true;
        let mut stopped = false;
        let result = store.query(&query, &mut |_, row| {
            if shutdown.is_set() {
                stopped = true;
                return false;
            }
            if speed > 0.0 {
                let published = scan::events(row)
                    .next()
                    .and_then(Result::ok)
                    .map_or(0, |h| h.publish_time);
                let (start, first) = *clock.get_or_insert((Instant::now(), published));
                let offset = published.saturating_sub(first) as f64 / speed;
                let due = start + Duration::from_nanos(offset as u64);
                if due > Instant::now() {
                    // Send what is due now before waiting for the next event's time.
                    if !buf.is_empty() && !send(&mut buf) {
                        open = false;
                        return false;
                    }
                    while let Some(left) = due.checked_duration_since(Instant::now()) {
                        if shutdown.is_set() {
                            stopped = true;
                            return false;
                        }
                        std::thread::sleep(left.min(PACING_SLICE));
                    }
                }
            }
            buf.extend_from_slice(row);
            if buf.len() >= MESSAGE_BYTES && !send(&mut buf) {
                open = false;
                return false;
            }
            true
        });
        match result {
            Ok(()) if stopped => {
                let _ = tx.blocking_send(Err(Status::unavailable(
                    "server shutting down; resume the query after the last event received",
                )));
            }
            Ok(()) if open && !buf.is_empty() => {
                send(&mut buf);
            }
            Ok(()) => {}
            Err(e) => {
                let _ = tx.blocking_send(Err(Status::unavailable(format!(
                    "the store failed mid-query: {e}"
                ))));
            }
        }
    });
    Box::pin(ReceiverStream::new(rx))
}

#[tonic::async_trait]
impl History for HistoryApi {
    type QueryStream = EventStream;
    type ReplayStream = EventStream;

    async fn query(
        &self,
        request: Request<pb::HistoryRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let (store, query) = self.prepare(request.get_ref()).await?;
        Ok(Response::new(stream_rows(
            store,
            query,
            0.0,
            self.shutdown.clone(),
        )))
    }

    async fn replay(
        &self,
        request: Request<pb::ReplayRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let request = request.into_inner();
        let speed = request.speed;
        if !(0.0..=MAX_REPLAY_SPEED).contains(&speed) {
            return Err(Status::invalid_argument(format!(
                "speed {speed} is out of range; use 0 (as fast as possible) or up to {MAX_REPLAY_SPEED}"
            )));
        }
        let query = request
            .query
            .ok_or_else(|| Status::invalid_argument("the replay has no query"))?;
        let (store, query) = self.prepare(&query).await?;
        Ok(Response::new(stream_rows(
            store,
            query,
            speed,
            self.shutdown.clone(),
        )))
    }

    async fn book_at(
        &self,
        request: Request<pb::BookAtRequest>,
    ) -> Result<Response<pb::Event>, Status> {
        let request = request.into_inner();
        let name = parse_name(&request.instrument)?;
        let depth = depth(request.depth)?;
        // The book at a future instant is not known yet; answering with the last one,
        // labelled with that instant, would be a guess (the rule `Subscribe.start` keeps).
        let now = self.clock.now().0;
        if request.at > now {
            return Err(Status::invalid_argument(format!(
                "at ({}) is in the future (server time {now})",
                request.at
            )));
        }
        let history = pb::HistoryRequest {
            instruments: vec![request.instrument.clone()],
            channels: vec![pb::Channel::Book as i32],
            from: 0,
            // Events published at the instant count: the range's end is exclusive.
            to: request.at.saturating_add(1),
            limit: 0,
        };
        let (mut store, mut query) = self.prepare(&history).await?;
        let at = request.at;
        let instrument = request.instrument.clone();
        let rebuilt = tokio::task::spawn_blocking(move || {
            // Start from the nearest checkpoint snapshot at or before the instant, so the
            // work is bounded by the checkpoint interval rather than the run's length.
            query.after = store
                .last_checkpoint(&instrument, at)
                .map_err(|e| Status::unavailable(format!("the store is unavailable: {e}")))?;
            query.channels.push(crate::store::CHECKPOINT_CHANNEL);
            rebuild(store.as_mut(), &query)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))??;
        let Some((book, last)) = rebuilt else {
            return Err(Status::not_found(format!(
                "no recorded book for {name} at or before {at}"
            )));
        };
        let event = Event {
            instrument: InstrumentId(0),
            sequence: book.sequence(),
            exchange_time: UnixNanos(last.exchange_time),
            receive_time: UnixNanos(last.receive_time),
            publish_time: UnixNanos(last.publish_time),
            body: EventBody::Snapshot(book.snapshot(depth as usize, SnapshotKind::Initial)),
        };
        Ok(Response::new(event_to_pb(name.as_str(), &event)))
    }
}

/// Replays the book events `query` selects: each run starts from its own snapshots (a
/// new run's book does not continue the old one's). Returns the book and the last event
/// applied, or `None` when no snapshot was found; `DATA_LOSS` when book events were
/// lost after the last snapshot.
fn rebuild(store: &mut dyn Store, query: &Query) -> Result<Option<(OrderBook, pb::Event)>, Status> {
    let mut book = Rebuilding::default();
    let mut run = None;
    let mut failure = None;
    let result = store.query(query, &mut |this_run, row| {
        if run != Some(this_run) {
            run = Some(this_run);
            book = Rebuilding::default();
        }
        match book.fold(row) {
            Ok(()) => true,
            Err(status) => {
                failure = Some(status);
                false
            }
        }
    });
    result.map_err(|e| Status::unavailable(format!("the store failed mid-query: {e}")))?;
    match failure {
        Some(status) => Err(status),
        None => book.finish(),
    }
}

/// Where this server run's recorded events are, for subscriptions with a start time.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// The store.
    pub store: StoreConfig,
    /// This run's id in it (its start time, ns): events published since have it.
    pub run: u64,
}

/// How long a subscription waits for the recorder to store the last event before the
/// live part (normally one batch window, 5 ms).
const CATCH_UP: Duration = Duration::from_secs(5);

/// The recorded events of `name` on `channel` in this run, published from `start`, up to
/// and including sequence `upto` (where the live part begins), then a `HistoryEnd`
/// marker. For the book, what comes first is the book as it was at `start` (rebuilt from
/// the run's snapshot and deltas), then every change after it. Waits for the recorder to
/// have stored `upto`.
pub(super) async fn backlog(
    recorded: &Recorded,
    name: &str,
    channel: raven_model::Channel,
    start: u64,
    upto: u64,
) -> Result<Vec<bytes::Bytes>, Status> {
    let config = recorded.store.clone();
    let run = recorded.run;
    let name = name.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut store = store::open(&config.url, &config.schema)
            .map_err(|e| Status::unavailable(format!("the store is unavailable: {e}")))?;
        let deadline = Instant::now() + CATCH_UP;
        loop {
            let found = collect_backlog(store.as_mut(), &name, channel, run, start, upto)?;
            if let Some(mut rows) = found {
                let mut marker = BytesMut::new();
                raven_proto::wire::put_history_end(
                    &mut marker,
                    &raven_proto::wire::Header {
                        instrument: &name,
                        channel,
                        sequence: upto,
                        exchange_time: 0,
                        receive_time: 0,
                        publish_time: 0,
                    },
                );
                rows.push(marker.freeze());
                return Ok(rows);
            }
            if Instant::now() >= deadline {
                return Err(Status::unavailable(format!(
                    "the recorder has not stored {name} up to sequence {upto} after {}s; try again",
                    CATCH_UP.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    })
    .await
    .map_err(|e| Status::internal(e.to_string()))?
}

/// One attempt: `None` while the store does not yet hold sequence `upto`.
fn collect_backlog(
    store: &mut dyn Store,
    name: &str,
    channel: raven_model::Channel,
    run: u64,
    start: u64,
    upto: u64,
) -> Result<Option<Vec<bytes::Bytes>>, Status> {
    let book = channel == raven_model::Channel::Book;
    let unavailable = |e: store::StoreError| Status::unavailable(format!("the store failed: {e}"));
    let mut channels = vec![channel_to_pb(channel) as u8];
    // The book is rebuilt from this run's last checkpoint at or before the start, or
    // from its first snapshot when it has none yet.
    let mut after = (run, 0);
    if book {
        channels.push(store::CHECKPOINT_CHANNEL);
        if let Some((found_run, position)) =
            store.last_checkpoint(name, start).map_err(unavailable)?
            && found_run == run
        {
            after = (run, position);
        }
    }
    let query = Query {
        instruments: vec![name.to_owned()],
        channels,
        from: if book { run } else { start.max(run) },
        to: u64::MAX,
        limit: 0,
        after: Some(after),
    };
    let mut rows: Vec<bytes::Bytes> = Vec::new();
    let (mut last, mut folded) = (0, 0);
    let mut rebuilt = Rebuilding::default();
    let mut failure = None;
    let result = store.query(&query, &mut |this_run, row| {
        if this_run != run {
            return true;
        }
        let Some(Ok(header)) = scan::events(row).next() else {
            failure = Some(Status::data_loss("a stored event does not scan"));
            return false;
        };
        if header.sequence > upto {
            return false;
        }
        if header.publish_time > start
            && store::row(row).is_ok_and(|r| r.channel == store::CHECKPOINT_CHANNEL)
        {
            // Checkpoints are for rebuilding; subscribers never see them.
            return true;
        }
        last = header.sequence;
        if book && header.publish_time <= start {
            // Before the start: folded into the book sent first, not sent itself.
            if let Err(status) = rebuilt.fold(row) {
                failure = Some(status);
                return false;
            }
            folded = header.sequence;
            return true;
        }
        if rows.len() >= MAX_START_BACKLOG {
            failure = Some(Status::resource_exhausted(format!(
                "more than {MAX_START_BACKLOG} recorded events of {name} since the start time; fetch older ones with History.Query"
            )));
            return false;
        }
        rows.push(bytes::Bytes::copy_from_slice(row));
        true
    });
    result.map_err(unavailable)?;
    if let Some(status) = failure {
        return Err(status);
    }
    if last < upto {
        return Ok(None);
    }
    if let Some((book, event)) = rebuilt.finish()? {
        // The last book event folded in may be a status (it has a book sequence too).
        let snapshot = Event {
            instrument: InstrumentId(0),
            sequence: Sequence(folded),
            exchange_time: UnixNanos(event.exchange_time),
            receive_time: UnixNanos(event.receive_time),
            publish_time: UnixNanos(event.publish_time),
            body: EventBody::Snapshot(book.snapshot(0, SnapshotKind::Initial)),
        };
        let mut buf = BytesMut::new();
        raven_proto::wire::put_event(&mut buf, name, &snapshot);
        rows.insert(0, buf.freeze());
    }
    Ok(Some(rows))
}

/// A book being rebuilt from stored events.
#[derive(Default)]
struct Rebuilding {
    follower: BookFollower,
    /// The last event that changed the book.
    last: Option<pb::Event>,
    /// A recorded gap since the last snapshot: the book is unknown until the next one.
    lost: Option<(u64, pb::Status)>,
}

impl Rebuilding {
    /// Applies one stored book event.
    fn fold(&mut self, row: &[u8]) -> Result<(), Status> {
        let event = pb::StreamResponse::decode(row)
            .ok()
            .and_then(|r| r.events.into_iter().next())
            .ok_or_else(|| Status::data_loss("a stored book event does not decode"))?;
        let invalid = |e: &dyn std::fmt::Display| {
            Status::data_loss(format!(
                "stored book event {} does not apply: {e}",
                event.sequence
            ))
        };
        let Some(body) = body_from_pb(&event).map_err(|e| invalid(&e))? else {
            return Ok(());
        };
        match self
            .follower
            .apply(event.sequence, &body)
            .map_err(|e| invalid(&e))?
        {
            Step::Replaced { .. } => {
                self.lost = None;
                self.last = Some(event);
            }
            Step::Applied => self.last = Some(event),
            Step::Status(StatusKind::Gap) => {
                if let Some(pb::event::Body::Status(recorded)) = event.body {
                    self.lost = Some((event.sequence, recorded));
                }
            }
            Step::Status(_) | Step::Waiting | Step::Ignored => {}
        }
        Ok(())
    }

    /// The book, `None` when no snapshot was found, or `DATA_LOSS` when events were lost
    /// after the last one.
    fn finish(self) -> Result<Option<(OrderBook, pb::Event)>, Status> {
        match self.lost {
            Some((sequence, gap)) => Err(Status::data_loss(format!(
                "{} book events up to sequence {sequence} were lost, not recorded ({}); the book is unknown until the next stored snapshot",
                gap.missed, gap.detail
            ))),
            None => Ok(self.follower.into_book().zip(self.last)),
        }
    }
}
