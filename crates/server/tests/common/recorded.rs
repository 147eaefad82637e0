//! Waiting for the recorder, for the tests that read history. Included with `#[path]`
//! by the test files that use it, so that the others do not compile it.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use raven_server::app::RunningServer;

/// Waits until `server`'s recorder has stored at least `events` events (up to 60 s, a
/// guard against a hang, not a timing): what a test needs recorded, rather than a sleep
/// that hopes it is. Returns how many it has stored.
pub async fn wait_recorded(server: &RunningServer, events: u64) -> u64 {
    let stats = server.recorder_stats().expect("the server records");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let stored = stats.stored.load(Ordering::Relaxed);
        if stored >= events {
            return stored;
        }
        assert!(
            Instant::now() < deadline,
            "{stored} of {events} events recorded after 60 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
