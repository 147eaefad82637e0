//! Binance's wire types (spot and USD-M share them; USD-M adds fields) and the decoder of
//! one combined-stream text frame. Checked against binance-spot-api-docs
//! `web-socket-streams.md` @ a5e0bc3 and the USD-M "Websocket Market Streams" pages
//! (see `shared/reference/exchange-protocols.md`).

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::json::{DecPrice, DecQty, Key, PairLevels, seed_raw, wire_struct};

wire_struct! {
    /// `<symbol>@depth[@100ms]`, a diff of absolute level quantities. Spot:
    ///
    /// ```json
    /// {"e":"depthUpdate","E":1672515782136,"s":"BNBBTC","U":157,"u":160,"b":[["0.0024","10"]],"a":[["0.0026","100"]]}
    /// ```
    ///
    /// USD-M adds the transaction time `T` and the previous event's last id `pu`:
    ///
    /// ```json
    /// {"e":"depthUpdate","E":123456789,"T":123456788,"s":"BTCUSDT","U":157,"u":160,"pu":149,"b":[["0.0024","10"]],"a":[["0.0026","100"]]}
    /// ```
    pub struct DepthUpdate<'a> {
        /// Event type, `depthUpdate`.
        "e" => event: &'a str = "",
        /// Event time (ms, or µs with `timeUnit=MICROSECOND`).
        "E" => event_time: u64 = 0,
        /// USD-M transaction time.
        "T" => transaction_time: u64 = 0,
        /// Symbol, upper case.
        "s" => symbol: &'a str,
        /// First update id in the event.
        "U" => first_id: u64,
        /// Last update id in the event.
        "u" => last_id: u64,
        /// USD-M: the previous event's `u`.
        "pu" => prev_id: Option<u64> = None,
        /// Changed bids.
        "b" => bids: PairLevels,
        /// Changed asks.
        "a" => asks: PairLevels,
    }
}

wire_struct! {
    /// `<symbol>@aggTrade`; `m = true` means the buyer was the maker, so the seller was
    /// the aggressor. `M` is to be ignored (docs); USD-M adds `nq`.
    ///
    /// ```json
    /// {"e":"aggTrade","E":1672515782136,"s":"BNBBTC","a":12345,"p":"0.001","q":"100","f":100,"l":105,"T":1672515782136,"m":true,"M":true}
    /// ```
    pub struct AggTrade<'a> {
        /// Event type, `aggTrade`.
        "e" => event: &'a str = "",
        /// Event time.
        "E" => event_time: u64 = 0,
        /// Symbol, upper case.
        "s" => symbol: &'a str,
        /// Aggregate trade id, contiguous per symbol.
        "a" => id: u64,
        /// Price.
        "p" => price: DecPrice,
        /// Quantity.
        "q" => qty: DecQty,
        /// USD-M: quantity without RPI orders.
        "nq" => normal_qty: Option<DecQty> = None,
        /// First trade id aggregated.
        "f" => first_trade: u64 = 0,
        /// Last trade id aggregated.
        "l" => last_trade: u64 = 0,
        /// Trade time.
        "T" => trade_time: u64,
        /// Buyer is the maker.
        "m" => buyer_is_maker: bool,
        /// Ignored, per the docs.
        "M" => ignore: Option<bool> = None,
    }
}

wire_struct! {
    /// `<symbol>@trade`, one fill; USD-M may add `X` (MARKET, INSURANCE_FUND, ADL, NA).
    ///
    /// ```json
    /// {"e":"trade","E":1672515782136,"s":"BNBBTC","t":12345,"p":"0.001","q":"100","T":1672515782136,"m":true,"M":true}
    /// ```
    pub struct RawTrade<'a> {
        /// Event type, `trade`.
        "e" => event: &'a str = "",
        /// Event time.
        "E" => event_time: u64 = 0,
        /// Symbol, upper case.
        "s" => symbol: &'a str,
        /// Trade id, contiguous per symbol.
        "t" => id: u64,
        /// Price.
        "p" => price: DecPrice,
        /// Quantity.
        "q" => qty: DecQty,
        /// Trade time.
        "T" => trade_time: u64,
        /// Buyer is the maker.
        "m" => buyer_is_maker: bool,
        /// Ignored, per the docs.
        "M" => ignore: Option<bool> = None,
        /// USD-M execution type.
        "X" => execution: Option<&'a str> = None,
    }
}

