//! One venue connection, for every venue: connect, subscribe through the control-frame
//! pacer, read frames into the venue's [`Session`] (the codec and its instruments' sync
//! state), answer pings at once, watch liveness (any frame counts) and each instrument's
//! staleness, rotate make-before-break before the connection's age limit or when the
//! venue announces a shutdown, and reconnect after a loss — at once, then with jittered
//! exponential backoff, never giving up. Every fault is a status event on the affected
//! instruments; sequence checks run on the venue's ids as frames arrive, before any queue.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use raven_model::{Channel, FeedEvent, FeedKind, InstrumentId, Status, StatusKind, UnixNanos};
use raven_venues::Action;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use super::pacing::{Attempts, Backoff, Jitter, Window};
use super::rest::Job;
use super::session::{Ignored, Session, Signal};
use super::transport::{self, Stream};
use crate::clock::Clock;
use crate::feed::FeedInput;

/// What reaches a connection from outside its socket.
#[derive(Debug)]
pub enum Command {
    /// A REST snapshot body for `slot`.
    Snapshot {
        /// The instrument's slot.
        slot: usize,
        /// The body.
        body: Bytes,
    },
    /// The engine refused `slot`'s book.
    Resync {
        /// The instrument's slot.
        slot: usize,
    },
}

/// The timing a connection keeps.
#[derive(Debug, Clone)]
pub struct Timing {
    /// Dead after this long without any frame.
    pub liveness: Duration,
    /// Our own pings, so that a quiet venue still answers with frames.
    pub ping_every: Duration,
    /// An instrument without data this long is `Stale` (no reconnect).
    pub stale_after: Duration,
    /// Rotate at this age (the venue's limit is 24 h).
    pub rotate_after: Duration,
    /// Control frames per second we send (the venue's limit, less a margin).
    pub control_per_s: usize,
    /// Connect and handshake deadline.
    pub connect_timeout: Duration,
    /// The old connection of a rotation is read this long after the new one is up, so
    /// nothing in flight on it is lost (the codecs drop what both deliver by venue id).
    pub overlap: Duration,
    /// Engine-requested resyncs of one instrument at most this often.
    pub resync_every: Duration,
}

/// An instrument of a connection.
#[derive(Debug, Clone)]
pub struct Slot {
    /// Its engine id.
    pub id: InstrumentId,
    /// Book or trades carried here (statuses go to these channels).
    pub channels: &'static [Channel],
}

/// Everything a connection is given.
pub struct Link {
    /// For logs: venue and index.
    pub name: String,
    /// Where to connect.
    pub url: String,
    /// Its instruments, by slot.
    pub slots: Vec<Slot>,
    /// The venue's codec.
    pub session: Box<dyn Session>,
    /// Timing.
    pub timing: Timing,
    /// The engine.
    pub input: FeedInput,
    /// Receive times.
    pub clock: Arc<dyn Clock>,
    /// Snapshot requests.
    pub rest: mpsc::Sender<Job>,
    /// Shared by the feed's connections.
    pub attempts: Arc<Mutex<Attempts>>,
    /// Seeds this connection's jitter.
    pub seed: u64,
    /// What the session had ignored at the last count into the feed's stats.
    pub ignored: Ignored,
}

/// Why a connection ended.
enum Ended {
    Lost(String),
    Stopped,
}

struct SlotState {
    last_data: Instant,
    stale: bool,
    last_resync: Option<Instant>,
    resync_due: bool,
}

