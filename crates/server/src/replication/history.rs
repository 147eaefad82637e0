//! An edge node's subscriptions with a start time, served from the ingest node's stream
//! (an edge records nothing; the stream holds the last `max_age` of every event): the
//! instrument's events published since the start, up to where its live part begins, in
//! the form a recording node sends them (`query::Backlog`). The book is rebuilt from the
//! last full snapshot at or before the start — a changed book has a checkpoint in the
//! stream at least every minute, so a minute before the start is read first, and the
//! whole stream only for a book quiet for longer. The edge's books run on the live copies
//! of the batches, a little ahead of what the stream has stored, so a read waits (briefly)
//! for the stream to hold the events up to where the live part begins.
//!
//! Reads go through a NATS connection of their own (made at the first such subscribe),
//! so that a long read never delays the live stream the follower reads.

use std::time::Duration;

use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use async_nats::jetstream::{self, Context as JetStream};
use bytes::Bytes;
use futures::StreamExt;
use prost::Message as _;
use raven_model::Channel;
use raven_proto::convert::channel_to_pb;
use raven_proto::pb;
use raven_proto::wire::scan;

use super::ReplicationConfig;
use crate::engine::CHECKPOINT_AGE;
use crate::query::{Backlog, QueryError};

/// How long the history connection may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a read waits for the stream to store the events up to where a subscription's
/// live part begins, past what it held when the read began.
const STORED_WAIT: Duration = Duration::from_secs(2);

/// The stream as a source of recent history.
#[derive(Clone)]
pub struct StreamHistory {
    config: ReplicationConfig,
    js: std::sync::Arc<tokio::sync::OnceCell<JetStream>>,
}

impl StreamHistory {
    /// Reads `config`'s stream.
    pub fn new(config: ReplicationConfig) -> StreamHistory {
        StreamHistory {
            config,
            js: std::sync::Arc::default(),
        }
    }

    async fn jetstream(&self) -> Result<&JetStream, QueryError> {
        self.js
            .get_or_try_init(|| async {
                let connect = async_nats::ConnectOptions::new()
                    .name("raven-edge-history")
                    .connection_timeout(CONNECT_TIMEOUT)
                    .connect(self.config.nats.as_str());
                match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
                    Ok(Ok(client)) => Ok(jetstream::new(client)),
                    Ok(Err(e)) => Err(unavailable(&self.config, &e.to_string())),
                    Err(_) => Err(unavailable(&self.config, "no answer")),
                }
            })
            .await
    }

    /// The events of `name` on `channel` published from `start` up to sequence `upto`
    /// (where its live part begins), taken from `budget`.
    pub async fn backlog(
        &self,
        name: &str,
        channel: Channel,
        start: u64,
        upto: u64,
        budget: &mut usize,
    ) -> Result<Vec<Bytes>, QueryError> {
        let windows: &[Option<u64>] = if channel == Channel::Book {
            // A second more than a checkpoint's longest spacing; then the whole stream.
            let before = start.saturating_sub(CHECKPOINT_AGE.0 + 1_000_000_000);
            &[Some(before), None]
        } else {
            &[Some(start)]
        };
        for &from in windows {
            if let Some((rows, bytes)) =
                self.read(name, channel, start, upto, *budget, from).await?
            {
                *budget -= bytes;
                return Ok(rows);
            }
        }
        Err(QueryError::NotFound(format!(
            "the stream no longer holds {name}'s book as it was at the start time (it keeps {} s); start later, or query the ingest node's History",
            self.config.max_age.as_secs()
        )))
    }

    /// One pass over the stream from the message stored at `from` (ns; `None`: its
    /// first). `None` when the book needs an earlier snapshot than it found.
    async fn read(
        &self,
        name: &str,
        channel: Channel,
        start: u64,
        upto: u64,
        budget: usize,
        from: Option<u64>,
    ) -> Result<Option<(Vec<Bytes>, usize)>, QueryError> {
        let js = self.jetstream().await?;
        let failed = |e: &dyn std::fmt::Display| unavailable(&self.config, &e.to_string());
        let mut stream = js
            .get_stream(self.config.stream())
            .await
            .map_err(|e| failed(&e))?;
        let state = stream.info().await.map_err(|e| failed(&e))?.state.clone();
        let book = channel == Channel::Book;
        let wanted = channel_to_pb(channel) as u64;
        let mut backlog = Backlog::new(name, channel, start, upto, budget);
        // A book is rebuilt from a full snapshot: what comes before the first is no use.
        let mut based = !book;
        if state.messages > 0 {
            let deliver_policy = match from {
                Some(ns) => DeliverPolicy::ByStartTime {
                    start_time: time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ns))
                        .map_err(|e| failed(&e))?,
                },
                None => DeliverPolicy::All,
            };
            let consumer = stream
                .create_consumer(pull::OrderedConfig {
                    filter_subject: self.config.events_subject(),
                    deliver_policy,
                    ..Default::default()
                })
                .await
                .map_err(|e| failed(&e))?;
            let mut messages = consumer.messages().await.map_err(|e| failed(&e))?;
            // Past what the stream held, how long to wait for it to store the rest.
            let mut waiting_until = None;
            'messages: loop {
                let next = match waiting_until {
                    None => messages.next().await,
                    Some(deadline) => tokio::time::timeout_at(deadline, messages.next())
                        .await
                        .unwrap_or(None),
                };
                let Some(message) = next else {
                    break;
                };
                let message = message.map_err(|e| failed(&e))?;
                let info = message.info().map_err(|e| failed(&e))?;
                let (sequence, pending) = (info.stream_sequence, info.pending);
                for item in scan::framed(&message.payload) {
                    let (own, header) = item.map_err(|e| {
                        QueryError::DataLoss(format!(
                            "stream message {sequence} does not decode: {e}"
                        ))
                    })?;
                    if header.instrument != name.as_bytes() || header.channel != wanted {
                        continue;
                    }
                    if !book && header.publish_time < start {
                        continue;
                    }
                    let snapshot = (header.body == 10)
                        .then(|| pb::BookSnapshot::decode(header.body_bytes).ok())
                        .flatten();
                    let checkpoint = snapshot.as_ref().is_some_and(|s| s.checkpoint);
                    // A checkpoint after the start is no base: the book at the start
                    // comes from an earlier snapshot, or from one its clients had.
                    based |= snapshot.is_some() && (header.publish_time <= start || !checkpoint);
                    if !based {
                        continue;
                    }
                    if !backlog.push(own, checkpoint)? {
                        break 'messages;
                    }
                }
                if backlog.reached() {
                    break;
                }
                if waiting_until.is_none() && (pending == 0 || sequence >= state.last_sequence) {
                    if !based {
                        break;
                    }
                    // The edge's books follow the live copies of the batches, which NATS
                    // routes before it stores them: the stream may not hold `upto` yet.
                    waiting_until = Some(tokio::time::Instant::now() + STORED_WAIT);
                }
            }
        }
        if !based {
            return Ok(None);
        }
        backlog.finish()?.map(Some).ok_or_else(|| {
            QueryError::Behind(format!(
                "the stream does not hold {name} up to sequence {upto} yet; try again"
            ))
        })
    }
}

fn unavailable(config: &ReplicationConfig, why: &str) -> QueryError {
    QueryError::Behind(format!(
        "cannot read stream {} at {}: {why}",
        config.stream(),
        config.nats
    ))
}
