//! The drain's part in the gRPC surface: once the server is going away, new streaming
//! calls are refused with `UNAVAILABLE` ([`RefuseWhileDraining`], a tower layer) so that
//! clients reconnect elsewhere, and every open stream is told, by a `GOING_AWAY` status
//! event ([`going_away`]), how long it has before it ends.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use raven_model::UnixNanos;
use raven_proto::pb;
use tonic::Status;

use crate::shutdown::Shutdown;

/// The calls that hold a stream open for as long as the client likes: refused once the
/// drain begins.
pub const STREAMING: [&str; 4] = [
    "/raven.v1.Market/Stream",
    "/raven.v1.History/Query",
    "/raven.v1.History/Replay",
    "/raven.v1.Ingest/Publish",
];

/// The `GOING_AWAY` status event, encoded as one entry of a stream response: no
/// instrument, the drain time in its detail.
pub fn going_away(now: UnixNanos, drain: Duration) -> Bytes {
    let event = pb::Event {
        publish_time: now.0,
        body: Some(pb::event::Body::Status(pb::Status {
            kind: pb::StatusKind::GoingAway as i32,
            missed: 0,
            detail: format!(
                "server shutting down: this stream ends in {} s; reconnect, to another server if there is one",
                drain.as_secs()
            ),
        })),
        ..Default::default()
    };
    pb::StreamResponse {
        events: vec![event],
    }
    .encode_to_vec()
    .into()
}

/// The tower layer that refuses new streaming calls once `draining` is set.
#[derive(Debug, Clone)]
pub struct RefuseWhileDraining {
    draining: Shutdown,
}

impl RefuseWhileDraining {
    /// Refusing from when `draining` fires.
    pub fn new(draining: Shutdown) -> RefuseWhileDraining {
        RefuseWhileDraining { draining }
    }
}

impl<S> tower_layer::Layer<S> for RefuseWhileDraining {
    type Service = Refusing<S>;

    fn layer(&self, inner: S) -> Refusing<S> {
        Refusing {
            inner,
            draining: self.draining.clone(),
        }
    }
}

/// A service that refuses new streams during a drain.
#[derive(Debug, Clone)]
pub struct Refusing<S> {
    inner: S,
    draining: Shutdown,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, ReqBody, ResBody> tower_service::Service<http::Request<ReqBody>> for Refusing<S>
where
    S: tower_service::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        if self.draining.is_set() && STREAMING.contains(&request.uri().path()) {
            let refusal = Status::unavailable(
                "server shutting down: no new streams; reconnect, to another server if there is one",
            );
            return Box::pin(async move { Ok(refusal.into_http::<ResBody>()) });
        }
        Box::pin(self.inner.call(request))
    }
}
