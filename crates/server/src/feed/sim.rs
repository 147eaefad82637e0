//! The simulator: a deterministic synthetic market under venue `SIM`.
//!
//! Same seed and configuration give the identical event sequence: the PRNG is a local
//! SplitMix64 (no dependence on an external crate's stream stability) and exchange
//! timestamps come from a synthetic clock advancing `1/rate` per event, not the wall
//! clock. The simulator keeps its own venue book per instrument and only emits changes
//! that apply cleanly to it, so a correct engine never refuses its output.

use std::time::{Duration, Instant};

use raven_book::OrderBook;
use raven_model::{
    Aggressor, BookDelta, FeedEvent, FeedKind, InstrumentId, InstrumentName, InstrumentRegistry,
    LevelChange, Price, Qty, Side, SnapshotKind, Trade, UnixNanos,
};

use super::{Feed, FeedContext, FeedHandle, InstrumentInfo};
use crate::shutdown;

/// Simulator settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimConfig {
    /// PRNG seed.
    pub seed: u64,
    /// Events per second, all instruments together.
    pub rate: u64,
    /// Levels per side each book starts with.
    pub levels: usize,
}

/// The default instruments: (name, mid, tick, lot). Prices span eight orders of
/// magnitude and tick sizes from 0.01 down to 1e-9 so that every scale path is exercised.
const SPECS: [(&str, &str, &str, &str); 8] = [
    ("SIM:BTC-USD", "60000", "0.01", "0.0001"),
    ("SIM:ETH-USD", "3000", "0.01", "0.001"),
    ("SIM:SOL-USD", "150", "0.001", "0.01"),
    ("SIM:XRP-USD", "0.5", "0.0001", "1"),
    ("SIM:DOGE-USD", "0.15", "0.00001", "10"),
    ("SIM:PEPE-USD", "0.0001234", "0.0000001", "100000"),
    ("SIM:SHIB-USD", "0.00002", "0.000000001", "1000000"),
    ("SIM:EUR-USD", "1.08", "0.00001", "1000"),
];

/// The names of the instruments the simulator publishes, in its order.
pub fn instrument_names() -> Vec<&'static str> {
    SPECS.iter().map(|spec| spec.0).collect()
}

/// SplitMix64: tiny, fast, and fully specified, so seeds replay identically forever.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

struct SimBook {
    id: InstrumentId,
    info: InstrumentInfo,
    tick: i64,
    lot: i128,
    start_mid: i64,
    /// Mid price in ticks.
    mid: i64,
    book: OrderBook,
}

impl SimBook {
    fn price(&self, ticks: i64) -> Price {
        Price::from_units(ticks * self.tick)
    }

    fn ticks(&self, price: Price) -> i64 {
        price.units() / self.tick
    }

    fn best_ticks(&self, side: Side) -> Option<i64> {
        let best = match side {
            Side::Bid => self.book.best_bid(),
            Side::Ask => self.book.best_ask(),
        };
        best.map(|l| self.ticks(l.price))
    }

    /// Applies one change to the venue book and records it; changes that would break
    /// the book, or change nothing (removing a price that has no level, setting the size
    /// a level has), are skipped: they would cost subscribers a sequence for nothing.
    fn set(&mut self, change: LevelChange, changes: &mut Vec<LevelChange>) {
        if self.book.qty_at(change.side, change.price) == change.qty {
            return;
        }
        let next = self.book.sequence().next();
        if self.book.apply_changes(next, &[change]).is_ok() {
            changes.push(change);
        }
    }
}

/// The simulated market.
pub struct Simulator {
    rng: Rng,
    books: Vec<SimBook>,
    levels: usize,
    interval: u64,
    start: u64,
    /// Events emitted so far: event n happens at `start + n * interval`, so the synthetic
    /// clock keeps pace with the driver, which paces by events. (Counting generation steps
    /// instead let exchange time fall 17% behind: a trade step emits two events.)
    emitted: u64,
    clock: u64,
    burst: u32,
    trade_id: u64,
}

