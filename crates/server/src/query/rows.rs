//! A query's rows as a stream of messages: stored rows concatenated (they are the wire
//! bytes subscribers received, so nothing is decoded or re-encoded), about
//! `MESSAGE_BYTES` each, paced by publish time for a replay.

use std::time::{Duration, Instant};

use bytes::BytesMut;
use raven_proto::wire::{EncodedBatch, scan};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{QueryError, Reader};
use crate::shutdown::Shutdown;
use crate::store::Query;

/// A history message holds about this many bytes of rows.
const MESSAGE_BYTES: usize = 256 << 10;

/// Longest a paced replay sleeps before looking at the shutdown signal again.
const PACING_SLICE: Duration = Duration::from_millis(100);

/// Streams the rows `query` selects through `reader`, on a blocking thread of their own,
/// paced at `speed` × recorded time when it is above 0 (0: as fast as the client reads).
/// Ends with [`QueryError::ShuttingDown`] when `shutdown` fires.
pub fn stream_rows(
    reader: Reader,
    query: Query,
    speed: f64,
    shutdown: Shutdown,
) -> ReceiverStream<Result<EncodedBatch, QueryError>> {
    let (tx, rx) = mpsc::channel::<Result<EncodedBatch, QueryError>>(8);
    let mut store = match reader.into_store() {
        Ok(store) => store,
        Err(e) => {
            let _ = tx.try_send(Err(e));
            return ReceiverStream::new(rx);
        }
    };
    tokio::task::spawn_blocking(move || {
        let mut buf = BytesMut::with_capacity(MESSAGE_BYTES);
        let send = |buf: &mut BytesMut| {
            let mut batch = EncodedBatch::new();
            batch.push(buf.split().freeze());
            tx.blocking_send(Ok(batch)).is_ok()
        };
        let mut clock: Option<(Instant, u64)> = None;
        let mut open = true;
        let mut stopped = false;
        let result = store.query(&query, &mut |_, row| {
            if shutdown.is_set() {
                stopped = true;
                return false;
            }
            if speed > 0.0 {
                let published = scan::events(row)
                    .next()
                    .and_then(Result::ok)
                    .map_or(0, |h| h.publish_time);
                let (start, first) = *clock.get_or_insert((Instant::now(), published));
                let offset = published.saturating_sub(first) as f64 / speed;
                let due = start + Duration::from_nanos(offset as u64);
                if due > Instant::now() {
                    // Send what is due now before waiting for the next event's time.
                    if !buf.is_empty() && !send(&mut buf) {
                        open = false;
                        return false;
                    }
                    while let Some(left) = due.checked_duration_since(Instant::now()) {
                        if shutdown.is_set() {
                            stopped = true;
                            return false;
                        }
                        std::thread::sleep(left.min(PACING_SLICE));
                    }
                }
            }
            buf.extend_from_slice(row);
            if buf.len() >= MESSAGE_BYTES && !send(&mut buf) {
                open = false;
                return false;
            }
            true
        });
        match result {
            Ok(()) if stopped => {
                let _ = tx.blocking_send(Err(QueryError::ShuttingDown));
            }
            Ok(()) if open && !buf.is_empty() => {
                send(&mut buf);
            }
            Ok(()) => {}
            Err(e) => {
                let _ = tx.blocking_send(Err(e.into()));
            }
        }
    });
    ReceiverStream::new(rx)
}
