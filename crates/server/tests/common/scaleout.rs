//! What the scale-out tests (an ingest node, edge nodes, each test with a private NATS)
//! share. Included with `#[path]` by the test files that use it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A cluster name no other run uses.
pub fn cluster(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("t_{what}_{}_{nanos}", std::process::id())
}

/// How long a wait for something that must happen may take before the test fails: long,
/// because a loaded CI machine is slow (each wait ends as soon as its condition holds).
pub const LIVENESS: Duration = Duration::from_secs(60);

/// Waits until `done`, failing the test after `limit`.
pub async fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "{what} within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A counter's value.
pub fn load(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}
