//! Lock-free top-of-book for readers on other threads: a seqlock.
//!
//! The single writer bumps a sequence word to odd, stores the fields, and bumps it to even;
//! a reader retries until it saw the same even value before and after reading the fields.
//! All fields are atomics (so concurrent reads are defined behaviour) and the fences
//! follow the standard seqlock recipe (Boehm, "Can seqlocks get along with programming
//! language memory models?", 2012). A reader therefore never pairs a bid price from one
//! update with a quantity from another — the tearing the seed design's separate atomics
//! allowed. The writer half is not `Clone`, which makes "single writer" a type property.

use std::hint::spin_loop;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering, fence};

use raven_model::{Bbo, Level, Price, Qty, Sequence, UnixNanos};

/// The state readers see: best levels, the book's sequence and the times of its last
/// change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TopOfBook {
    /// Best bid and ask.
    pub bbo: Bbo,
    /// The book's sequence.
    pub sequence: Sequence,
    /// Exchange time of the book's last change.
    pub exchange_time: UnixNanos,
    /// When Raven received it.
    pub receive_time: UnixNanos,
    /// The venue's id for the book's last change (0 when the source has none).
    pub venue_seq: u64,
}

const WORDS: usize = 11;
const HAS_BID: u64 = 1;
const HAS_ASK: u64 = 2;

#[derive(Default)]
struct Slot {
    version: AtomicU64,
    words: [AtomicU64; WORDS],
}

fn encode(top: &TopOfBook) -> [u64; WORDS] {
    let bid = top.bbo.bid.unwrap_or(Level {
        price: Price::ZERO,
        qty: Qty::ZERO,
    });
    let ask = top.bbo.ask.unwrap_or(Level {
        price: Price::ZERO,
        qty: Qty::ZERO,
    });
    let flags =
        (u64::from(top.bbo.bid.is_some()) * HAS_BID) | (u64::from(top.bbo.ask.is_some()) * HAS_ASK);
    let bq = bid.qty.units() as u128;
    let aq = ask.qty.units() as u128;
    [
        bid.price.units() as u64,
        bq as u64,
        (bq >> 64) as u64,
        ask.price.units() as u64,
        aq as u64,
        (aq >> 64) as u64,
        top.sequence.0,
        top.exchange_time.0,
        top.receive_time.0,
        flags,
        top.venue_seq,
    ]
}

fn decode(w: &[u64; WORDS]) -> TopOfBook {
    let level = |price: u64, lo: u64, hi: u64| Level {
        price: Price::from_units(price as i64),
        qty: Qty::from_units(((u128::from(hi) << 64) | u128::from(lo)) as i128),
    };
    TopOfBook {
        bbo: Bbo {
            bid: (w[9] & HAS_BID != 0).then(|| level(w[0], w[1], w[2])),
            ask: (w[9] & HAS_ASK != 0).then(|| level(w[3], w[4], w[5])),
        },
        sequence: Sequence(w[6]),
        exchange_time: UnixNanos(w[7]),
        receive_time: UnixNanos(w[8]),
        venue_seq: w[10],
    }
}

/// The writing half. Exactly one exists per slot.
pub struct TopWriter {
    slot: Arc<Slot>,
}

/// A reading half; clone freely, read from any thread.
#[derive(Clone)]
pub struct TopReader {
    slot: Arc<Slot>,
}

/// A new slot holding the default (empty) top of book.
pub fn channel() -> (TopWriter, TopReader) {
    let slot = Arc::new(Slot::default());
    (TopWriter { slot: slot.clone() }, TopReader { slot })
}

impl TopWriter {
    /// Publishes a new state. Wait-free.
    #[inline]
    pub fn publish(&mut self, top: &TopOfBook) {
        let words = encode(top);
        let slot = &*self.slot;
        // Only this writer stores the version, so a relaxed load sees its own last store.
        let v = slot.version.load(Ordering::Relaxed);
        slot.version.store(v.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        for (cell, w) in slot.words.iter().zip(words) {
            cell.store(w, Ordering::Relaxed);
        }
        slot.version.store(v.wrapping_add(2), Ordering::Release);
    }
}

impl TopReader {
    /// The latest consistent state. Lock-free: retries only while a write is in progress.
    #[inline]
    pub fn read(&self) -> TopOfBook {
        let slot = &*self.slot;
        loop {
            let before = slot.version.load(Ordering::Acquire);
            if before & 1 == 1 {
                spin_loop();
                continue;
            }
            let words: [u64; WORDS] =
                std::array::from_fn(|i| slot.words[i].load(Ordering::Relaxed));
            fence(Ordering::Acquire);
            if slot.version.load(Ordering::Relaxed) == before {
                return decode(&words);
            }
            spin_loop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every field is a function of `i`, so a reader can tell a torn state apart.
    /// Quantities exceed 2^64 units to exercise the high words too.
    fn state(i: u64) -> TopOfBook {
        let big = 1i128 << 70;
        TopOfBook {
            bbo: Bbo {
                bid: Some(Level {
                    price: Price::from_units(i as i64),
                    qty: Qty::from_units(big + i as i128 * 3),
                }),
                ask: (!i.is_multiple_of(5)).then(|| Level {
                    price: Price::from_units(i as i64 + 1),
                    qty: Qty::from_units(big * 2 + i as i128 * 7),
                }),
            },
            sequence: Sequence(i),
            exchange_time: UnixNanos(i * 11),
            receive_time: UnixNanos(i * 13),
            venue_seq: 0,
        }
    }

    #[test]
    fn round_trips_every_field() {
        let (mut w, r) = channel();
        assert_eq!(r.read(), TopOfBook::default());
        for i in [1, 5, u32::MAX as u64] {
            w.publish(&state(i));
            assert_eq!(r.read(), state(i));
        }
    }

    #[test]
    fn readers_never_see_a_torn_state() {
        const UPDATES: u64 = 3_000_000;
        let (mut w, r) = channel();
        w.publish(&state(0));
        let readers: Vec<_> = (0..3)
            .map(|_| {
                let r = r.clone();
                std::thread::spawn(move || {
                    let (mut reads, mut last) = (0u64, 0u64);
                    loop {
                        let top = r.read();
                        let i = top.sequence.0;
                        assert_eq!(top, state(i), "torn read at sequence {i}");
                        assert!(i >= last, "sequence went backwards: {last} -> {i}");
                        last = i;
                        reads += 1;
                        if i == UPDATES {
                            return reads;
                        }
                    }
                })
            })
            .collect();
        for i in 1..=UPDATES {
            w.publish(&state(i));
        }
        for h in readers {
            let reads = h.join().expect("reader saw a torn state");
            assert!(reads > 0);
        }
    }
}
