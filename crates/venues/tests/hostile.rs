//! Hostile input against every venue decoder: the malformed set a connector meets in the
//! wild (truncated JSON, wrong types, non-decimals such as `0.-10000`, `NaN` and `1e-5`,
//! negative quantities, unknown event types and fields, oversize frames) and random
//! mutations of valid payloads. Never a panic; anything that is not a valid message is an
//! error, and a valid message with unknown fields decodes with them counted.

use proptest::prelude::*;
use raven_venues::{binance, coinbase, kraken};

const BINANCE_DEPTH: &str = r#"{"stream":"btcusdt@depth@100ms","data":{"e":"depthUpdate","E":1671656397761,"s":"BTCUSDT","U":22611425143,"u":22611425151,"b":[["1209.67000000","85.48210000"]],"a":[["1209.68000000","1.00000000"]]}}"#;
const COINBASE_L2: &str = r#"{"channel":"l2_data","client_id":"","timestamp":"2026-04-07T14:30:01.456789Z","sequence_num":1,"events":[{"type":"update","product_id":"BTC-USD","updates":[{"side":"bid","event_time":"2026-04-07T14:30:01.456789Z","price_level":"68900.00","new_quantity":"2.00000000"}]}]}"#;
const KRAKEN_BOOK: &str = r#"{"channel":"book","type":"update","data":[{"symbol":"BTC/USD","bids":[{"price":105944.20,"qty":0.250}],"asks":[],"checksum":2114181697,"timestamp":"2023-10-06T17:35:55.440295Z"}]}"#;

fn decode_all(text: &str) {
    let _ = binance::wire::decode(text);
    let _ = coinbase::wire::decode(text);
    let _ = kraken::wire::decode(text);
    let _ = coinbase::wire::products_of(text);
    let _ = kraken::wire::symbols_of(text);
    let _ = serde_json::from_str::<binance::wire::DepthSnapshot>(text);
}

#[test]
fn the_malformed_set_is_refused_with_a_reason() {
    let bad_depth = [
        (
            r#""b":[["1209.67000000","85.48210000"]]"#,
            r#""b":[["0.-10000","1"]]"#,
            "invalid price",
        ),
        (
            r#""b":[["1209.67000000","85.48210000"]]"#,
            r#""b":[["NaN","1"]]"#,
            "invalid price",
        ),
        (
            r#""b":[["1209.67000000","85.48210000"]]"#,
            r#""b":[["1e-5","1"]]"#,
            "invalid price",
        ),
        (
            r#""b":[["1209.67000000","85.48210000"]]"#,
            r#""b":[["1","-3"]]"#,
            "negative quantity",
        ),
        (
            r#""b":[["1209.67000000","85.48210000"]]"#,
            r#""b":[[1209.67,"1"]]"#,
            "invalid type",
        ),
        (r#""U":22611425143"#, r#""U":"22611425143""#, "invalid type"),
        (r#""U":22611425143"#, r#""U":-1"#, "invalid value"),
        (r#""s":"BTCUSDT""#, r#""s":null"#, "invalid type"),
    ];
    for (from, to, reason) in bad_depth {
        let text = BINANCE_DEPTH.replace(from, to);
        let e = binance::wire::decode(&text).unwrap_err();
        assert!(e.to_string().contains(reason), "{to}: {e}");
        assert_eq!(e.symbol(), Some("btcusdt"), "{to}");
    }
    for cut in [1, 10, 60, BINANCE_DEPTH.len() - 1] {
        assert!(
            binance::wire::decode(&BINANCE_DEPTH[..cut]).is_err(),
            "cut at {cut}"
        );
    }
    let bad_l2 = COINBASE_L2.replace(
        r#""new_quantity":"2.00000000""#,
        r#""new_quantity":"0.-10000""#,
    );
    assert!(coinbase::wire::decode(&bad_l2).is_err());
    let bad_kraken = KRAKEN_BOOK.replace("105944.20", "1.0e5");
    assert!(kraken::wire::decode(&bad_kraken).is_err());
}

#[test]
fn unknown_event_types_and_fields_are_skipped_not_errors() {
    let text = r#"{"stream":"btcusdt@kline_1m","data":{"e":"kline","E":1,"s":"BTCUSDT","k":{}}}"#;
    assert_eq!(
        binance::wire::decode(text).unwrap(),
        binance::wire::Frame::Unhandled
    );
    let extra = BINANCE_DEPTH.replace(
        r#""s":"BTCUSDT""#,
        r#""s":"BTCUSDT","zz":{"nested":[1,2]},"yy":0"#,
    );
    let binance::wire::Frame::Depth(d) = binance::wire::decode(&extra).unwrap() else {
        panic!("not depth")
    };
    assert_eq!(d.unknown, 2);
    let text = r#"{"channel":"futures_balance_summary","client_id":"","timestamp":"t","sequence_num":9,"events":[{"x":1}]}"#;
    assert!(matches!(
        coinbase::wire::decode(text).unwrap(),
        coinbase::wire::Frame::Message {
            events: coinbase::wire::Events::Other,
            sequence_num: 9,
            ..
        }
    ));
    let text = r#"{"channel":"ohlc","type":"snapshot","data":[{"symbol":"BTC/USD","open":1.0}]}"#;
    assert!(matches!(
        kraken::wire::decode(text).unwrap(),
        kraken::wire::Frame::Channel {
            data: kraken::wire::Data::Other,
            ..
        }
    ));
}

#[test]
fn an_oversize_frame_is_an_error_not_a_crash() {
    let levels = vec![r#"["1.0","1.0"]"#; 200_000].join(",");
    let text = BINANCE_DEPTH.replace(
        r#""b":[["1209.67000000","85.48210000"]]"#,
        &format!(r#""b":[{levels},["1","x"]]"#),
    );
    assert!(binance::wire::decode(&text).is_err());
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    decode_all(&deep);
}

proptest! {
    #[test]
    fn random_text_never_panics(text in ".{0,400}") {
        decode_all(&text);
    }

    #[test]
    fn mutated_payloads_never_panic(
        which in 0usize..3,
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<char>()), 1..6),
    ) {
        let mut text: Vec<char> = [BINANCE_DEPTH, COINBASE_L2, KRAKEN_BOOK][which].chars().collect();
        for (at, c) in edits {
            let i = at.index(text.len());
            text[i] = c;
        }
        decode_all(&text.into_iter().collect::<String>());
    }
}
