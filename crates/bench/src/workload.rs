//! The workload every system under test gets, and how a client counts what it receives:
//! trades paced at a fixed rate over the bench instruments, each stamped with its send
//! time, and per-client accounting of deliveries, latency and sequence gaps from event
//! headers read with `raven_proto::wire::scan` (bodies are never decoded), or from the
//! few fields it needs of the WebSocket gateway's JSON objects.

use std::ops::Range;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use memchr::memmem::Finder;
use prost::Message;
use raven_proto::pb;
use raven_proto::wire::scan;

use super::BenchError;

/// The wall clock in nanoseconds since the Unix epoch: send stamps and receive times
/// compare across processes on one machine.
pub(super) fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Highest latency the histograms hold, in µs (60 s); above it values are clamped.
pub(super) const MAX_LATENCY_US: u64 = 60_000_000;
/// Body field numbers in `Event` (see raven.proto).
const TRADE: u32 = 12;
const STATUS: u32 = 15;
const SNAPSHOT_END: u32 = 16;

/// The bench instruments' names: `BENCH:T0`, `BENCH:T1`, …
pub(super) fn instrument_names(count: usize) -> Vec<String> {
    (0..count.max(1)).map(|i| format!("BENCH:T{i}")).collect()
}

fn instrument_index(name: &[u8]) -> Option<usize> {
    std::str::from_utf8(name.strip_prefix(b"BENCH:T")?)
        .ok()?
        .parse()
        .ok()
}

/// The trade every publisher sends (its send time goes in the event's exchange time).
pub(super) fn trade() -> pb::Trade {
    pb::Trade {
        price: 1_000_000_000,
        qty: 1_000_000_000,
        qty_hi: 0,
        aggressor: pb::Aggressor::Buy as i32,
        trade_id: String::new(),
    }
}

/// The bytes a Raven client receives for one trade, as one `StreamResponse`: what the
/// NATS side publishes per message, so both carry the same payload.
pub(super) fn delivered_bytes(instrument: &str, sequence: u64, stamp: u64) -> Vec<u8> {
    pb::StreamResponse {
        events: vec![pb::Event {
            instrument: instrument.to_owned(),
            channel: pb::Channel::Trades as i32,
            sequence,
            exchange_time: stamp,
            receive_time: stamp,
            publish_time: stamp,
            venue_seq: 0,
            body: Some(pb::event::Body::Trade(trade())),
        }],
    }
    .encode_to_vec()
}

/// What the publisher tells the clients.
pub(super) struct Shared {
    /// Measurement window, exchange-time ns: only events stamped inside it are counted.
    window: (AtomicU64, AtomicU64),
    /// Events published per instrument; final once publishing has finished.
    published: Vec<AtomicU64>,
}

impl Shared {
    pub(super) fn new(instruments: usize) -> Shared {
        Shared {
            window: (AtomicU64::new(u64::MAX), AtomicU64::new(u64::MAX)),
            published: (0..instruments).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn window(&self) -> Range<u64> {
        self.window.0.load(Ordering::Acquire)..self.window.1.load(Ordering::Acquire)
    }
}

/// Paces publishing: every millisecond it says which events are due.
pub(super) struct Pacer<'a> {
    shared: &'a Shared,
    rate: u64,
    begin: Instant,
    total: Duration,
    window: Range<u64>,
    ticker: tokio::time::Interval,
    sent: u64,
    in_window: u64,
    per_instrument: Vec<u64>,
}

impl<'a> Pacer<'a> {
    /// Starts the clock: `warmup` unmeasured, then `duration` measured.
    pub(super) fn start(
        shared: &'a Shared,
        rate: u64,
        warmup: Duration,
        duration: Duration,
    ) -> Pacer<'a> {
        let start = now_ns() + warmup.as_nanos() as u64;
        let end = start + duration.as_nanos() as u64;
        shared.window.0.store(start, Ordering::Release);
        shared.window.1.store(end, Ordering::Release);
        Pacer {
            shared,
            rate,
            begin: Instant::now(),
            total: warmup + duration,
            window: start..end,
            ticker: tokio::time::interval(Duration::from_millis(1)),
            sent: 0,
            in_window: 0,
            per_instrument: vec![0; shared.published.len()],
        }
    }

