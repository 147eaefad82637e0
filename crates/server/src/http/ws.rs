//! `GET /ws`: the WebSocket JSON gateway. A client sends `{"op": …}` text messages —
//! `auth` (within 5 s when keys are configured, unless the upgrade request carried
//! `authorization: Bearer <key>`), `subscribe`, `unsubscribe`, `ping` — and receives the
//! objects `raven subscribe --json` prints, plus `ack`, `error` (the gRPC code's name and
//! message) and `pong`, one object a message. Subscriptions are the market service's
//! ([`JsonStream`]); this module owns the socket: parsing, the error budget, close codes.
//!
//! A socket counts against its key's `max_streams` and ends when the key is revoked.
//! Close codes: 4001 no auth in time; 1008 more than [`MAX_ERRORS`] errors, a revoked key,
//! or a client too slow under `fanout.trade_overflow = "disconnect"`; 1009 a message over
//! [`MAX_MESSAGE_BYTES`]; 1001 the server shutting down.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use raven_model::Channel;
use serde_json::{Value, json};
use tokio::time::{Instant, sleep_until};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role as WsRole, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tonic::{Code, Status};

use super::{HttpState, error_body, refused};
use crate::api::auth::{Key, Role, StreamSlot};
use crate::api::market::gateway::{JsonStream, Subscribe};
use crate::fanout::Closed;
use crate::shutdown::Shutdown;

/// How long a client may take to authenticate when keys are configured.
pub const AUTH_TIME: Duration = Duration::from_secs(5);
/// Errors a client may cause before it is closed (1008).
pub const MAX_ERRORS: u32 = 10;
/// The largest message a client may send (1009 beyond).
pub const MAX_MESSAGE_BYTES: usize = 64 << 10;
/// What one read of a client's socket asks for. The library zero-fills this much before
/// every read, including the many that find nothing (each wait polls the socket), and
/// clients send small requests: its default (128 KiB) was a third of the gateway's CPU.
const READ_BYTES: usize = 4 << 10;
/// Output written to the socket before it is flushed.
const WRITE_BYTES: usize = 256 << 10;
/// A book subscription's depth when the client names none.
const DEFAULT_DEPTH: u32 = 20;
/// A book subscription's interval when the client names none.
const DEFAULT_INTERVAL_MS: u32 = 100;
/// What 4001 says.
const NO_AUTH: u16 = 4001;

/// Upgrades the request and serves the socket.
pub(super) async fn upgrade(
    State(state): State<Arc<HttpState>>,
    headers: HeaderMap,
    mut request: Request,
) -> Response {
    if state.draining.is_set() {
        return refused(&Status::unavailable(
            "server shutting down: no new streams; reconnect, to another server if there is one",
        ));
    }
    let upgrade = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let version = headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_some_and(|v| v == "13");
    let (Some(client_key), true, true) = (headers.get(header::SEC_WEBSOCKET_KEY), upgrade, version)
    else {
        let why =
            "/ws is a WebSocket endpoint (RFC 6455, version 13): send a WebSocket upgrade request";
        return (
            StatusCode::UPGRADE_REQUIRED,
            [(header::UPGRADE, "websocket")],
            why,
        )
            .into_response();
    };
    // A key in the upgrade request authenticates at once (clients other than browsers,
    // which cannot set the header, can skip the `auth` message).
    let key = match (&state.keys, headers.get(header::AUTHORIZATION)) {
        (Some(keys), Some(header)) => match keys
            .authorize(Some(header), Role::Subscribe)
            .and_then(|key| Ok((keys.open_stream(&key)?, key)))
        {
            Ok(key) => Some(key),
            Err(status) => return refused(&status),
        },
        _ => None,
    };
    let accept = derive_accept_key(client_key.as_bytes());
    let on_upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let config = WebSocketConfig::default()
                    .read_buffer_size(READ_BYTES)
                    .max_message_size(Some(MAX_MESSAGE_BYTES))
                    .max_frame_size(Some(MAX_MESSAGE_BYTES));
                let socket = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    WsRole::Server,
                    Some(config),
                )
                .await;
                serve(socket, state, key).await;
            }
            Err(e) => tracing::debug!(error = %e, "WebSocket upgrade failed"),
        }
    });
    (
        StatusCode::SWITCHING_PROTOCOLS,
        [
            (header::UPGRADE, HeaderValue::from_static("websocket")),
            (header::CONNECTION, HeaderValue::from_static("upgrade")),
            (
                header::SEC_WEBSOCKET_ACCEPT,
                HeaderValue::from_str(&accept).unwrap_or(HeaderValue::from_static("")),
            ),
        ],
    )
        .into_response()
}

