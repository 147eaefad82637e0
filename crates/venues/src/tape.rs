//! A trade tape's ids: venues number trades contiguously per instrument (Binance `t` and
//! aggTrade `a`, Kraken `trade_id`, Coinbase `trade_id`), so a jump is trades lost and a
//! repeat is a trade already published (a reconnect's snapshot of recent trades, a
//! duplicated frame). The tape keeps the high-water mark and says which.

/// What a trade id means for the tape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TradeSeen {
    /// New and contiguous (or the first seen).
    Next,
    /// New, after `missed` ids that never arrived.
    After {
        /// Trade ids skipped.
        missed: u64,
    },
    /// At or below the high-water mark: already published, drop it.
    Repeat,
}

use raven_model::{Channel, StatusKind};

use crate::action::Action;

/// The high-water mark of one instrument's trade ids.
#[derive(Debug, Clone, Default)]
pub struct TradeTape {
    last: Option<u64>,
}

impl TradeTape {
    /// Classifies trade id `id` (or the id range `first..=last` of an aggregated trade)
    /// and moves the mark.
    pub fn see(&mut self, first: u64, last: u64) -> TradeSeen {
        let seen = match self.last {
            Some(mark) if last <= mark => return TradeSeen::Repeat,
            Some(mark) if first > mark + 1 => TradeSeen::After {
                missed: first - mark - 1,
            },
            _ => TradeSeen::Next,
        };
        self.last = Some(last);
        seen
    }

    /// The last id published.
    pub fn last(&self) -> Option<u64> {
        self.last
    }

    /// Admits trade `id`: false for a repeat (drop the trade); after a jump, a `Gap` on
    /// the trades channel with the ids skipped is pushed first.
    pub fn admit(&mut self, id: u64, out: &mut Vec<Action>) -> bool {
        let before = self.last;
        match self.see(id, id) {
            TradeSeen::Repeat => false,
            TradeSeen::After { missed } => {
                out.push(Action::status(
                    Channel::Trades,
                    StatusKind::Gap,
                    missed,
                    format!(
                        "trade ids {}..={} never arrived",
                        before.map_or(0, |b| b + 1),
                        id - 1
                    ),
                ));
                true
            }
            TradeSeen::Next => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tape_tells_next_repeats_and_jumps() {
        let mut tape = TradeTape::default();
        assert_eq!(tape.see(100, 100), TradeSeen::Next);
        assert_eq!(tape.see(101, 105), TradeSeen::Next);
        assert_eq!(tape.see(103, 105), TradeSeen::Repeat);
        assert_eq!(tape.see(99, 99), TradeSeen::Repeat);
        assert_eq!(tape.see(109, 110), TradeSeen::After { missed: 3 });
        assert_eq!(tape.last(), Some(110));
        // An aggregate overlapping the mark is new where it goes past it.
        assert_eq!(tape.see(110, 112), TradeSeen::Next);
        assert_eq!(tape.last(), Some(112));
    }
}
