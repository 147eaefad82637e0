//! The connectors' timing rules, as small types with an injected random source so tests
//! replay exactly: full-jitter exponential backoff for reconnects and snapshot refetches,
//! a sliding-window limit for the control frames a connection sends (the venue counts
//! pings, pongs and subscriptions alike), and a limit on connection attempts shared by a
//! feed's connections so that a mass disconnect does not become a reconnect storm.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// A small deterministic generator (splitmix64).
#[derive(Debug, Clone)]
pub struct Jitter(u64);

impl Jitter {
    /// Seeded.
    pub fn new(seed: u64) -> Jitter {
        Jitter(seed)
    }

    /// Uniform in `0..=max`.
    pub fn upto(&mut self, max: Duration) -> Duration {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        let nanos = max.as_nanos().min(u128::from(u64::MAX)) as u64;
        Duration::from_nanos(if nanos == 0 { 0 } else { z % (nanos + 1) })
    }
}

/// Full-jitter exponential backoff (the "full jitter" of the AWS architecture blog):
/// attempt `n` waits uniformly up to `min(cap, base · 2^n)`, so attempts of many
/// clients spread out instead of arriving together.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
}

impl Backoff {
    /// Doubling from `base`, never above `cap`.
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        Backoff { base, cap }
    }

    /// The delay before attempt `attempt` (0: the first retry).
    pub fn delay(&self, attempt: u32, jitter: &mut Jitter) -> Duration {
        let ceiling = self
            .base
            .checked_mul(1u32 << attempt.min(20))
            .unwrap_or(self.cap)
            .min(self.cap);
        jitter.upto(ceiling)
    }
}

/// At most `limit` events in any `window`.
#[derive(Debug, Clone)]
pub struct Window {
    limit: usize,
    window: Duration,
    sent: VecDeque<Instant>,
}

impl Window {
    /// `limit` per `window`.
    pub fn new(limit: usize, window: Duration) -> Window {
        Window {
            limit: limit.max(1),
            window,
            sent: VecDeque::new(),
        }
    }

    /// How long from `now` until one more is allowed (zero: now).
    pub fn wait(&mut self, now: Instant) -> Duration {
        while self
            .sent
            .front()
            .is_some_and(|&t| now.saturating_duration_since(t) >= self.window)
        {
            self.sent.pop_front();
        }
        if self.sent.len() < self.limit {
            return Duration::ZERO;
        }
        let oldest = self.sent[self.sent.len() - self.limit];
        (oldest + self.window).saturating_duration_since(now)
    }

    /// Records one at `now`, allowed or not (a pong owed to the venue goes at once).
    pub fn record(&mut self, now: Instant) {
        self.sent.push_back(now);
        if self.sent.len() > self.limit * 4 {
            self.sent.pop_front();
        }
    }
}

/// Connection attempts of one feed, shared by its connections so that a mass disconnect
/// spreads out: attempts at least [`ATTEMPT_SPACING`] apart (at most 3 in any 100 ms,
/// with room for network jitter) and at most 300 in 5 minutes (Binance's per-IP rule).
#[derive(Debug)]
pub struct Attempts {
    last: Option<Instant>,
    long: Window,
}

/// The least time between two connection attempts of one feed.
pub const ATTEMPT_SPACING: Duration = Duration::from_millis(40);

impl Default for Attempts {
    fn default() -> Attempts {
        Attempts {
            last: None,
            long: Window::new(300, Duration::from_secs(300)),
        }
    }
}

impl Attempts {
    /// Reserves the next attempt, no earlier than `earliest`; returns when it may start.
    /// Reservations only move forward, which keeps the window's record in order.
    pub fn reserve(&mut self, earliest: Instant) -> Instant {
        let mut at = match self.last {
            Some(last) => earliest.max(last + ATTEMPT_SPACING),
            None => earliest,
        };
        at += self.long.wait(at);
        self.long.record(at);
        self.last = Some(at);
        at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_are_spaced_and_capped_per_five_minutes() {
        let t0 = Instant::now();
        let mut a = Attempts::default();
        let times: Vec<Instant> = (0..10).map(|_| a.reserve(t0)).collect();
        for (i, t) in times.iter().enumerate() {
            assert_eq!(*t, t0 + ATTEMPT_SPACING * i as u32);
        }
        // A later attempt is not held back by the spacing.
        let late = t0 + Duration::from_secs(10);
        assert_eq!(a.reserve(late), late);
        // The 301st attempt within five minutes waits for the first to age out.
        let mut a = Attempts::default();
        let mut last = t0;
        for _ in 0..300 {
            last = a.reserve(t0);
        }
        assert!(last < t0 + Duration::from_secs(13));
        assert_eq!(a.reserve(t0), t0 + Duration::from_secs(300));
    }

    #[test]
    fn backoff_is_jittered_below_a_doubling_ceiling() {
        let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(30));
        let mut jitter = Jitter::new(1);
        for attempt in 0..12 {
            let ceiling = Duration::from_millis(100 * (1 << attempt)).min(Duration::from_secs(30));
            let delays: Vec<Duration> = (0..200)
                .map(|_| backoff.delay(attempt, &mut jitter))
                .collect();
            assert!(delays.iter().all(|d| *d <= ceiling), "attempt {attempt}");
            // Spread over the whole range, not bunched.
            assert!(delays.iter().any(|d| *d < ceiling / 4), "attempt {attempt}");
            assert!(
                delays.iter().any(|d| *d > ceiling * 3 / 4),
                "attempt {attempt}"
            );
        }
        assert!(backoff.delay(1000, &mut jitter) <= Duration::from_secs(30));
    }

    #[test]
    fn a_window_allows_its_limit_then_says_how_long_to_wait() {
        let start = Instant::now();
        let mut w = Window::new(4, Duration::from_secs(1));
        for i in 0..4 {
            let at = start + Duration::from_millis(i * 10);
            assert_eq!(w.wait(at), Duration::ZERO);
            w.record(at);
        }
        assert_eq!(
            w.wait(start + Duration::from_millis(40)),
            Duration::from_millis(960)
        );
        assert_eq!(w.wait(start + Duration::from_millis(1000)), Duration::ZERO);
    }
}
