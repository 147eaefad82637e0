//! Counting requests: each connection's requests in flight (what its idle limit and the
//! drain look at) and every finished call by method and status code, by a tower layer
//! ([`TrackRequests`]) that finds the connection in the request's extensions and holds
//! a count for as long as the response body lives.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use bytes::Bytes;

use super::{Conn, ConnInfo};
use crate::api::calls::{self, CallStats};

/// A request in flight on a connection: counted while it lives.
pub(super) struct InFlight(Arc<Conn>);

impl InFlight {
    pub(super) fn new(conn: Arc<Conn>) -> InFlight {
        conn.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(conn)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let conn = &self.0;
        let ms = conn.accepted.elapsed().as_millis() as u64;
        conn.idle_since_ms.store(ms, Ordering::Relaxed);
        conn.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The tower layer that counts each connection's requests in flight, and every finished
/// call by method and status code.
#[derive(Debug, Clone, Default)]
pub struct TrackRequests {
    calls: Arc<CallStats>,
}

impl TrackRequests {
    /// Counting finished calls into `calls`.
    pub fn new(calls: Arc<CallStats>) -> TrackRequests {
        TrackRequests { calls }
    }
}

impl<S> tower_layer::Layer<S> for TrackRequests {
    type Service = Tracked<S>;

    fn layer(&self, inner: S) -> Tracked<S> {
        Tracked {
            inner,
            calls: self.calls.clone(),
        }
    }
}

/// A service whose requests are counted on their connection.
#[derive(Debug, Clone)]
pub struct Tracked<S> {
    inner: S,
    calls: Arc<CallStats>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, ReqBody, ResBody> tower_service::Service<http::Request<ReqBody>> for Tracked<S>
where
    S: tower_service::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<TrackedBody<ResBody>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let in_flight = request
            .extensions()
            .get::<ConnInfo>()
            .map(|info| InFlight::new(info.conn.clone()));
        let method = calls::method_of(request.uri().path());
        let stats = self.calls.clone();
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            // A trailers-only answer (a refusal) has its status in the headers.
            let call = match calls::code_in(response.headers()) {
                Some(code) => {
                    stats.finished(method, code);
                    None
                }
                None => Some(Call { stats, method }),
            };
            Ok(response.map(|body| TrackedBody {
                body: Box::pin(body),
                _in_flight: in_flight,
                call,
            }))
        })
    }
}

/// A call whose status is still to come, in its body's trailers.
struct Call {
    stats: Arc<CallStats>,
    method: usize,
}

/// A response body that keeps its request counted until it is dropped, and counts its
/// call when the status goes by.
pub struct TrackedBody<B> {
    body: Pin<Box<B>>,
    _in_flight: Option<InFlight>,
    call: Option<Call>,
}

impl<B> Drop for TrackedBody<B> {
    fn drop(&mut self) {
        if let Some(call) = self.call.take() {
            call.stats.cancelled(call.method);
        }
    }
}

impl<B: http_body::Body<Data = Bytes>> http_body::Body for TrackedBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let polled = self.body.as_mut().poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(code) = frame.trailers_ref().and_then(calls::code_in)
            && let Some(call) = self.call.take()
        {
            call.stats.finished(call.method, code);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
