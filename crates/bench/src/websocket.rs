//! A WebSocket client for `--transport ws`: subscribes to the bench instruments' trades on
//! Raven's gateway (`/ws`) and counts what arrives with the same tally as the gRPC
//! clients, reading the few fields it needs of each JSON object.

use std::sync::Arc;

use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, watch};
use tokio_tungstenite::tungstenite::Message;

use super::BenchError;
use super::workload::{ClientResult, Shared, Tally};

fn ws_error(error: impl std::fmt::Display) -> BenchError {
    BenchError::Stalled(format!("WebSocket: {error}"))
}

/// One client on `url` (`ws://host:port/ws`) subscribed to `names`' trades.
pub(super) async fn client(
    url: String,
    names: Vec<String>,
    shared: Arc<Shared>,
    ready: oneshot::Sender<()>,
    mut finished: watch::Receiver<bool>,
) -> Result<ClientResult, BenchError> {
    let host = url
        .strip_prefix("ws://")
        .and_then(|rest| rest.split('/').next())
        .ok_or_else(|| BenchError::Config(format!("not a ws:// URL: {url}")))?;
    let tcp = TcpStream::connect(host).await?;
    tcp.set_nodelay(true)?;
    let (mut socket, _) = tokio_tungstenite::client_async(url.as_str(), tcp)
        .await
        .map_err(ws_error)?;
    let subscribe = serde_json::json!({
        "op": "subscribe", "id": 1, "instruments": names, "channel": "trades",
    });
    socket
        .send(Message::text(subscribe.to_string()))
        .await
        .map_err(ws_error)?;
    let mut tally = Tally::new(names.len());
    let mut ready = Some(ready);
    loop {
        let message = tokio::select! {
            m = socket.next() => m,
            // Publishing ended: check below whether everything has arrived already.
            _ = finished.changed() => None,
        };
        match message {
            Some(Ok(Message::Text(text))) => tally.json(text.as_bytes(), &shared)?,
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(ws_error(e)),
            None if *finished.borrow() => {}
            None => return Err(BenchError::Stalled("the server closed a WebSocket".into())),
        }
        if tally.subscribed() {
            ready.take().map(|r| r.send(()));
        }
        if *finished.borrow() && tally.complete(&shared) {
            return Ok(tally.result());
        }
    }
}
