use super::wire::{Data, Frame, decode};
use super::*;

/// The book snapshot example of docs.kraken.com "Book checksum (WebSocket v2)".
const DOCS_SNAPSHOT: &str = r#"{"channel":"book","type":"snapshot","data":[{"symbol":"BTC/USD","bids":[{"price":45283.5,"qty":0.10000000},{"price":45283.4,"qty":1.54582015},{"price":45282.1,"qty":0.10000000},{"price":45281.0,"qty":0.10000000},{"price":45280.3,"qty":1.54592586},{"price":45279.0,"qty":0.07990000},{"price":45277.6,"qty":0.03310103},{"price":45277.5,"qty":0.30000000},{"price":45277.3,"qty":1.54602737},{"price":45276.6,"qty":0.15445238}],"asks":[{"price":45285.2,"qty":0.00100000},{"price":45286.4,"qty":1.54571953},{"price":45286.6,"qty":1.54571109},{"price":45289.6,"qty":1.54560911},{"price":45290.2,"qty":0.15890660},{"price":45291.8,"qty":1.54553491},{"price":45294.7,"qty":0.04454749},{"price":45296.1,"qty":0.35380000},{"price":45297.5,"qty":0.09945542},{"price":45299.5,"qty":0.18772827}],"checksum":3310070434,"timestamp":"2023-10-06T17:35:55.440295Z"}]}"#;

fn run(book: &mut Book, text: &str, now: u64) -> Vec<Action> {
    let Frame::Channel {
        kind,
        data: Data::Book(items),
        ..
    } = decode(text).unwrap()
    else {
        panic!("not a book message")
    };
    let mut out = Vec::new();
    for item in items {
        book.on_book(kind, item, UnixNanos(now * UnixNanos::PER_SECOND), &mut out);
    }
    out
}

