//! Coinbase Advanced Trade's wire types and the decoder of one text frame. Shapes from
//! the Advanced Trade WebSocket docs (channels `level2`, `market_trades`, `heartbeats`;
//! see `shared/reference/exchange-protocols.md`). Every message is an envelope
//! `{channel, client_id, timestamp, sequence_num, events[]}` whose events' shape depends
//! on the channel.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::json::{DecPrice, DecQty, Key, seed_raw, wire_struct};

wire_struct! {
    /// One level change of an `l2_data` event; `new_quantity` is absolute, `"0"` removes.
    ///
    /// ```json
    /// {"side":"bid","event_time":"2026-04-07T14:30:00.123456Z","price_level":"68900.00","new_quantity":"1.50000000"}
    /// ```
    pub struct L2Update<'a> {
        /// `bid` or `offer`.
        "side" => side: &'a str,
        /// When the level changed.
        "event_time" => event_time: &'a str = "",
        /// Price of the level.
        "price_level" => price: DecPrice,
        /// New total quantity.
        "new_quantity" => qty: DecQty,
    }
}

wire_struct! {
    /// An event of the `l2_data` channel: a product's `snapshot` (the whole book, sent on
    /// subscribe) or `update`.
    pub struct L2Event<'a> {
        /// `snapshot` or `update`.
        "type" => kind: &'a str,
        /// The product, e.g. `BTC-USD`.
        "product_id" => product_id: &'a str,
        /// The changes.
        "updates" => updates: Vec<L2Update<'a>>,
    }
}

wire_struct! {
    /// One trade of a `market_trades` event.
    ///
    /// ```json
    /// {"trade_id":"995098700","product_id":"BTC-USD","price":"68900.50","size":"0.00150000","side":"BUY","time":"2026-04-07T14:30:02.789012Z"}
    /// ```
    pub struct MarketTrade<'a> {
        /// The venue's trade id (digits).
        "trade_id" => trade_id: &'a str,
        /// The product.
        "product_id" => product_id: &'a str,
        /// Price.
        "price" => price: DecPrice,
        /// Size.
        "size" => size: DecQty,
        /// `BUY` or `SELL`: the maker's side (see [`super::aggressor`]).
        "side" => side: &'a str,
        /// Trade time.
        "time" => time: &'a str = "",
    }
}

wire_struct! {
    /// An event of the `market_trades` channel: recent trades on subscribe (`snapshot`),
    /// then `update`s, each with one or more trades.
    pub struct TradesEvent<'a> {
        /// `snapshot` or `update`.
        "type" => kind: &'a str = "update",
        /// The trades.
        "trades" => trades: Vec<MarketTrade<'a>>,
    }
}

wire_struct! {
    /// A product of the public REST product list; only its price increment is read.
    ///
    /// ```json
    /// {"product_id":"BTC-USD","price":"68900.5","base_increment":"0.00000001","quote_increment":"0.01","price_increment":"0.01","status":"online"}
    /// ```
    pub struct ProductInfo<'a> {
        /// The product, e.g. `BTC-USD`.
        "product_id" => product_id: &'a str,
        /// The price's tick (`quote_increment` is the order *amount*'s step).
        "price_increment" => price_increment: Option<DecPrice> = None,
    }
}

wire_struct! {
    /// REST `GET /api/v3/brokerage/market/products?product_ids=…`, the parts read.
    pub struct Products<'a> {
        /// The products asked for that the venue lists.
        "products" => products: Vec<ProductInfo<'a>> = Vec::new(),
    }
}

/// Decodes a REST product list body.
pub fn decode_products(body: &[u8]) -> Result<Products<'_>, serde_json::Error> {
    serde_json::from_slice(body)
}

