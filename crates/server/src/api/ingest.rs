//! `raven.v1.Ingest`: the publish feed. Outside collectors publish normalized events
//! into the same engine path as every other feed ([`PublishFeed`] is that feed on the
//! `crate::feed` seam; [`IngestApi`] is its gRPC service). A request is validated whole before any of it is accepted,
//! and a refused request changes nothing (not even the instrument list); accepted
//! events are handed to the engine with backpressure (the call waits while the engine is
//! behind), so nothing accepted is dropped. When the feed stops (at shutdown) an open
//! publish stream ends with `UNAVAILABLE` and the count accepted, rather than hold the
//! drain open. The engine's resync requests for a published book are logged: a collector
//! cannot be asked for a snapshot, and the book refuses deltas until it sends one.

use std::sync::{Arc, OnceLock};

use crossbeam_channel::Receiver;
use raven_model::{FeedEvent, FeedKind, InstrumentId, InstrumentName, Price, UnixNanos};
use raven_proto::convert::feed_kind_from_pb;
use raven_proto::ingest_server::Ingest;
use raven_proto::limits::MAX_EVENTS_PER_REQUEST;
use raven_proto::pb;
use tonic::{Request, Response, Status, Streaming};

use super::auth::Key;
use crate::clock::Clock;
use crate::engine::Offered;
use crate::feed::FeedInput;
use crate::feed::{Catalog, Feed, FeedContext, FeedHandle, FeedId, InstrumentInfo};
use crate::shutdown::{self, Shutdown};

/// The publish feed's name, in logs and in errors naming an instrument's owner.
const PUBLISH_FEED: &str = "Publisher";

/// The publish feed: what outside collectors send through [`IngestApi`]. The service is
/// made with it, before the feed starts, so that it can be served; until
/// [`Feed::spawn`] gives it its context it answers `UNAVAILABLE`.
pub struct PublishFeed {
    attached: Arc<OnceLock<Publisher>>,
}

/// The ingest service.
#[derive(Clone)]
pub struct IngestApi {
    attached: Arc<OnceLock<Publisher>>,
    /// An edge node takes no events: they go to its ingest node.
    edge: bool,
}

/// The publish feed's context, once spawned.
struct Publisher {
    id: FeedId,
    catalog: Catalog,
    input: FeedInput,
    clock: Arc<dyn Clock>,
    resync: Receiver<InstrumentId>,
    /// Ends open publish streams when the feed is stopped.
    stop: Shutdown,
}

/// The publish feed and the service its collectors call.
pub fn publish_feed() -> (PublishFeed, IngestApi) {
    let attached = Arc::new(OnceLock::new());
    (
        PublishFeed {
            attached: attached.clone(),
        },
        IngestApi {
            attached,
            edge: false,
        },
    )
}

/// The service on an edge node, which refuses every publish (`FAILED_PRECONDITION`).
pub fn on_edge() -> IngestApi {
    IngestApi {
        attached: Arc::default(),
        edge: true,
    }
}

impl Feed for PublishFeed {
    fn name(&self) -> &str {
        PUBLISH_FEED
    }

    /// Attaches the context to the service. No thread: events arrive on gRPC requests.
    /// Stopping ends open publish streams with `UNAVAILABLE` and refuses new ones.
    fn spawn(self: Box<Self>, ctx: FeedContext) -> std::io::Result<FeedHandle> {
        let (trigger, stop) = shutdown::channel();
        let publisher = Publisher {
            id: ctx.id,
            catalog: ctx.catalog,
            input: ctx.input,
            clock: ctx.clock,
            resync: ctx.resync,
            stop,
        };
        if self.attached.set(publisher).is_err() {
            return Err(std::io::Error::other("the publish feed was spawned twice"));
        }
        Ok(FeedHandle::new(PUBLISH_FEED, move || trigger.fire(), None))
    }
}

impl Publisher {
    /// Checks one event without changing anything: a new instrument is only named.
    fn check(&self, event: &pb::FeedEvent, now: UnixNanos) -> Result<Checked, Status> {
        let kind = parse_event(event)?;
        let instrument = match self.catalog.lookup(&event.instrument) {
            // Known instruments (every event but the first of each) take read locks only.
            Some((id, owner)) => {
                self.owned(&event.instrument, owner)?;
                Target::Known(id)
            }
            None => Target::New(
                InstrumentName::parse(&event.instrument)
                    .map_err(|e| Status::invalid_argument(e.to_string()))?,
            ),
        };
        Ok(Checked {
            instrument,
            exchange_time: UnixNanos(event.exchange_time),
            receive_time: if event.receive_time == 0 {
                now
            } else {
                UnixNanos(event.receive_time)
            },
            venue_seq: event.venue_seq,
            kind,
        })
    }

    /// The engine's events for a request whose every event passed [`IngestApi::check`]:
    /// only now are its new instruments added.
    fn accept(&self, checked: Vec<Checked>) -> Result<Vec<FeedEvent>, Status> {
        checked
            .into_iter()
            .map(|c| {
                let instrument = match c.instrument {
                    Target::Known(id) => id,
                    Target::New(name) => {
                        let shown = name.as_str().to_owned();
                        let info = InstrumentInfo {
                            name,
                            // Publishers do not declare a tick size; 0 means unknown.
                            tick_size: Price::ZERO,
                        };
                        let (id, owner) = self.catalog.add(info, self.id);
                        // Another feed may have taken the name since the check.
                        self.owned(&shown, owner)?;
                        id
                    }
                };
                Ok(FeedEvent {
                    instrument,
                    exchange_time: c.exchange_time,
                    receive_time: c.receive_time,
                    venue_seq: c.venue_seq,
                    kind: c.kind,
                })
            })
            .collect()
    }
}