fn message(kind: &str, bids: &[(&str, &str)], asks: &[(&str, &str)], checksum: u32) -> String {
    let side = |levels: &[(&str, &str)]| {
        levels
            .iter()
            .map(|(p, q)| format!(r#"{{"price":{p},"qty":{q}}}"#))
            .collect::<Vec<_>>()
            .join(",")
    };
    format!(
        r#"{{"channel":"book","type":"{kind}","data":[{{"symbol":"A/B","bids":[{}],"asks":[{}],"checksum":{checksum},"timestamp":"2023-10-06T17:35:55Z"}}]}}"#,
        side(bids),
        side(asks)
    )
}

fn kinds(out: &[Action]) -> Vec<String> {
    out.iter()
        .map(|a| match a {
            Action::Snapshot { book, .. } => format!("snapshot {:?}", book.kind),
            Action::Delta { delta, .. } => format!("delta {}", delta.changes.len()),
            Action::Status { kind, .. } => format!("{kind:?}"),
            other => format!("{other:?}"),
        })
        .collect()
}

#[test]
fn the_docs_example_checksum_verifies() {
    let mut book = Book::new(10);
    let out = run(&mut book, DOCS_SNAPSHOT, 0);
    let [
        Action::Snapshot {
            venue_id,
            book: snap,
            ..
        },
    ] = &out[..]
    else {
        panic!("{out:?}")
    };
    assert_eq!(*venue_id, 3_310_070_434);
    assert_eq!((snap.bids.len(), snap.asks.len()), (10, 10));
    assert_eq!(snap.bids[0].price, "45283.5".parse().unwrap());
    assert_eq!(snap.asks[0].qty, "0.001".parse().unwrap());
    assert_eq!(book.checksum(), 3_310_070_434);
}

#[test]
fn the_reference_checksum_agrees_with_the_docs() {
    let asks = [
        ("45285.2", "0.00100000"),
        ("45286.4", "1.54571953"),
        ("45286.6", "1.54571109"),
        ("45289.6", "1.54560911"),
        ("45290.2", "0.15890660"),
        ("45291.8", "1.54553491"),
        ("45294.7", "0.04454749"),
        ("45296.1", "0.35380000"),
        ("45297.5", "0.09945542"),
        ("45299.5", "0.18772827"),
    ];
    let bids = [
        ("45283.5", "0.10000000"),
        ("45283.4", "1.54582015"),
        ("45282.1", "0.10000000"),
        ("45281.0", "0.10000000"),
        ("45280.3", "1.54592586"),
        ("45279.0", "0.07990000"),
        ("45277.6", "0.03310103"),
        ("45277.5", "0.30000000"),
        ("45277.3", "1.54602737"),
        ("45276.6", "0.15445238"),
    ];
    assert_eq!(reference_checksum(&asks, &bids), 3_310_070_434);
    // Trailing zeros are part of the text: dropping them changes the checksum.
    let mut trimmed = asks;
    trimmed[0].1 = "0.001";
    assert_ne!(reference_checksum(&trimmed, &bids), 3_310_070_434);
}

#[test]
fn updates_apply_truncate_to_depth_and_verify() {
    let mut book = Book::new(2);
    let bids = [("10.0", "1.00"), ("9.5", "2.00")];
    let asks = [("11.0", "1.00"), ("11.5", "3.00")];
    let snap = message("snapshot", &bids, &asks, reference_checksum(&asks, &bids));
    assert_eq!(kinds(&run(&mut book, &snap, 0)), ["snapshot Initial"]);
    // A better bid pushes 9.5 out of the two-level book: no message for it from the venue.
    let after_bids = [("10.5", "4.00"), ("10.0", "1.00")];
    let upd = message(
        "update",
        &[("10.5", "4.00")],
        &[],
        reference_checksum(&asks, &after_bids),
    );
    let out = run(&mut book, &upd, 1);
    let [Action::Delta { delta, .. }] = &out[..] else {
        panic!("{out:?}")
    };
    let change = |price: &str, qty: &str| LevelChange {
        side: Side::Bid,
        price: price.parse().unwrap(),
        qty: qty.parse().unwrap(),
    };
    assert_eq!(delta.changes, vec![change("10.5", "4"), change("9.5", "0")]);
    // A removal.
    let after_asks = [("11.5", "3.00")];
    let upd = message(
        "update",
        &[],
        &[("11.0", "0.00")],
        reference_checksum(&after_asks, &after_bids),
    );
    assert_eq!(kinds(&run(&mut book, &upd, 2)), ["delta 1"]);
}

#[test]
fn a_mismatch_resyncs_and_updates_wait_for_the_new_snapshot() {
    let mut book = Book::new(10);
    run(&mut book, DOCS_SNAPSHOT, 0);
    // Enough good updates that a mismatch is not "right after" the snapshot.
    for i in 0..5 {
        let qty = format!("0.{}0000000", i + 2);
        let mut asks = vec![("45285.2", qty.as_str())];
        asks.truncate(1);
        let upd = message("update", &[], &asks, 0);
        let mut probe = book.clone();
        run(&mut probe, &upd, 1);
        let ok = message("update", &[], &asks, probe.checksum());
        assert_eq!(kinds(&run(&mut book, &ok, 1)), ["delta 1"]);
    }
    let bad = message("update", &[("45283.5", "0.2")], &[], 12345);
    assert_eq!(kinds(&run(&mut book, &bad, 2)), ["Resync", "Resubscribe"]);
    assert!(!book.is_synced());
    let upd = message("update", &[("45283.5", "0.3")], &[], 1);
    assert!(run(&mut book, &upd, 3).is_empty());
    assert_eq!(
        kinds(&run(&mut book, DOCS_SNAPSHOT, 4)),
        ["snapshot Resync"]
    );
}

#[test]
fn repeated_mismatches_after_snapshots_turn_checks_off_instead_of_looping() {
    let mut book = Book::new(10);
    let wrong = DOCS_SNAPSHOT.replace("3310070434", "1");
    assert_eq!(kinds(&run(&mut book, &wrong, 0)), ["Resubscribe"]);
    assert_eq!(kinds(&run(&mut book, &wrong, 10)), ["Resubscribe"]);
    let out = run(&mut book, &wrong, 20);
    assert_eq!(kinds(&out), ["Rejected", "snapshot Initial"]);
    let Action::Status { detail, .. } = &out[0] else {
        unreachable!()
    };
    assert!(detail.starts_with("checksum unreliable"), "{detail}");
    // Checks are off: a mismatching update is published.
    let upd = message("update", &[("45283.5", "0.2")], &[], 7);
    assert_eq!(kinds(&run(&mut book, &upd, 30)), ["delta 1"]);
    // After the quiet period they are on again.
    let later = 20 + UNRELIABLE_QUIET_NS / UnixNanos::PER_SECOND;
    assert_eq!(
        kinds(&run(&mut book, &upd, later)),
        ["Resync", "Resubscribe"]
    );
}

#[test]
fn mismatches_far_apart_do_not_trip_the_breaker() {
    let mut book = Book::new(10);
    let wrong = DOCS_SNAPSHOT.replace("3310070434", "1");
    for minute in 0..5 {
        assert_eq!(kinds(&run(&mut book, &wrong, minute * 61)), ["Resubscribe"]);
    }
}

#[test]
fn trades_take_the_taker_side_and_drop_repeats() {
    let mut book = Book::new(10);
    let text = r#"{"channel":"trade","type":"snapshot","data":[{"symbol":"A/B","side":"sell","price":0.5117,"qty":40.0,"ord_type":"market","trade_id":7,"timestamp":"2023-09-25T07:49:37.708706Z"},{"symbol":"A/B","side":"buy","price":0.5118,"qty":1.5,"ord_type":"limit","trade_id":8,"timestamp":"2023-09-25T07:49:37.708706Z"},{"symbol":"A/B","side":"buy","price":0.5118,"qty":1.5,"ord_type":"limit","trade_id":8,"timestamp":"2023-09-25T07:49:37.708706Z"},{"symbol":"A/B","side":"buy","price":0.5,"qty":1,"ord_type":"limit","trade_id":11,"timestamp":"x"}]}"#;
    let Frame::Channel {
        data: Data::Trades(trades),
        ..
    } = decode(text).unwrap()
    else {
        panic!("not trades")
    };
    let mut out = Vec::new();
    for t in &trades {
        book.on_trade(t, &mut out);
    }
    let seen: Vec<String> = out
        .iter()
        .map(|a| match a {
            Action::Trade { trade, .. } => {
                format!(
                    "{} {:?} {} {}",
                    trade.trade_id, trade.aggressor, trade.price, trade.qty
                )
            }
            Action::Status { kind, missed, .. } => format!("{kind:?} {missed}"),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        seen,
        [
            "7 Sell 0.5117 40",
            "8 Buy 0.5118 1.5",
            "Gap 2",
            "11 Buy 0.5 1"
        ]
    );
}

#[test]
fn subscribe_frames_are_the_documented_shape() {
    let pairs = vec!["BTC/USD".to_owned()];
    assert_eq!(
        subscribe_book(3, &pairs, 10),
        r#"{"method":"subscribe","params":{"channel":"book","symbol":["BTC/USD"],"depth":10,"snapshot":true},"req_id":3}"#
    );
    assert_eq!(
        unsubscribe_book(4, &pairs, 10),
        r#"{"method":"unsubscribe","params":{"channel":"book","symbol":["BTC/USD"],"depth":10},"req_id":4}"#
    );
    assert_eq!(ping(5), r#"{"method":"ping","req_id":5}"#);
}
