//! Bench results: one entry per client count (Raven, its WebSocket gateway beside it with
//! `--transport ws`, the plain-tonic relay with `--floor`, NATS with `--compare`),
//! printed as a table, written as JSON or as a Markdown summary.

use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::RowPlan;
use super::server::{RssSample, Usage};
use super::workload::{ClientResult, MAX_LATENCY_US};

/// Clock ticks per second in /proc CPU times (USER_HZ, 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

/// One system's results at one client count and rate.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Streaming clients, each on its own connection.
    pub clients: usize,
    /// Target publish rate, events/s.
    pub rate: u64,
    /// Events published inside the measurement window.
    pub published: u64,
    /// Achieved publish rate: `published` per second of the window. Below `rate` when the
    /// server could not keep up and backpressure slowed the publisher.
    pub published_per_s: f64,
    /// Deliveries counted (published events received, over all clients).
    pub delivered: u64,
    /// `delivered` per second of the window.
    pub delivered_per_s: f64,
    /// Deliveries expected (`published × clients`) minus those received.
    pub lost: u64,
    /// Sequence numbers skipped on the clients' streams (over the whole run): Raven's
    /// reported gaps, and NATS drops that later messages revealed.
    pub gaps: u64,
    /// Publish→receive latency percentiles, µs.
    pub latency_us: Latency,
    /// Server resident memory at the end of the window, MiB (local server only).
    pub server_rss_mib: Option<f64>,
    /// Server CPU during the run, percent of one core (local server only).
    pub server_cpu_percent: Option<f64>,
    /// The load generator's CPU during the run (publisher and all clients), percent of
    /// one core: shows whether the clients, not the server, were the limit.
    pub client_cpu_percent: Option<f64>,
    /// Server RSS read through the run (with `sample_every`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rss_samples: Vec<RssSample>,
    /// Least-squares slope of `rss_samples`, MiB per minute (two samples or more).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_slope_mib_per_min: Option<f64>,
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

/// One client count: Raven's row and, with `--floor` and `--compare`, the relay's and
/// NATS's. With `--max` any may be missing when no rate was sustained.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    /// Streaming clients.
    pub clients: usize,
    /// Raven's row.
    pub raven: Option<Row>,
    /// The plain-tonic relay's row, same workload and clients.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub floor: Option<Row>,
    /// NATS's row, same workload.
    pub nats: Option<Row>,
    /// With `--transport ws`: Raven's row with WebSocket clients on the JSON gateway.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub websocket: Option<Row>,
    /// Server CPU per delivery over WebSocket, over the same over gRPC (`raven`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub websocket_cpu_ratio: Option<f64>,
    /// Raven's deliveries/s over NATS's.
    pub deliveries_ratio: Option<f64>,
    /// Raven's p99 latency over NATS's (below 1: Raven is faster).
    pub p99_ratio: Option<f64>,
}

/// A whole run.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Measured seconds per row.
    pub duration_s: f64,
    /// Whether rows are highest sustained rates (`--max`) rather than fixed rates.
    pub max: bool,
    /// One per client count.
    pub rows: Vec<Entry>,
}