impl Simulator {
    /// Builds the default instruments, registering them in `registry`, with books of
    /// `config.levels` per side. `start` is the exchange time of the first event.
    pub fn new(config: &SimConfig, registry: &InstrumentRegistry, start: UnixNanos) -> Simulator {
        let mut rng = Rng(config.seed);
        let levels = config.levels.max(1);
        let books = SPECS
            .iter()
            .map(|&(name, mid, tick, lot)| {
                let name =
                    InstrumentName::parse(name).expect("built-in names are valid (invariant)");
                let tick_size: Price = tick.parse().expect("built-in tick is valid (invariant)");
                let lot: Qty = lot.parse().expect("built-in lot is valid (invariant)");
                let mid: Price = mid.parse().expect("built-in mid is valid (invariant)");
                let tick = tick_size.units();
                let mut b = SimBook {
                    id: registry.intern(&name),
                    info: InstrumentInfo { name, tick_size },
                    tick,
                    lot: lot.units(),
                    start_mid: mid.units() / tick,
                    mid: mid.units() / tick,
                    book: OrderBook::new(),
                };
                for k in 0..levels as i64 {
                    for side in [Side::Bid, Side::Ask] {
                        let ticks = if side == Side::Bid {
                            b.mid - 1 - k
                        } else {
                            b.mid + 1 + k
                        };
                        let qty = Qty::from_units(b.lot * (1 + rng.below(50) as i128));
                        b.set(
                            LevelChange {
                                side,
                                price: b.price(ticks),
                                qty,
                            },
                            &mut Vec::new(),
                        );
                    }
                }
                b
            })
            .collect();
        Simulator {
            rng,
            books,
            levels,
            interval: (UnixNanos::PER_SECOND / config.rate.max(1)).max(1),
            start: start.0,
            emitted: 0,
            clock: start.0,
            burst: 0,
            trade_id: 0,
        }
    }

    /// The simulated instruments.
    pub fn instruments(&self) -> Vec<InstrumentInfo> {
        self.books.iter().map(|b| b.info.clone()).collect()
    }

    fn time(&mut self) -> UnixNanos {
        if self.burst > 0 {
            // A burst: many events in the same instant.
            self.burst -= 1;
        } else {
            self.clock = self.start + self.emitted * self.interval;
            if self.rng.below(1000) == 0 {
                self.burst = 20 + self.rng.below(80) as u32;
            }
        }
        UnixNanos(self.clock)
    }

    fn feed_event(id: InstrumentId, time: UnixNanos, kind: FeedKind) -> FeedEvent {
        FeedEvent {
            instrument: id,
            exchange_time: time,
            receive_time: time,
            venue_seq: 0,
            kind,
        }
    }

    /// A full snapshot of one instrument (all instruments when `id` is `None`).
    pub fn snapshots(&self, id: Option<InstrumentId>, out: &mut Vec<FeedEvent>) {
        let time = UnixNanos(self.clock);
        for b in self.books.iter().filter(|b| id.is_none_or(|id| id == b.id)) {
            let snapshot = b.book.snapshot(0, SnapshotKind::Initial);
            out.push(Self::feed_event(b.id, time, FeedKind::Snapshot(snapshot)));
        }
    }

    /// Appends at least `n` events.
    pub fn generate(&mut self, n: usize, out: &mut Vec<FeedEvent>) {
        let target = out.len() + n;
        while out.len() < target {
            let before = out.len();
            let i = self.rng.below(self.books.len() as u64) as usize;
            let time = self.time();
            match self.rng.below(100) {
                0..62 => self.quote(i, time, out),
                62..82 => self.trade(i, time, out),
                _ => self.walk(i, time, out),
            }
            self.emitted += (out.len() - before) as u64;
        }
    }

    fn random_qty(&mut self, lot: i128, max_lots: u64) -> Qty {
        Qty::from_units(lot * (1 + self.rng.below(max_lots) as i128))
    }

    /// Keeps the book deep, then sends the changes (if any) as one delta.
    fn emit_delta(
        &mut self,
        i: usize,
        time: UnixNanos,
        mut changes: Vec<LevelChange>,
        out: &mut Vec<FeedEvent>,
    ) {
        self.refill_and_trim(i, &mut changes);
        if !changes.is_empty() {
            let delta = FeedKind::Delta(BookDelta { changes });
            out.push(Self::feed_event(self.books[i].id, time, delta));
        }
    }

