//! Binance spot and USD-M futures: endpoints, stream names, `SUBSCRIBE` frames, REST depth
//! requests and their weights, the wire types ([`wire`]), the per-instrument book sync
//! ([`sync`]) and trade normalization. The two markets share everything but their
//! continuity rule, endpoints and limits, which [`Market`] carries.
//!
//! Facts relied on (binance-spot-api-docs @ a5e0bc3; USD-M "Websocket Market Streams" and
//! the 2026-03-06 endpoint split, see `shared/reference/connectors.md` §3.1–3.2): at most
//! 5 incoming control frames per second on a spot connection (10 on USD-M), pings and
//! pongs included; 1024 streams per connection; 24 h connection life; REST depth weights
//! by `limit` below; `m = true` means the buyer was the maker, so the seller aggressed.

pub mod sync;
pub mod wire;

use raven_model::{Aggressor, Trade, UnixNanos};

use crate::action::Action;
use crate::tape::TradeTape;
use wire::{AggTrade, RawTrade};

/// Streams per `SUBSCRIBE` frame: larger frames have failed silently in practice
/// (altangent/ccxws#161; ccxt PR #20745).
pub const MAX_STREAMS_PER_FRAME: usize = 200;
/// Streams per connection, the venue's limit.
pub const MAX_STREAMS_PER_CONNECTION: usize = 1024;

/// Which Binance market.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Market {
    /// Spot (`api.binance.com`).
    Spot,
    /// USD-margined futures (`fapi.binance.com`).
    UsdM,
}

impl Market {
    /// The `VENUE` part of instrument names.
    pub fn venue(self) -> &'static str {
        match self {
            Market::Spot => "BINANCE",
            Market::UsdM => "BINANCE_USDM",
        }
    }

    /// The public WebSocket base: the market-data-only host for spot.
    pub fn default_ws_base(self) -> &'static str {
        match self {
            Market::Spot => "wss://data-stream.binance.vision",
            Market::UsdM => "wss://fstream.binance.com",
        }
    }

    /// The combined-stream path under the WebSocket base: since the 2026-03-06 split,
    /// USD-M serves depth on `/public` and trades on `/market`.
    pub fn stream_path(self, trades: bool) -> &'static str {
        match (self, trades) {
            (Market::Spot, _) => "/stream",
            (Market::UsdM, false) => "/public/stream",
            (Market::UsdM, true) => "/market/stream",
        }
    }

    /// The REST base.
    pub fn default_rest_url(self) -> &'static str {
        match self {
            Market::Spot => "https://api.binance.com",
            Market::UsdM => "https://fapi.binance.com",
        }
    }

    /// Incoming control frames (subscribe, ping, pong) the venue allows per second and
    /// connection.
    pub fn control_frames_per_sec(self) -> u32 {
        match self {
            Market::Spot => 5,
            Market::UsdM => 10,
        }
    }

    /// The depth stream of `symbol` (any case), at its fastest public speed.
    pub fn depth_stream(self, symbol: &str) -> String {
        format!("{}@depth@100ms", symbol.to_ascii_lowercase())
    }

    /// The path of the `exchangeInfo` request for `symbols`.
    pub fn exchange_info_path(self) -> &'static str {
        match self {
            Market::Spot => "/api/v3/exchangeInfo",
            Market::UsdM => "/fapi/v1/exchangeInfo",
        }
    }

    /// The trade stream of `symbol`: aggregate trades, whose contiguous ids reveal loss.
    pub fn trade_stream(self, symbol: &str) -> String {
        format!("{}@aggTrade", symbol.to_ascii_lowercase())
    }

    /// Path and query of the REST depth snapshot.
    pub fn depth_path(self, symbol: &str, limit: u32) -> String {
        let base = match self {
            Market::Spot => "/api/v3/depth",
            Market::UsdM => "/fapi/v1/depth",
        };
        format!(
            "{base}?symbol={}&limit={limit}",
            symbol.to_ascii_uppercase()
        )
    }

    /// The request weight of a depth snapshot of `limit` levels, or `None` for a limit
    /// the venue does not serve.
    pub fn depth_weight(self, limit: u32) -> Option<u32> {
        match self {
            Market::Spot => match limit {
                1..=100 => Some(5),
                101..=500 => Some(25),
                501..=1000 => Some(50),
                1001..=5000 => Some(250),
                _ => None,
            },
            Market::UsdM => match limit {
                5 | 10 | 20 | 50 => Some(2),
                100 => Some(5),
                500 => Some(10),
                1000 => Some(20),
                _ => None,
            },
        }
    }

    /// The REST request weight allowed per minute when the venue has not said otherwise
    /// (spot's `REQUEST_WEIGHT` is 6,000/min; USD-M's 2,400/min).
    pub fn default_weight_per_minute(self) -> u32 {
        match self {
            Market::Spot => 6_000,
            Market::UsdM => 2_400,
        }
    }
}

/// `{"method":"SUBSCRIBE","params":[…],"id":id}`; callers keep `streams` at or under
/// [`MAX_STREAMS_PER_FRAME`].
pub fn subscribe_frame(id: u64, streams: &[String]) -> String {
    request_frame("SUBSCRIBE", id, streams)
}

/// `{"method":"UNSUBSCRIBE","params":[…],"id":id}`.
pub fn unsubscribe_frame(id: u64, streams: &[String]) -> String {
    request_frame("UNSUBSCRIBE", id, streams)
}

