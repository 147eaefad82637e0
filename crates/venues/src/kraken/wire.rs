//! Kraken spot WebSocket v2's wire types and the decoder of one text frame (docs.kraken.com
//! "Book" and "Trade" v2; shapes as in the Nautilus fixtures `ws_book_snapshot.json` and
//! `ws_book_update.json`). Prices and quantities are JSON *numbers* carrying the venue's
//! full precision: they are read as raw text (never `f64`), parsed exactly, and the text
//! is kept because the book checksum is computed from it, trailing zeros included. The
//! `instrument` channel (docs.kraken.com "Instruments" v2) gives each pair's tick size.

use std::fmt;

use raven_model::{Price, Qty};
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::json::{Key, parse_price, parse_qty, seed_raw, wire_struct};

/// A JSON number's exact text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NumText<'a>(pub &'a str);

impl<'de: 'a, 'a> serde::Deserialize<'de> for NumText<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = <&'de RawValue>::deserialize(d)?;
        let text = raw.get();
        if text.starts_with('"') {
            return Err(de::Error::custom(format_args!(
                "expected a JSON number, got the string {text}"
            )));
        }
        Ok(NumText(text))
    }
}

/// A price level as sent, parsed exactly, with its text for the checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KLevel<'a> {
    /// Price.
    pub price: Price,
    /// Quantity; zero removes the level.
    pub qty: Qty,
    /// The price's text.
    pub price_text: &'a str,
    /// The quantity's text.
    pub qty_text: &'a str,
}

wire_struct! {
    /// `{"price":105944.20,"qty":0.00100000}`.
    pub struct RawLevel<'a> {
        /// Price.
        "price" => price: NumText<'a>,
        /// Quantity.
        "qty" => qty: NumText<'a>,
    }
}

impl<'de: 'a, 'a> serde::Deserialize<'de> for KLevel<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = RawLevel::deserialize(d)?;
        Ok(KLevel {
            price: parse_price(raw.price.0)?,
            qty: parse_qty(raw.qty.0)?,
            price_text: raw.price.0,
            qty_text: raw.qty.0,
        })
    }
}

wire_struct! {
    /// One symbol's part of a `book` message.
    ///
    /// ```json
    /// {"symbol":"BTC/USD","bids":[{"price":105944.20,"qty":0.00100000}],"asks":[{"price":105944.30,"qty":1.20000000}],"checksum":2439117997,"timestamp":"2023-10-06T17:35:55.440295Z"}
    /// ```
    pub struct BookData<'a> {
        /// The pair, e.g. `BTC/USD`.
        "symbol" => symbol: &'a str,
        /// Changed (or, in a snapshot, all) bids.
        "bids" => bids: Vec<KLevel<'a>> = Vec::new(),
        /// Changed (or all) asks.
        "asks" => asks: Vec<KLevel<'a>> = Vec::new(),
        /// CRC32 of the top ten levels after this message.
        "checksum" => checksum: u32,
        /// When the book changed (updates only).
        "timestamp" => timestamp: &'a str = "",
    }
}

wire_struct! {
    /// One trade of a `trade` message; `side` is the taker's.
    ///
    /// ```json
    /// {"symbol":"MATIC/USD","side":"sell","price":0.5117,"qty":40.0,"ord_type":"market","trade_id":4665906,"timestamp":"2023-09-25T07:49:37.708706Z"}
    /// ```
    pub struct KTrade<'a> {
        /// The pair.
        "symbol" => symbol: &'a str,
        /// `buy` or `sell`, the taker's side.
        "side" => side: &'a str,
        /// Price.
        "price" => price: NumText<'a>,
        /// Quantity.
        "qty" => qty: NumText<'a>,
        /// `market` or `limit`: the taker's order type.
        "ord_type" => ord_type: &'a str = "",
        /// Contiguous per book.
        "trade_id" => trade_id: u64,
        /// When it traded.
        "timestamp" => timestamp: &'a str = "",
    }
}

wire_struct! {
    /// A pair of the `instrument` channel; only its symbol and price increment are read.
    ///
    /// ```json
    /// {"symbol":"BTC/USD","base":"BTC","quote":"USD","status":"online","qty_precision":8,"qty_increment":0.00000001,"price_precision":1,"price_increment":0.1,"qty_min":0.0001}
    /// ```
    pub struct PairInfo<'a> {
        /// The pair, spelled as the book and trade channels spell it.
        "symbol" => symbol: &'a str,
        /// The price's tick (a JSON number; its text is parsed exactly).
        "price_increment" => price_increment: Option<NumText<'a>> = None,
    }
}