    /// One to three level changes, mostly near the top of the book.
    fn quote(&mut self, i: usize, time: UnixNanos, out: &mut Vec<FeedEvent>) {
        let levels = self.levels as u64;
        let mut changes = Vec::with_capacity(3);
        for _ in 0..1 + self.rng.below(3) {
            let side = if self.rng.chance(50) {
                Side::Bid
            } else {
                Side::Ask
            };
            let k = self.rng.below(levels).min(self.rng.below(levels)) as i64;
            let remove = self.rng.chance(15);
            let qty = if remove {
                Qty::ZERO
            } else {
                self.random_qty(self.books[i].lot, 50)
            };
            let b = &mut self.books[i];
            let ticks = match side {
                Side::Bid => {
                    (b.mid - 1 - k).min(b.best_ticks(Side::Ask).map_or(i64::MAX, |a| a - 1))
                }
                Side::Ask => {
                    (b.mid + 1 + k).max(b.best_ticks(Side::Bid).map_or(i64::MIN, |b| b + 1))
                }
            };
            if ticks > 0 {
                let price = b.price(ticks);
                b.set(LevelChange { side, price, qty }, &mut changes);
            }
        }
        self.emit_delta(i, time, changes, out);
    }

    /// Keeps each side between `levels` and `2 * levels` deep.
    fn refill_and_trim(&mut self, i: usize, changes: &mut Vec<LevelChange>) {
        let qty = self.random_qty(self.books[i].lot, 50);
        let levels = self.levels;
        let b = &mut self.books[i];
        for side in [Side::Bid, Side::Ask] {
            let depth = b.book.depth(side);
            let Some(worst) = b.book.levels(side).last().map(|l| l.price) else {
                continue;
            };
            if depth > 2 * levels {
                b.set(
                    LevelChange {
                        side,
                        price: worst,
                        qty: Qty::ZERO,
                    },
                    changes,
                );
            } else if depth < levels {
                let ticks = b.ticks(worst) + if side == Side::Bid { -1 } else { 1 };
                if ticks > 0 {
                    let price = b.price(ticks);
                    b.set(LevelChange { side, price, qty }, changes);
                }
            }
        }
    }

    /// A market order that takes (part of) the best level on the other side.
    fn trade(&mut self, i: usize, time: UnixNanos, out: &mut Vec<FeedEvent>) {
        let aggressor = if self.rng.chance(50) {
            Aggressor::Buy
        } else {
            Aggressor::Sell
        };
        let take = self.random_qty(self.books[i].lot, 20);
        let b = &mut self.books[i];
        let (side, best) = match aggressor {
            Aggressor::Buy => (Side::Ask, b.book.best_ask()),
            _ => (Side::Bid, b.book.best_bid()),
        };
        let Some(level) = best else {
            return self.quote(i, time, out);
        };
        let qty = take.min(level.qty);
        let rest = level.qty.checked_sub(qty).unwrap_or(Qty::ZERO);
        let mut changes = Vec::with_capacity(3);
        b.set(
            LevelChange {
                side,
                price: level.price,
                qty: rest,
            },
            &mut changes,
        );
        if changes.is_empty() {
            return;
        }
        self.trade_id += 1;
        let trade = Trade {
            price: level.price,
            qty,
            aggressor,
            trade_id: self.trade_id.to_string(),
        };
        out.push(Self::feed_event(b.id, time, FeedKind::Trade(trade)));
        self.emit_delta(i, time, changes, out);
    }