type Socket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// One client, until it or the server closes.
async fn serve(mut socket: Socket, state: Arc<HttpState>, key: Option<(StreamSlot, Arc<Key>)>) {
    let (slot, key) = key.unzip();
    let mut client = Client {
        authenticated: state.keys.is_none() || key.is_some(),
        revoked: key.as_ref().map(|k| k.revoked()),
        stream: state.market.json_stream(key),
        state,
        errors: 0,
        _slot: slot,
    };
    let deadline = Instant::now() + AUTH_TIME;
    // Not before this may the client be written to again (the write budget).
    let mut paced: Option<Instant> = None;
    let closing = loop {
        // Written before every wait, unless the budget holds it back: whatever woke the
        // loop, nothing queued waits longer than that.
        if paced.is_none() {
            match client.write(&mut socket).await {
                Ok(Wrote::Nothing) => {}
                Ok(Wrote::Frames) => paced = client.stream.next_write(Instant::now()),
                Ok(Wrote::End(close)) => break Some(close),
                Err(_) => break None,
            }
        }
        tokio::select! {
            message = socket.next() => match message {
                None | Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => break None,
                Some(Err(WsError::Capacity(e))) => {
                    break Some(close(CloseCode::Size, &format!("{e}: messages are limited to {MAX_MESSAGE_BYTES} bytes")));
                }
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "WebSocket client error");
                    break None;
                }
                Some(Ok(Message::Text(text))) => client.message(text.as_str()).await,
                Some(Ok(Message::Binary(_))) => client.refuse(&Value::Null, &Status::invalid_argument(
                    "binary messages are not understood: send JSON text, e.g. {\"op\":\"ping\"}",
                )),
                Some(Ok(Message::Close(_))) => break None,
                // Pings are answered by the library as it writes.
                Some(Ok(_)) => {}
            },
            () = client.stream.mailbox().ready(), if paced.is_none() => {}
            () = at(paced) => paced = None,
            () = revoked(&mut client.revoked) => {
                let status = Status::unauthenticated("API key revoked");
                client.refuse(&Value::Null, &status);
                let _ = client.write(&mut socket).await;
                break Some(close(CloseCode::Policy, status.message()));
            }
            () = sleep_until(deadline), if !client.authenticated => {
                break Some(close(
                    CloseCode::Library(NO_AUTH),
                    &format!("no auth within {} s: send {{\"op\":\"auth\",\"key\":…}} first", AUTH_TIME.as_secs()),
                ));
            }
        }
        if client.errors > MAX_ERRORS {
            // What was queued (the last error reply with it) goes first.
            let _ = client.write(&mut socket).await;
            break Some(close(
                CloseCode::Policy,
                &format!("more than {MAX_ERRORS} errors"),
            ));
        }
    };
    if let Some(frame) = closing {
        let _ = socket.close(Some(frame)).await;
    }
}

fn close(code: CloseCode, reason: &str) -> CloseFrame {
    // A close frame's reason has room for 123 bytes.
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    CloseFrame {
        code,
        reason: Utf8Bytes::from(&reason[..end]),
    }
}

/// Resolves at `when` (never without one).
async fn at(when: Option<Instant>) {
    match when {
        Some(when) => sleep_until(when).await,
        None => std::future::pending().await,
    }
}

