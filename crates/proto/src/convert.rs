//! Conversions between model values and the generated protobuf types: model → pb for the
//! unary answers (and as the reference the hand encoder is tested against), pb → model
//! for clients. Wire enums that a peer sends us are checked, never trusted.

use crate::pb;
use crate::wire::{channel_number, status_number};
use raven_model::{
    Aggressor, Bbo, BookDelta, BookSnapshot, Candle, CandleInterval, Channel, Event, EventBody,
    FeedKind, Level, LevelChange, Price, Qty, Side, SnapshotKind, Status, StatusKind, Trade,
    UnixNanos,
};

/// A protobuf value that has no model meaning.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    /// An enum field held a value this version does not know (or the unspecified 0).
    #[error("{field} has unknown value {value}")]
    UnknownEnum {
        /// Which field.
        field: &'static str,
        /// The value received.
        value: i32,
    },
    /// A required message field was absent.
    #[error("{0} is missing")]
    Missing(&'static str),
}

/// Model channel from its protobuf number. `CHANNEL_UNSPECIFIED` is an error.
pub fn channel_from_pb(value: i32) -> Result<Channel, ProtoError> {
    match pb::Channel::try_from(value) {
        Ok(pb::Channel::Book) => Ok(Channel::Book),
        Ok(pb::Channel::Bbo) => Ok(Channel::Bbo),
        Ok(pb::Channel::Trades) => Ok(Channel::Trades),
        Ok(pb::Channel::Candles) => Ok(Channel::Candles),
        Ok(pb::Channel::Unspecified) | Err(_) => Err(ProtoError::UnknownEnum {
            field: "channel",
            value,
        }),
    }
}

/// Protobuf enum value of a channel.
pub fn channel_to_pb(channel: Channel) -> pb::Channel {
    match channel {
        Channel::Book => pb::Channel::Book,
        Channel::Bbo => pb::Channel::Bbo,
        Channel::Trades => pb::Channel::Trades,
        Channel::Candles => pb::Channel::Candles,
    }
}

/// A quantity from its two 64-bit words.
pub fn qty_from_words(lo: u64, hi: u64) -> Qty {
    Qty::from_units(((u128::from(hi) << 64) | u128::from(lo)) as i128)
}

fn qty_to_words(q: Qty) -> (u64, u64) {
    let u = q.units() as u128;
    (u as u64, (u >> 64) as u64)
}

/// A model level from the wire.
pub fn level_from_pb(l: &pb::Level) -> Level {
    Level {
        price: Price::from_units(l.price),
        qty: qty_from_words(l.qty, l.qty_hi),
    }
}

fn level_to_pb(price: Price, qty: Qty) -> pb::Level {
    let (qty, qty_hi) = qty_to_words(qty);
    pb::Level {
        price: price.units(),
        qty,
        qty_hi,
    }
}

/// The protobuf form of a model event, for an instrument called `instrument`.
pub fn event_to_pb(instrument: &str, event: &Event) -> pb::Event {
    use pb::event::Body;
    let levels = |ls: &[Level]| ls.iter().map(|l| level_to_pb(l.price, l.qty)).collect();
    let changes = |d: &BookDelta, side| {
        d.changes
            .iter()
            .filter(|c| c.side == side)
            .map(|c| level_to_pb(c.price, c.qty))
            .collect()
    };
    let body = match &event.body {
        EventBody::Snapshot(s) => Body::Snapshot(pb::BookSnapshot {
            bids: levels(&s.bids),
            asks: levels(&s.asks),
            resync: s.kind == SnapshotKind::Resync,
            checkpoint: s.kind == SnapshotKind::Checkpoint,
        }),
        EventBody::Delta(d) => Body::Delta(pb::BookDelta {
            bids: changes(d, Side::Bid),
            asks: changes(d, Side::Ask),
        }),
        EventBody::Trade(t) => {
            let (qty, qty_hi) = qty_to_words(t.qty);
            Body::Trade(pb::Trade {
                price: t.price.units(),
                qty,
                qty_hi,
                aggressor: match t.aggressor {
                    Aggressor::Buy => pb::Aggressor::Buy,
                    Aggressor::Sell => pb::Aggressor::Sell,
                    Aggressor::Unknown => pb::Aggressor::Unspecified,
                } as i32,
                trade_id: t.trade_id.clone(),
            })
        }
        EventBody::Bbo(b) => Body::Bbo(pb::Bbo {
            bid: b.bid.map(|l| level_to_pb(l.price, l.qty)),
            ask: b.ask.map(|l| level_to_pb(l.price, l.qty)),
        }),
        EventBody::Candle(c) => {
            let (volume, volume_hi) = qty_to_words(c.volume);
            Body::Candle(pb::Candle {
                interval: match c.interval {
                    CandleInterval::Second1 => pb::CandleInterval::CandleInterval1s,
                    CandleInterval::Minute1 => pb::CandleInterval::CandleInterval1m,
                } as i32,
                open_time: c.open_time.0,
                open: c.open.units(),
                high: c.high.units(),
                low: c.low.units(),
                close: c.close.units(),
                volume,
                volume_hi,
                trades: c.trades,
            })
        }
        EventBody::Status(s) => Body::Status(pb::Status {
            kind: status_number(s.kind) as i32,
            missed: s.missed,
            detail: s.detail.clone(),
        }),
    };
    pb::Event {
        instrument: instrument.to_owned(),
        channel: channel_number(event.body.channel()) as i32,
        sequence: event.sequence.0,
        exchange_time: event.exchange_time.0,
        receive_time: event.receive_time.0,
        publish_time: event.publish_time.0,
        venue_seq: event.venue_seq,
        body: Some(body),
    }
}