fn request_frame(method: &str, id: u64, streams: &[String]) -> String {
    let params = serde_json::to_string(streams).unwrap_or_else(|_| "[]".to_owned());
    format!(r#"{{"method":"{method}","params":{params},"id":{id}}}"#)
}

/// Binance times are epoch milliseconds.
pub fn millis(ms: u64) -> UnixNanos {
    UnixNanos::from_millis(ms).unwrap_or(UnixNanos::ZERO)
}

fn aggressor(buyer_is_maker: bool) -> Aggressor {
    if buyer_is_maker {
        Aggressor::Sell
    } else {
        Aggressor::Buy
    }
}

/// An aggregate trade onto `tape`: a repeat is dropped, a jump in ids is a `Gap` on the
/// trades channel before the trade.
pub fn agg_trade(tape: &mut TradeTape, t: AggTrade<'_>, out: &mut Vec<Action>) {
    push_trade(
        tape,
        t.id,
        t.trade_time,
        t.price.0,
        t.qty.0,
        t.buyer_is_maker,
        out,
    );
}

/// A single trade onto `tape`, as [`agg_trade`].
pub fn raw_trade(tape: &mut TradeTape, t: RawTrade<'_>, out: &mut Vec<Action>) {
    push_trade(
        tape,
        t.id,
        t.trade_time,
        t.price.0,
        t.qty.0,
        t.buyer_is_maker,
        out,
    );
}

fn push_trade(
    tape: &mut TradeTape,
    id: u64,
    time: u64,
    price: raven_model::Price,
    qty: raven_model::Qty,
    buyer_is_maker: bool,
    out: &mut Vec<Action>,
) {
    if !tape.admit(id, out) {
        return;
    }
    out.push(Action::Trade {
        exchange_time: millis(time),
        trade: Trade {
            price,
            qty,
            aggressor: aggressor(buyer_is_maker),
            trade_id: id.to_string(),
        },
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use raven_model::{Channel, StatusKind};

    #[test]
    fn subscribe_frames_are_the_documented_shape() {
        let streams = vec!["btcusdt@aggTrade".to_owned(), "btcusdt@depth".to_owned()];
        assert_eq!(
            subscribe_frame(1, &streams),
            r#"{"method":"SUBSCRIBE","params":["btcusdt@aggTrade","btcusdt@depth"],"id":1}"#
        );
        assert_eq!(
            unsubscribe_frame(2, &streams[..1]),
            r#"{"method":"UNSUBSCRIBE","params":["btcusdt@aggTrade"],"id":2}"#
        );
    }

    #[test]
    fn names_paths_and_weights_follow_the_docs() {
        assert_eq!(Market::Spot.depth_stream("BTCUSDT"), "btcusdt@depth@100ms");
        assert_eq!(Market::UsdM.trade_stream("ETHUSDT"), "ethusdt@aggTrade");
        assert_eq!(
            Market::Spot.depth_path("btcusdt", 1000),
            "/api/v3/depth?symbol=BTCUSDT&limit=1000"
        );
        assert_eq!(
            Market::UsdM.depth_path("BTCUSDT", 1000),
            "/fapi/v1/depth?symbol=BTCUSDT&limit=1000"
        );
        let spot: Vec<_> = [1, 100, 101, 500, 1000, 5000, 5001]
            .map(|l| Market::Spot.depth_weight(l))
            .into();
        assert_eq!(
            spot,
            [
                Some(5),
                Some(5),
                Some(25),
                Some(25),
                Some(50),
                Some(250),
                None
            ]
        );
        let usdm: Vec<_> = [5, 50, 100, 500, 1000, 5000, 7]
            .map(|l| Market::UsdM.depth_weight(l))
            .into();
        assert_eq!(
            usdm,
            [Some(2), Some(2), Some(5), Some(10), Some(20), None, None]
        );
    }

    #[test]
    fn maker_buyer_means_the_seller_aggressed_and_repeats_are_dropped() {
        let mut tape = TradeTape::default();
        let mut out = Vec::new();
        let frame = |id: u64, m: bool| {
            format!(
                r#"{{"stream":"bnbbtc@aggTrade","data":{{"e":"aggTrade","E":1,"s":"BNBBTC","a":{id},"p":"0.001","q":"100","f":1,"l":1,"T":1672515782136,"m":{m}}}}}"#
            )
        };
        for (id, m) in [(10, true), (11, false), (11, false), (14, true)] {
            let text = frame(id, m);
            let wire::Frame::AggTrade(t) = wire::decode(&text).unwrap() else {
                panic!("not a trade")
            };
            agg_trade(&mut tape, t, &mut out);
        }
        let trade = |id: &str, aggressor| Action::Trade {
            exchange_time: UnixNanos(1_672_515_782_136_000_000),
            trade: Trade {
                price: "0.001".parse().unwrap(),
                qty: "100".parse().unwrap(),
                aggressor,
                trade_id: id.to_owned(),
            },
        };
        assert_eq!(
            out,
            vec![
                trade("10", Aggressor::Sell),
                trade("11", Aggressor::Buy),
                Action::status(
                    Channel::Trades,
                    StatusKind::Gap,
                    2,
                    "trade ids 12..=13 never arrived".to_owned()
                ),
                trade("14", Aggressor::Sell),
            ]
        );
    }
}
