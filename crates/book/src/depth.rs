//! Depth views: a client subscribed to the top N levels needs deltas that keep exactly
//! those N levels right — including a level that enters the top N because one above it
//! was removed. The engine keeps the last published top-N per view and publishes the
//! difference computed here.

use raven_model::{Level, LevelChange, Price, Qty, Side};

/// Appends to `out` the changes that turn `old` into `new`, both best first for `side`:
/// levels that left become quantity 0; new or changed levels carry their new quantity.
pub fn diff_levels(side: Side, old: &[Level], new: &[Level], out: &mut Vec<LevelChange>) {
    let before = |a: Price, b: Price| match side {
        Side::Bid => a > b,
        Side::Ask => a < b,
    };
    let (mut i, mut j) = (0, 0);
    loop {
        match (old.get(i), new.get(j)) {
            (None, None) => return,
            (Some(o), Some(n)) if o.price == n.price => {
                if o.qty != n.qty {
                    out.push(LevelChange {
                        side,
                        price: n.price,
                        qty: n.qty,
                    });
                }
                i += 1;
                j += 1;
            }
            (Some(o), Some(n)) if before(o.price, n.price) => {
                out.push(LevelChange {
                    side,
                    price: o.price,
                    qty: Qty::ZERO,
                });
                i += 1;
            }
            (Some(o), None) => {
                out.push(LevelChange {
                    side,
                    price: o.price,
                    qty: Qty::ZERO,
                });
                i += 1;
            }
            (_, Some(n)) => {
                out.push(LevelChange {
                    side,
                    price: n.price,
                    qty: n.qty,
                });
                j += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::OrderBook;
    use proptest::prelude::*;
    use raven_model::{BookSnapshot, Sequence, SnapshotKind};

    fn levels(side: Side, raw: &[(i64, i128)]) -> Vec<Level> {
        let mut v: Vec<Level> = raw
            .iter()
            .map(|&(p, q)| Level {
                price: Price::from_units(p),
                qty: Qty::from_units(q),
            })
            .collect();
        v.sort_by_key(|l| l.price);
        v.dedup_by_key(|l| l.price);
        if side == Side::Bid {
            v.reverse();
        }
        v
    }

    #[test]
    fn level_entering_the_view_is_sent() {
        // Depth 2 view of bids 100, 99 | 98 below. 100 is removed: 98 enters.
        let old = levels(Side::Bid, &[(100, 1), (99, 2)]);
        let new = levels(Side::Bid, &[(99, 2), (98, 5)]);
        let mut out = Vec::new();
        diff_levels(Side::Bid, &old, &new, &mut out);
        let expect = vec![
            LevelChange {
                side: Side::Bid,
                price: Price::from_units(100),
                qty: Qty::ZERO,
            },
            LevelChange {
                side: Side::Bid,
                price: Price::from_units(98),
                qty: Qty::from_units(5),
            },
        ];
        assert_eq!(out, expect);
    }

    proptest! {
        #[test]
        fn applying_the_diff_turns_old_into_new(
            ask in any::<bool>(),
            old in prop::collection::vec((0i64..30, 1i128..4), 0..12),
            new in prop::collection::vec((0i64..30, 1i128..4), 0..12),
        ) {
            let side = if ask { Side::Ask } else { Side::Bid };
            let (old, new) = (levels(side, &old), levels(side, &new));
            let mut out = Vec::new();
            diff_levels(side, &old, &new, &mut out);
            let one_side = |l: &Vec<Level>| match side {
                Side::Bid => BookSnapshot { bids: l.clone(), asks: vec![], kind: SnapshotKind::Initial },
                Side::Ask => BookSnapshot { bids: vec![], asks: l.clone(), kind: SnapshotKind::Initial },
            };
            let mut book = OrderBook::new();
            book.apply_snapshot(Sequence(0), &one_side(&old)).unwrap();
            book.apply_changes(Sequence(1), &out).unwrap();
            prop_assert_eq!(book.snapshot(0, SnapshotKind::Initial), one_side(&new));
        }
    }
}