/// A wire book snapshot as the model's.
pub fn snapshot_from_pb(s: &pb::BookSnapshot) -> BookSnapshot {
    BookSnapshot {
        bids: s.bids.iter().map(level_from_pb).collect(),
        asks: s.asks.iter().map(level_from_pb).collect(),
        kind: if s.checkpoint {
            SnapshotKind::Checkpoint
        } else if s.resync {
            SnapshotKind::Resync
        } else {
            SnapshotKind::Initial
        },
    }
}

/// A wire book delta as the model's (bids' changes, then asks').
pub fn delta_from_pb(d: &pb::BookDelta) -> BookDelta {
    let change = |side| {
        move |l: &pb::Level| LevelChange {
            side,
            price: Price::from_units(l.price),
            qty: qty_from_words(l.qty, l.qty_hi),
        }
    };
    let bids = d.bids.iter().map(change(Side::Bid));
    let changes = bids.chain(d.asks.iter().map(change(Side::Ask))).collect();
    BookDelta { changes }
}

fn trade_from_pb(t: &pb::Trade) -> Result<Trade, ProtoError> {
    Ok(Trade {
        price: Price::from_units(t.price),
        qty: qty_from_words(t.qty, t.qty_hi),
        aggressor: match pb::Aggressor::try_from(t.aggressor) {
            Ok(pb::Aggressor::Buy) => Aggressor::Buy,
            Ok(pb::Aggressor::Sell) => Aggressor::Sell,
            Ok(pb::Aggressor::Unspecified) => Aggressor::Unknown,
            Err(_) => {
                return Err(ProtoError::UnknownEnum {
                    field: "trade.aggressor",
                    value: t.aggressor,
                });
            }
        },
        trade_id: t.trade_id.clone(),
    })
}

/// The model payload of a published event (the instrument and times are the caller's).
pub fn feed_kind_from_pb(event: &pb::FeedEvent) -> Result<FeedKind, ProtoError> {
    use pb::feed_event::Body;
    match event
        .body
        .as_ref()
        .ok_or(ProtoError::Missing("event body"))?
    {
        Body::Snapshot(s) => Ok(FeedKind::Snapshot(BookSnapshot {
            kind: SnapshotKind::Initial,
            ..snapshot_from_pb(s)
        })),
        Body::Delta(d) => Ok(FeedKind::Delta(delta_from_pb(d))),
        Body::Trade(t) => Ok(FeedKind::Trade(trade_from_pb(t)?)),
    }
}

/// A status kind's number.
pub fn status_kind_from_pb(value: i32) -> Result<StatusKind, ProtoError> {
    Ok(match value {
        1 => StatusKind::Gap,
        2 => StatusKind::Resync,
        3 => StatusKind::FeedDown,
        4 => StatusKind::FeedUp,
        5 => StatusKind::Stale,
        6 => StatusKind::Rejected,
        7 => StatusKind::GoingAway,
        value => {
            return Err(ProtoError::UnknownEnum {
                field: "status.kind",
                value,
            });
        }
    })
}

/// The model body of a wire event; `Ok(None)` for per-subscriber control events
/// (`SnapshotEnd`, `HistoryEnd`, `HeartbeatAck`) which have no model counterpart.
pub fn body_from_pb(event: &pb::Event) -> Result<Option<EventBody>, ProtoError> {
    use pb::event::Body;
    let body = match event
        .body
        .as_ref()
        .ok_or(ProtoError::Missing("event body"))?
    {
        Body::Snapshot(s) => EventBody::Snapshot(snapshot_from_pb(s)),
        Body::Delta(d) => EventBody::Delta(delta_from_pb(d)),
        Body::Trade(t) => EventBody::Trade(trade_from_pb(t)?),
        Body::Bbo(b) => EventBody::Bbo(Bbo {
            bid: b.bid.as_ref().map(level_from_pb),
            ask: b.ask.as_ref().map(level_from_pb),
        }),
        Body::Candle(c) => EventBody::Candle(Candle {
            interval: match pb::CandleInterval::try_from(c.interval) {
                Ok(pb::CandleInterval::CandleInterval1s) => CandleInterval::Second1,
                Ok(pb::CandleInterval::CandleInterval1m) => CandleInterval::Minute1,
                _ => {
                    return Err(ProtoError::UnknownEnum {
                        field: "candle.interval",
                        value: c.interval,
                    });
                }
            },
            open_time: UnixNanos(c.open_time),
            open: Price::from_units(c.open),
            high: Price::from_units(c.high),
            low: Price::from_units(c.low),
            close: Price::from_units(c.close),
            volume: qty_from_words(c.volume, c.volume_hi),
            trades: c.trades,
        }),
        Body::Status(s) => EventBody::Status(Status {
            kind: status_kind_from_pb(s.kind)?,
            channel: channel_from_pb(event.channel)?,
            missed: s.missed,
            detail: s.detail.clone(),
        }),
        Body::SnapshotEnd(_) | Body::HistoryEnd(_) | Body::HeartbeatAck(_) => return Ok(None),
    };
    Ok(Some(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_round_trip_and_unknown_values_are_refused() {
        for c in Channel::ALL {
            assert_eq!(channel_from_pb(channel_to_pb(c) as i32), Ok(c));
        }
        assert_eq!(
            channel_from_pb(0),
            Err(ProtoError::UnknownEnum {
                field: "channel",
                value: 0
            })
        );
        assert_eq!(
            channel_from_pb(99),
            Err(ProtoError::UnknownEnum {
                field: "channel",
                value: 99
            })
        );
    }

    #[test]
    fn quantities_above_u64_survive_the_two_words() {
        let q = Qty::from_units((1i128 << 90) + 12345);
        let (lo, hi) = qty_to_words(q);
        assert_eq!(qty_from_words(lo, hi), q);
    }
}
