//! The plain-tonic floor: the least a tonic server must do to serve `raven bench`'s
//! workload, measured beside Raven to show what gRPC over tonic and HTTP/2 costs on the
//! machine before any engine is involved (`raven-tonic-relay`, `scripts/bench-floor.sh`).
//!
//! It speaks the two calls the bench uses, on the same generated servers and codec as
//! Raven: `Ingest.Publish` numbers each trade per instrument, encodes each request's
//! trades once as one `StreamResponse`, and hands the bytes to every subscriber through a
//! tokio broadcast channel; `Market.Stream` answers a `Subscribe` with the snapshot-end
//! markers the bench waits for, then forwards every batch. No book, no validation, no
//! per-client queue policy, no recording: whatever Raven costs above this is its own.
//! A subscriber that falls a whole channel behind ends with `DATA_LOSS`.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use prost::Message;
use raven_proto::ingest_server::{Ingest, IngestServer};
use raven_proto::market_server::{Market, MarketServer};
use raven_proto::pb::{self, stream_request::Request as Req};
use raven_proto::wire::EncodedBatch;
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status, Streaming};

use super::workload::now_ns;

/// Batches a subscriber may fall behind before it is cut off: at the bench's one batch
/// per millisecond, a minute.
const CHANNEL_BATCHES: usize = 65_536;

/// Serves the relay on `listener` until the process ends, with Nagle off as Raven has it.
pub async fn serve(listener: TcpListener) -> Result<(), tonic::transport::Error> {
    let relay = Relay::new();
    tonic::transport::Server::builder()
        .add_service(MarketServer::new(relay.clone()))
        .add_service(IngestServer::new(relay))
        .serve_with_incoming(TcpIncoming::from(listener).with_nodelay(Some(true)))
        .await
}

#[derive(Clone)]
struct Relay(Arc<Shared>);

struct Shared {
    /// Last sequence per instrument. Held while a batch is numbered and sent, so a new
    /// subscriber's markers and the batches it then receives meet exactly.
    sequences: Mutex<HashMap<String, u64>>,
    batches: broadcast::Sender<Bytes>,
}

impl Relay {
    fn new() -> Relay {
        Relay(Arc::new(Shared {
            sequences: Mutex::new(HashMap::new()),
            batches: broadcast::channel(CHANNEL_BATCHES).0,
        }))
    }
}

fn batch(bytes: Bytes) -> EncodedBatch {
    let mut batch = EncodedBatch::new();
    batch.push(bytes);
    batch
}

#[tonic::async_trait]
impl Ingest for Relay {
    async fn publish(
        &self,
        request: Request<Streaming<pb::PublishRequest>>,
    ) -> Result<Response<pb::PublishResponse>, Status> {
        let mut requests = request.into_inner();
        let mut accepted = 0u64;
        while let Some(request) = requests.message().await? {
            let received = now_ns();
            let mut sequences = self
                .0
                .sequences
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let events = request
                .events
                .into_iter()
                .map(|e| {
                    // The name is copied only the first time an instrument is seen.
                    let sequence = match sequences.get_mut(&e.instrument) {
                        Some(last) => {
                            *last += 1;
                            *last
                        }
                        None => {
                            sequences.insert(e.instrument.clone(), 1);
                            1
                        }
                    };
                    pb::Event {
                        instrument: e.instrument,
                        channel: pb::Channel::Trades as i32,
                        sequence,
                        exchange_time: e.exchange_time,
                        receive_time: received,
                        publish_time: received,
                        venue_seq: e.venue_seq,
                        body: match e.body {
                            Some(pb::feed_event::Body::Trade(t)) => Some(pb::event::Body::Trade(t)),
                            _ => None,
                        },
                    }
                })
                .collect::<Vec<_>>();
            accepted += events.len() as u64;
            let bytes = pb::StreamResponse { events }.encode_to_vec();
            // No subscriber yet is not an error: the bench creates its instruments first.
            let _ = self.0.batches.send(Bytes::from(bytes));
        }
        Ok(Response::new(pb::PublishResponse { accepted }))
    }
}

type BatchStream = Pin<Box<dyn Stream<Item = Result<EncodedBatch, Status>> + Send>>;

#[tonic::async_trait]
impl Market for Relay {
    type StreamStream = BatchStream;

    async fn stream(
        &self,
        request: Request<Streaming<pb::StreamRequest>>,
    ) -> Result<Response<BatchStream>, Status> {
        let mut requests = request.into_inner();
        let instruments = match requests.message().await? {
            Some(pb::StreamRequest {
                request: Some(Req::Subscribe(subscribe)),
            }) => subscribe.instruments,
            _ => {
                return Err(Status::invalid_argument(
                    "the relay expects a Subscribe first",
                ));
            }
        };
        let (markers, batches) = {
            let sequences = self
                .0
                .sequences
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let events = instruments
                .into_iter()
                .map(|instrument| pb::Event {
                    sequence: sequences.get(&instrument).copied().unwrap_or(0),
                    instrument,
                    channel: pb::Channel::Trades as i32,
                    body: Some(pb::event::Body::SnapshotEnd(pb::SnapshotEnd {})),
                    ..pb::Event::default()
                })
                .collect();
            let markers = pb::StreamResponse { events }.encode_to_vec();
            (Bytes::from(markers), self.0.batches.subscribe())
        };
        // The request half stays open with the response: closing it would end the call.
        let live = futures::stream::unfold((batches, requests), |(mut batches, requests)| async {
            match batches.recv().await {
                Ok(bytes) => Some((Ok(batch(bytes)), (batches, requests))),
                Err(broadcast::error::RecvError::Lagged(n)) => Some((
                    Err(Status::data_loss(format!("{n} batches behind"))),
                    (batches, requests),
                )),
                Err(broadcast::error::RecvError::Closed) => None,
            }
        });
        let stream = futures::stream::once(async move { Ok(batch(markers)) }).chain(live);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_snapshot(
        &self,
        _: Request<pb::GetSnapshotRequest>,
    ) -> Result<Response<pb::Event>, Status> {
        Err(Status::unimplemented("the relay keeps no books"))
    }

    async fn list_instruments(
        &self,
        _: Request<pb::ListInstrumentsRequest>,
    ) -> Result<Response<pb::ListInstrumentsResponse>, Status> {
        Err(Status::unimplemented("the relay keeps no instruments"))
    }
}
