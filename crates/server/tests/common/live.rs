//! A live subscriber for the tests that watch the stream while they break something.
//! Included with `#[path]` by the test files that use it, so that the others do not
//! compile it.

use raven_proto::pb::market_client::MarketClient;
use raven_proto::pb::{self, stream_request::Request as Req};
use tokio::sync::mpsc::Sender;

/// A stream subscribed to `instrument` on `channel` from now on, on a connection of its
/// own, and the sender that keeps its requests open (dropping it half-closes the stream).
pub async fn subscribe(
    addr: std::net::SocketAddr,
    instrument: &str,
    channel: pb::Channel,
) -> (
    Sender<pb::StreamRequest>,
    tonic::Streaming<pb::StreamResponse>,
) {
    let mut client = MarketClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(pb::StreamRequest {
        request: Some(Req::Subscribe(pb::Subscribe {
            instruments: vec![instrument.into()],
            channel: channel as i32,
            depth: 0,
            start: 0,
        })),
    })
    .await
    .unwrap();
    let stream = client
        .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    (tx, stream)
}