/// Runs a connection until `stop` says so.
pub async fn run(
    mut link: Link,
    mut commands: mpsc::Receiver<Command>,
    mut stop: watch::Receiver<bool>,
    mut reply: mpsc::Sender<Command>,
) {
    let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(30));
    let mut jitter = Jitter::new(link.seed);
    let mut failures = 0u32;
    let mut was_up = false;
    let mut states: Vec<SlotState> = link
        .slots
        .iter()
        .map(|_| SlotState {
            last_data: Instant::now(),
            stale: false,
            last_resync: None,
            resync_due: false,
        })
        .collect();
    loop {
        // At once after a loss (spread by a few ms of jitter), then backing off.
        let delay = if failures == 0 {
            jitter.upto(Duration::from_millis(20))
        } else {
            backoff.delay(failures - 1, &mut jitter)
        };
        let at = lock(&link.attempts).reserve(Instant::now() + delay);
        tokio::select! {
            _ = tokio::time::sleep_until(at) => {}
            _ = stop.changed() => return,
        }
        let ws = tokio::select! {
            ws = transport::websocket(&link.url, link.timing.connect_timeout) => ws,
            _ = stop.changed() => return,
        };
        let ws = match ws {
            Ok(ws) => ws,
            Err(e) => {
                failures += 1;
                tracing::warn!(connection = %link.name, error = %e, failures, "connect failed; retrying");
                if failures == 1 && !was_up {
                    // Never up: clients would otherwise see an empty book and no reason.
                    emit_all(
                        &link,
                        StatusKind::FeedDown,
                        &format!("cannot connect: {e}; retrying"),
                    );
                }
                continue;
            }
        };
        failures = 0;
        link.input.stats().connects.fetch_add(1, Ordering::Relaxed);
        tracing::info!(connection = %link.name, url = %link.url, "connected");
        let detail = if was_up {
            "connection restored"
        } else {
            "connected"
        };
        emit_all(&link, StatusKind::FeedUp, detail);
        was_up = true;
        match serve(
            &mut link,
            ws,
            &mut commands,
            &mut stop,
            &mut states,
            &mut jitter,
            &mut reply,
        )
        .await
        {
            Ended::Stopped => return,
            Ended::Lost(reason) => {
                tracing::warn!(connection = %link.name, %reason, "connection lost; reconnecting");
                link.session.disconnected();
                emit_all(
                    &link,
                    StatusKind::FeedDown,
                    &format!("connection lost: {reason}"),
                );
            }
        }
    }
}

fn lock(attempts: &Mutex<Attempts>) -> std::sync::MutexGuard<'_, Attempts> {
    attempts.lock().unwrap_or_else(|p| p.into_inner())
}

fn emit_all(link: &Link, kind: StatusKind, detail: &str) {
    let now = link.clock.now();
    let events: Vec<FeedEvent> = link
        .slots
        .iter()
        .flat_map(|slot| {
            slot.channels.iter().map(move |&channel| FeedEvent {
                instrument: slot.id,
                exchange_time: now,
                receive_time: now,
                venue_seq: 0,
                kind: FeedKind::Status(Status {
                    kind,
                    channel,
                    missed: 0,
                    detail: detail.to_owned(),
                }),
            })
        })
        .collect();
    link.input.send(events);
}

/// Adds to the feed's stats what the session ignored since the last count.
fn publish_ignored(link: &mut Link) {
    let now = link.session.ignored();
    let stats = link.input.stats();
    stats.unknown_fields.fetch_add(
        now.unknown_fields - link.ignored.unknown_fields,
        Ordering::Relaxed,
    );
    stats
        .unhandled
        .fetch_add(now.unhandled - link.ignored.unhandled, Ordering::Relaxed);
    link.ignored = now;
}

/// A live connection and, during a rotation, the one it replaces.
struct Sockets {
    ws: WebSocketStream<Stream>,
    old: Option<(WebSocketStream<Stream>, Instant)>,
    opened: Instant,
    last_frame: Instant,
    next_ping: Instant,
    outgoing: std::collections::VecDeque<String>,
    window: Window,
    ping_seq: u64,
}

async fn next_old(
    old: &mut Option<(WebSocketStream<Stream>, Instant)>,
) -> Option<Result<Message, tokio_tungstenite::tungstenite::Error>> {
    match old {
        Some((ws, _)) => ws.next().await,
        None => std::future::pending().await,
    }
}