    /// The next due events as (send stamp, instrument indexes), or `None` when done.
    pub(super) async fn next(&mut self) -> Option<(u64, Vec<usize>)> {
        loop {
            if self.begin.elapsed() >= self.total {
                return None;
            }
            self.ticker.tick().await;
            let due = (self.begin.elapsed().as_nanos().min(self.total.as_nanos())
                * u128::from(self.rate)
                / 1_000_000_000) as u64;
            if due <= self.sent {
                continue;
            }
            let stamp = now_ns();
            let count = self.per_instrument.len() as u64;
            let due_instruments: Vec<usize> =
                (self.sent..due).map(|n| (n % count) as usize).collect();
            for &i in &due_instruments {
                self.per_instrument[i] += 1;
            }
            if self.window.contains(&stamp) {
                self.in_window += due_instruments.len() as u64;
            }
            self.sent = due;
            return Some((stamp, due_instruments));
        }
    }

    /// Events sent so far, over the whole run.
    pub(super) fn sent(&self) -> u64 {
        self.sent
    }

    /// Publishing is over: tells the clients how many events each instrument had, and
    /// returns how many were sent inside the measurement window.
    pub(super) fn finish(self) -> u64 {
        for (slot, n) in self.shared.published.iter().zip(&self.per_instrument) {
            slot.store(*n, Ordering::Release);
        }
        self.in_window
    }
}

/// What one client saw.
pub(super) struct ClientResult {
    pub(super) latency_us: Histogram<u64>,
    pub(super) delivered: u64,
    pub(super) gaps: u64,
}

/// A row's client tasks, each with a signal that it has subscribed.
pub(super) struct Clients {
    tasks: Vec<tokio::task::JoinHandle<Result<ClientResult, BenchError>>>,
    readies: Vec<tokio::sync::oneshot::Receiver<()>>,
}

impl Clients {
    pub(super) fn new(count: usize) -> Clients {
        Clients {
            tasks: Vec::with_capacity(count),
            readies: Vec::with_capacity(count),
        }
    }

    /// Spawns a client; it signals through the sender it is given once subscribed.
    pub(super) fn spawn<F>(&mut self, client: impl FnOnce(tokio::sync::oneshot::Sender<()>) -> F)
    where
        F: std::future::Future<Output = Result<ClientResult, BenchError>> + Send + 'static,
    {
        let (ready, is_ready) = tokio::sync::oneshot::channel();
        self.readies.push(is_ready);
        self.tasks.push(tokio::spawn(client(ready)));
    }

    /// Waits until every client has subscribed; the first that fails instead reports its
    /// error, and the others are stopped (awaiting them would wait for the run's end).
    pub(super) async fn all_ready(&mut self) -> Result<(), BenchError> {
        for (i, ready) in std::mem::take(&mut self.readies).into_iter().enumerate() {
            if ready.await.is_err() {
                // It dropped its signal: it has ended, or is ending.
                let ended = (&mut self.tasks[i]).await;
                for task in &self.tasks {
                    task.abort();
                }
                let why = match ended {
                    Ok(Err(e)) => e.to_string(),
                    Ok(Ok(_)) => "it ended".to_owned(),
                    Err(e) => e.to_string(),
                };
                return Err(BenchError::Stalled(format!(
                    "client {} of {} did not subscribe: {why}",
                    i + 1,
                    self.tasks.len()
                )));
            }
        }
        Ok(())
    }

    /// Every client's result, in order.
    pub(super) async fn results(self) -> Result<Vec<ClientResult>, BenchError> {
        let mut results = Vec::with_capacity(self.tasks.len());
        for task in self.tasks {
            results.push(task.await.map_err(std::io::Error::other)??);
        }
        Ok(results)
    }
}

/// The keys a client looks for in the gateway's JSON, each searcher built once.
struct JsonKeys {
    kind: Finder<'static>,
    instrument: Finder<'static>,
    sequence: Finder<'static>,
    exchange_time: Finder<'static>,
    status: Finder<'static>,
    missed: Finder<'static>,
}

