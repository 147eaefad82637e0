//! The follower's live path: the core subscription's copies of the ingest node's batches,
//! and which copy of each batch an edge hands on, the stream's or the live one.
//!
//! An edge reads each batch twice: from the stream (stored, in order, complete: the
//! record) and from a core NATS subscription to the same subjects, which NATS routes as
//! the ingest node publishes, before JetStream has stored the batch and a consumer has
//! delivered it (that store-and-deliver costs ~180 µs on the 2-core VMs here, most of
//! what an edge adds to a client's latency). The live copy may be missing (a slow
//! subscriber's messages are dropped, a reconnect loses some), early (ahead of a batch it
//! follows) or repeated (the publisher sends again what NATS did not acknowledge); the
//! stream's is none of these. So each ingest shard's batches are handed on in their
//! numbered order, each once, whichever copy comes first: a live batch that is next goes
//! on at once, one further ahead waits here (bounded) for the batches before it, and a
//! stream batch already handed on live is skipped.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use futures::{FutureExt, StreamExt};

use super::Following;
use crate::engine::Replicated;

/// Live messages the NATS client queues for the follower at most; past it NATS drops them
/// (the stream's copies follow) rather than hold up to 64Ki of them (up to 256 KiB each).
pub(super) const LIVE_QUEUE: usize = 256;

/// Live batches waiting for an earlier one, at most, in bytes over every shard: past it
/// the stream's copies are waited for instead.
const HELD_BYTES: usize = 8 << 20;

/// Per ingest shard, what has been handed on.
#[derive(Debug, Default)]
struct Shard {
    /// The last batch handed on (0: not known yet, so no live batch can be placed).
    handed: u64,
    /// Live batches after `handed + 1`, by number.
    held: BTreeMap<u64, Bytes>,
}

/// Each ingest shard's place in its numbered batches (see the module doc).
#[derive(Debug, Default)]
pub(super) struct Live {
    shards: Vec<Shard>,
    held_bytes: usize,
}

impl Live {
    fn shard(&mut self, origin: u32) -> &mut Shard {
        let index = origin as usize;
        if self.shards.len() <= index {
            self.shards.resize_with(index + 1, Shard::default);
        }
        &mut self.shards[index]
    }

    /// The stream delivered batch `batch` of `origin`: whether to hand it on (false: its
    /// live copy was). The stream's order is the batches' order, so it places the shard.
    pub(super) fn streamed(&mut self, origin: u32, batch: u64) -> bool {
        let shard = self.shard(origin);
        if batch <= shard.handed {
            return false;
        }
        shard.handed = batch;
        true
    }

    /// The live copy of batch `batch` of `origin` arrived: its bytes when it is to be
    /// handed on now; otherwise it is held (it is ahead) or dropped (it was handed on).
    pub(super) fn arrived(&mut self, origin: u32, batch: u64, bytes: Bytes) -> Option<Bytes> {
        let size = bytes.len();
        let full = self.held_bytes + size > HELD_BYTES;
        let shard = self.shard(origin);
        if shard.handed == 0 || batch <= shard.handed {
            return None;
        }
        if batch == shard.handed + 1 {
            shard.handed = batch;
            return Some(bytes);
        }
        if full {
            // The stream brings them all in time; what was held is freed for later ones.
            let freed: usize = shard.held.values().map(Bytes::len).sum();
            shard.held.clear();
            self.held_bytes -= freed;
            return None;
        }
        if shard.held.insert(batch, bytes).is_none() {
            self.held_bytes += size;
        }
        None
    }

    /// The held live batch of `origin` that comes next, taken and counted as handed on;
    /// those at or below the last handed on are let go on the way.
    pub(super) fn next_held(&mut self, origin: u32) -> Option<(u64, Bytes)> {
        let index = origin as usize;
        let shard = self.shards.get_mut(index)?;
        while let Some(entry) = shard.held.first_entry() {
            let batch = *entry.key();
            if batch > shard.handed + 1 {
                return None;
            }
            let bytes = entry.remove();
            self.held_bytes -= bytes.len();
            if batch == shard.handed + 1 {
                shard.handed = batch;
                return Some((batch, bytes));
            }
        }
        None
    }