/// The events of a frame, by channel.
#[derive(Debug, Clone, PartialEq)]
pub enum Events<'a> {
    /// `l2_data`.
    L2(Vec<L2Event<'a>>),
    /// `market_trades`.
    Trades(Vec<TradesEvent<'a>>),
    /// `heartbeats`, `subscriptions` and channels this decoder does not handle.
    Other,
}

/// One decoded text frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame<'a> {
    /// A channel message.
    Message {
        /// The channel: `l2_data`, `market_trades`, `heartbeats`, `subscriptions`, …
        channel: &'a str,
        /// The connection's message counter.
        sequence_num: u64,
        /// Envelope time.
        timestamp: &'a str,
        /// Its events.
        events: Events<'a>,
    },
    /// `{"type":"error","message":"…"}`.
    Error {
        /// What the venue said.
        message: &'a str,
    },
}

/// Decodes one text frame.
pub fn decode(text: &str) -> Result<Frame<'_>, serde_json::Error> {
    serde_json::from_str(text)
}

struct EventsOf<'c>(&'c str);

impl<'de> DeserializeSeed<'de> for EventsOf<'_> {
    type Value = Events<'de>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Events<'de>, D::Error> {
        use serde::Deserialize;
        Ok(match self.0 {
            "l2_data" => Events::L2(Vec::deserialize(d)?),
            "market_trades" => Events::Trades(Vec::deserialize(d)?),
            _ => {
                IgnoredAny::deserialize(d)?;
                Events::Other
            }
        })
    }
}

impl<'de> serde::Deserialize<'de> for Frame<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(FrameVisitor)
    }
}

struct FrameVisitor;

impl<'de> Visitor<'de> for FrameVisitor {
    type Value = Frame<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a Coinbase Advanced Trade message")
    }

    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Frame<'de>, M::Error> {
        let mut channel: Option<&'de str> = None;
        let mut sequence_num: Option<u64> = None;
        let mut timestamp = "";
        let mut events: Option<Events<'de>> = None;
        // `events` before `channel` (Coinbase sends `channel` first): kept raw.
        let mut early: Option<&'de RawValue> = None;
        let mut kind: Option<&'de str> = None;
        let mut message = "";
        while let Some(key) = map.next_key::<Key<'de>>()? {
            match key.0.as_ref() {
                "channel" => channel = Some(map.next_value()?),
                "sequence_num" => sequence_num = Some(map.next_value()?),
                "timestamp" => timestamp = map.next_value()?,
                "events" => match channel {
                    Some(c) => events = Some(map.next_value_seed(EventsOf(c))?),
                    None => early = Some(map.next_value()?),
                },
                "type" => kind = Some(map.next_value()?),
                "message" => message = map.next_value()?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        if kind == Some("error") {
            return Ok(Frame::Error { message });
        }
        let channel = channel.ok_or_else(|| de::Error::missing_field("channel"))?;
        if let Some(raw) = early {
            events = Some(seed_raw(EventsOf(channel), raw)?);
        }
        Ok(Frame::Message {
            channel,
            sequence_num: sequence_num.ok_or_else(|| de::Error::missing_field("sequence_num"))?,
            timestamp,
            events: events.unwrap_or(Events::Other),
        })
    }
}