/// Resolves when the client's key is revoked (never without a key).
async fn revoked(key: &mut Option<Shutdown>) {
    match key {
        Some(revoked) => revoked.wait().await,
        None => std::future::pending().await,
    }
}

/// What a [`Client::write`] did.
enum Wrote {
    Nothing,
    Frames,
    /// The server ends the stream, with this close frame (after what was queued).
    End(CloseFrame),
}

struct Client {
    state: Arc<HttpState>,
    stream: JsonStream,
    authenticated: bool,
    /// Fires when the key the client authenticated with is revoked (a reload).
    revoked: Option<Shutdown>,
    errors: u32,
    /// The client's place under its key's `max_streams`.
    _slot: Option<StreamSlot>,
}

impl Client {
    /// Writes what is queued.
    async fn write(&mut self, socket: &mut Socket) -> Result<Wrote, WsError> {
        let drained = self.stream.mailbox().drain(WRITE_BYTES);
        self.stream.resync(drained.resync_requests);
        let mut wrote = false;
        for chunk in drained.batch.into_chunks() {
            // A text frame of the queued JSON as it is: serde_json wrote it, so it is
            // UTF-8, and `Message::Text` would check that again for every client.
            let frame = Frame::message(chunk, OpCode::Data(Data::Text), true);
            socket.feed(Message::Frame(frame)).await?;
            wrote = true;
        }
        let close_with = |status: &Status, code| {
            let mut error = error_body(status)["error"].clone();
            error["type"] = "error".into();
            (
                Message::text(error.to_string()),
                close(code, status.message()),
            )
        };
        let end = match drained.closed {
            None | Some(Closed::ClientLeft) => None,
            Some(Closed::Refused(status)) => Some(close_with(
                &status,
                match status.code() {
                    Code::Unavailable => CloseCode::Away,
                    _ => CloseCode::Policy,
                },
            )),
            Some(Closed::TooSlow { queued }) => Some(close_with(
                &Status::resource_exhausted(format!(
                    "client too slow: {queued} events were waiting when its queue overflowed; disconnecting as configured (fanout.trade_overflow = \"disconnect\")"
                )),
                CloseCode::Policy,
            )),
        };
        if let Some((message, _)) = &end {
            socket.feed(message.clone()).await?;
            wrote = true;
        }
        if wrote {
            socket.flush().await?;
        }
        Ok(match end {
            Some((_, frame)) => Wrote::End(frame),
            None if wrote => Wrote::Frames,
            None => Wrote::Nothing,
        })
    }

    /// Queues `object` for the client.
    fn reply(&self, object: Value) {
        self.stream
            .mailbox()
            .push_control(object.to_string().into());
    }

    /// Queues an error reply and counts it.
    fn refuse(&mut self, id: &Value, status: &Status) {
        self.errors += 1;
        let mut error = error_body(status)["error"].clone();
        error["type"] = "error".into();
        error["id"] = id.clone();
        self.reply(error);
    }