wire_struct! {
    /// REST `GET /api/v3/depth` (spot) or `/fapi/v1/depth` (USD-M, adds `E`, `T`).
    ///
    /// ```json
    /// {"lastUpdateId":1027024,"bids":[["4.00000000","431.00000000"]],"asks":[["4.00000200","12.00000000"]]}
    /// ```
    pub struct DepthSnapshot {
        /// The book's update id.
        "lastUpdateId" => last_update_id: u64,
        /// USD-M message time.
        "E" => event_time: u64 = 0,
        /// USD-M transaction time.
        "T" => transaction_time: u64 = 0,
        /// Bids, best first.
        "bids" => bids: PairLevels,
        /// Asks, best first.
        "asks" => asks: PairLevels,
    }
}

wire_struct! {
    /// `{"e":"serverShutdown","E":1770123456789}`: the server is about to go away.
    pub struct ServerShutdown<'a> {
        /// Event type, `serverShutdown`.
        "e" => event: &'a str,
        /// Event time.
        "E" => event_time: u64 = 0,
    }
}

wire_struct! {
    /// The body of an error reply: `{"code":2,"msg":"Invalid request: ..."}`.
    pub struct ErrorBody<'a> {
        /// Binance's error code.
        "code" => code: i64 = 0,
        /// Its message.
        "msg" => msg: &'a str = "",
    }
}

wire_struct! {
    /// A filter of a symbol in `exchangeInfo`; only `PRICE_FILTER`'s `tickSize` is read.
    pub struct SymbolFilter<'a> {
        /// `PRICE_FILTER`, `LOT_SIZE`, …
        "filterType" => filter_type: &'a str,
        /// The price increment.
        "tickSize" => tick_size: Option<DecPrice> = None,
    }
}

wire_struct! {
    /// A symbol of `exchangeInfo`.
    pub struct SymbolInfo<'a> {
        /// Upper case.
        "symbol" => symbol: &'a str,
        /// `TRADING`, `BREAK`, …
        "status" => status: &'a str = "",
        /// Its filters.
        "filters" => filters: Vec<SymbolFilter<'a>> = Vec::new(),
    }
}

wire_struct! {
    /// REST `GET /api/v3/exchangeInfo` (or `/fapi/v1/exchangeInfo`), the parts read:
    ///
    /// ```json
    /// {"timezone":"UTC","symbols":[{"symbol":"BTCUSDT","status":"TRADING","filters":[{"filterType":"PRICE_FILTER","minPrice":"0.01000000","maxPrice":"1000000.00000000","tickSize":"0.01000000"}]}]}
    /// ```
    pub struct ExchangeInfo<'a> {
        /// Every symbol.
        "symbols" => symbols: Vec<SymbolInfo<'a>> = Vec::new(),
    }
}

impl SymbolInfo<'_> {
    /// The price increment, from `PRICE_FILTER`.
    pub fn tick_size(&self) -> Option<raven_model::Price> {
        self.filters
            .iter()
            .find(|f| f.filter_type == "PRICE_FILTER")
            .and_then(|f| f.tick_size)
            .map(|t| t.0)
    }
}

