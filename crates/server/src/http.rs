//! The HTTP listener (`[http] listen`, default `127.0.0.1:50052`): `/metrics`
//! (OpenMetrics text, [`crate::metrics`]), `/healthz` (the process answers), `/readyz`
//! (200 while serving, 503 from the start of a drain, so a load balancer stops sending
//! clients before the gRPC listener goes), `/api/v1/stats` (JSON, with the
//! per-subscriber detail metrics leave out), and the reads any HTTP client can make:
//! `/api/v1/instruments`, `/api/v1/snapshot/{instrument}?depth=N` and `/api/v1/history`
//! (NDJSON, streamed), answered by the gRPC services' own code in the JSON form of
//! [`raven_proto::json`], behind the same API keys (roles `subscribe` and `history`) when
//! keys are configured; a refusal is `{"error": {"code", "message"}}` with the gRPC
//! code's name (in a history already under way: its last line). `/ws` is the WebSocket
//! JSON gateway ([`ws`]) and `/` the dashboard page that uses it ([`page`]). It keeps
//! serving through the drain and stops last.

mod conn;
mod page;
mod ws;

pub use conn::HttpConnections;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use futures::StreamExt;
use prost::Message;
use raven_model::StatusKind;
use raven_model::UnixNanos;
use raven_proto::history_server::History;
use raven_proto::market_server::Market;
use raven_proto::wire::EncodedBatch;
use raven_proto::{json as event_json, pb};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tonic::{Code, Request, Status};

use crate::api::auth::{Keys, Role};
use crate::api::calls::CODES;
use crate::api::history::HistoryApi;
use crate::api::market::MarketApi;
use crate::clock::Clock;
use crate::histogram::quantile_bound;
use crate::metrics::{CONTENT_TYPE, Metrics, Sources};
use crate::shutdown::Shutdown;

/// What the handlers read.
pub struct HttpState {
    /// The server's registry.
    pub metrics: Metrics,
    /// The counters behind it, for `/api/v1/stats`.
    pub sources: Sources,
    /// Fired when the server's drain begins: not ready from then on.
    pub draining: Shutdown,
    /// For the uptime.
    pub clock: Arc<dyn Clock>,
    /// The gRPC market service, which answers the market reads.
    pub market: MarketApi,
    /// The gRPC history service, which answers `/api/v1/history`.
    pub history: HistoryApi,
    /// The API keys, when the server takes only keyed callers.
    pub keys: Option<Arc<Keys>>,
}

impl HttpState {
    /// `message` as a gRPC request from the caller `headers` name, if it may make it.
    fn request<T>(
        &self,
        headers: &HeaderMap,
        role: Role,
        message: T,
    ) -> Result<Request<T>, Status> {
        let mut request = Request::new(message);
        if let Some(keys) = &self.keys {
            let key = keys.authorize(headers.get(header::AUTHORIZATION), role)?;
            request.extensions_mut().insert(key);
        }
        Ok(request)
    }
}

/// Serves the routes on `listener` until `shutdown` fires; a connection has `head_time`
/// to send each request's head.
pub async fn serve(
    listener: TcpListener,
    state: Arc<HttpState>,
    head_time: Duration,
    shutdown: Shutdown,
) {
    let connections = state.sources.http.clone();
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/api/v1/stats", get(stats))
        .route("/api/v1/instruments", get(instruments))
        .route("/api/v1/snapshot/{instrument}", get(snapshot))
        .route("/api/v1/history", get(history))
        .route("/ws", get(ws::upgrade))
        .route("/", get(page::index))
        .route("/web/{*path}", get(page::file))
        .with_state(state);
    conn::serve(listener, app, connections, head_time, shutdown).await;
}