async fn serve(
    link: &mut Link,
    ws: WebSocketStream<Stream>,
    commands: &mut mpsc::Receiver<Command>,
    stop: &mut watch::Receiver<bool>,
    states: &mut [SlotState],
    jitter: &mut Jitter,
    reply: &mut mpsc::Sender<Command>,
) -> Ended {
    let now = Instant::now();
    let mut s = Sockets {
        ws,
        old: None,
        opened: now,
        last_frame: now,
        next_ping: now + link.timing.ping_every,
        outgoing: link.session.subscriptions().into(),
        window: Window::new(link.timing.control_per_s, Duration::from_secs(1)),
        ping_seq: 0,
    };
    for st in states.iter_mut() {
        st.last_data = now;
        st.stale = false;
    }
    let mut out: Vec<(usize, Action)> = Vec::new();
    // When the frame (or snapshot) behind the actions in `out` arrived: their events'
    // receive time, so receive → publish measures Raven, decoding included.
    let mut received = link.clock.now();
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut rotate = false;
    loop {
        let send_at = if s.outgoing.is_empty() {
            None
        } else {
            Some(Instant::now() + s.window.wait(Instant::now()))
        };
        let old_close = s.old.as_ref().map(|(_, at)| *at);
        let rotate_at = s.opened + link.timing.rotate_after;
        tokio::select! {
            frame = s.ws.next() => {
                s.last_frame = Instant::now();
                received = link.clock.now();
                match frame {
                    Some(Ok(msg)) => {
                        if let Err(reason) = on_message(link, &mut s.window, &mut s.ws, msg, received, &mut out, &mut rotate).await {
                            return Ended::Lost(reason);
                        }
                    }
                    Some(Err(e)) => return Ended::Lost(e.to_string()),
                    None => return Ended::Lost("the venue ended the stream".into()),
                }
            }
            frame = next_old(&mut s.old) => {
                received = link.clock.now();
                match frame {
                    Some(Ok(msg)) => {
                        if let Some((old, _)) = s.old.as_mut() {
                            let mut ignored = false;
                            if on_message(link, &mut s.window, old, msg, received, &mut out, &mut ignored).await.is_err() {
                                s.old = None;
                            }
                        }
                    }
                    _ => s.old = None,
                }
            }
            _ = async { tokio::time::sleep_until(old_close.unwrap_or_else(Instant::now)).await }, if old_close.is_some() => {
                if let Some((mut old, _)) = s.old.take() {
                    let _ = old.close(None).await;
                }
            }
            _ = async { tokio::time::sleep_until(send_at.unwrap_or_else(Instant::now)).await }, if send_at.is_some() => {
                if let Some(frame) = s.outgoing.pop_front() {
                    s.window.record(Instant::now());
                    if let Err(e) = s.ws.send(Message::text(frame)).await {
                        return Ended::Lost(e.to_string());
                    }
                }
            }
            _ = tokio::time::sleep_until(s.next_ping) => {
                // Only an idle connection needs our ping to prove it alive; every ping
                // and pong counts against the venue's control-frame limit.
                let now = Instant::now();
                let idle_from = s.last_frame + link.timing.ping_every;
                let wait = s.window.wait(now);
                if now < idle_from {
                    s.next_ping = idle_from;
                } else if !wait.is_zero() {
                    s.next_ping = now + wait;
                } else {
                    s.next_ping = now + link.timing.ping_every;
                    s.ping_seq += 1;
                    s.window.record(now);
                    if let Err(e) = s.ws.send(Message::Ping(s.ping_seq.to_string().into_bytes().into())).await {
                        return Ended::Lost(e.to_string());
                    }
                }
            }
            _ = tokio::time::sleep_until(s.last_frame + link.timing.liveness) => {
                return Ended::Lost(format!("no frame for {} ms", link.timing.liveness.as_millis()));
            }
            _ = tokio::time::sleep_until(rotate_at), if s.old.is_none() => rotate = true,
            _ = tick.tick() => {
                received = link.clock.now();
                publish_ignored(link);
                let now = Instant::now();
                for (slot, st) in states.iter_mut().enumerate() {
                    if !st.stale && now.saturating_duration_since(st.last_data) >= link.timing.stale_after {
                        st.stale = true;
                        out.push((slot, Action::status(
                            link.slots[slot].channels[0],
                            StatusKind::Stale,
                            0,
                            format!("no data for {} ms; the connection is alive", link.timing.stale_after.as_millis()),
                        )));
                    }
                    if st.resync_due && st.last_resync.is_none_or(|t| now.saturating_duration_since(t) >= link.timing.resync_every) {
                        st.resync_due = false;
                        st.last_resync = Some(now);
                        link.session.resync(slot, "the engine refused the book".into(), &mut out);
                    }
                }
            }
            cmd = commands.recv() => {
                received = link.clock.now();
                match cmd {
                    Some(Command::Snapshot { slot, body }) => link.session.on_snapshot(slot, &body, &mut out),
                    Some(Command::Resync { slot }) => {
                        if let Some(st) = states.get_mut(slot) {
                            st.resync_due = true;
                        }
                    }
                    None => return Ended::Stopped,
                }
            }
            _ = stop.changed() => {
                let _ = s.ws.close(None).await;
                return Ended::Stopped;
            }
        }
        if rotate && s.old.is_none() {
            rotate = false;
            match transport::websocket(&link.url, link.timing.connect_timeout).await {
                Ok(next) => {
                    link.input.stats().connects.fetch_add(1, Ordering::Relaxed);
                    let mut previous = std::mem::replace(&mut s.ws, next);
                    if link.session.overlapping_rotation() {
                        tracing::info!(connection = %link.name, "rotating: the new connection is up, the old one closes after the overlap");
                        s.old = Some((previous, Instant::now() + link.timing.overlap));
                    } else {
                        tracing::info!(connection = %link.name, "rotating: the new connection is up; its books are rebuilt");
                        let _ = previous.close(None).await;
                        link.session.disconnected();
                    }
                    s.opened = Instant::now();
                    s.last_frame = Instant::now();
                    s.window = Window::new(link.timing.control_per_s, Duration::from_secs(1));
                    s.outgoing = link.session.subscriptions().into();
                }
                Err(e) => {
                    tracing::warn!(connection = %link.name, error = %e, "rotation failed; the current connection stays until it ends");
                    // Try again shortly rather than at the next age limit.
                    s.opened = Instant::now() - link.timing.rotate_after
                        + jitter.upto(Duration::from_secs(1));
                }
            }
        }
        if !out.is_empty() {
            dispatch(link, states, &mut out, received, reply, &mut s.outgoing).await;
        }
    }
}

