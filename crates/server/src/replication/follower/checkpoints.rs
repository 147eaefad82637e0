//! How an edge starts its books: every instrument's latest checkpoint of the ingest node's
//! newest run, read from the bucket and handed to its replica shard before the stream is
//! read from the oldest of them.

use std::sync::atomic::Ordering;

use futures::StreamExt;
use prost::Message as _;

use super::{Following, RETRY_AFTER};
use crate::engine::Replicated;
use crate::replication::Checkpoint;

/// Checkpoints read from the bucket at once, at the start.
const BUCKET_READS: usize = 64;

impl Following {
    /// Reads every checkpoint of the newest run from the bucket and hands each to its
    /// shard; returns the stream sequence to read from (0: the stream's start), or `None`
    /// once the engine has stopped.
    pub(super) async fn load_checkpoints(&mut self) -> Option<u64> {
        let bucket = self.config.bucket_stream_config().name;
        let mut failed = false;
        let mut checkpoints = loop {
            match self.read_bucket(&bucket).await {
                Ok(read) => break read,
                Err(error) => {
                    if !failed {
                        tracing::warn!(%bucket, %error, "edge: cannot read the checkpoints; trying again");
                    }
                    failed = true;
                    tokio::time::sleep(RETRY_AFTER).await;
                }
            }
        };
        self.run = checkpoints.iter().map(|c| c.run).max().unwrap_or(0);
        checkpoints.retain(|c| c.run == self.run);
        let from = checkpoints
            .iter()
            .map(|c| c.stream_sequence)
            .min()
            .unwrap_or(0);
        self.stats
            .checkpoints
            .store(checkpoints.len() as u64, Ordering::Relaxed);
        for checkpoint in checkpoints {
            let origin = checkpoint.shard;
            self.origins = self.origins.max(origin + 1);
            if !self
                .hand(origin, Replicated::Checkpoint(Box::new(checkpoint)))
                .await
            {
                return None;
            }
        }
        Some(from)
    }

    /// The latest checkpoint of every instrument in the bucket's stream (none before the
    /// ingest node made it): its keys listed, then each one's latest read directly. (A
    /// consumer of each key's last message races the checkpoints that keep replacing
    /// them while it delivers: a busy book's could be missed.)
    async fn read_bucket(&self, bucket: &str) -> Result<Vec<Checkpoint>, String> {
        let stream = match self.js.get_stream(bucket).await {
            Ok(stream) => stream,
            Err(e) if crate::replication::stream_not_found(&e) => return Ok(Vec::new()),
            Err(e) => return Err(e.to_string()),
        };
        let mut listed = stream
            .info_with_subjects(format!("$KV.{}.>", self.config.bucket()))
            .await
            .map_err(|e| e.to_string())?;
        let mut keys = Vec::new();
        while let Some(key) = listed.next().await {
            keys.push(key.map_err(|e| e.to_string())?.0);
        }
        let read: Vec<_> = futures::stream::iter(keys)
            .map(|key| {
                let stream = &stream;
                async move { (stream.direct_get_last_for_subject(key.clone()).await, key) }
            })
            .buffer_unordered(BUCKET_READS)
            .collect()
            .await;
        let mut checkpoints = Vec::with_capacity(read.len());
        for (found, key) in read {
            let message = found.map_err(|e| format!("{key}: {e}"))?;
            match Checkpoint::decode(message.payload.as_ref()) {
                Ok(checkpoint) => checkpoints.push(checkpoint),
                Err(e) => {
                    tracing::error!(%key, error = %e, "edge: a checkpoint in the bucket does not decode; skipped")
                }
            }
        }
        Ok(checkpoints)
    }
}
