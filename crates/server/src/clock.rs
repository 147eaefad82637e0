//! The wall clock, behind a trait so the engine's publish time can be controlled in tests.

use raven_model::UnixNanos;
use std::time::{SystemTime, UNIX_EPOCH};

/// A source of the current time.
pub trait Clock: Send + Sync + 'static {
    /// Now, in nanoseconds since the Unix epoch.
    fn now(&self) -> UnixNanos;
}

/// The system's real-time clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> UnixNanos {
        // Before 1970 or after 2554 the clock is broken; 0 ("unknown") is the honest answer.
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(UnixNanos::ZERO, |d| {
                UnixNanos(u64::try_from(d.as_nanos()).unwrap_or(0))
            })
    }
}
