//! A live subscriber that collects what it receives, for the tests that compare it with
//! what was recorded. Included with `#[path]` beside `live.rs`, by the test files that
//! use it.

use raven_proto::pb;

/// Every event a subscriber to BTC on `channel` receives for `duration`; the stream must
/// stay open that long.
pub async fn events_for(
    addr: std::net::SocketAddr,
    channel: pb::Channel,
    duration: std::time::Duration,
) -> Vec<pb::Event> {
    let (_requests, mut stream) = crate::live::subscribe(addr, "SIM:BTC-USD", channel).await;
    let mut events = Vec::new();
    let end = tokio::time::Instant::now() + duration;
    while let Ok(message) = tokio::time::timeout_at(end, stream.message()).await {
        events.extend(message.unwrap().expect("the stream stays open").events);
    }
    events
}