/// The products a frame that failed to decode was about, read leniently (only the
/// channel and product ids), so that a broken book message resyncs exactly its products.
pub fn products_of(text: &str) -> (Option<&str>, Vec<&str>) {
    wire_struct! {
        /// Only the product of an event.
        pub struct ProductOnly<'a> {
            "product_id" => product_id: Option<&'a str> = None,
        }
    }
    wire_struct! {
        /// Only the channel and events' products of a message.
        pub struct Lenient<'a> {
            "channel" => channel: Option<&'a str> = None,
            "events" => events: Vec<ProductOnly<'a>> = Vec::new(),
        }
    }
    match serde_json::from_str::<Lenient<'_>>(text) {
        Ok(l) => (
            l.channel,
            l.events.into_iter().filter_map(|e| e.product_id).collect(),
        ),
        Err(_) => (None, Vec::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_l2_snapshot_decodes() {
        let text = r#"{"channel":"l2_data","client_id":"","timestamp":"2026-04-07T14:30:00.123456Z","sequence_num":0,"events":[{"type":"snapshot","product_id":"BTC-USD","updates":[{"side":"bid","event_time":"2026-04-07T14:30:00.123456Z","price_level":"68900.00","new_quantity":"1.50000000"},{"side":"offer","event_time":"2026-04-07T14:30:00.123456Z","price_level":"68901.00","new_quantity":"0.50000000"}]}]}"#;
        let Frame::Message {
            channel,
            sequence_num,
            events: Events::L2(events),
            ..
        } = decode(text).unwrap()
        else {
            panic!("not an l2 message")
        };
        assert_eq!((channel, sequence_num, events.len()), ("l2_data", 0, 1));
        let e = &events[0];
        assert_eq!(
            (e.kind, e.product_id, e.updates.len()),
            ("snapshot", "BTC-USD", 2)
        );
        assert_eq!(e.updates[1].side, "offer");
        assert_eq!(e.updates[1].price.0, "68901".parse().unwrap());
        assert_eq!(e.updates[0].qty.0, "1.5".parse().unwrap());
    }

    #[test]
    fn the_product_list_gives_the_price_increment_not_the_quote_increment() {
        let body = br#"{"products":[{"product_id":"BTC-USD","price":"68900.5","base_increment":"0.00000001","quote_increment":"0.00000001","price_increment":"0.01","status":"online","new_field":[1]},{"product_id":"SHIB-USD","price_increment":"0.000000001"}],"num_products":2}"#;
        let list = decode_products(body).unwrap();
        let ticks: Vec<(&str, Option<raven_model::Price>)> = list
            .products
            .iter()
            .map(|p| (p.product_id, p.price_increment.map(|t| t.0)))
            .collect();
        assert_eq!(
            ticks,
            [
                ("BTC-USD", Some("0.01".parse().unwrap())),
                ("SHIB-USD", Some("0.000000001".parse().unwrap()))
            ]
        );
        assert_eq!(list.products[0].unknown, 5);
        assert_eq!(
            super::super::products_path(&["BTC-USD".into(), "ETH-USD".into()]),
            "/api/v3/brokerage/market/products?product_ids=BTC-USD&product_ids=ETH-USD"
        );
    }

    #[test]
    fn trades_heartbeats_and_errors_decode() {
        let text = r#"{"channel":"market_trades","client_id":"","timestamp":"2026-04-07T14:30:02.789012Z","sequence_num":5,"events":[{"type":"update","trades":[{"trade_id":"995098700","product_id":"BTC-USD","price":"68900.50","size":"0.00150000","side":"BUY","time":"2026-04-07T14:30:02.789012Z"}]}]}"#;
        let Frame::Message {
            events: Events::Trades(events),
            sequence_num: 5,
            ..
        } = decode(text).unwrap()
        else {
            panic!("not a trades message")
        };
        let t = &events[0].trades[0];
        assert_eq!(
            (t.trade_id, t.side, t.size.0),
            ("995098700", "BUY", "0.0015".parse().unwrap())
        );
        let hb = r#"{"channel":"heartbeats","client_id":"","timestamp":"2026-04-07T14:30:03Z","sequence_num":6,"events":[{"current_time":"2026-04-07 14:30:03.1 +0000 UTC","heartbeat_counter":"3"}]}"#;
        assert!(matches!(
            decode(hb).unwrap(),
            Frame::Message {
                channel: "heartbeats",
                sequence_num: 6,
                events: Events::Other,
                ..
            }
        ));
        assert_eq!(
            decode(r#"{"type":"error","message":"failure to subscribe"}"#).unwrap(),
            Frame::Error {
                message: "failure to subscribe"
            }
        );
    }

    #[test]
    fn a_broken_book_message_still_names_its_products() {
        let text = r#"{"channel":"l2_data","sequence_num":3,"events":[{"type":"update","product_id":"YFI-USD","updates":[{"side":"bid","price_level":"40531.19","new_quantity":"0.-10000"}]}]}"#;
        assert!(decode(text).is_err());
        assert_eq!(products_of(text), (Some("l2_data"), vec!["YFI-USD"]));
        assert_eq!(products_of("{\"channel\":\"l2_da"), (None, vec![]));
    }
}
