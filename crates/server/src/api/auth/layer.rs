//! The tower layer in front of every service: who is calling (their [`Key`], or the
//! refusal), handed to the services in the request's extensions, and each response body
//! held so that a revoked key's streams end at once with `UNAUTHENTICATED`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use tonic::Status;

use super::{Key, Keys, Role, StreamSlot};
use crate::api::drain::STREAMING;

/// The tower layer that authenticates every call (see the module comment); with no keys
/// configured it lets everything through.
#[derive(Debug, Clone, Default)]
pub struct Authenticate {
    keys: Option<Arc<Keys>>,
}

impl Authenticate {
    /// Checks calls against `keys`; `None` lets every call through.
    pub fn new(keys: Option<Arc<Keys>>) -> Authenticate {
        Authenticate { keys }
    }
}

impl<S> tower_layer::Layer<S> for Authenticate {
    type Service = Authenticated<S>;

    fn layer(&self, inner: S) -> Authenticated<S> {
        Authenticated {
            inner,
            keys: self.keys.clone(),
        }
    }
}

/// A service whose calls are authenticated.
#[derive(Debug, Clone)]
pub struct Authenticated<S> {
    inner: S,
    keys: Option<Arc<Keys>>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S> Authenticated<S> {
    /// The caller's key with its stream counted, or the refusal.
    fn admit<B>(
        keys: &Keys,
        request: &http::Request<B>,
        role: Role,
    ) -> Result<(Arc<Key>, Option<StreamSlot>), Status> {
        let key = keys.authorize(request.headers().get(http::header::AUTHORIZATION), role)?;
        // Streaming calls count against `max_streams`.
        if !STREAMING.contains(&request.uri().path()) {
            return Ok((key, None));
        }
        let slot = keys.open_stream(&key)?;
        Ok((key, Some(slot)))
    }
}

impl<S, ReqBody, ResBody> tower_service::Service<http::Request<ReqBody>> for Authenticated<S>
where
    S: tower_service::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = http::Response<KeyedBody<ResBody>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        let (Some(keys), Some(role)) = (&self.keys, Role::of_path(request.uri().path())) else {
            let response = self.inner.call(request);
            return Box::pin(async move { Ok(response.await?.map(KeyedBody::open)) });
        };
        let (key, slot) = match Self::admit(keys, &request, role) {
            Ok(admitted) => admitted,
            Err(status) => {
                return Box::pin(
                    async move { Ok(status.into_http::<ResBody>().map(KeyedBody::open)) },
                );
            }
        };
        let revoked = key.revoked();
        request.extensions_mut().insert(key);
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| KeyedBody {
                body: Some(Box::pin(body)),
                revoked: Some(Box::pin(async move {
                    let mut revoked = revoked;
                    revoked.wait().await;
                })),
                _slot: slot,
            }))
        })
    }
}

/// A response body that ends with `UNAUTHENTICATED` when its key is revoked.
pub struct KeyedBody<B> {
    body: Option<Pin<Box<B>>>,
    revoked: Option<BoxFuture<()>>,
    _slot: Option<StreamSlot>,
}

impl<B: Default> Default for KeyedBody<B> {
    fn default() -> Self {
        KeyedBody::open(B::default())
    }
}

impl<B> KeyedBody<B> {
    fn open(body: B) -> KeyedBody<B> {
        KeyedBody {
            body: Some(Box::pin(body)),
            revoked: None,
            _slot: None,
        }
    }
}

impl<B: http_body::Body<Data = Bytes>> http_body::Body for KeyedBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        if let Some(revoked) = self.revoked.as_mut()
            && revoked.as_mut().poll(cx).is_ready()
        {
            self.revoked = None;
            // Dropping the body ends the call's work (a subscription leaves the fan-out).
            self.body = None;
            let status = Status::unauthenticated("API key revoked");
            let mut trailers = http::HeaderMap::new();
            if status.add_header(&mut trailers).is_ok() {
                return Poll::Ready(Some(Ok(http_body::Frame::trailers(trailers))));
            }
        }
        match self.body.as_mut() {
            Some(body) => body.as_mut().poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body
            .as_ref()
            .map_or_else(|| http_body::SizeHint::with_exact(0), |b| b.size_hint())
    }
}
