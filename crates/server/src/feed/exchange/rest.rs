//! The snapshot client: one queue of REST requests per feed, served in order through the
//! venue's request-weight budget. The budget is a sliding minute of the weights spent,
//! corrected upwards by the venue's own count (`X-MBX-USED-WEIGHT-1M`) when it is higher
//! (another process on the same IP spends from the same budget). A 429 or 418 stops every
//! request until its `Retry-After` has passed; other failures are retried with backoff,
//! never given up. Connections keep streaming while their snapshots wait here.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::pacing::{Backoff, Jitter};
use super::transport;

/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A snapshot to fetch for a connection.
#[derive(Debug)]
pub struct Job {
    /// The full URL.
    pub url: String,
    /// Its request weight.
    pub weight: u32,
    /// Not before this instant (refetch backoff).
    pub not_before: Instant,
    /// The instrument's slot on its connection.
    pub slot: usize,
    /// Where the body goes.
    pub reply: mpsc::Sender<super::connection::Command>,
}

/// The weight spent in the last minute.
#[derive(Debug)]
struct Budget {
    per_minute: u32,
    spent: VecDeque<(Instant, u32)>,
}

impl Budget {
    fn used(&mut self, now: Instant) -> u32 {
        while self
            .spent
            .front()
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) >= Duration::from_secs(60))
        {
            self.spent.pop_front();
        }
        self.spent.iter().map(|(_, w)| w).sum()
    }

    /// How long until `weight` more fits.
    fn wait(&mut self, now: Instant, weight: u32) -> Duration {
        let mut used = self.used(now);
        if used + weight <= self.per_minute {
            return Duration::ZERO;
        }
        for (t, w) in &self.spent {
            used -= w;
            if used + weight <= self.per_minute {
                return (*t + Duration::from_secs(60)).saturating_duration_since(now);
            }
        }
        Duration::from_secs(60)
    }

    fn spend(&mut self, now: Instant, weight: u32, venue_count: Option<u32>) {
        self.spent.push_back((now, weight));
        if let Some(count) = venue_count {
            let ours = self.used(now);
            if count > ours {
                self.spent.push_back((now, count - ours));
            }
        }
    }
}

/// Serves `jobs` until every sender is gone.
pub async fn run(mut jobs: mpsc::Receiver<Job>, per_minute: u32, seed: u64) {
    let mut budget = Budget {
        per_minute,
        spent: VecDeque::new(),
    };
    let backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
    let mut jitter = Jitter::new(seed);
    let mut blocked_until: Option<Instant> = None;
    let mut queue: VecDeque<(Job, u32)> = VecDeque::new();
    loop {
        if queue.is_empty() {
            match jobs.recv().await {
                Some(job) => queue.push_back((job, 0)),
                None => return,
            }
        }
        while let Ok(job) = jobs.try_recv() {
            queue.push_back((job, 0));
        }
        let Some((job, failures)) = queue.pop_front() else {
            continue;
        };
        if job.reply.is_closed() {
            continue;
        }
        let now = Instant::now();
        let mut start = job.not_before.max(blocked_until.unwrap_or(now));
        start = start.max(now + budget.wait(now, job.weight));
        if start > now {
            tokio::time::sleep_until(start).await;
        }
        let now = Instant::now();
        let answer = transport::get(&job.url, REQUEST_TIMEOUT).await;
        let outcome = match answer {
            Ok(resp) => {
                budget.spend(now, job.weight, resp.used_weight);
                match resp.status {
                    200 => Ok(resp.body),
                    429 | 418 => {
                        let wait = Duration::from_secs(resp.retry_after.unwrap_or(60));
                        blocked_until = Some(Instant::now() + wait);
                        tracing::warn!(url = %job.url, status = resp.status, ?wait, "venue rate limit: every snapshot waits for Retry-After");
                        Err(None)
                    }
                    status => {
                        let text = String::from_utf8_lossy(&resp.body[..resp.body.len().min(200)])
                            .into_owned();
                        Err(Some(format!("HTTP {status}: {text}")))
                    }
                }
            }
            Err(e) => Err(Some(e.to_string())),
        };
        match outcome {
            Ok(body) => deliver(&job, body).await,
            Err(None) => queue.push_front((job, failures)),
            Err(Some(reason)) => {
                tracing::warn!(url = %job.url, %reason, failures, "snapshot request failed; retrying");
                let mut job = job;
                job.not_before = Instant::now() + backoff.delay(failures, &mut jitter);
                queue.push_back((job, failures + 1));
            }
        }
    }
}

async fn deliver(job: &Job, body: Bytes) {
    let _ = job
        .reply
        .send(super::connection::Command::Snapshot {
            slot: job.slot,
            body,
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_waits_for_old_weight_to_expire_and_trusts_a_higher_venue_count() {
        let t0 = Instant::now();
        let mut b = Budget {
            per_minute: 100,
            spent: VecDeque::new(),
        };
        assert_eq!(b.wait(t0, 50), Duration::ZERO);
        b.spend(t0, 50, None);
        b.spend(t0 + Duration::from_secs(10), 40, None);
        assert_eq!(b.wait(t0 + Duration::from_secs(20), 10), Duration::ZERO);
        // 20 more must wait until the first 50 are a minute old.
        assert_eq!(
            b.wait(t0 + Duration::from_secs(20), 20),
            Duration::from_secs(40)
        );
        // The venue counts more than we spent (another process on our IP).
        b.spend(t0 + Duration::from_secs(20), 5, Some(99));
        assert_eq!(b.used(t0 + Duration::from_secs(20)), 99);
    }
}
