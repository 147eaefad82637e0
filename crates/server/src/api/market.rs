//! `raven.v1.Market`: live streams (`session`: one client's `Stream` call), snapshots
//! and the instrument list; and the same subscriptions for the WebSocket gateway's
//! clients (`gateway`), served from views transcoded to JSON once each (`views`).

pub mod gateway;
mod session;
pub mod views;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use raven_model::{BookSnapshot, Event, EventBody, InstrumentId, SnapshotKind};
use raven_proto::convert::event_to_pb;
use raven_proto::market_server::Market;
use raven_proto::pb;
use tokio::sync::oneshot;
use tonic::{Request, Response, Status, Streaming};

use super::auth::Key;
use super::{EventStream, request};
use crate::api::calls::CallStats;
use crate::clock::Clock;
use crate::engine::{Command, EngineCommands, EngineError};
use crate::fanout::{Fanout, FanoutConfig};
use crate::feed::Catalog;
use crate::query::Backfill;
use views::Views;

/// Everything the service needs, shared by all calls.
pub struct MarketService {
    catalog: Catalog,
    pub(super) commands: EngineCommands,
    pub(super) fanout: Arc<Fanout>,
    pub(super) limits: Limits,
    /// Heartbeat times and what counts as the future.
    pub(super) clock: Arc<dyn Clock>,
    /// What came before the live part, for subscriptions with a start time: the
    /// recording, or an edge's stream; `None` when there is neither.
    pub(super) recorded: Option<Backfill>,
    /// Subscribe requests per second one stream may make (0: no limit); a reload may
    /// change it.
    pub(super) subscribe_rate: AtomicU32,
    /// Where refusals for stream limits are counted.
    pub(super) calls: Arc<CallStats>,
    /// The WebSocket gateway's shared JSON views.
    pub(super) views: Views,
}

/// Per-request and per-client limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Instruments one subscribe may name.
    pub max_instruments_per_request: usize,
    /// Subscriptions one stream may hold.
    pub max_subscriptions: usize,
    /// Bytes of recorded events one subscribe with a start time may send before its
    /// live part, over all its instruments.
    pub start_backlog_bytes: usize,
    /// Queue and batch settings.
    pub fanout: FanoutConfig,
}

impl MarketService {
    /// A service over a running engine.
    pub fn new(
        catalog: Catalog,
        commands: EngineCommands,
        fanout: Arc<Fanout>,
        clock: Arc<dyn Clock>,
        calls: Arc<CallStats>,
        limits: Limits,
    ) -> MarketService {
        let views = Views::new(
            commands.clone(),
            fanout.clone(),
            limits.fanout.queue,
            limits.fanout.max_batch_bytes,
            clock.clone(),
        );
        MarketService {
            catalog,
            calls,
            clock,
            commands,
            fanout,
            limits,
            views,
            recorded: None,
            subscribe_rate: AtomicU32::new(0),
        }
    }

    /// Sets how many subscribe requests per second one stream may make (0: no limit).
    pub fn set_subscribe_rate(&self, per_s: u32) {
        self.subscribe_rate.store(per_s, Ordering::Relaxed);
    }

    /// Lets subscriptions start from recorded history.
    pub fn with_history(mut self, recorded: Backfill) -> MarketService {
        self.recorded = Some(recorded);
        self
    }

    /// Resolves a client-supplied instrument name.
    pub(super) fn resolve(&self, name: &str) -> Result<InstrumentId, Status> {
        let parsed = request::name(name)?;
        self.catalog.registry().id(&parsed).ok_or_else(|| {
            Status::not_found(format!(
                "unknown instrument {name:?}; ListInstruments (`raven instruments`) shows what this server has"
            ))
        })
    }

    /// Resolves a list of names, all or nothing.
    pub(super) fn resolve_all(
        &self,
        names: &[String],
        verb: &str,
    ) -> Result<Vec<InstrumentId>, Status> {
        if names.is_empty() {
            return Err(Status::invalid_argument(format!(
                "{verb} names no instruments"
            )));
        }
        let max = self.limits.max_instruments_per_request;
        if names.len() > max {
            return Err(Status::resource_exhausted(format!(
                "{verb} names {} instruments; at most {max} are allowed per request",
                names.len()
            )));
        }
        names.iter().map(|n| self.resolve(n)).collect()
    }

    /// Checks a stream holding `held` subscriptions may take `new` more, under the
    /// stream's limit and its key's allowance (which it then takes).
    pub(super) fn admit(&self, key: Option<&Key>, held: usize, new: usize) -> Result<(), Status> {
        let max = self.limits.max_subscriptions;
        if held + new > max {
            let hits = &self.calls.limits.subscriptions;
            hits.fetch_add(1, Ordering::Relaxed);
            return Err(Status::resource_exhausted(format!(
                "a stream may hold at most {max} subscriptions; this one has {held} and asked for {new} more"
            )));
        }
        if let Some(key) = key {
            key.subscribe(new)?;
        }
        Ok(())
    }