/// One decoded text frame of a combined-stream connection (`/stream?streams=…`, or
/// `/stream` plus `SUBSCRIBE`).
#[derive(Debug, Clone, PartialEq)]
pub enum Frame<'a> {
    /// A depth diff.
    Depth(DepthUpdate<'a>),
    /// An aggregate trade.
    AggTrade(AggTrade<'a>),
    /// A single trade.
    Trade(RawTrade<'a>),
    /// The server will close this connection soon: rotate now.
    ServerShutdown,
    /// `{"result":null,"id":1}`: a SUBSCRIBE or UNSUBSCRIBE was applied.
    Ack {
        /// The request's id.
        id: u64,
    },
    /// `{"error":{"code":2,"msg":"…"},"id":1}`: a request was refused.
    Error {
        /// The request's id, when the venue echoed it.
        id: Option<u64>,
        /// Binance's error code.
        code: i64,
        /// Its message.
        msg: &'a str,
    },
    /// A stream or reply this decoder does not handle; counted, not an error.
    Unhandled,
}

/// A frame that could not be decoded, with the stream it came from when that could be
/// read, so a bad diff for a known symbol can resync exactly that symbol.
#[derive(Debug)]
pub struct FrameError<'a> {
    /// `<symbol>@<stream>` of the envelope, if its opening could be read.
    pub stream: Option<&'a str>,
    /// What was wrong.
    pub error: serde_json::Error,
}

impl fmt::Display for FrameError<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.stream {
            Some(stream) => write!(f, "undecodable {stream} frame: {}", self.error),
            None => write!(f, "undecodable frame: {}", self.error),
        }
    }
}

impl<'a> FrameError<'a> {
    /// The lower-case symbol of the stream, if known (`btcusdt` of `btcusdt@depth`).
    pub fn symbol(&self) -> Option<&'a str> {
        self.stream.and_then(|s| s.split_once('@')).map(|(s, _)| s)
    }

    /// Whether the frame was on a depth stream (a lost book message).
    pub fn is_depth(&self) -> bool {
        self.stream
            .is_some_and(|s| stream_kind(s) == StreamKind::Depth)
    }
}

/// Decodes one text frame.
pub fn decode(text: &str) -> Result<Frame<'_>, FrameError<'_>> {
    serde_json::from_str::<Frame<'_>>(text).map_err(|error| FrameError {
        stream: stream_prefix(text),
        error,
    })
}

/// Decodes a REST depth snapshot body.
pub fn decode_snapshot(body: &[u8]) -> Result<DepthSnapshot, serde_json::Error> {
    serde_json::from_slice(body)
}

/// Decodes a REST `exchangeInfo` body.
pub fn decode_exchange_info(body: &[u8]) -> Result<ExchangeInfo<'_>, serde_json::Error> {
    serde_json::from_slice(body)
}

