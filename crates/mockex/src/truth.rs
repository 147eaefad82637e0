//! The seeded book process behind the mock and its ground truth: each tick changes a few
//! levels of every symbol's book under a new venue update id range and sometimes prints a
//! trade, and the whole book is recorded at every update id so that a test can compare
//! what Raven publishes with what the venue really had at that id.

use std::collections::{BTreeMap, HashMap, VecDeque};

/// Price ticks (0.01) and quantity units (1e-8), as the venue would render them.
pub type Levels = BTreeMap<(bool, i64), u64>;

/// The middle of every book, in ticks: bids below, asks above, never crossed.
pub const MID: i64 = 3_000_000;
/// Levels per side the process moves within.
const SPAN: i64 = 40;

/// A small deterministic generator (splitmix64): tests replay exactly under a seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeded.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn bits(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.bits() % n.max(1)
    }
}

/// A price in ticks as the venue writes it (`30000.01000000`).
pub fn price_text(ticks: i64) -> String {
    format!("{}.{:02}000000", ticks / 100, ticks % 100)
}

/// A quantity in 1e-8 units as the venue writes it (`0.00100000`).
pub fn qty_text(units: u64) -> String {
    format!("{}.{:08}", units / 100_000_000, units % 100_000_000)
}

/// One generated depth diff.
#[derive(Debug, Clone)]
pub struct DiffOut {
    /// `U`.
    pub first: u64,
    /// `u`.
    pub last: u64,
    /// `pu` (the previous diff's `u`).
    pub prev: u64,
    /// (bid, price ticks, quantity units; 0 removes).
    pub changes: Vec<(bool, i64, u64)>,
}

/// One generated trade.
#[derive(Debug, Clone)]
pub struct TradeOut {
    /// Aggregate trade id, contiguous.
    pub id: u64,
    /// Price ticks.
    pub price: i64,
    /// Quantity units.
    pub qty: u64,
    /// The buyer was the maker.
    pub buyer_is_maker: bool,
}

/// One symbol's true book and its history.
#[derive(Debug)]
pub struct SymbolTruth {
    book: Levels,
    last_id: u64,
    next_trade: u64,
    history: VecDeque<(u64, Levels)>,
    keep: usize,
    skips: bool,
}

impl SymbolTruth {
    /// A book of twenty levels a side at update id 1000; `skips`: ids jump between
    /// diffs (USD-M), chained by `pu`; the books of the last `keep` ids are kept.
    pub fn new(rng: &mut Rng, skips: bool, keep: usize) -> SymbolTruth {
        let mut book = Levels::new();
        for i in 1..=20 {
            book.insert((true, MID - i), 1 + rng.below(5_000_000));
            book.insert((false, MID + i), 1 + rng.below(5_000_000));
        }
        let mut history = VecDeque::new();
        history.push_back((1000, book.clone()));
        SymbolTruth {
            book,
            last_id: 1000,
            next_trade: 5_000,
            history,
            keep: keep.max(1),
            skips,
        }
    }

    /// The book now.
    pub fn book(&self) -> &Levels {
        &self.book
    }

    /// The venue's current update id.
    pub fn last_id(&self) -> u64 {
        self.last_id
    }

    /// The book at update id `id`, if it was an id a diff ended at and is still kept.
    pub fn at(&self, id: u64) -> Option<&Levels> {
        let i = self.history.binary_search_by_key(&id, |(u, _)| *u).ok()?;
        Some(&self.history[i].1)
    }

    /// The id and book `back` diffs ago (0: now).
    pub fn behind(&self, back: usize) -> (u64, &Levels) {
        let i = self.history.len().saturating_sub(1 + back);
        let (id, book) = &self.history[i];
        (*id, book)
    }

    /// The next diff.
    pub fn step(&mut self, rng: &mut Rng) -> DiffOut {
        let n = 1 + rng.below(3) as usize;
        let mut changes = Vec::with_capacity(n);
        for _ in 0..n {
            let bid = rng.below(2) == 0;
            let offset = 1 + rng.below(SPAN as u64) as i64;
            let price = if bid { MID - offset } else { MID + offset };
            let qty = if rng.below(4) == 0 {
                0
            } else {
                1 + rng.below(5_000_000)
            };
            if qty == 0 {
                self.book.remove(&(bid, price));
            } else {
                self.book.insert((bid, price), qty);
            }
            changes.push((bid, price, qty));
        }
        let prev = self.last_id;
        let skip = if self.skips { rng.below(3) } else { 0 };
        let first = prev + 1 + skip;
        let last = first + rng.below(3);
        self.last_id = last;
        self.history.push_back((last, self.book.clone()));
        if self.history.len() > self.keep {
            self.history.pop_front();
        }
        DiffOut {
            first,
            last,
            prev,
            changes,
        }
    }

    /// A trade at the touch.
    pub fn trade(&mut self, rng: &mut Rng) -> TradeOut {
        let buyer_is_maker = rng.below(2) == 0;
        // A maker buyer was hit at the best bid, a maker seller lifted at the best ask.
        // Keys order asks (`false`) before bids (`true`).
        let price = if buyer_is_maker {
            self.book
                .range((true, i64::MIN)..)
                .next_back()
                .map(|((_, p), _)| *p)
        } else {
            self.book
                .range((false, i64::MIN)..(true, i64::MIN))
                .next()
                .map(|((_, p), _)| *p)
        }
        .unwrap_or(MID);
        self.next_trade += 1;
        TradeOut {
            id: self.next_trade,
            price,
            qty: 1 + rng.below(1_000_000),
            buyer_is_maker,
        }
    }

    /// Skips `n` trade ids (a trade-id gap the venue's feed would show).
    pub fn skip_trades(&mut self, n: u64) {
        self.next_trade += n;
    }
}

/// Every symbol's truth.
pub type Truths = HashMap<String, SymbolTruth>;