impl PairInfo<'_> {
    /// The price increment, if the venue gave one that parses.
    pub fn tick_size(&self) -> Option<Price> {
        self.price_increment.and_then(|t| t.0.parse().ok())
    }
}

wire_struct! {
    /// The `instrument` channel's data: every asset and every pair of the venue.
    pub struct InstrumentData<'a> {
        /// Assets, not read.
        "assets" => assets: IgnoredAny = IgnoredAny,
        /// Tradeable pairs.
        "pairs" => pairs: Vec<PairInfo<'a>> = Vec::new(),
    }
}

/// A channel message's data, by channel.
#[derive(Debug, Clone, PartialEq)]
pub enum Data<'a> {
    /// `book`.
    Book(Vec<BookData<'a>>),
    /// `trade`.
    Trades(Vec<KTrade<'a>>),
    /// `instrument`: reference data, read for tick sizes.
    Instruments(InstrumentData<'a>),
    /// `heartbeat`, `status` and channels this decoder does not handle.
    Other,
}

/// One decoded text frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame<'a> {
    /// A channel message.
    Channel {
        /// `book`, `trade`, `heartbeat`, `status`, …
        channel: &'a str,
        /// `snapshot` or `update`.
        kind: &'a str,
        /// Its data.
        data: Data<'a>,
    },
    /// A reply to a request (`subscribe`, `unsubscribe`, `pong`).
    Reply {
        /// The method answered.
        method: &'a str,
        /// Whether it succeeded (`pong` has no flag: true).
        success: bool,
        /// The request's id.
        req_id: Option<u64>,
        /// The venue's error text.
        error: &'a str,
    },
}

/// Decodes one text frame.
pub fn decode(text: &str) -> Result<Frame<'_>, serde_json::Error> {
    serde_json::from_str(text)
}

struct DataOf<'c>(&'c str);

