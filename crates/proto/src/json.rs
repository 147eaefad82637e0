//! Events as JSON objects: what `raven subscribe --json` and `raven history --format
//! jsonl` print and what the HTTP API answers, one form everywhere. Prices and
//! quantities are exact decimal strings (never floats); times, sequences and every other
//! integer that can pass 2⁵³ are decimal strings too, since JavaScript (and any JSON
//! reader that parses numbers as doubles) cannot hold them exactly.

use raven_model::{Aggressor, CandleInterval, EventBody, Level, Price, Side, SnapshotKind};
use serde_json::{Map, Value, json};

use crate::convert::{ProtoError, body_from_pb, level_from_pb, status_kind_from_pb};
use crate::pb;

/// A channel's name as the JSON forms and the CLI spell it ("" for none).
pub fn channel_name(channel: i32) -> &'static str {
    match pb::Channel::try_from(channel) {
        Ok(pb::Channel::Book) => "book",
        Ok(pb::Channel::Bbo) => "bbo",
        Ok(pb::Channel::Trades) => "trades",
        Ok(pb::Channel::Candles) => "candles",
        _ => "",
    }
}

fn levels(levels: &[Level]) -> Value {
    Value::Array(
        levels
            .iter()
            .map(|l| json!([l.price.to_string(), l.qty.to_string()]))
            .collect(),
    )
}

fn level(level: Option<Level>) -> Value {
    level.map_or(
        Value::Null,
        |l| json!({"price": l.price.to_string(), "qty": l.qty.to_string()}),
    )
}

fn status(kind: &str, missed: u64, detail: &str) -> Value {
    json!({"type": "status", "kind": kind, "missed": missed.to_string(), "detail": detail})
}

/// The fields every event has.
fn head(e: &pb::Event) -> Map<String, Value> {
    let mut head = Map::new();
    head.insert("instrument".into(), e.instrument.clone().into());
    head.insert("channel".into(), channel_name(e.channel).into());
    head.insert("sequence".into(), e.sequence.to_string().into());
    head.insert("exchange_time".into(), e.exchange_time.to_string().into());
    head.insert("receive_time".into(), e.receive_time.to_string().into());
    head.insert("publish_time".into(), e.publish_time.to_string().into());
    head
}

/// An event as one JSON object, or `None` for what is not shown (a heartbeat
/// acknowledgement). Markers (`snapshot_end`, `history_end`) are objects with their type.
pub fn event(e: &pb::Event) -> Result<Option<Value>, ProtoError> {
    if let (Some(pb::event::Body::Status(s)), 0) = (&e.body, e.channel) {
        // The server's own statuses (`going_away`) belong to no channel.
        let kind = status_kind_from_pb(s.kind)?.name();
        let mut object = head(e);
        if let Value::Object(fields) = status(kind, s.missed, &s.detail) {
            object.extend(fields);
        }
        return Ok(Some(Value::Object(object)));
    }
    let Some(body) = body_from_pb(e)? else {
        let marker = match e.body {
            Some(pb::event::Body::SnapshotEnd(_)) => "snapshot_end",
            Some(pb::event::Body::HistoryEnd(_)) => "history_end",
            _ => return Ok(None),
        };
        let mut object = head(e);
        object.insert("type".into(), marker.into());
        return Ok(Some(Value::Object(object)));
    };
    let fields = match &body {
        EventBody::Snapshot(s) => json!({
            "type": "snapshot",
            "resync": s.kind == SnapshotKind::Resync,
            "bids": levels(&s.bids),
            "asks": levels(&s.asks),
        }),
        EventBody::Delta(d) => {
            let side = |side| {
                let changed: Vec<Level> = d
                    .changes
                    .iter()
                    .filter(|c| c.side == side)
                    .map(|c| Level {
                        price: c.price,
                        qty: c.qty,
                    })
                    .collect();
                levels(&changed)
            };
            json!({"type": "delta", "bids": side(Side::Bid), "asks": side(Side::Ask)})
        }
        EventBody::Trade(t) => json!({
            "type": "trade",
            "price": t.price.to_string(),
            "qty": t.qty.to_string(),
            "aggressor": match t.aggressor {
                Aggressor::Buy => "buy",
                Aggressor::Sell => "sell",
                Aggressor::Unknown => "unknown",
            },
            "trade_id": t.trade_id,
        }),
        EventBody::Bbo(b) => json!({"type": "bbo", "bid": level(b.bid), "ask": level(b.ask)}),
        EventBody::Candle(c) => json!({
            "type": "candle",
            "interval": match c.interval {
                CandleInterval::Second1 => "1s",
                CandleInterval::Minute1 => "1m",
            },
            "open_time": c.open_time.0.to_string(),
            "open": c.open.to_string(),
            "high": c.high.to_string(),
            "low": c.low.to_string(),
            "close": c.close.to_string(),
            "volume": c.volume.to_string(),
            "trades": c.trades.to_string(),
        }),
        EventBody::Status(s) => status(s.kind.name(), s.missed, &s.detail),
    };
    let mut object = head(e);
    if let Value::Object(fields) = fields {
        object.extend(fields);
    }
    Ok(Some(Value::Object(object)))
}

/// A `GetSnapshot` (or `BookAt`) answer: the book's levels, best first, at its sequence.
pub fn snapshot(e: &pb::Event) -> Result<Value, ProtoError> {
    let Some(pb::event::Body::Snapshot(s)) = &e.body else {
        return Err(ProtoError::Missing("snapshot"));
    };
    let bids: Vec<Level> = s.bids.iter().map(level_from_pb).collect();
    let asks: Vec<Level> = s.asks.iter().map(level_from_pb).collect();
    let mut object = head(e);
    object.remove("channel");
    object.insert("bids".into(), levels(&bids));
    object.insert("asks".into(), levels(&asks));
    Ok(Value::Object(object))
}

/// An instrument, its tick size as a decimal string.
pub fn instrument(i: &pb::Instrument) -> Value {
    json!({
        "name": i.name,
        "venue": i.venue,
        "symbol": i.symbol,
        "tick_size": Price::from_units(i.tick_size).to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_past_two_to_the_53_are_strings_and_prices_exact_decimals() {
        let e = pb::Event {
            instrument: "X:Y".into(),
            channel: pb::Channel::Trades as i32,
            sequence: u64::MAX,
            exchange_time: 1_796_000_000_123_456_789,
            receive_time: 1,
            publish_time: 2,
            body: Some(pb::event::Body::Trade(pb::Trade {
                price: i64::MAX,
                qty: 7,
                qty_hi: 1,
                aggressor: pb::Aggressor::Sell as i32,
                trade_id: "t1".into(),
            })),
            ..Default::default()
        };
        assert_eq!(
            event(&e).unwrap().unwrap(),
            json!({
                "instrument": "X:Y",
                "channel": "trades",
                "sequence": "18446744073709551615",
                "exchange_time": "1796000000123456789",
                "receive_time": "1",
                "publish_time": "2",
                "type": "trade",
                "price": "9223372036.854775807",
                "qty": "18446744073.709551623",
                "aggressor": "sell",
                "trade_id": "t1",
            })
        );
        let ack = pb::Event {
            body: Some(pb::event::Body::HeartbeatAck(pb::HeartbeatAck::default())),
            ..Default::default()
        };
        assert_eq!(event(&ack).unwrap(), None);
        assert!(snapshot(&e).is_err());
    }
}