/// The stream name of an envelope whose opening is intact, read without parsing the rest
/// (the rest may be what is broken).
fn stream_prefix(text: &str) -> Option<&str> {
    let rest = text.trim_start().strip_prefix("{\"stream\":\"")?;
    let name = &rest[..rest.find('"')?];
    (!name.contains('\\')).then_some(name)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StreamKind {
    Depth,
    AggTrade,
    Trade,
    ServerShutdown,
    Other,
}

fn stream_kind(stream: &str) -> StreamKind {
    if stream == "!serverShutdown" {
        return StreamKind::ServerShutdown;
    }
    let Some((_, kind)) = stream.split_once('@') else {
        return StreamKind::Other;
    };
    let base = kind.split('@').next().unwrap_or(kind);
    match base {
        // `depth5`/`depth10`/`depth20` are partial books, not diffs.
        "depth" => StreamKind::Depth,
        "aggTrade" => StreamKind::AggTrade,
        "trade" => StreamKind::Trade,
        _ => StreamKind::Other,
    }
}

/// Decodes an envelope's `data` as the type its stream name says.
struct Data(StreamKind);

impl<'de> DeserializeSeed<'de> for Data {
    type Value = Frame<'de>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Frame<'de>, D::Error> {
        use serde::Deserialize;
        Ok(match self.0 {
            StreamKind::Depth => Frame::Depth(DepthUpdate::deserialize(d)?),
            StreamKind::AggTrade => Frame::AggTrade(AggTrade::deserialize(d)?),
            StreamKind::Trade => Frame::Trade(RawTrade::deserialize(d)?),
            StreamKind::ServerShutdown => {
                ServerShutdown::deserialize(d)?;
                Frame::ServerShutdown
            }
            StreamKind::Other => {
                IgnoredAny::deserialize(d)?;
                Frame::Unhandled
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
        f.write_str("a Binance stream envelope or request reply")
    }

    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Frame<'de>, M::Error> {
        let mut stream: Option<&'de str> = None;
        let mut frame: Option<Frame<'de>> = None;
        // `data` before `stream` (Binance sends `stream` first): kept raw, decoded after.
        let mut early: Option<&'de RawValue> = None;
        let mut id: Option<u64> = None;
        let mut result = false;
        let mut error: Option<ErrorBody<'de>> = None;
        while let Some(key) = map.next_key::<Key<'de>>()? {
            match key.0.as_ref() {
                "stream" => stream = Some(map.next_value()?),
                "data" => match stream {
                    Some(s) => frame = Some(map.next_value_seed(Data(stream_kind(s)))?),
                    None => early = Some(map.next_value()?),
                },
                "result" => {
                    map.next_value::<IgnoredAny>()?;
                    result = true;
                }
                "id" => id = map.next_value::<Option<u64>>()?,
                "error" => error = Some(map.next_value()?),
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        if let (Some(raw), Some(s)) = (early, stream) {
            frame = Some(seed_raw(Data(stream_kind(s)), raw)?);
        }
        if let Some(frame) = frame {
            return Ok(frame);
        }
        if let Some(e) = error {
            return Ok(Frame::Error {
                id,
                code: e.code,
                msg: e.msg,
            });
        }
        match (result, id) {
            (true, Some(id)) => Ok(Frame::Ack { id }),
            _ => Ok(Frame::Unhandled),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raven_model::{Price, Qty};

    fn p(s: &str) -> Price {
        s.parse().unwrap()
    }
    fn q(s: &str) -> Qty {
        s.parse().unwrap()
    }

    #[test]
    fn the_documented_spot_depth_diff_decodes() {
        let text = r#"{"stream":"bnbbtc@depth@100ms","data":{"e":"depthUpdate","E":1672515782136,"s":"BNBBTC","U":157,"u":160,"b":[["0.0024","10"]],"a":[["0.0026","100"]]}}"#;
        let Frame::Depth(d) = decode(text).unwrap() else {
            panic!("not a depth frame")
        };
        assert_eq!(
            (d.symbol, d.first_id, d.last_id, d.prev_id, d.event_time),
            ("BNBBTC", 157, 160, None, 1_672_515_782_136)
        );
        assert_eq!(d.bids.0, vec![(p("0.0024"), q("10"))]);
        assert_eq!(d.asks.0, vec![(p("0.0026"), q("100"))]);
        assert_eq!(d.unknown, 0);
    }

    #[test]
    fn the_usdm_diff_keeps_pu_and_counts_new_fields() {
        let text = r#"{"stream":"btcusdt@depth","data":{"e":"depthUpdate","E":123456789,"T":123456788,"s":"BTCUSDT","U":157,"u":160,"pu":149,"b":[["0.0024","10"]],"a":[["0.0026","100"]],"st":1,"ps":"BTCUSDT"}}"#;
        let Frame::Depth(d) = decode(text).unwrap() else {
            panic!("not a depth frame")
        };
        assert_eq!(
            (d.prev_id, d.transaction_time, d.unknown),
            (Some(149), 123_456_788, 2)
        );
    }

    #[test]
    fn trades_decode_with_their_maker_flag() {
        let agg = r#"{"stream":"bnbbtc@aggTrade","data":{"e":"aggTrade","E":1672515782136,"s":"BNBBTC","a":12345,"p":"0.001","q":"100","f":100,"l":105,"T":1672515782136,"m":true,"M":true}}"#;
        let Frame::AggTrade(t) = decode(agg).unwrap() else {
            panic!("not an aggTrade")
        };
        assert_eq!(
            (
                t.id,
                t.price.0,
                t.qty.0,
                t.first_trade,
                t.last_trade,
                t.buyer_is_maker
            ),
            (12345, p("0.001"), q("100"), 100, 105, true)
        );
        let usdm = r#"{"stream":"ethusdt@trade","data":{"e":"trade","E":1649839266194,"T":1749354825200,"s":"ETHUSDT","t":1000000000,"p":"10000.19","q":"0.239000","X":"MARKET","m":true}}"#;
        let Frame::Trade(t) = decode(usdm).unwrap() else {
            panic!("not a trade")
        };
        assert_eq!(
            (t.id, t.price.0, t.qty.0, t.execution, t.unknown),
            (1_000_000_000, p("10000.19"), q("0.239"), Some("MARKET"), 0)
        );
    }

    #[test]
    fn replies_and_shutdown_decode() {
        assert_eq!(
            decode(r#"{"result":null,"id":7}"#).unwrap(),
            Frame::Ack { id: 7 }
        );
        assert_eq!(
            decode(r#"{"error":{"code":2,"msg":"Invalid request"},"id":3}"#).unwrap(),
            Frame::Error {
                id: Some(3),
                code: 2,
                msg: "Invalid request"
            }
        );
        assert_eq!(
            decode(
                r#"{"stream":"!serverShutdown","data":{"e":"serverShutdown","E":1770123456789}}"#
            )
            .unwrap(),
            Frame::ServerShutdown
        );
        assert_eq!(
            decode(r#"{"stream":"bnbusdt@bookTicker","data":{"u":400900217,"s":"BNBUSDT"}}"#)
                .unwrap(),
            Frame::Unhandled
        );
    }

    #[test]
    fn exchange_info_gives_tick_sizes() {
        let text = r#"{"timezone":"UTC","rateLimits":[],"symbols":[{"symbol":"BTCUSDT","status":"TRADING","filters":[{"filterType":"LOT_SIZE","stepSize":"0.00001000"},{"filterType":"PRICE_FILTER","minPrice":"0.01000000","maxPrice":"1000000.00000000","tickSize":"0.01000000"}]}]}"#;
        let info: ExchangeInfo<'_> = serde_json::from_str(text).unwrap();
        assert_eq!(info.symbols[0].symbol, "BTCUSDT");
        assert_eq!(info.symbols[0].tick_size(), Some(p("0.01")));
    }

    #[test]
    fn data_before_stream_still_decodes() {
        let text = r#"{"data":{"e":"depthUpdate","E":1,"s":"BNBBTC","U":1,"u":2,"b":[],"a":[]},"stream":"bnbbtc@depth"}"#;
        assert!(matches!(decode(text).unwrap(), Frame::Depth(d) if d.last_id == 2));
    }

    #[test]
    fn a_broken_diff_still_names_its_stream() {
        for text in [
            r#"{"stream":"btcusdt@depth","data":{"e":"depthUpdate","E":1,"s":"BTCUSDT","U":1,"u":2,"b":[["0.-10000","1"]],"a":[]}}"#,
            r#"{"stream":"btcusdt@depth","data":{"e":"depthUpdate","E":1,"s":"BTCUSDT","U":"1","u":2,"b":[],"a":[]}}"#,
            r#"{"stream":"btcusdt@depth","data":{"e":"depthUpd"#,
        ] {
            let e = decode(text).unwrap_err();
            assert_eq!(
                (e.symbol(), e.is_depth()),
                (Some("btcusdt"), true),
                "{text}"
            );
        }
        let e = decode("\u{1}not json").unwrap_err();
        assert_eq!((e.stream, e.is_depth()), (None, false));
    }
}
