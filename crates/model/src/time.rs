//! Timestamps: `u64` nanoseconds since the Unix epoch. Reading the clock is the caller's
//! job; nothing in the model reads it, which is what lets replay match live exactly.

use std::fmt;

/// Nanoseconds since the Unix epoch (UTC). `UnixNanos::ZERO` means "not known".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct UnixNanos(pub u64);

impl UnixNanos {
    /// The null timestamp: the source did not provide one.
    pub const ZERO: UnixNanos = UnixNanos(0);
    /// Nanoseconds in one second.
    pub const PER_SECOND: u64 = 1_000_000_000;

    /// From milliseconds since the epoch (exchange wire formats often use these).
    /// Returns `None` on overflow instead of wrapping.
    pub fn from_millis(ms: u64) -> Option<UnixNanos> {
        ms.checked_mul(1_000_000).map(UnixNanos)
    }

    /// The raw nanosecond count.
    pub fn as_u64(self) -> u64 {
        self.0
    }

    /// Start of the interval of `width_ns` that contains this instant.
    pub fn floor_to(self, width_ns: u64) -> UnixNanos {
        UnixNanos(self.0 - self.0 % width_ns)
    }
}

impl fmt::Display for UnixNanos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}