    /// Sends a client's request to the engine, waiting a while for room when it is busy.
    pub(super) async fn send(
        &self,
        instrument: InstrumentId,
        command: Command,
    ) -> Result<(), Status> {
        self.commands
            .send_waiting(instrument, command)
            .await
            .map_err(engine_status)
    }
}

/// Subscribe requests one stream made in the current one-second window, against
/// `subscribe_requests_per_s`.
pub(super) struct Pace {
    since: Instant,
    count: u32,
}

impl Default for Pace {
    fn default() -> Pace {
        Pace {
            since: Instant::now(),
            count: 0,
        }
    }
}

impl Pace {
    /// Counts a subscribe request; refuses it over the limit.
    pub(super) fn check(&mut self, service: &MarketService) -> Result<(), Status> {
        let max = service.subscribe_rate.load(Ordering::Relaxed);
        if max == 0 {
            return Ok(());
        }
        if self.since.elapsed() >= Duration::from_secs(1) {
            self.since = Instant::now();
            self.count = 0;
        }
        self.count += 1;
        if self.count > max {
            let hits = &service.calls.limits.subscribe_rate;
            hits.fetch_add(1, Ordering::Relaxed);
            return Err(Status::resource_exhausted(format!(
                "more than {max} subscribe requests in one second on this stream: limit subscribe_requests_per_s = {max}"
            )));
        }
        Ok(())
    }
}

/// Maps an engine refusal to a retryable status.
pub(super) fn engine_status(e: EngineError) -> Status {
    Status::unavailable(e.to_string())
}

/// The tonic service: a cheap handle on the shared [`MarketService`].
#[derive(Clone)]
pub struct MarketApi(Arc<MarketService>);

impl MarketApi {
    /// Serves `service`.
    pub fn new(service: Arc<MarketService>) -> MarketApi {
        MarketApi(service)
    }
}

#[tonic::async_trait]
impl Market for MarketApi {
    type StreamStream = EventStream;

    async fn stream(
        &self,
        request: Request<Streaming<pb::StreamRequest>>,
    ) -> Result<Response<EventStream>, Status> {
        let key = request.extensions().get::<Arc<Key>>().cloned();
        Ok(Response::new(session::open(
            self.0.clone(),
            request.into_inner(),
            key,
        )))
    }

    async fn get_snapshot(
        &self,
        request: Request<pb::GetSnapshotRequest>,
    ) -> Result<Response<pb::Event>, Status> {
        if let Some(key) = request.extensions().get::<Arc<Key>>() {
            key.check(&request.get_ref().instrument)?;
        }
        let req = request.into_inner();
        let instrument = self.0.resolve(&req.instrument)?;
        let depth = request::depth(req.depth)?;
        if depth == 1
            && let Some(top) = self.0.commands.top_of_book(instrument)
        {
            // The top level needs no round trip to the shard: it publishes it, with the
            // book's sequence and times, after every book event.
            let event = Event {
                instrument,
                sequence: top.sequence,
                exchange_time: top.exchange_time,
                receive_time: top.receive_time,
                publish_time: self.0.clock.now(),
                venue_seq: top.venue_seq,
                body: EventBody::Snapshot(BookSnapshot {
                    bids: top.bbo.bid.into_iter().collect(),
                    asks: top.bbo.ask.into_iter().collect(),
                    kind: SnapshotKind::Initial,
                }),
            };
            return Ok(Response::new(event_to_pb(&req.instrument, &event)));
        }
        let (reply, answer) = oneshot::channel();
        self.0
            .send(
                instrument,
                Command::Snapshot {
                    instrument,
                    depth,
                    reply,
                },
            )
            .await?;
        let event = answer
            .await
            .map_err(|_| engine_status(EngineError::Stopped))?;
        Ok(Response::new(event_to_pb(&req.instrument, &event)))
    }

    async fn list_instruments(
        &self,
        request: Request<pb::ListInstrumentsRequest>,
    ) -> Result<Response<pb::ListInstrumentsResponse>, Status> {
        // A key sees the instruments it may use.
        let key = request.extensions().get::<Arc<Key>>();
        let instruments = self
            .0
            .catalog
            .list()
            .iter()
            .filter(|i| key.is_none_or(|k| k.may(i.name.as_str())))
            .map(|i| pb::Instrument {
                name: i.name.to_string(),
                venue: i.name.venue().to_owned(),
                symbol: i.name.symbol().to_owned(),
                tick_size: i.tick_size.units(),
            })
            .collect();
        Ok(Response::new(pb::ListInstrumentsResponse { instruments }))
    }
}
