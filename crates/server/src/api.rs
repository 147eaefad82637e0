//! The gRPC surface: `raven.v1.Market` ([`market`]), `raven.v1.Ingest` ([`ingest`]),
//! `raven.v1.History` ([`history`]), plus the standard health and reflection services,
//! wired up in [`crate::app`], over the listener's [`connections`] (handshake and idle
//! limits, cut at a drain's deadline; [`tls`] when configured). Requests are validated in one place (`request`)
//! and refused with precise status codes before anything reaches the engine or the
//! store; what the read side answers becomes a status here too, once. Every finished
//! call is counted by method and status code ([`calls`]). A drain refuses new streams
//! and tells open ones the server is going away ([`drain`]). With API keys configured,
//! every call but health and reflection needs one ([`auth`]).

pub mod auth;
pub mod calls;
pub mod connections;
pub mod drain;
pub mod history;
pub mod ingest;
pub mod market;
mod request;
pub mod tls;

use std::pin::Pin;

use futures::Stream;
use raven_proto::wire::EncodedBatch;
use tonic::Status;

use crate::query::QueryError;
use crate::store::StoreError;

/// A server stream of encoded event batches (live or recorded).
pub type EventStream = Pin<Box<dyn Stream<Item = Result<EncodedBatch, Status>> + Send>>;

impl From<QueryError> for Status {
    fn from(error: QueryError) -> Status {
        let message = error.to_string();
        match error {
            QueryError::Store(StoreError::Corrupt(_)) => Status::data_loss(message),
            QueryError::Store(_) => {
                Status::unavailable(format!("the store is unavailable: {message}"))
            }
            QueryError::NotFound(_) => Status::not_found(message),
            QueryError::DataLoss(_) => Status::data_loss(message),
            QueryError::TooLarge(_) => Status::resource_exhausted(message),
            QueryError::Export(_) => Status::out_of_range(message),
            QueryError::Behind(_) | QueryError::ShuttingDown => Status::unavailable(message),
            QueryError::Task(_) => Status::internal(message),
        }
    }
}