    /// Moves the mid one tick (pulled back when it strays over 20% from where it began)
    /// and requotes the inside of the book around it.
    fn walk(&mut self, i: usize, time: UnixNanos, out: &mut Vec<FeedEvent>) {
        let up = {
            let b = &self.books[i];
            if b.mid * 10 < b.start_mid * 8 {
                true
            } else if b.mid * 10 > b.start_mid * 12 {
                false
            } else {
                self.rng.chance(50)
            }
        };
        let bid_qty = self.random_qty(self.books[i].lot, 50);
        let ask_qty = self.random_qty(self.books[i].lot, 50);
        let b = &mut self.books[i];
        b.mid = (b.mid + if up { 1 } else { -1 }).max(2);
        let mut changes = Vec::with_capacity(4);
        // Levels left on the wrong side of the new mid are pulled first.
        if let Some(bid) = b.best_ticks(Side::Bid).filter(|&t| t >= b.mid) {
            let price = b.price(bid);
            b.set(
                LevelChange {
                    side: Side::Bid,
                    price,
                    qty: Qty::ZERO,
                },
                &mut changes,
            );
        }
        if let Some(ask) = b.best_ticks(Side::Ask).filter(|&t| t <= b.mid) {
            let price = b.price(ask);
            b.set(
                LevelChange {
                    side: Side::Ask,
                    price,
                    qty: Qty::ZERO,
                },
                &mut changes,
            );
        }
        let bid = (b.mid - 1).min(b.best_ticks(Side::Ask).map_or(i64::MAX, |a| a - 1));
        let ask = (b.mid + 1).max(b.best_ticks(Side::Bid).map_or(i64::MIN, |b| b + 1));
        for (side, ticks, qty) in [(Side::Bid, bid, bid_qty), (Side::Ask, ask, ask_qty)] {
            if ticks > 0 {
                let price = b.price(ticks);
                b.set(LevelChange { side, price, qty }, &mut changes);
            }
        }
        self.emit_delta(i, time, changes, out);
    }
}

/// The simulator feed's name, in logs and in errors naming an instrument's owner.
const SIM_FEED: &str = "Simulator";

/// The simulator's shortest sleep between batches: events due within it go together.
/// The recorder's window: at 2,000 events/s a 1 ms tick woke the simulator and the shard
/// a thousand times a second, and the wake-ups, not the events, were most of an idle
/// server's CPU.
const IDLE_TICK_MIN: Duration = Duration::from_millis(5);
/// Its longest, so that a stop or a resync request is seen soon at any rate.
const IDLE_TICK_MAX: Duration = Duration::from_millis(50);

/// The simulator as a [`Feed`]: built when spawned, so that its instruments are interned
/// in the server's registry and its exchange clock starts at the server's now.
pub struct SimFeed {
    config: SimConfig,
}

impl SimFeed {
    /// A simulator feed with `config`.
    pub fn new(config: SimConfig) -> SimFeed {
        SimFeed { config }
    }
}

impl Feed for SimFeed {
    fn name(&self) -> &str {
        SIM_FEED
    }

