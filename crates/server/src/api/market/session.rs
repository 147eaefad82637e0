//! One client's `Stream` call: a task reading its requests (subscribe, unsubscribe,
//! heartbeat) and a response stream draining its mailbox. A guard owned by the response
//! stream cleans up when tonic drops it, which is what happens when the client goes away
//! (HTTP/2 keepalive catches peers that vanish without closing).

use std::collections::HashSet;
use std::sync::Arc;

use bytes::BytesMut;
use raven_model::{Channel, InstrumentId};
use raven_proto::pb::{self, stream_request::Request as Req};
use raven_proto::wire;
use tokio::sync::oneshot;
use tokio::task::AbortHandle;
use tonic::{Status, Streaming};

use super::{MarketService, Pace, engine_status};
use crate::api::auth::Key;
use crate::api::{EventStream, request};
use crate::engine::{Command, EngineError};
use crate::fanout::{Closed, Mailbox};
use crate::query::{self, Backfill};

/// Cleans up after a stream, however it ends.
struct Guard {
    service: Arc<MarketService>,
    mailbox: Arc<Mailbox>,
    reader: AbortHandle,
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.mailbox.close(Closed::ClientLeft);
        self.reader.abort();
        self.service.commands.detach(self.mailbox.id());
        self.service.fanout.remove(self.mailbox.id());
    }
}

/// Starts a session and returns its response stream.
pub(super) fn open(
    service: Arc<MarketService>,
    inbound: Streaming<pb::StreamRequest>,
    key: Option<Arc<Key>>,
) -> EventStream {
    let limits = service.limits;
    let mailbox = service
        .fanout
        .open(limits.fanout.queue, limits.fanout.trade_overflow);
    let reader = tokio::spawn(read_requests(
        service.clone(),
        mailbox.clone(),
        inbound,
        key,
    ));
    let guard = Guard {
        service,
        mailbox,
        reader: reader.abort_handle(),
    };
    Box::pin(futures::stream::unfold(
        Some((guard, None::<tokio::time::Instant>)),
        move |state| async move {
            let (guard, last_write) = state?;
            let subscribers = guard.service.fanout.subscribers();
            if let Some(next) = last_write.and_then(|l| guard.service.fanout.next_write(l)) {
                tokio::time::sleep_until(next).await;
            }
            loop {
                let drained = guard.mailbox.drain(limits.fanout.batch_bytes(subscribers));
                for (instrument, depth) in drained.resync_requests {
                    let command = Command::Resync {
                        mailbox: guard.mailbox.clone(),
                        instrument,
                        depth,
                    };
                    if guard.service.commands.send(instrument, command).is_err() {
                        // The engine is busy: ask again on the next drain.
                        guard.mailbox.rearm_resync(instrument, depth);
                    }
                }
                match drained.closed {
                    None => {}
                    Some(Closed::ClientLeft) => return None,
                    Some(Closed::Refused(status)) => return Some((Err(status), None)),
                    Some(Closed::TooSlow { queued }) => {
                        let status = Status::resource_exhausted(format!(
                            "client too slow: {queued} events were waiting when its queue overflowed; disconnecting as configured (fanout.trade_overflow = \"disconnect\")"
                        ));
                        return Some((Err(status), None));
                    }
                }
                if !drained.batch.is_empty() {
                    return Some((
                        Ok(drained.batch),
                        Some((guard, Some(tokio::time::Instant::now()))),
                    ));
                }
                guard.mailbox.ready().await;
            }
        },
    ))
}

async fn read_requests(
    service: Arc<MarketService>,
    mailbox: Arc<Mailbox>,
    mut inbound: Streaming<pb::StreamRequest>,
    key: Option<Arc<Key>>,
) {
    let mut session = Session {
        service,
        mailbox,
        subscriptions: HashSet::new(),
        key,
        held: 0,
        pace: Pace::default(),
    };
    loop {
        let result = match inbound.message().await {
            Ok(Some(request)) => session.handle(request).await,
            // The client finished sending; keep streaming to it.
            Ok(None) => return,
            Err(status) => Err(status),
        };
        if let Err(status) = result {
            session.mailbox.close(Closed::Refused(status));
            return;
        }
    }
}

struct Session {
    service: Arc<MarketService>,
    mailbox: Arc<Mailbox>,
    subscriptions: HashSet<(InstrumentId, Channel)>,
    /// The caller's API key, whose subscriptions these are.
    key: Option<Arc<Key>>,
    /// Subscriptions taken from the key's allowance (a failed subscribe ends the
    /// stream, so what it took is given back with the rest at the end).
    held: usize,
    /// Subscribe requests against `subscribe_requests_per_s`.
    pace: Pace,
}

impl Drop for Session {
    /// The stream's subscriptions go back to its key, and leave the count, however the
    /// stream ends.
    fn drop(&mut self) {
        if let Some(key) = &self.key {
            key.unsubscribed(self.held);
        }
        self.service.fanout.unsubscribed(self.subscriptions.len());
    }
}