async fn metrics(State(state): State<Arc<HttpState>>) -> Response {
    (
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        state.metrics.encode(),
    )
        .into_response()
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// A refusal: the gRPC code's name and message, under the HTTP status that says the same.
fn refused(status: &Status) -> Response {
    let http = match status.code() {
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::FailedPrecondition => StatusCode::PRECONDITION_FAILED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    json_response(http, &error_body(status))
}

/// `{"error": {"code", "message"}}`: the gRPC code's name and the service's message.
fn error_body(status: &Status) -> Value {
    let code = CODES
        .get(status.code() as usize)
        .copied()
        .unwrap_or("UNKNOWN");
    json!({"error": {"code": code, "message": status.message()}})
}

async fn instruments(State(state): State<Arc<HttpState>>, headers: HeaderMap) -> Response {
    let answer = match state.request(&headers, Role::Subscribe, pb::ListInstrumentsRequest {}) {
        Ok(request) => state.market.list_instruments(request).await,
        Err(status) => Err(status),
    };
    match answer {
        Ok(list) => {
            let list = list.into_inner().instruments;
            let list = list.iter().map(event_json::instrument).collect();
            json_response(StatusCode::OK, &Value::Array(list))
        }
        Err(status) => refused(&status),
    }
}

async fn snapshot(
    State(state): State<Arc<HttpState>>,
    Path(instrument): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let depth = match depth(query.as_deref()) {
        Ok(depth) => depth,
        Err(status) => return refused(&status),
    };
    let message = pb::GetSnapshotRequest { instrument, depth };
    let answer = match state.request(&headers, Role::Subscribe, message) {
        Ok(request) => state.market.get_snapshot(request).await,
        Err(status) => Err(status),
    };
    match answer.map(|e| event_json::snapshot(&e.into_inner())) {
        Ok(Ok(book)) => json_response(StatusCode::OK, &book),
        Ok(Err(e)) => refused(&Status::internal(e.to_string())),
        Err(status) => refused(&status),
    }
}

async fn history(
    State(state): State<Arc<HttpState>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let answer = match history_request(query.as_deref().unwrap_or("")) {
        Ok(message) => match state.request(&headers, Role::History, message) {
            Ok(request) => state.history.query(request).await,
            Err(status) => Err(status),
        },
        Err(status) => Err(status),
    };
    let batches = match answer {
        Ok(stream) => stream.into_inner(),
        Err(status) => return refused(&status),
    };
    let lines = batches.map(|batch| {
        Ok::<_, std::convert::Infallible>(match batch {
            Ok(batch) => ndjson(&batch),
            Err(status) => error_line(&status),
        })
    });
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        axum::body::Body::from_stream(lines),
    )
        .into_response()
}

/// A history message's events, a JSON object a line.
fn ndjson(batch: &EncodedBatch) -> Bytes {
    let events = match pb::StreamResponse::decode(batch.encode_to_vec().as_slice()) {
        Ok(response) => response.events,
        Err(e) => return error_line(&Status::internal(format!("a history message: {e}"))),
    };
    let mut out = Vec::with_capacity(batch.len_bytes() * 2);
    for event in &events {
        match event_json::event(event) {
            Ok(Some(line)) => {
                out.extend_from_slice(line.to_string().as_bytes());
                out.push(b'\n');
            }
            Ok(None) => {}
            Err(e) => {
                out.extend_from_slice(&error_line(&Status::internal(e.to_string())));
                break;
            }
        }
    }
    Bytes::from(out)
}

fn error_line(status: &Status) -> Bytes {
    Bytes::from(format!("{}\n", error_body(status)))
}

/// `/api/v1/history`'s query string: `instruments=A,B` (required), `channels=book,trades`
/// (all when absent), `from` and `to` (RFC 3339 or Unix ns), `limit`. The service checks
/// the rest as it checks a gRPC request.
fn history_request(query: &str) -> Result<pb::HistoryRequest, Status> {
    let mut request = pb::HistoryRequest::default();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decoded(value)?;
        let time = |value: &str| {
            UnixNanos::parse(value)
                .map(UnixNanos::as_u64)
                .map_err(|e| Status::invalid_argument(format!("{name}: {e}")))
        };
        match name {
            "instruments" => request.instruments.extend(
                value
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned),
            ),
            "channels" => {
                for channel in value.split(',').filter(|s| !s.is_empty()) {
                    let number = match channel {
                        "book" => pb::Channel::Book,
                        "bbo" => pb::Channel::Bbo,
                        "trades" => pb::Channel::Trades,
                        "candles" => pb::Channel::Candles,
                        other => {
                            return Err(Status::invalid_argument(format!(
                                "unknown channel {other:?}: book, bbo, trades or candles"
                            )));
                        }
                    };
                    request.channels.push(number as i32);
                }
            }
            "from" => request.from = time(&value)?,
            "to" => request.to = time(&value)?,
            "limit" => {
                request.limit = value.parse().map_err(|_| {
                    Status::invalid_argument(format!("limit {value:?} is not a count"))
                })?;
            }
            other => {
                return Err(Status::invalid_argument(format!(
                    "unknown query parameter {other:?}: this call takes instruments, channels, from, to and limit"
                )));
            }
        }
    }
    Ok(request)
}