    /// Batches up to `last` of `origin` were dropped by the ingest node (a gap marker,
    /// in the stream's order): the next live one may follow at once.
    pub(super) fn dropped(&mut self, origin: u32, last: u64) {
        let shard = self.shard(origin);
        shard.handed = shard.handed.max(last);
    }

    /// Where each shard stands is no longer known (messages left the stream unread, or
    /// a new run began): live batches wait until the stream places each shard again.
    pub(super) fn forget(&mut self) {
        self.shards.clear();
        self.held_bytes = 0;
    }
}

/// The ingest shard and batch number a batch's id (`<run>.<shard>.<batch>`) names, with
/// its run.
pub(super) fn parse_batch_id(id: &str) -> Option<(u64, u32, u64)> {
    let mut parts = id.split('.');
    let run = parts.next()?.parse().ok()?;
    let shard = parts.next()?.parse().ok()?;
    let batch = parts.next()?.parse().ok()?;
    parts.next().is_none().then_some((run, shard, batch))
}

impl Following {
    /// A batch's live copy: handed on at once when it is its shard's next (with the held
    /// ones it lets follow), held or dropped otherwise (see `live`). Until the edge is
    /// ready it is still reading what the stream held at its start, far behind: live
    /// copies are let go. False once the engine has stopped.
    async fn went_live(&mut self, message: async_nats::Message) -> bool {
        if !self.stats.ready.load(Ordering::Relaxed) {
            return true;
        }
        let Some((run, origin, batch)) = message
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Msg-Id"))
            .and_then(|id| parse_batch_id(id.as_str()))
        else {
            return true;
        };
        if run != self.run {
            return true;
        }
        match self.order.arrived(origin, batch, message.payload) {
            Some(bytes) => {
                self.hand_live(origin, batch, bytes).await && self.hand_held(origin).await
            }
            None => true,
        }
    }

    /// Takes the live copies already here (at most [`LIVE_QUEUE`], so that a live path
    /// busier than the reader cannot hold the stream up); false once the engine has
    /// stopped.
    pub(super) async fn live_waiting(&mut self) -> bool {
        for _ in 0..LIVE_QUEUE {
            let Some(live) = self.live.as_mut() else {
                return true;
            };
            match live.next().now_or_never() {
                Some(live) => {
                    if !self.took_live(live).await {
                        return false;
                    }
                }
                None => return true,
            }
        }
        true
    }

    /// What the live subscription gave (`None`: it ended, and the stream is read alone);
    /// false once the engine has stopped.
    pub(super) async fn took_live(&mut self, live: Option<async_nats::Message>) -> bool {
        match live {
            Some(message) => self.went_live(message).await,
            None => {
                tracing::warn!("edge: the live subscription ended; reading the stream alone");
                self.live = None;
                true
            }
        }
    }

    /// Hands on the held live copies that now come next for `origin`; false once the
    /// engine has stopped.
    pub(super) async fn hand_held(&mut self, origin: u32) -> bool {
        while let Some((batch, bytes)) = self.order.next_held(origin) {
            if !self.hand_live(origin, batch, bytes).await {
                return false;
            }
        }
        true
    }

    /// Hands on a live copy of batch `batch` of `origin`; false once the engine has
    /// stopped.
    async fn hand_live(&self, origin: u32, batch: u64, bytes: bytes::Bytes) -> bool {
        self.stats.live.fetch_add(1, Ordering::Relaxed);
        let batch = Replicated::Batch {
            stream_sequence: 0,
            batch,
            origin,
            bytes,
        };
        self.hand(origin, batch).await
    }
}