static KEYS: LazyLock<JsonKeys> = LazyLock::new(|| JsonKeys {
    kind: Finder::new(br#""type":""#),
    instrument: Finder::new(br#""instrument":""#),
    sequence: Finder::new(br#""sequence":""#),
    exchange_time: Finder::new(br#""exchange_time":""#),
    status: Finder::new(br#""kind":""#),
    missed: Finder::new(br#""missed":""#),
});

/// What a client counts.
enum Seen {
    /// Live trades continue after this sequence.
    SnapshotEnd(u64),
    /// The server dropped this many trades for the client.
    Gap(u64),
    /// A trade.
    Trade { sequence: u64, exchange_time: u64 },
}

/// The string value after `key` (`"name":"`) in one of the gateway's JSON objects (whose
/// values never hold a quote where the bench looks: names, kinds, decimal strings).
fn json_field<'a>(text: &'a [u8], key: &Finder) -> Option<&'a [u8]> {
    let start = key.find(text)? + key.needle().len();
    let len = memchr::memchr(b'"', &text[start..])?;
    Some(&text[start..start + len])
}

/// One client's running account of what it has received.
pub(super) struct Tally {
    latency_us: Histogram<u64>,
    first_seq: Vec<u64>,
    last_seq: Vec<u64>,
    delivered: u64,
    gaps: u64,
    markers: usize,
}

impl Tally {
    pub(super) fn new(instruments: usize) -> Tally {
        Tally {
            latency_us: Histogram::new_with_bounds(1, MAX_LATENCY_US, 2)
                .expect("valid histogram bounds (invariant)"),
            first_seq: vec![0; instruments],
            last_seq: vec![0; instruments],
            delivered: 0,
            gaps: 0,
            markers: 0,
        }
    }

    /// Counts every event in one received message (`StreamResponse` bytes).
    pub(super) fn message(&mut self, bytes: &[u8], shared: &Shared) -> Result<(), BenchError> {
        let now = now_ns();
        let window = shared.window();
        for header in scan::events(bytes) {
            let header = header?;
            let Some(i) = instrument_index(header.instrument) else {
                continue;
            };
            let seen = match header.body {
                SNAPSHOT_END => Seen::SnapshotEnd(header.sequence),
                STATUS => {
                    let status = pb::Status::decode(header.body_bytes)
                        .map_err(|e| tonic::Status::internal(e.to_string()))?;
                    if status.kind != pb::StatusKind::Gap as i32 {
                        continue;
                    }
                    Seen::Gap(status.missed)
                }
                TRADE => Seen::Trade {
                    sequence: header.sequence,
                    exchange_time: header.exchange_time,
                },
                _ => continue,
            };
            self.record(i, seen, now, &window);
        }
        Ok(())
    }

    /// Counts one WebSocket message: a JSON object of the gateway's (the fields it needs
    /// are found by name, not parsed into a tree: the client must stay cheaper than the
    /// server it measures). A refusal ends the client with the server's message.
    pub(super) fn json(&mut self, text: &[u8], shared: &Shared) -> Result<(), BenchError> {
        let keys = &*KEYS;
        let kind = json_field(text, &keys.kind).unwrap_or_default();
        if kind == b"error" {
            return Err(BenchError::Stalled(format!(
                "the gateway refused: {}",
                String::from_utf8_lossy(text)
            )));
        }
        let Some(i) = json_field(text, &keys.instrument).and_then(instrument_index) else {
            return Ok(());
        };
        let number = |key: &Finder| {
            json_field(text, key)
                .and_then(|v| std::str::from_utf8(v).ok()?.parse::<u64>().ok())
                .ok_or_else(|| {
                    BenchError::Stalled(format!(
                        "a gateway message without a whole {}: {}",
                        String::from_utf8_lossy(key.needle()),
                        String::from_utf8_lossy(text)
                    ))
                })
        };
        let seen = match kind {
            b"snapshot_end" => Seen::SnapshotEnd(number(&keys.sequence)?),
            b"status" if json_field(text, &keys.status) == Some(b"gap") => {
                Seen::Gap(number(&keys.missed)?)
            }
            b"trade" => Seen::Trade {
                sequence: number(&keys.sequence)?,
                exchange_time: number(&keys.exchange_time)?,
            },
            _ => return Ok(()),
        };
        self.record(i, seen, now_ns(), &shared.window());
        Ok(())
    }

    fn record(&mut self, i: usize, seen: Seen, now: u64, window: &Range<u64>) {
        if i >= self.last_seq.len() {
            return;
        }
        match seen {
            Seen::SnapshotEnd(sequence) => {
                // Live trades follow this sequence.
                self.first_seq[i] = sequence;
                self.last_seq[i] = sequence;
                self.markers += 1;
            }
            Seen::Gap(missed) => {
                // A gap report: the server dropped `missed` trades for this client.
                self.last_seq[i] += missed;
                self.gaps += missed;
            }
            Seen::Trade {
                sequence,
                exchange_time,
            } => {
                self.gaps += sequence.saturating_sub(self.last_seq[i] + 1);
                self.last_seq[i] = sequence;
                if window.contains(&exchange_time) {
                    self.delivered += 1;
                    self.latency_us
                        .saturating_record(now.saturating_sub(exchange_time) / 1000);
                }
            }
        }
    }

    /// Whether every instrument's snapshot-end marker has arrived.
    pub(super) fn subscribed(&self) -> bool {
        self.markers >= self.last_seq.len()
    }

    /// Whether every published event has been received or reported missed. Only
    /// meaningful once publishing has finished.
    pub(super) fn complete(&self, shared: &Shared) -> bool {
        (0..self.last_seq.len()).all(|i| {
            self.last_seq[i] >= self.first_seq[i] + shared.published[i].load(Ordering::Acquire)
        })
    }

    pub(super) fn result(self) -> ClientResult {
        ClientResult {
            latency_us: self.latency_us,
            delivered: self.delivered,
            gaps: self.gaps,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use raven_model::{
        Aggressor, Event, EventBody, InstrumentId, Price, Qty, Sequence, Trade, UnixNanos,
    };
    use raven_proto::wire;

    #[test]
    fn nats_payload_is_byte_for_byte_what_a_raven_client_receives() {
        let stamp = 1_764_300_000_123_456_789;
        let event = Event {
            instrument: InstrumentId(0),
            sequence: Sequence(7),
            exchange_time: UnixNanos(stamp),
            receive_time: UnixNanos(stamp),
            publish_time: UnixNanos(stamp),
            venue_seq: 0,
            body: EventBody::Trade(Trade {
                price: Price::from_units(1_000_000_000),
                qty: Qty::from_units(1_000_000_000),
                aggressor: Aggressor::Buy,
                trade_id: String::new(),
            }),
        };
        let mut raven = BytesMut::new();
        wire::put_event(&mut raven, "BENCH:T3", &event);
        assert_eq!(delivered_bytes("BENCH:T3", 7, stamp), raven.as_ref());
    }

    #[test]
    fn a_tally_counts_window_deliveries_and_sequence_gaps() {
        let shared = Shared::new(2);
        shared.window.0.store(100, Ordering::Release);
        shared.window.1.store(200, Ordering::Release);
        let mut tally = Tally::new(2);
        // Before the window (not counted), inside it, a skipped sequence, after it.
        for (seq, stamp) in [(1, 50), (2, 150), (4, 160), (5, 250)] {
            tally
                .message(&delivered_bytes("BENCH:T1", seq, stamp), &shared)
                .unwrap();
        }
        tally
            .message(&delivered_bytes("OTHER:X", 9, 150), &shared)
            .unwrap();
        // Sequence 3 was skipped, so 5 received or missed is all of 5 and not of 6.
        shared.published[1].store(6, Ordering::Release);
        assert!(!tally.complete(&shared));
        shared.published[1].store(5, Ordering::Release);
        assert!(tally.complete(&shared));
        let result = tally.result();
        assert_eq!((result.delivered, result.gaps), (2, 1));
        assert_eq!(result.latency_us.len(), 2);
    }
}