/// A query-string value with its `%XX` escapes (and `+` for a space) decoded.
fn percent_decoded(value: &str) -> Result<String, Status> {
    let bad = || Status::invalid_argument(format!("{value:?} is not a valid query value"));
    let mut out = Vec::with_capacity(value.len());
    let mut bytes = value.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'%' => {
                let hex = [bytes.next().ok_or_else(bad)?, bytes.next().ok_or_else(bad)?];
                let hex = std::str::from_utf8(&hex).map_err(|_| bad())?;
                out.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
    }
    String::from_utf8(out).map_err(|_| bad())
}

/// `depth=N` from a query string (0, the whole book, when absent); the service checks N.
fn depth(query: Option<&str>) -> Result<u32, Status> {
    let mut depth = 0;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("depth", value)) => {
                depth = value.parse().map_err(|_| {
                    Status::invalid_argument(format!("depth {value:?} is not a level count"))
                })?;
            }
            _ => {
                return Err(Status::invalid_argument(format!(
                    "unknown query parameter {pair:?}: this call takes depth=N"
                )));
            }
        }
    }
    Ok(depth)
}

async fn ready(State(state): State<Arc<HttpState>>) -> Response {
    if state.draining.is_set() {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready: draining\n").into_response()
    } else if !state.sources.following() {
        let why = "not ready: edge node starting from the checkpoints\n";
        (StatusCode::SERVICE_UNAVAILABLE, why).into_response()
    } else {
        (StatusCode::OK, "ready\n").into_response()
    }
}