/// Which instrument a checked event is for.
enum Target {
    Known(InstrumentId),
    /// Not in the catalog yet: added only if the whole request is accepted.
    New(InstrumentName),
}

/// An event that passed its checks.
struct Checked {
    instrument: Target,
    exchange_time: UnixNanos,
    receive_time: UnixNanos,
    venue_seq: u64,
    kind: FeedKind,
}

impl Publisher {
    /// Publishers may only write the instruments they created.
    fn owned(&self, name: &str, owner: FeedId) -> Result<(), Status> {
        if owner == self.id {
            return Ok(());
        }
        Err(Status::failed_precondition(format!(
            "{name} is fed by the {} feed; publish to an instrument of your own venue",
            self.catalog.feed_name(owner)
        )))
    }

    /// A collector cannot be asked for a snapshot mid-stream: say which books wait for
    /// one (the engine refuses their deltas until it comes).
    fn report_resyncs(&self) {
        for id in self.resync.try_iter() {
            let name = self.catalog.registry().name(id);
            tracing::warn!(
                instrument = name.as_ref().map_or("?", |n| n.as_str()),
                "a published book refused an update; it resumes with the next published snapshot"
            );
        }
    }
}

/// The body of a published event, checked: what a request's events go through before
/// anything about the server is looked at (the fuzz target feeds it arbitrary requests).
pub fn parse_event(event: &pb::FeedEvent) -> Result<FeedKind, Status> {
    let kind = feed_kind_from_pb(event).map_err(|e| Status::invalid_argument(e.to_string()))?;
    if let Some(qty) = negative_quantity(&kind) {
        return Err(Status::invalid_argument(format!(
            "quantity out of range ({qty} units as a signed 128-bit count of 1e-9)"
        )));
    }
    Ok(kind)
}

/// A quantity whose high word put it past `i128::MAX` (it reads as negative).
fn negative_quantity(kind: &FeedKind) -> Option<i128> {
    let mut quantities: Box<dyn Iterator<Item = raven_model::Qty> + '_> = match kind {
        FeedKind::Snapshot(s) => Box::new(s.bids.iter().chain(&s.asks).map(|l| l.qty)),
        FeedKind::Delta(d) => Box::new(d.changes.iter().map(|c| c.qty)),
        FeedKind::Trade(t) => Box::new(std::iter::once(t.qty)),
        FeedKind::Status(_) => Box::new(std::iter::empty()),
    };
    quantities.find(|q| q.is_negative()).map(|q| q.units())
}

#[tonic::async_trait]
impl Ingest for IngestApi {
    async fn publish(
        &self,
        request: Request<Streaming<pb::PublishRequest>>,
    ) -> Result<Response<pb::PublishResponse>, Status> {
        if self.edge {
            return Err(Status::failed_precondition(
                "edge node: publish to the ingest node",
            ));
        }
        let publisher = self
            .attached
            .get()
            .ok_or_else(|| Status::unavailable("the publish feed has not started"))?;
        let key = request.extensions().get::<Arc<Key>>().cloned();
        let mut inbound = request.into_inner();
        let mut accepted = 0u64;
        let mut shutdown = publisher.stop.clone();
        loop {
            let request = tokio::select! {
                request = inbound.message() => request?,
                () = shutdown.wait() => {
                    return Err(Status::unavailable(format!(
                        "server shutting down; {accepted} events of this stream were accepted and will be processed"
                    )));
                }
            };
            let Some(request) = request else {
                break;
            };
            if request.events.len() > MAX_EVENTS_PER_REQUEST {
                return Err(Status::resource_exhausted(format!(
                    "a publish request carries {} events; at most {MAX_EVENTS_PER_REQUEST} are allowed ({accepted} accepted before it)",
                    request.events.len()
                )));
            }
            publisher.report_resyncs();
            let now = publisher.clock.now();
            let checked = request
                .events
                .iter()
                .enumerate()
                .map(|(i, e)| {
                    let allowed = key.as_ref().map_or(Ok(()), |k| k.check(&e.instrument));
                    allowed.and_then(|()| publisher.check(e, now)).map_err(|s| {
                        Status::new(
                            s.code(),
                            format!(
                                "event {i} of the request ({:?}) refused: {}; the request was not applied, {accepted} events accepted before it",
                                e.instrument,
                                s.message()
                            ),
                        )
                    })
                })
                .collect::<Result<Vec<_>, Status>>()?;
            let batch = publisher.accept(checked)?;
            let n = batch.len() as u64;
            // Over its key's ingest rate, the publisher waits: slowed, never trimmed.
            if let Some(key) = &key {
                let wait = key.ingest_delay(n, std::time::Instant::now());
                if !wait.is_zero() {
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = shutdown.wait() => {
                            return Err(Status::unavailable(format!(
                                "server shutting down; {accepted} events of this stream were accepted and will be processed"
                            )));
                        }
                    }
                }
            }
            // Straight into the engine's input when it has room; a blocking send (on a
            // blocking thread) only when it is behind, which slows this stream.
            let sent = match publisher.input.offer(batch) {
                Offered::Taken => true,
                Offered::Stopped => false,
                Offered::Full(rest) => {
                    let input = publisher.input.clone();
                    tokio::task::spawn_blocking(move || input.send_rest(rest))
                        .await
                        .map_err(|e| Status::internal(format!("ingest task failed: {e}")))?
                }
            };
            if !sent {
                return Err(Status::unavailable("server shutting down"));
            }
            accepted += n;
        }
        Ok(Response::new(pb::PublishResponse { accepted }))
    }
}
