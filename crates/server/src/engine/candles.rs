//! OHLCV bars built from trades, one builder per interval. A bar is published when a trade
//! of a later bar arrives (bars with no trades are not published).

use raven_model::{Candle, CandleInterval, Price, Qty, UnixNanos};

/// The open bars of one instrument.
#[derive(Debug, Default)]
pub struct Candles {
    open: [Option<Candle>; CandleInterval::ALL.len()],
}

impl Candles {
    /// Adds a trade at exchange time `time`; bars it closes are appended to `closed`.
    pub fn on_trade(&mut self, time: UnixNanos, price: Price, qty: Qty, closed: &mut Vec<Candle>) {
        for (slot, interval) in self.open.iter_mut().zip(CandleInterval::ALL) {
            let start = time.floor_to(interval.nanos());
            match slot {
                // A late trade (venue clock went backwards) still counts in the open bar.
                Some(bar) if start <= bar.open_time => {
                    bar.high = bar.high.max(price);
                    bar.low = bar.low.min(price);
                    bar.close = price;
                    // i128 at 1e-9 holds 1.7e20 units: one bar's volume cannot get there.
                    bar.volume = bar.volume.checked_add(qty).unwrap_or(Qty::MAX);
                    bar.trades += 1;
                }
                _ => {
                    if let Some(bar) = slot.take() {
                        closed.push(bar);
                    }
                    *slot = Some(Candle {
                        interval,
                        open_time: start,
                        open: price,
                        high: price,
                        low: price,
                        close: price,
                        volume: qty,
                        trades: 1,
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_close_when_a_later_bar_starts() {
        let s = UnixNanos::PER_SECOND;
        let p = |x: &str| x.parse::<Price>().unwrap();
        let q = |x: &str| x.parse::<Qty>().unwrap();
        let mut c = Candles::default();
        let mut closed = Vec::new();
        c.on_trade(UnixNanos(10 * s + 1), p("100"), q("1"), &mut closed);
        c.on_trade(UnixNanos(10 * s + 5), p("103.5"), q("0.5"), &mut closed);
        c.on_trade(UnixNanos(10 * s + 9), p("99"), q("2"), &mut closed);
        c.on_trade(UnixNanos(10 * s + 7), p("101"), q("1"), &mut closed);
        assert!(closed.is_empty());
        c.on_trade(UnixNanos(11 * s), p("102"), q("3"), &mut closed);
        assert_eq!(
            closed,
            vec![Candle {
                interval: CandleInterval::Second1,
                open_time: UnixNanos(10 * s),
                open: p("100"),
                high: p("103.5"),
                low: p("99"),
                close: p("101"),
                volume: q("4.5"),
                trades: 4,
            }]
        );
        closed.clear();
        c.on_trade(UnixNanos(61 * s), p("90"), q("1"), &mut closed);
        let intervals: Vec<_> = closed
            .iter()
            .map(|b| (b.interval, b.open_time, b.trades))
            .collect();
        assert_eq!(
            intervals,
            vec![
                (CandleInterval::Second1, UnixNanos(11 * s), 1),
                (CandleInterval::Minute1, UnixNanos(0), 5),
            ]
        );
    }
}