impl Row {
    /// `measured` is the window's length and `elapsed` the whole publishing time; the
    /// usages are the server's (when it is a local process) and the load generator's,
    /// before and after publishing.
    pub(super) fn new(
        plan: RowPlan,
        published: u64,
        results: &[ClientResult],
        (measured, elapsed): (Duration, Duration),
        (before, after): (Option<Usage>, Option<Usage>),
        client: (Option<Usage>, Option<Usage>),
        rss_samples: Vec<RssSample>,
    ) -> Row {
        let mut all = Histogram::<u64>::new_with_bounds(1, MAX_LATENCY_US, 2)
            .expect("valid histogram bounds (invariant)");
        for r in results {
            // Same bounds everywhere, so adding cannot fail.
            let _ = all.add(&r.latency_us);
        }
        let delivered: u64 = results.iter().map(|r| r.delivered).sum();
        let expected = published * plan.clients as u64;
        let cpu = |(before, after): (Option<Usage>, Option<Usage>)| {
            let (b, a) = (before?, after?);
            Some(
                (a.cpu_ticks - b.cpu_ticks) as f64 / TICKS_PER_SECOND / elapsed.as_secs_f64()
                    * 100.0,
            )
        };
        Row {
            clients: plan.clients,
            rate: plan.rate,
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
            server_cpu_percent: cpu((before, after)),
            client_cpu_percent: cpu(client),
            rss_slope_mib_per_min: slope_per_min(&rss_samples),
            rss_samples,
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

    /// The cells every format shows, in `HEADER` order after the system's name.
    fn cells(&self) -> [String; 14] {
        let opt = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.0}"));
        [
            self.rate.to_string(),
            format!("{:.0}", self.published_per_s),
            format!("{:.0}", self.delivered_per_s),
            self.lost.to_string(),
            self.gaps.to_string(),
            self.latency_us.p50.to_string(),
            self.latency_us.p90.to_string(),
            self.latency_us.p99.to_string(),
            self.latency_us.p999.to_string(),
            self.latency_us.max.to_string(),
            opt(self.server_rss_mib),
            opt(self.server_cpu_percent),
            opt(self.client_cpu_percent),
            self.rss_slope_mib_per_min
                .map_or_else(|| "-".to_owned(), |s| format!("{s:+.2}")),
        ]
    }
}

/// Least-squares slope of RSS against time, MiB per minute.
fn slope_per_min(samples: &[RssSample]) -> Option<f64> {
    if samples.len() < 2 {
        return None;
    }
    let n = samples.len() as f64;
    let mean_t = samples.iter().map(|s| s.t_s).sum::<f64>() / n;
    let mean_m = samples.iter().map(|s| s.rss_mib).sum::<f64>() / n;
    let (mut num, mut den) = (0.0, 0.0);
    for s in samples {
        num += (s.t_s - mean_t) * (s.rss_mib - mean_m);
        den += (s.t_s - mean_t) * (s.t_s - mean_t);
    }
    (den > 0.0).then(|| num / den * 60.0)
}

impl Entry {
    pub(super) fn new(
        clients: usize,
        raven: Option<Row>,
        floor: Option<Row>,
        nats: Option<Row>,
    ) -> Entry {
        let ratio = |f: fn(&Row) -> f64| match (&raven, &nats) {
            (Some(r), Some(n)) if f(n) > 0.0 => Some(f(r) / f(n)),
            _ => None,
        };
        Entry {
            clients,
            deliveries_ratio: ratio(|r| r.delivered_per_s),
            p99_ratio: ratio(|r| r.latency_us.p99 as f64),
            raven,
            floor,
            nats,
            websocket: None,
            websocket_cpu_ratio: None,
        }
    }

    /// The entry with `websocket`'s row beside gRPC's.
    pub(super) fn with_websocket(mut self, websocket: Option<Row>) -> Entry {
        let per_delivery =
            |r: &Row| Some(r.server_cpu_percent? / r.delivered_per_s).filter(|c| c.is_finite());
        self.websocket_cpu_ratio = match (&websocket, &self.raven) {
            (Some(ws), Some(grpc)) => per_delivery(ws)
                .zip(per_delivery(grpc))
                .map(|(w, g)| w / g)
                .filter(|r| r.is_finite()),
            _ => None,
        };
        self.websocket = websocket;
        self
    }

    /// The note under the table: what a WebSocket delivery costs the server.
    fn websocket_note(&self) -> Option<String> {
        let ratio = self.websocket_cpu_ratio?;
        Some(format!(
            "N={}: server CPU per delivery over WebSocket = {ratio:.2} × over gRPC",
            self.clients
        ))
    }

