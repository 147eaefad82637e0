//! The drain's part in the gRPC surface: once the server is going away, new streaming
//! calls are refused with `UNAVAILABLE` ([`RefuseWhileDraining`], a tower layer) so that
//! clients reconnect elsewhere, and every open stream is told, by a `GOING_AWAY` status
//! event ([`going_away`]), how long it has before it ends: live streams through the
//! fan-out, history streams by [`Draining::tell`].

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use std::sync::Arc;

use futures::StreamExt;
use raven_model::UnixNanos;
use raven_proto::pb;
use raven_proto::wire::EncodedBatch;
use tonic::Status;

use super::EventStream;
use crate::clock::Clock;
use crate::fanout::Form;
use crate::shutdown::Shutdown;

/// The calls that hold a stream open for as long as the client likes: refused once the
/// drain begins.
pub const STREAMING: [&str; 5] = [
    "/raven.v1.Market/Stream",
    "/raven.v1.History/Query",
    "/raven.v1.History/QueryArrow",
    "/raven.v1.History/Replay",
    "/raven.v1.Ingest/Publish",
];

/// The `GOING_AWAY` status event: no instrument, the drain time in its detail.
pub fn going_away(now: UnixNanos, drain: Duration) -> pb::Event {
    pb::Event {
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
    }
}

/// Where a drain is: the signal that begins it, and how long it serves streams.
#[derive(Clone)]
pub struct Draining {
    /// Fires when the drain begins.
    pub signal: Shutdown,
    /// How long streams are served after it begins.
    pub time: Duration,
    /// The time events are stamped with.
    pub clock: Arc<dyn Clock>,
}

impl Draining {
    /// `stream`, with a `GOING_AWAY` event sent once the drain begins (for streams that
    /// are not fed by the fan-out, which tells its own: history queries and replays).
    pub fn tell(&self, stream: EventStream) -> EventStream {
        let drain = self.clone();
        Box::pin(futures::stream::unfold(
            (stream, drain, false),
            |(mut stream, mut drain, told)| async move {
                if !told {
                    tokio::select! {
                        biased;
                        () = drain.signal.wait() => {
                            let mut batch = EncodedBatch::new();
                            let event = going_away(drain.clock.now(), drain.time);
                            batch.push(Form::Protobuf.encode(&event));
                            return Some((Ok(batch), (stream, drain, true)));
                        }
                        item = stream.next() => {
                            return item.map(|item| (item, (stream, drain, false)));
                        }
                    }
                }
                let item = stream.next().await?;
                Some((item, (stream, drain, true)))
            },
        ))
    }
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