/// The live subscription's next message; never, without one.
pub(super) async fn next_live(
    live: &mut Option<async_nats::Subscriber>,
) -> Option<async_nats::Message> {
    match live {
        Some(live) => live.next().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(n: u8) -> Bytes {
        Bytes::from(vec![n; 4])
    }

    #[test]
    fn a_live_batch_waits_until_the_stream_places_its_shard() {
        let mut live = Live::default();
        assert_eq!(live.arrived(0, 1, bytes(1)), None);
        assert!(live.streamed(0, 1));
        assert_eq!(live.arrived(0, 2, bytes(2)), Some(bytes(2)));
        assert!(
            !live.streamed(0, 2),
            "handed on live: the stream's copy is skipped"
        );
        assert!(live.streamed(0, 3));
    }

    #[test]
    fn early_live_batches_follow_the_one_the_stream_brings_in_order_once() {
        let mut live = Live::default();
        assert!(live.streamed(1, 10));
        // 11 was dropped on the live path; 12 and 13 arrive ahead of it, 12 twice.
        assert_eq!(live.arrived(1, 12, bytes(12)), None);
        assert_eq!(live.arrived(1, 13, bytes(13)), None);
        assert_eq!(live.arrived(1, 12, bytes(12)), None);
        assert_eq!(live.next_held(1), None, "11 is not here yet");
        assert!(live.streamed(1, 11));
        assert_eq!(live.next_held(1), Some((12, bytes(12))));
        assert_eq!(live.next_held(1), Some((13, bytes(13))));
        assert_eq!(live.next_held(1), None);
        assert_eq!(live.held_bytes, 0);
        assert!(!live.streamed(1, 12));
        assert!(!live.streamed(1, 13));
        assert!(live.streamed(1, 14));
        // Shard 0 was never placed: its live batches wait for the stream.
        assert_eq!(live.arrived(0, 1, bytes(1)), None);
    }

    #[test]
    fn held_batches_the_stream_already_brought_are_let_go() {
        let mut live = Live::default();
        assert!(live.streamed(0, 1));
        assert_eq!(live.arrived(0, 3, bytes(3)), None);
        assert_eq!(live.arrived(0, 5, bytes(5)), None);
        assert!(live.streamed(0, 2));
        assert!(!live.streamed(0, 2));
        assert_eq!(live.next_held(0), Some((3, bytes(3))));
        assert!(live.streamed(0, 4));
        assert_eq!(live.next_held(0), Some((5, bytes(5))));
        assert!(live.streamed(0, 6));
        assert_eq!(live.arrived(0, 8, bytes(8)), None);
        assert!(live.streamed(0, 7));
        assert!(live.streamed(0, 8), "the stream came first for 8 after all");
        assert_eq!(live.next_held(0), None);
        assert_eq!(live.held_bytes, 0);
    }

    #[test]
    fn a_gap_marker_lets_the_batch_after_the_dropped_ones_go_live() {
        let mut live = Live::default();
        assert!(live.streamed(2, 4));
        assert_eq!(
            live.arrived(2, 8, bytes(8)),
            None,
            "5..=7 dropped: not next"
        );
        live.dropped(2, 7);
        assert_eq!(live.next_held(2), Some((8, bytes(8))));
        assert_eq!(live.arrived(2, 9, bytes(9)), Some(bytes(9)));
    }

    #[test]
    fn holding_is_bounded_in_bytes_and_forgetting_waits_for_the_stream_again() {
        let mut live = Live::default();
        assert!(live.streamed(0, 1));
        let big = Bytes::from(vec![0u8; HELD_BYTES / 2]);
        assert_eq!(live.arrived(0, 3, big.clone()), None);
        assert_eq!(live.arrived(0, 4, big.clone()), None);
        assert_eq!(live.held_bytes, HELD_BYTES);
        assert_eq!(live.arrived(0, 5, bytes(5)), None, "full: let go");
        assert_eq!(live.held_bytes, 0);
        assert!(live.streamed(0, 2));
        assert_eq!(live.next_held(0), None);
        live.forget();
        assert_eq!(live.arrived(0, 3, bytes(3)), None);
        assert!(live.streamed(0, 3));
        assert_eq!(live.arrived(0, 4, bytes(4)), Some(bytes(4)));
    }

    #[test]
    fn batch_ids_parse_and_others_do_not() {
        assert_eq!(parse_batch_id("17.3.42"), Some((17, 3, 42)));
        assert_eq!(parse_batch_id("17.ctl.42"), None);
        assert_eq!(parse_batch_id("17.3"), None);
        assert_eq!(parse_batch_id("17.3.42.1"), None);
    }
}