    /// (system, cells, ratio cells) for each system that has a row.
    fn lines(&self) -> Vec<(&'static str, [String; 14], [String; 2])> {
        let ratio = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}"));
        let mut lines = Vec::new();
        if let Some(r) = &self.raven {
            let ratios = [ratio(self.deliveries_ratio), ratio(self.p99_ratio)];
            lines.push(("Raven", r.cells(), ratios));
        }
        if let Some(w) = &self.websocket {
            lines.push(("WS", w.cells(), ["".to_owned(), "".to_owned()]));
        }
        if let Some(f) = &self.floor {
            lines.push(("tonic", f.cells(), ["".to_owned(), "".to_owned()]));
        }
        if let Some(n) = &self.nats {
            lines.push(("NATS", n.cells(), ["".to_owned(), "".to_owned()]));
        }
        lines
    }
}

/// Column headers after N and system.
const HEADER: [&str; 16] = [
    "target/s",
    "published/s",
    "deliveries/s",
    "lost",
    "gaps",
    "p50 µs",
    "p90 µs",
    "p99 µs",
    "p99.9 µs",
    "max µs",
    "RSS MiB",
    "CPU %",
    "client CPU %",
    "RSS MiB/min",
    "deliv. R/N",
    "p99 R/N",
];

impl BenchReport {
    /// The results as an aligned table.
    pub fn table(&self) -> String {
        let widths = [9, 11, 12, 8, 8, 8, 8, 8, 9, 8, 8, 6, 12, 11, 10, 8];
        let mut out = format!(
            "{:.1} s measured per row{}\n{:>6} {:<6}",
            self.duration_s,
            if self.max {
                "; highest sustained rate per N"
            } else {
                ""
            },
            "N",
            "system"
        );
        for (h, w) in HEADER.iter().zip(widths) {
            let _ = write!(out, " {h:>w$}");
        }
        out.push('\n');
        for entry in &self.rows {
            if entry.raven.is_none() && entry.floor.is_none() && entry.nats.is_none() {
                let _ = writeln!(out, "{:>6} no rate sustained", entry.clients);
            }
            for (system, cells, ratios) in entry.lines() {
                let _ = write!(out, "{:>6} {system:<6}", entry.clients);
                for (cell, w) in cells.iter().chain(&ratios).zip(widths) {
                    let _ = write!(out, " {cell:>w$}");
                }
                out.push('\n');
            }
        }
        for note in self.rows.iter().filter_map(Entry::websocket_note) {
            let _ = writeln!(out, "{note}");
        }
        out
    }

    /// The results as a Markdown table.
    pub fn markdown(&self) -> String {
        let mut out = format!(
            "{:.1} s measured per row{}. R/N: Raven over NATS.\n\n| N | system |",
            self.duration_s,
            if self.max {
                "; highest sustained rate per N"
            } else {
                ""
            }
        );
        for h in HEADER {
            let _ = write!(out, " {h} |");
        }
        out.push_str("\n|---|---|");
        out.push_str(&"---:|".repeat(HEADER.len()));
        out.push('\n');
        for entry in &self.rows {
            for (system, cells, ratios) in entry.lines() {
                let _ = write!(out, "| {} | {system} |", entry.clients);
                for cell in cells.iter().chain(&ratios) {
                    let _ = write!(out, " {cell} |");
                }
                out.push('\n');
            }
        }
        for note in self.rows.iter().filter_map(Entry::websocket_note) {
            let _ = write!(out, "\n{note}\n");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slope_is_least_squares_in_mib_per_minute() {
        let samples: Vec<RssSample> = [(0.0, 100.0), (10.0, 101.0), (20.0, 102.0)]
            .into_iter()
            .map(|(t_s, rss_mib)| RssSample { t_s, rss_mib })
            .collect();
        assert_eq!(slope_per_min(&samples), Some(6.0));
        assert_eq!(slope_per_min(&samples[..1]), None);
        let flat: Vec<RssSample> = (0..5)
            .map(|i| RssSample {
                t_s: f64::from(i) * 10.0,
                rss_mib: 50.0,
            })
            .collect();
        assert_eq!(slope_per_min(&flat), Some(0.0));
    }
}