async fn stats(State(state): State<Arc<HttpState>>) -> Response {
    let s = &state.sources;
    let fanout = &s.fanout;
    let (delivered, gone) = (fanout.delivered(), fanout.disconnects());
    let recorder = s.recorder.as_ref().map(|r| {
        let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        json!({
            "store_up": r.store_up.load(Ordering::Relaxed),
            "received": load(&r.received),
            "stored": load(&r.stored),
            "spilled": load(&r.spilled),
            "backfilled": load(&r.backfilled),
            "lost": load(&r.lost),
            "batches": load(&r.batches),
            "store_errors": load(&r.failures),
            "queue_bytes": load(&r.memory_bytes),
            "spill_bytes": load(&r.spill_bytes),
            "max_commit_lag_ms": load(&r.max_lag_ns) as f64 / 1e6,
        })
    });
    let replication = s.replication.as_ref().map(|r| {
        let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        json!({
            "up": r.up.load(Ordering::Relaxed),
            "published_batches": load(&r.published),
            "published_events": load(&r.published_events),
            "published_bytes": load(&r.published_bytes),
            "stream_sequence": load(&r.stream_sequence),
            "buffered_bytes": load(&r.buffered_bytes),
            "dropped_batches": load(&r.dropped),
            "dropped_events": load(&r.dropped_events),
            "gaps": load(&r.gaps),
            "resends": load(&r.resends),
            "checkpoints": load(&r.checkpoints),
            "checkpoints_failed": load(&r.checkpoints_failed),
        })
    });
    let edge = s.edge.as_ref().map(|f| {
        let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        let r = &f.replica;
        let (lag, _) = crate::metrics::replication_lag(&s.engine);
        // Bucket bounds: the quantile is at most this.
        let lag_ms = |q| quantile_bound(&lag, q).map(|ns| ns as f64 / 1e6);
        json!({
            "up": f.up.load(Ordering::Relaxed),
            "ready": f.ready.load(Ordering::Relaxed),
            "stale": f.stale.load(Ordering::Relaxed),
            "checkpoints": load(&f.checkpoints),
            "messages": load(&f.messages),
            "live_messages": load(&f.live),
            "bytes": load(&f.bytes),
            "events": load(&r.events),
            "skipped_events": load(&r.skipped),
            "stream_sequence": load(&f.stream_sequence),
            "pending_messages": load(&f.pending),
            "lag_ms": load(&f.lag_ns) as f64 / 1e6,
            "lag_p50_ms_at_most": lag_ms(0.5),
            "lag_p99_ms_at_most": lag_ms(0.99),
            "gaps": load(&r.gaps),
            "missed_events": load(&r.missed),
            "resyncs": load(&r.resyncs),
            "undecodable_messages": load(&r.undecodable),
            "gap_markers": load(&f.gap_markers),
            "consumer_restarts": load(&f.restarts),
            "stale_reports": load(&f.stale_reports),
        })
    });
    let body = json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_secs": state.clock.now().0.saturating_sub(s.started.0) / 1_000_000_000,
        "ready": !state.draining.is_set() && s.following(),
        "feeds": s.catalog.feeds().into_iter()
            .map(|(name, instruments, f)| json!({
                "name": name,
                "instruments": instruments,
                "instruments_down": f.instruments_down(),
                "events": f.events.load(Ordering::Relaxed),
                "gaps": f.statuses(StatusKind::Gap),
                "missed": f.missed.load(Ordering::Relaxed),
                "resyncs": f.statuses(StatusKind::Resync),
                "rejected": f.statuses(StatusKind::Rejected),
                "stale": f.statuses(StatusKind::Stale),
                "last_event_ns": f.last_event_ns.load(Ordering::Relaxed),
                "connects": f.connects.load(Ordering::Relaxed),
                "unknown_fields": f.unknown_fields.load(Ordering::Relaxed),
                "unhandled_messages": f.unhandled.load(Ordering::Relaxed),
            }))
            .collect::<Vec<_>>(),
        "engine": {"shards": s.engine.shards().iter().enumerate()
            .map(|(n, shard)| json!({
                "shard": n,
                "events": shard.events.get(),
                "batches": shard.batches.get(),
                "flushes": shard.flushes.get(),
                "busy_ms": shard.busy_ns.get() as f64 / 1e6,
                "recorder_wait_ms": shard.tap_wait_ns.get() as f64 / 1e6,
                "input_queue_batches": s.engine.queued(n),
            }))
            .collect::<Vec<_>>()},
        "subscribers": {
            "count": fanout.subscribers(),
            "messages": delivered.messages,
            "delivered_events": delivered.events,
            "delivered_bytes": delivered.bytes,
            "disconnects": {
                "client_left": gone.client_left,
                "too_slow": gone.too_slow,
                "refused": gone.refused,
            },
            "lagged": fanout.lagged(),
            "resyncs": fanout.resyncs(),
            "streams": fanout.queues().into_iter()
                .map(|(id, events, bytes)| json!({"id": id, "queued_events": events, "queued_bytes": bytes}))
                .collect::<Vec<_>>(),
        },
        "connections": {
            "open": s.connections.count(),
            "accepted": s.connections.accepted(),
            "closed_by_server": s.connections.closed_by_server(),
        },
        "gateway": {"views": state.market.gateway_views()},
        "recorder": recorder,
        "replication": replication,
        "edge": edge,
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}
