//! gRPC by hand over a raw `h2` client, for the tests that need a peer tonic would not
//! be (one that goes silent, or never opens its flow-control window).

use bytes::Bytes;
use prost::Message;
use raven_proto::pb;

/// Opens a `Market.Stream` call to `addr` on `client` and sends one message subscribing
/// to BTC's book; the call's request body stays open. Returns the connection handle, the
/// request body and the response to come.
pub async fn subscribe_to_book(
    client: h2::client::SendRequest<Bytes>,
    addr: impl std::fmt::Display,
) -> (
    h2::client::SendRequest<Bytes>,
    h2::SendStream<Bytes>,
    h2::client::ResponseFuture,
) {
    let request = http::Request::post(format!("http://{addr}/raven.v1.Market/Stream"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let mut client = client.ready().await.unwrap();
    let (response, mut body) = client.send_request(request, false).unwrap();
    let subscribe = pb::StreamRequest {
        request: Some(pb::stream_request::Request::Subscribe(pb::Subscribe {
            instruments: vec!["SIM:BTC-USD".into()],
            channel: pb::Channel::Book as i32,
            depth: 0,
            start: 0,
        })),
    }
    .encode_to_vec();
    // A gRPC message: not compressed, its length, the bytes.
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(subscribe.len() as u32).to_be_bytes());
    frame.extend_from_slice(&subscribe);
    body.send_data(Bytes::from(frame), false).unwrap();
    (client, body, response)
}