impl<'de> DeserializeSeed<'de> for DataOf<'_> {
    type Value = Data<'de>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Data<'de>, D::Error> {
        use serde::Deserialize;
        Ok(match self.0 {
            "book" => Data::Book(Vec::deserialize(d)?),
            "trade" => Data::Trades(Vec::deserialize(d)?),
            "instrument" => Data::Instruments(InstrumentData::deserialize(d)?),
            _ => {
                IgnoredAny::deserialize(d)?;
                Data::Other
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
        f.write_str("a Kraken v2 message")
    }

    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Frame<'de>, M::Error> {
        let mut channel: Option<&'de str> = None;
        let mut kind = "";
        let mut data: Option<Data<'de>> = None;
        let mut early: Option<&'de RawValue> = None;
        let mut method: Option<&'de str> = None;
        let mut success = true;
        let mut req_id = None;
        let mut error = "";
        while let Some(key) = map.next_key::<Key<'de>>()? {
            match key.0.as_ref() {
                "channel" => channel = Some(map.next_value()?),
                "type" => kind = map.next_value()?,
                "data" => match channel {
                    Some(c) => data = Some(map.next_value_seed(DataOf(c))?),
                    None => early = Some(map.next_value()?),
                },
                "method" => method = Some(map.next_value()?),
                "success" => success = map.next_value()?,
                "req_id" => req_id = map.next_value()?,
                "error" => error = map.next_value()?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        if let Some(method) = method {
            return Ok(Frame::Reply {
                method,
                success,
                req_id,
                error,
            });
        }
        let channel = channel.ok_or_else(|| de::Error::missing_field("channel"))?;
        if let Some(raw) = early {
            data = Some(seed_raw(DataOf(channel), raw)?);
        }
        Ok(Frame::Channel {
            channel,
            kind,
            data: data.unwrap_or(Data::Other),
        })
    }
}

/// The symbols a frame that failed to decode was about, read leniently.
pub fn symbols_of(text: &str) -> (Option<&str>, Vec<&str>) {
    wire_struct! {
        /// Only the symbol of a data item.
        pub struct SymbolOnly<'a> {
            "symbol" => symbol: Option<&'a str> = None,
        }
    }
    wire_struct! {
        /// Only the channel and data symbols of a message.
        pub struct Lenient<'a> {
            "channel" => channel: Option<&'a str> = None,
            "data" => data: Vec<SymbolOnly<'a>> = Vec::new(),
        }
    }
    match serde_json::from_str::<Lenient<'_>>(text) {
        Ok(l) => (
            l.channel,
            l.data.into_iter().filter_map(|d| d.symbol).collect(),
        ),
        Err(_) => (None, Vec::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_instrument_snapshot_gives_exact_tick_sizes() {
        let text = r#"{"channel":"instrument","type":"snapshot","data":{"assets":[{"id":"BTC","status":"enabled","precision":10,"precision_display":5,"borrowable":true,"collateral_value":1.0,"margin_rate":0.01}],"pairs":[{"symbol":"BTC/USD","base":"BTC","quote":"USD","status":"online","qty_precision":8,"qty_increment":0.00000001,"price_precision":1,"cost_precision":5,"marginable":true,"has_index":true,"cost_min":0.5,"price_increment":0.1,"qty_min":0.0001},{"symbol":"SHIB/USD","price_increment":1e-8},{"symbol":"NEW/USD"}]}}"#;
        let Frame::Channel {
            channel: "instrument",
            kind: "snapshot",
            data: Data::Instruments(data),
        } = decode(text).unwrap()
        else {
            panic!("not an instrument snapshot")
        };
        let ticks: Vec<(&str, Option<Price>)> = data
            .pairs
            .iter()
            .map(|p| (p.symbol, p.tick_size()))
            .collect();
        // An exponent is not an exact decimal here either: no tick rather than a guess.
        assert_eq!(
            ticks,
            [
                ("BTC/USD", Some("0.1".parse().unwrap())),
                ("SHIB/USD", None),
                ("NEW/USD", None)
            ]
        );
        assert_eq!((data.unknown, data.pairs[0].unknown), (0, 11));
    }

    #[test]
    fn book_numbers_keep_their_exact_text() {
        let text = r#"{"channel":"book","type":"update","data":[{"symbol":"BTC/USD","bids":[{"price":105944.20,"qty":0.00100000}],"asks":[],"checksum":2439117997,"timestamp":"2023-10-06T17:35:55.440295Z"}]}"#;
        let Frame::Channel {
            channel: "book",
            kind: "update",
            data: Data::Book(books),
        } = decode(text).unwrap()
        else {
            panic!("not a book update")
        };
        let level = books[0].bids[0];
        assert_eq!(
            (level.price_text, level.qty_text),
            ("105944.20", "0.00100000")
        );
        assert_eq!(level.price, "105944.2".parse().unwrap());
        assert_eq!(level.qty, "0.001".parse().unwrap());
        assert_eq!(books[0].checksum, 2_439_117_997);
    }

    #[test]
    fn exponents_strings_and_negative_sizes_are_refused() {
        for level in [
            r#"{"price":1e-5,"qty":1}"#,
            r#"{"price":"1.0","qty":1}"#,
            r#"{"price":1.0,"qty":-1.0}"#,
            r#"{"price":1.0}"#,
        ] {
            let text = format!(
                r#"{{"channel":"book","type":"update","data":[{{"symbol":"A/B","bids":[{level}],"asks":[],"checksum":1}}]}}"#
            );
            assert!(decode(&text).is_err(), "{level} accepted");
            assert_eq!(symbols_of(&text), (Some("book"), vec!["A/B"]));
        }
    }

    #[test]
    fn replies_trades_and_heartbeats_decode() {
        let text = r#"{"method":"subscribe","result":{"channel":"book","depth":10,"snapshot":true,"symbol":"BTC/USD"},"success":true,"time_in":"2023-10-06T17:35:55.440295Z","time_out":"2023-10-06T17:35:55.440295Z","req_id":7}"#;
        assert_eq!(
            decode(text).unwrap(),
            Frame::Reply {
                method: "subscribe",
                success: true,
                req_id: Some(7),
                error: ""
            }
        );
        let trade = r#"{"channel":"trade","type":"update","data":[{"symbol":"MATIC/USD","side":"sell","price":0.5117,"qty":40.0,"ord_type":"market","trade_id":4665906,"timestamp":"2023-09-25T07:49:37.708706Z"}]}"#;
        let Frame::Channel {
            data: Data::Trades(trades),
            ..
        } = decode(trade).unwrap()
        else {
            panic!("not trades")
        };
        assert_eq!((trades[0].trade_id, trades[0].qty.0), (4_665_906, "40.0"));
        assert!(matches!(
            decode(r#"{"channel":"heartbeat"}"#).unwrap(),
            Frame::Channel {
                channel: "heartbeat",
                data: Data::Other,
                ..
            }
        ));
    }
}