/// Reads one message: text to the session, pings answered and flushed at once (an
/// automatic pong left queued on an idle stream is never sent), close ends it.
async fn on_message(
    link: &mut Link,
    window: &mut Window,
    ws: &mut WebSocketStream<Stream>,
    msg: Message,
    received: UnixNanos,
    out: &mut Vec<(usize, Action)>,
    rotate: &mut bool,
) -> Result<(), String> {
    match msg {
        Message::Text(text) => {
            if link.session.on_text(text.as_str(), received, out) == Signal::Rotate {
                *rotate = true;
            }
            Ok(())
        }
        Message::Ping(_) => {
            window.record(Instant::now());
            ws.flush().await.map_err(|e| e.to_string())
        }
        Message::Close(frame) => Err(match frame {
            Some(f) => format!(
                "the venue closed the connection ({} {})",
                u16::from(f.code),
                f.reason
            ),
            None => "the venue closed the connection".to_owned(),
        }),
        Message::Binary(b) => {
            tracing::debug!(connection = %link.name, bytes = b.len(), "binary frame ignored");
            Ok(())
        }
        Message::Pong(_) | Message::Frame(_) => Ok(()),
    }
}

/// Turns actions into engine events and snapshot requests.
async fn dispatch(
    link: &mut Link,
    states: &mut [SlotState],
    out: &mut Vec<(usize, Action)>,
    now: UnixNanos,
    reply: &mpsc::Sender<Command>,
    outgoing: &mut std::collections::VecDeque<String>,
) {
    let mut events = Vec::with_capacity(out.len());
    let mut resubscribe: Vec<usize> = Vec::new();
    for (slot, action) in out.drain(..) {
        let Some(info) = link.slots.get(slot) else {
            continue;
        };
        let time = |t: UnixNanos| if t == UnixNanos::ZERO { now } else { t };
        let (exchange_time, venue_seq, kind) = match action {
            Action::Snapshot {
                venue_id,
                exchange_time,
                book,
            } => (time(exchange_time), venue_id, FeedKind::Snapshot(book)),
            Action::Delta {
                venue_id,
                exchange_time,
                delta,
            } => (time(exchange_time), venue_id, FeedKind::Delta(delta)),
            Action::Trade {
                exchange_time,
                trade,
            } => (time(exchange_time), 0, FeedKind::Trade(trade)),
            Action::Status {
                channel,
                kind,
                missed,
                detail,
            } => (
                now,
                0,
                FeedKind::Status(Status {
                    kind,
                    channel,
                    missed,
                    detail,
                }),
            ),
            Action::FetchSnapshot { attempt } => {
                if let Some((url, weight)) = link.session.snapshot_request(slot) {
                    let backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(5));
                    let delay = if attempt == 0 {
                        Duration::ZERO
                    } else {
                        backoff.delay(
                            attempt - 1,
                            &mut Jitter::new(link.seed ^ u64::from(attempt)),
                        )
                    };
                    let job = Job {
                        url,
                        weight,
                        not_before: Instant::now() + delay,
                        slot,
                        reply: reply.clone(),
                    };
                    if link.rest.send(job).await.is_err() {
                        tracing::warn!(connection = %link.name, "the snapshot client is gone");
                    }
                }
                continue;
            }
            Action::Resubscribe => {
                if !resubscribe.contains(&slot) {
                    resubscribe.push(slot);
                }
                continue;
            }
        };
        if matches!(
            kind,
            FeedKind::Snapshot(_) | FeedKind::Delta(_) | FeedKind::Trade(_)
        ) {
            let st = &mut states[slot];
            st.last_data = Instant::now();
            st.stale = false;
        }
        events.push(FeedEvent {
            instrument: info.id,
            exchange_time,
            receive_time: now,
            venue_seq,
            kind,
        });
    }
    if !events.is_empty() {
        link.input.send(events);
    }
    if !resubscribe.is_empty() {
        // One set of frames for every book this batch lost, not one per book.
        outgoing.extend(link.session.resubscribe(&resubscribe));
    }
}