    async fn message(&mut self, text: &str) {
        let request: Value = match serde_json::from_str(text) {
            Ok(request @ Value::Object(_)) => request,
            Ok(_) => {
                return self.refuse(&Value::Null, &Status::invalid_argument(
                    "a request is a JSON object: {\"op\": \"auth\" | \"subscribe\" | \"unsubscribe\" | \"ping\", …}",
                ));
            }
            Err(e) => {
                return self.refuse(
                    &Value::Null,
                    &Status::invalid_argument(format!("malformed JSON: {e}")),
                );
            }
        };
        let id = request.get("id").cloned().unwrap_or(Value::Null);
        let op = request.get("op").and_then(Value::as_str).unwrap_or("");
        if !self.authenticated && op != "auth" {
            return self.refuse(
                &id,
                &Status::unauthenticated(
                    "this server takes API keys: send {\"op\":\"auth\",\"key\":…} first",
                ),
            );
        }
        let ack = json!({"type": "ack", "id": id, "op": op});
        let result = match op {
            "auth" => self.auth(&request),
            "subscribe" => {
                let result = match subscribe_request(&request) {
                    Ok(subscribe) => {
                        let ack = ack.to_string().into();
                        self.stream.subscribe(subscribe, ack).await
                    }
                    Err(status) => Err(status),
                };
                if let Err(status) = result {
                    self.refuse(&id, &status);
                }
                // Acknowledged in front of the subscriptions' state.
                return;
            }
            "unsubscribe" => match (instruments(&request), channel(&request)) {
                (Ok(instruments), Ok(channel)) => self.stream.unsubscribe(&instruments, channel),
                (Err(status), _) | (_, Err(status)) => Err(status),
            },
            "ping" => {
                let time = self.state.clock.now().0.to_string();
                self.reply(json!({"type": "pong", "id": id, "time": time}));
                return;
            }
            "" => Err(Status::invalid_argument(
                "the request has no \"op\": auth, subscribe, unsubscribe or ping",
            )),
            other => Err(Status::invalid_argument(format!(
                "unknown op {other:?}: auth, subscribe, unsubscribe or ping"
            ))),
        };
        match result {
            Ok(()) => self.reply(ack),
            Err(status) => self.refuse(&id, &status),
        }
    }

    fn auth(&mut self, request: &Value) -> Result<(), Status> {
        let Some(keys) = &self.state.keys else {
            // Nothing to prove on a server without keys.
            return Ok(());
        };
        let secret = request
            .get("key")
            .and_then(Value::as_str)
            .ok_or_else(|| Status::invalid_argument("auth needs \"key\": the API key's secret"))?;
        let header = HeaderValue::from_str(&format!("Bearer {secret}"))
            .map_err(|_| Status::unauthenticated("unknown or revoked API key"))?;
        let key = keys.authorize(Some(&header), Role::Subscribe)?;
        let slot = keys.open_stream(&key)?;
        self.revoked = Some(key.revoked());
        self.stream.authenticate(key)?;
        self._slot = Some(slot);
        self.authenticated = true;
        Ok(())
    }
}

fn instruments(request: &Value) -> Result<Vec<String>, Status> {
    let bad = || {
        Status::invalid_argument("\"instruments\" must be a list of names, e.g. [\"SIM:BTC-USD\"]")
    };
    let list = request
        .get("instruments")
        .and_then(Value::as_array)
        .ok_or_else(bad)?;
    list.iter()
        .map(|v| v.as_str().map(str::to_owned).ok_or_else(bad))
        .collect()
}

fn channel(request: &Value) -> Result<Channel, Status> {
    match request.get("channel").and_then(Value::as_str) {
        Some("book") => Ok(Channel::Book),
        Some("bbo") => Ok(Channel::Bbo),
        Some("trades") => Ok(Channel::Trades),
        Some("candles") => Ok(Channel::Candles),
        Some(other) => Err(Status::invalid_argument(format!(
            "unknown channel {other:?}: book, bbo, trades or candles"
        ))),
        None => Err(Status::invalid_argument(
            "\"channel\" is required: book, bbo, trades or candles",
        )),
    }
}

/// A whole number field, or `default` when absent.
fn count(request: &Value, field: &str, default: u32) -> Result<u32, Status> {
    match request.get(field) {
        None | Some(Value::Null) => Ok(default),
        Some(value) => value
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| {
                Status::invalid_argument(format!("\"{field}\" must be a whole number, got {value}"))
            }),
    }
}

fn subscribe_request(request: &Value) -> Result<Subscribe, Status> {
    let channel = channel(request)?;
    let book = channel == Channel::Book;
    Ok(Subscribe {
        instruments: instruments(request)?,
        channel,
        depth: count(request, "depth", if book { DEFAULT_DEPTH } else { 0 })?,
        interval_ms: count(
            request,
            "interval_ms",
            if book { DEFAULT_INTERVAL_MS } else { 0 },
        )?,
    })
}