    /// Runs the market on a thread of its own, paced at `config.rate` events per second:
    /// first every book's snapshot, then generated events, with a fresh snapshot for each
    /// resync request.
    fn spawn(self: Box<Self>, ctx: FeedContext) -> std::io::Result<FeedHandle> {
        let mut sim = Simulator::new(&self.config, ctx.catalog.registry(), ctx.clock.now());
        for info in sim.instruments() {
            ctx.catalog.add(info, ctx.id);
        }
        let rate = self.config.rate;
        let (trigger, stop) = shutdown::channel();
        let thread = std::thread::Builder::new()
            .name("raven-sim".into())
            .spawn(move || {
                let FeedContext { input, resync, .. } = ctx;
                let mut batch = Vec::new();
                sim.snapshots(None, &mut batch);
                if !input.send(std::mem::take(&mut batch)) {
                    return;
                }
                let start = Instant::now();
                let mut produced = 0u64;
                while !stop.is_set() {
                    while let Ok(id) = resync.try_recv() {
                        sim.snapshots(Some(id), &mut batch);
                    }
                    let due =
                        (start.elapsed().as_nanos() * u128::from(rate) / 1_000_000_000) as u64;
                    if due > produced {
                        // Bounded batches keep latency low when catching up after a stall.
                        let n = (due - produced).min(4096) as usize;
                        sim.generate(n, &mut batch);
                        produced += batch.len() as u64;
                    }
                    if batch.is_empty() {
                        // Until the next event is due: a slow simulator (a bench's, at
                        // 1 event/s) does not wake a thousand times a second.
                        let next = match rate {
                            0 => IDLE_TICK_MAX,
                            rate => Duration::from_nanos(
                                ((u128::from(produced) + 1) * 1_000_000_000 / u128::from(rate))
                                    .min(u128::from(u64::MAX))
                                    as u64,
                            )
                            .saturating_sub(start.elapsed()),
                        };
                        std::thread::sleep(next.clamp(IDLE_TICK_MIN, IDLE_TICK_MAX));
                    } else if !input.send(std::mem::take(&mut batch)) {
                        return;
                    }
                }
            })?;
        Ok(FeedHandle::new(
            SIM_FEED,
            move || trigger.fire(),
            Some(thread),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(seed: u64, n: usize) -> Vec<FeedEvent> {
        let registry = InstrumentRegistry::new();
        let config = SimConfig {
            seed,
            rate: 1000,
            levels: 25,
        };
        let mut sim = Simulator::new(&config, &registry, UnixNanos(1_700_000_000_000_000_000));
        let mut out = Vec::new();
        sim.snapshots(None, &mut out);
        sim.generate(n, &mut out);
        out
    }

    #[test]
    fn exchange_clock_keeps_pace_with_events_emitted() {
        // The driver paces by events; exchange time must advance 1/rate per event, or it
        // falls behind wall time (it did, by 17%, when it advanced per generation step).
        let start = 1_700_000_000_000_000_000;
        let events = run(9, 500_000);
        let last = events.last().unwrap().exchange_time.0;
        let expected = start + (events.len() as u64 - 8) * (UnixNanos::PER_SECOND / 1000);
        let slack = 200 * (UnixNanos::PER_SECOND / 1000); // a burst holds the clock briefly
        assert!(
            last.abs_diff(expected) <= slack,
            "exchange clock at {last}, expected about {expected}"
        );
    }

    #[test]
    fn same_seed_same_market() {
        let a = run(7, 200_000);
        assert_eq!(a, run(7, 200_000));
        assert_ne!(a, run(8, 200_000));
    }

    #[test]
    fn defaults_span_price_scales_and_books_replay_cleanly() {
        let registry = InstrumentRegistry::new();
        let config = SimConfig {
            seed: 1,
            rate: 1000,
            levels: 25,
        };
        let sim = Simulator::new(&config, &registry, UnixNanos(0));
        let infos = sim.instruments();
        assert_eq!(infos.len(), 8);
        assert!(infos.iter().all(|i| i.name.venue() == "SIM"));
        assert_eq!(infos[0].tick_size, "0.01".parse().unwrap());
        assert_eq!(infos[5].tick_size, "0.0000001".parse().unwrap());

        // Replaying the output on fresh books never breaks one, trades always take
        // resting liquidity, and books stay deep (at least 20 levels per side).
        let events = run(3, 300_000);
        let mut books: Vec<OrderBook> = (0..8).map(|_| OrderBook::new()).collect();
        let (mut trades, mut deltas, mut burst_events) = (0, 0, 0);
        let mut last_time = UnixNanos(0);
        for e in &events {
            let book = &mut books[e.instrument.index()];
            let next = book.sequence().next();
            if e.exchange_time == last_time {
                burst_events += 1;
            }
            last_time = e.exchange_time;
            match &e.kind {
                FeedKind::Snapshot(s) => book.apply_snapshot(next, s).unwrap(),
                FeedKind::Delta(d) => {
                    deltas += 1;
                    // Regression (issue 10, finding 8): 2.7% of deltas removed a price
                    // the book did not have.
                    let mut changed = std::collections::HashMap::new();
                    for c in &d.changes {
                        let before = changed
                            .get(&(c.side, c.price))
                            .copied()
                            .unwrap_or_else(|| book.qty_at(c.side, c.price));
                        assert_ne!(before, c.qty, "a no-op change {c:?}");
                        changed.insert((c.side, c.price), c.qty);
                    }
                    book.apply_delta(next, d).unwrap();
                }
                FeedKind::Trade(t) => {
                    trades += 1;
                    let side = if t.aggressor == Aggressor::Buy {
                        Side::Ask
                    } else {
                        Side::Bid
                    };
                    assert!(
                        book.qty_at(side, t.price) >= t.qty,
                        "trade larger than resting liquidity"
                    );
                }
                FeedKind::Status(_) => unreachable!("the simulator sends no status"),
            }
        }
        assert!(
            trades > 30_000 && deltas > 200_000,
            "trades {trades} deltas {deltas}"
        );
        assert!(burst_events > 1000, "bursts happen: {burst_events}");
        for b in &books {
            assert!(
                b.depth(Side::Bid) >= 20 && b.depth(Side::Ask) >= 20,
                "{} {}",
                b.depth(Side::Bid),
                b.depth(Side::Ask)
            );
        }
    }
}
