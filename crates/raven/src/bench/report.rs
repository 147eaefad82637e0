//! Bench results: one row per client count, printed as a table or written as JSON.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::load::ClientResult;
use super::server::Usage;

/// Clock ticks per second in /proc CPU times (USER_HZ, 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

/// One client count's results.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Streaming clients, each on its own connection.
    pub clients: usize,
    /// Target publish rate, events/s.
    pub rate: u64,
    /// Events published inside the measurement window.
    pub published: u64,
    /// Achieved publish rate: `published` per second of the window. Below `rate` when the
    /// server could not keep up and ingest backpressure slowed the publisher.
    pub published_per_s: f64,
    /// Deliveries counted (published events received, over all clients).
    pub delivered: u64,
    /// `delivered` per second of the window.
    pub delivered_per_s: f64,
    /// Deliveries expected (`published × clients`) minus those received.
    pub lost: u64,
    /// Sequence numbers skipped on the clients' streams (over the whole run).
    pub gaps: u64,
    /// Publish→receive latency percentiles, µs.
    pub latency_us: Latency,
    /// Server resident memory at the end of the window, MiB (local server only).
    pub server_rss_mib: Option<f64>,
    /// Server CPU during the run, percent of one core (local server only).
    pub server_cpu_percent: Option<f64>,
}

/// Latency percentiles, µs.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Latency {
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Maximum.
    pub max: u64,
}

/// A whole run.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Measured seconds per row.
    pub duration_s: f64,
    /// One per client count.
    pub rows: Vec<Row>,
}

impl Row {
    /// `usage` is the server's before and after the run (when it is a local child).
    pub(super) fn new(
        (clients, rate): (usize, u64),
        published: u64,
        results: &[ClientResult],
        measured: Duration,
        elapsed: Duration,
        usage: (Option<Usage>, Option<Usage>),
    ) -> Row {
        let (before, after) = usage;
        let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 2)
            .expect("valid histogram bounds (invariant)");
        for r in results {
            // Same bounds everywhere, so adding cannot fail.
            let _ = all.add(&r.latency_us);
        }
        let delivered: u64 = results.iter().map(|r| r.delivered).sum();
        let expected = published * clients as u64;
        let cpu = match (before, after) {
            (Some(b), Some(a)) => Some(
                (a.cpu_ticks - b.cpu_ticks) as f64 / TICKS_PER_SECOND / elapsed.as_secs_f64()
                    * 100.0,
            ),
            _ => None,
        };
        Row {
            clients,
            rate,
            published,
            published_per_s: published as f64 / measured.as_secs_f64(),
            delivered,
            delivered_per_s: delivered as f64 / measured.as_secs_f64(),
            lost: expected.saturating_sub(delivered),
            gaps: results.iter().map(|r| r.gaps).sum(),
            latency_us: Latency {
                p50: all.value_at_quantile(0.5),
                p90: all.value_at_quantile(0.9),
                p99: all.value_at_quantile(0.99),
                p999: all.value_at_quantile(0.999),
                max: all.max(),
            },
            server_rss_mib: after.map(|u| u.rss as f64 / (1024.0 * 1024.0)),
            server_cpu_percent: cpu,
        }
    }

    /// One line for progress output.
    pub fn summary(&self) -> String {
        format!(
            "N={} at {} events/s (published {:.0}/s): {:.0} deliveries/s, p50 {} µs, p99 {} µs, lost {}",
            self.clients,
            self.rate,
            self.published_per_s,
            self.delivered_per_s,
            self.latency_us.p50,
            self.latency_us.p99,
            self.lost
        )
    }
}

impl BenchReport {
    /// The results as an aligned table.
    pub fn table(&self) -> String {
        let mut out = format!(
            "{:.1} s measured per row\n{:>6} {:>9} {:>11} {:>12} {:>10} {:>8} {:>8} {:>8} {:>8} {:>9} {:>8} {:>8} {:>7}\n",
            self.duration_s,
            "N",
            "target/s",
            "published/s",
            "deliveries/s",
            "published",
            "lost",
            "p50 µs",
            "p90 µs",
            "p99 µs",
            "p99.9 µs",
            "max µs",
            "RSS MiB",
            "CPU %"
        );
        for r in &self.rows {
            let opt = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.0}"));
            out.push_str(&format!(
                "{:>6} {:>9} {:>11.0} {:>12.0} {:>10} {:>8} {:>8} {:>8} {:>8} {:>9} {:>8} {:>8} {:>7}\n",
                r.clients,
                r.rate,
                r.published_per_s,
                r.delivered_per_s,
                r.published,
                r.lost,
                r.latency_us.p50,
                r.latency_us.p90,
                r.latency_us.p99,
                r.latency_us.p999,
                r.latency_us.max,
                opt(r.server_rss_mib),
                opt(r.server_cpu_percent)
            ));
        }
        out
    }
}