impl Session {
    async fn handle(&mut self, request: pb::StreamRequest) -> Result<(), Status> {
        match request.request {
            Some(Req::Subscribe(s)) => self.subscribe(s).await,
            Some(Req::Unsubscribe(u)) => self.unsubscribe(u).await,
            Some(Req::Heartbeat(h)) => {
                let mut buf = BytesMut::new();
                wire::put_heartbeat_ack(&mut buf, h.id, self.service.clock.now().0);
                self.mailbox.push_control(buf.freeze());
                Ok(())
            }
            None => Err(Status::invalid_argument(
                "empty StreamRequest: set one of subscribe, unsubscribe or heartbeat",
            )),
        }
    }

    async fn subscribe(&mut self, s: pb::Subscribe) -> Result<(), Status> {
        self.pace.check(&self.service)?;
        let channel = request::channel(s.channel)?;
        let depth = request::depth(s.depth)?;
        if depth != 0 && channel != Channel::Book {
            return Err(Status::invalid_argument(
                "depth applies to the book channel only",
            ));
        }
        let ids = self.service.resolve_all(&s.instruments, "subscribe")?;
        if let Some(key) = &self.key {
            for name in &s.instruments {
                key.check(name)?;
            }
        }
        let new = ids
            .iter()
            .filter(|&&id| !self.subscriptions.contains(&(id, channel)))
            .count();
        self.service
            .admit(self.key.as_deref(), self.subscriptions.len(), new)?;
        if self.key.is_some() {
            self.held += new;
        }
        let recorded = match s.start {
            0 => None,
            start => Some(self.history_source(start, channel, depth)?),
        };
        // What the recorded events of all the request's instruments may take together.
        let mut budget = self.service.limits.start_backlog_bytes;
        for id in ids {
            if recorded.is_some() {
                // Live events queue behind the held output until the history is in front.
                self.mailbox.hold();
            }
            let (done, finished) = oneshot::channel();
            let command = Command::Subscribe {
                mailbox: self.mailbox.clone(),
                instrument: id,
                channel,
                depth,
                state: recorded.is_none(),
                done,
            };
            let sent = self.service.send(id, command).await;
            // Waiting keeps requests ordered: a heartbeat sent after a subscribe is
            // answered after that subscription's snapshot.
            let upto = match sent {
                Ok(()) => finished
                    .await
                    .map_err(|_| engine_status(EngineError::Stopped)),
                Err(e) => Err(e),
            };
            if let Some(recorded) = &recorded {
                let backlog = match upto {
                    Ok(upto) => {
                        let name = self
                            .service
                            .catalog
                            .registry()
                            .name(id)
                            .map(|n| n.to_string());
                        let name = name.unwrap_or_default();
                        // Boxed: every session's task holds its largest await inline,
                        // and a read of the recording or of an edge's stream is ~10 KiB
                        // of state that few sessions ever use (10,000 clients held 100
                        // MiB more with it inline, BENCHMARKS.md).
                        Box::pin(query::backfill(
                            recorded,
                            &name,
                            channel,
                            s.start,
                            upto,
                            &mut budget,
                        ))
                        .await
                        .map_err(Status::from)
                    }
                    Err(e) => Err(e),
                };
                if let Ok(rows) = &backlog {
                    self.mailbox.prepend_control(rows.clone());
                }
                self.mailbox.release();
                backlog?;
            } else {
                upto?;
            }
            if self.subscriptions.insert((id, channel)) {
                self.service.fanout.subscribed(1);
            }
        }
        Ok(())
    }

    /// Checks a subscription with a start time can be served from the recording.
    fn history_source(&self, start: u64, channel: Channel, depth: u32) -> Result<Backfill, Status> {
        let recorded = self.service.recorded.clone().ok_or_else(|| {
            Status::failed_precondition(
                "recording is off on this server (store.url = \"off\"): a subscription cannot start from history",
            )
        })?;
        request::not_future("start", start, self.service.clock.now().0)?;
        if channel == Channel::Book && depth != 0 {
            return Err(Status::invalid_argument(
                "a book subscription with a start time is full depth: use depth 0",
            ));
        }
        Ok(recorded)
    }

    async fn unsubscribe(&mut self, u: pb::Unsubscribe) -> Result<(), Status> {
        let channel = request::channel(u.channel)?;
        let ids = self.service.resolve_all(&u.instruments, "unsubscribe")?;
        for id in ids {
            let (done, finished) = oneshot::channel();
            let command = Command::Unsubscribe {
                subscriber: self.mailbox.id(),
                instrument: id,
                channel,
                done,
            };
            self.service.send(id, command).await?;
            finished
                .await
                .map_err(|_| engine_status(EngineError::Stopped))?;
            if self.subscriptions.remove(&(id, channel)) {
                self.service.fanout.unsubscribed(1);
                if let Some(key) = &self.key {
                    key.unsubscribed(1);
                    self.held -= 1;
                }
            }
        }
        Ok(())
    }
}
