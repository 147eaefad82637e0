//! One WebSocket client's subscriptions: the requests of the gRPC `Stream` call, checked
//! the same way and under the same limits (per request, per stream, per key, per second),
//! served from the shared JSON [`views`](super::views) into a mailbox of JSON objects.
//! The socket itself (messages, auth, close codes) is the HTTP listener's
//! (`crate::http::ws`).

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use raven_model::{Channel, InstrumentId};
use tonic::Status;

use super::views::ViewKey;
use super::{MarketApi, MarketService, Pace};
use crate::api::auth::Key;
use crate::api::request;
use crate::fanout::{Form, Mailbox};

/// The longest conflation interval a book subscription may ask for.
pub const MAX_INTERVAL_MS: u32 = 60_000;

/// A subscribe request.
#[derive(Debug, Clone)]
pub struct Subscribe {
    /// Instrument names.
    pub instruments: Vec<String>,
    /// The channel.
    pub channel: Channel,
    /// Book levels per side (0: all); 0 for other channels.
    pub depth: u32,
    /// Book only: the latest book at most once per this many ms (0: every change).
    pub interval_ms: u32,
}

/// A WebSocket client's side of the market service. Dropping it gives everything back.
pub struct JsonStream {
    service: Arc<MarketService>,
    mailbox: Arc<Mailbox>,
    subscriptions: HashMap<(InstrumentId, Channel), ViewKey>,
    key: Option<Arc<Key>>,
    pace: Pace,
}

impl MarketApi {
    /// The gateway's views open now: what it transcodes, once each, for all its clients.
    pub fn gateway_views(&self) -> usize {
        self.0.views.count()
    }

    /// A new client stream, as the caller `key` (if keys are configured and it has
    /// authenticated yet).
    pub fn json_stream(&self, key: Option<Arc<Key>>) -> JsonStream {
        let service = self.0.clone();
        let limits = service.limits;
        let mailbox = service.fanout.open_as(
            limits.fanout.queue,
            limits.fanout.trade_overflow,
            Form::Json,
        );
        JsonStream {
            service,
            mailbox,
            subscriptions: HashMap::new(),
            key,
            pace: Pace::default(),
        }
    }
}

impl JsonStream {
    /// Where its output queues: JSON objects, one a message.
    pub fn mailbox(&self) -> &Arc<Mailbox> {
        &self.mailbox
    }

    /// When a client that last wrote at `last` may write again: the gRPC streams' write
    /// budget, shared with them (`fanout.write_budget_per_s`), so that many browsers
    /// get more messages per write rather than a write per message each.
    pub fn next_write(&self, last: tokio::time::Instant) -> Option<tokio::time::Instant> {
        self.service.fanout.next_write(last)
    }

    /// The caller is `key` from now on (its subscriptions count against it).
    pub fn authenticate(&mut self, key: Arc<Key>) -> Result<(), Status> {
        if !self.subscriptions.is_empty() {
            return Err(Status::failed_precondition(
                "authenticate before subscribing: this stream already holds subscriptions",
            ));
        }
        self.key = Some(key);
        Ok(())
    }

    /// Subscribes to `request`'s instruments, all or none, queueing `ack` in front of
    /// the subscriptions' initial state. A subscription to an (instrument, channel)
    /// already held is replaced when its depth or interval differ.
    pub async fn subscribe(&mut self, request: Subscribe, ack: Bytes) -> Result<(), Status> {
        self.pace.check(&self.service)?;
        let Subscribe {
            instruments,
            channel,
            depth,
            interval_ms,
        } = request;
        let depth = request::depth(depth)?;
        if channel != Channel::Book && (depth != 0 || interval_ms != 0) {
            return Err(Status::invalid_argument(
                "depth and interval_ms apply to the book channel only",
            ));
        }
        if interval_ms > MAX_INTERVAL_MS {
            return Err(Status::invalid_argument(format!(
                "interval_ms {interval_ms} is too long; use 0 (every change) up to {MAX_INTERVAL_MS}"
            )));
        }
        let ids = self.service.resolve_all(&instruments, "subscribe")?;
        if let Some(key) = &self.key {
            for name in &instruments {
                key.check(name)?;
            }
        }
        let mut wanted: Vec<(InstrumentId, &String)> = Vec::with_capacity(ids.len());
        for (id, name) in ids.into_iter().zip(&instruments) {
            if !wanted.iter().any(|w| w.0 == id) {
                wanted.push((id, name));
            }
        }
        let new = wanted
            .iter()
            .filter(|(id, _)| !self.subscriptions.contains_key(&(*id, channel)))
            .count();
        self.service
            .admit(self.key.as_deref(), self.subscriptions.len(), new)?;
        // The views queue their state as they are joined; the ack goes in front of it.
        self.mailbox.hold();
        let joined = self.join(wanted, channel, depth, interval_ms).await;
        if joined.is_ok() {
            self.mailbox.prepend_control(vec![ack]);
        }
        self.mailbox.release();
        let joined = match joined {
            Ok(joined) => joined,
            Err(status) => {
                if let Some(key) = &self.key {
                    key.unsubscribed(new);
                }
                return Err(status);
            }
        };
        self.service.fanout.subscribed(new);
        for view in joined {
            let old = self.subscriptions.insert((view.instrument, channel), view);
            if let Some(old) = old {
                self.service.views.leave(old, self.mailbox.id());
            }
        }
        Ok(())
    }

    /// Joins the views of `wanted`, all or none.
    async fn join(
        &self,
        wanted: Vec<(InstrumentId, &String)>,
        channel: Channel,
        depth: u32,
        interval_ms: u32,
    ) -> Result<Vec<ViewKey>, Status> {
        let mut joined = Vec::new();
        for (id, name) in wanted {
            let view = ViewKey {
                instrument: id,
                channel,
                depth,
                interval_ms,
            };
            if self.subscriptions.get(&(id, channel)) == Some(&view) {
                continue;
            }
            let name = request::name(name)?;
            let result = self
                .service
                .views
                .join(view, &name, self.mailbox.clone())
                .await;
            if let Err(status) = result {
                for view in joined {
                    self.service.views.leave(view, self.mailbox.id());
                }
                return Err(status);
            }
            joined.push(view);
        }
        Ok(joined)
    }

    /// Ends the subscriptions to `instruments` on `channel` (those not held are no-ops).
    pub fn unsubscribe(&mut self, instruments: &[String], channel: Channel) -> Result<(), Status> {
        let ids = self.service.resolve_all(instruments, "unsubscribe")?;
        for id in ids {
            if let Some(view) = self.subscriptions.remove(&(id, channel)) {
                self.service.views.leave(view, self.mailbox.id());
                self.service.fanout.unsubscribed(1);
                if let Some(key) = &self.key {
                    key.unsubscribed(1);
                }
            }
        }
        Ok(())
    }

    /// Asks for resync snapshots of the book views the mailbox overflowed.
    pub fn resync(&self, requests: Vec<(InstrumentId, u32)>) {
        for (instrument, _) in requests {
            if let Some(view) = self.subscriptions.get(&(instrument, Channel::Book)) {
                self.service.views.resync(*view, self.mailbox.id());
            }
        }
    }
}

impl Drop for JsonStream {
    fn drop(&mut self) {
        for view in self.subscriptions.values() {
            self.service.views.leave(*view, self.mailbox.id());
        }
        if let Some(key) = &self.key {
            key.unsubscribed(self.subscriptions.len());
        }
        self.service.fanout.unsubscribed(self.subscriptions.len());
        self.mailbox.close(crate::fanout::Closed::ClientLeft);
        self.service.fanout.remove(self.mailbox.id());
    }
}
