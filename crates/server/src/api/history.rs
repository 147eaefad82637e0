//! `raven.v1.History`: what the recorder stored, read back through [`crate::query`].
//! This is the gRPC side only: requests validated, answers and errors turned into
//! messages and statuses. Rows are the wire bytes subscribers received, so a history
//! message is stored rows concatenated, never decoded and re-encoded; only `BookAt`
//! (to rebuild the book) and `QueryArrow` (to fill Arrow tables) decode.

use std::sync::Arc;

use futures::StreamExt;
use raven_proto::history_server::History;
use raven_proto::pb;
use tonic::{Request, Response, Status};

use super::auth::Key;
use super::drain::Draining;
use super::{EventStream, request};
use crate::clock::Clock;
use crate::query::{self, Reader, StoreReader};
use crate::shutdown::Shutdown;
use crate::store::Query;

/// `QueryArrow`'s answer: Arrow batches, one channel's rows each.
pub type ArrowStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::ArrowBatch, Status>> + Send>>;

/// The tonic service.
#[derive(Clone)]
pub struct HistoryApi {
    reader: Option<StoreReader>,
    clock: Arc<dyn Clock>,
    shutdown: Shutdown,
    draining: Draining,
}

impl HistoryApi {
    /// Reads through `reader`; `None` when recording is off (every call then fails with
    /// `FAILED_PRECONDITION`). `clock` says what is in the future; streams are told
    /// when the drain begins and end when `shutdown` fires.
    pub fn new(
        reader: Option<StoreReader>,
        clock: Arc<dyn Clock>,
        shutdown: Shutdown,
        draining: Draining,
    ) -> HistoryApi {
        HistoryApi {
            reader,
            draining,
            clock,
            shutdown,
        }
    }

    /// Validates a query, opens a connection for it and checks its instruments were
    /// recorded.
    /// With an API key, every instrument must be one it may use.
    async fn prepare(
        &self,
        request: &pb::HistoryRequest,
        key: Option<&Arc<Key>>,
    ) -> Result<(Reader, Query), Status> {
        let query = request::history(request)?;
        if let Some(key) = key {
            for name in &request.instruments {
                key.check(name)?;
            }
        }
        let reader = self.reader.as_ref().ok_or_else(|| {
            Status::failed_precondition(
                "recording is off on this server (store.url = \"off\"): there is no history",
            )
        })?;
        let mut reader = reader.open().await?;
        reader.check_recorded(&query.instruments).await?;
        Ok((reader, query))
    }

    fn stream(&self, reader: Reader, query: Query, speed: f64) -> EventStream {
        let rows = query::stream_rows(reader, query, speed, self.shutdown.clone());
        self.draining
            .tell(Box::pin(rows.map(|batch| batch.map_err(Status::from))))
    }
}

#[tonic::async_trait]
impl History for HistoryApi {
    type QueryStream = EventStream;
    type ReplayStream = EventStream;
    type QueryArrowStream = ArrowStream;

    async fn query(
        &self,
        request: Request<pb::HistoryRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let key = request.extensions().get::<Arc<Key>>();
        let (reader, query) = self.prepare(request.get_ref(), key).await?;
        Ok(Response::new(self.stream(reader, query, 0.0)))
    }

    async fn query_arrow(
        &self,
        request: Request<pb::HistoryRequest>,
    ) -> Result<Response<ArrowStream>, Status> {
        let key = request.extensions().get::<Arc<Key>>();
        let (reader, query) = self.prepare(request.get_ref(), key).await?;
        let batches = query::stream_arrow(reader, query, self.shutdown.clone());
        Ok(Response::new(Box::pin(
            batches.map(|batch| batch.map_err(Status::from)),
        )))
    }

    async fn replay(
        &self,
        request: Request<pb::ReplayRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let key = request.extensions().get::<Arc<Key>>().cloned();
        let request = request.into_inner();
        let speed = request::replay_speed(request.speed)?;
        let query = request
            .query
            .ok_or_else(|| Status::invalid_argument("the replay has no query"))?;
        let (reader, query) = self.prepare(&query, key.as_ref()).await?;
        Ok(Response::new(self.stream(reader, query, speed)))
    }

    async fn book_at(
        &self,
        request: Request<pb::BookAtRequest>,
    ) -> Result<Response<pb::Event>, Status> {
        let key = request.extensions().get::<Arc<Key>>().cloned();
        let request = request.into_inner();
        let name = request::name(&request.instrument)?;
        let depth = request::depth(request.depth)?;
        let at = request::not_future("at", request.at, self.clock.now().0)?;
        let history = pb::HistoryRequest {
            instruments: vec![request.instrument.clone()],
            channels: vec![pb::Channel::Book as i32],
            from: 0,
            to: 0,
            limit: 0,
        };
        let (mut reader, _) = self.prepare(&history, key.as_ref()).await?;
        let event = query::book_at(&mut reader, name.as_str(), at, depth).await?;
        Ok(Response::new(event))
    }
}
