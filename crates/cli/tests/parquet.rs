//! `raven history --format parquet` as a user runs it: a server recording the simulator
//! and published extremes, the export read back with the Rust `parquet` reader and
//! compared value for value with the same history as CSV.

mod parquet_files;

use std::collections::BTreeMap;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Decimal128Type, Int8Type, Int32Type, TimestampNanosecondType, UInt64Type,
};
use arrow_array::{Array, RecordBatch};
use arrow_schema::{DataType, TimeUnit};
use parquet_files::read;
use raven_model::{Price, Qty};
use raven_proto::pb::feed_event::Body;
use raven_proto::pb::{self, ingest_client::IngestClient};
use raven_testkit::served::Served;

const RAVEN: &str = env!("CARGO_BIN_EXE_raven");
const EXTREME: &str = "TEST:EXTREME";
const HUGE: &str = "TEST:HUGE";
/// A quantity above 2⁶⁴ units: its high word is set.
const BIG_QTY: u128 = (1u128 << 64) + 7;

fn level(price: i64, qty: u128) -> pb::Level {
    pb::Level {
        price,
        qty: qty as u64,
        qty_hi: (qty >> 64) as u64,
    }
}

fn event(instrument: &str, i: u64, body: Body) -> pb::FeedEvent {
    pb::FeedEvent {
        instrument: instrument.into(),
        exchange_time: 1_700_000_000_000_000_000 + i,
        receive_time: 0,
        venue_seq: 0,
        body: Some(body),
    }
}

fn trade(
    instrument: &str,
    i: u64,
    price: i64,
    qty: u128,
    aggressor: pb::Aggressor,
) -> pb::FeedEvent {
    event(
        instrument,
        i,
        Body::Trade(pb::Trade {
            price,
            qty: qty as u64,
            qty_hi: (qty >> 64) as u64,
            aggressor: aggressor as i32,
            trade_id: format!("id,{i}\"q"),
        }),
    )
}

/// Publishes a book and trades with the largest values a decimal128(38, 9) holds from
/// Raven's integers, and one instrument whose trade quantity it cannot hold.
fn publish_extremes(url: &str) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut ingest = IngestClient::connect(url.to_owned()).await.unwrap();
        let events = vec![
            event(
                EXTREME,
                0,
                Body::Snapshot(pb::BookSnapshot {
                    bids: vec![level(1, 1), level(-5, 3)],
                    asks: vec![level(i64::MAX, BIG_QTY)],
                    ..Default::default()
                }),
            ),
            event(
                EXTREME,
                1,
                Body::Delta(pb::BookDelta {
                    bids: vec![level(1, 0)],
                    asks: vec![level(i64::MAX - 1, 10u128.pow(38) - 1)],
                }),
            ),
            trade(EXTREME, 2, i64::MAX, BIG_QTY, pb::Aggressor::Buy),
            trade(EXTREME, 3, -1, 1, pb::Aggressor::Unspecified),
        ];
        let accepted = ingest
            .publish(tokio_stream::iter([pb::PublishRequest { events }]))
            .await
            .unwrap()
            .into_inner()
            .accepted;
        assert_eq!(accepted, 4);
        let huge = trade(HUGE, 0, 1, 10u128.pow(38), pb::Aggressor::Sell);
        let accepted = ingest
            .publish(tokio_stream::iter([pb::PublishRequest {
                events: vec![huge],
            }]))
            .await
            .unwrap()
            .into_inner()
            .accepted;
        assert_eq!(accepted, 1);
    });
}

fn raven(args: &[&str], url: &str) -> Output {
    Command::new(RAVEN)
        .args(args)
        .args(["--server", url])
        .output()
        .unwrap()
}

fn succeeded(out: Output) -> Output {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A column's value in row `row` as the CSV export writes it ("" for null).
fn text(batch: &RecordBatch, name: &str, row: usize) -> String {
    let column = batch
        .column_by_name(name)
        .unwrap_or_else(|| panic!("no column {name}"));
    if column.is_null(row) {
        return String::new();
    }
    match column.data_type() {
        DataType::Decimal128(38, 9) => {
            Qty::from_units(column.as_primitive::<Decimal128Type>().value(row)).to_string()
        }
        DataType::Timestamp(TimeUnit::Nanosecond, Some(tz)) if tz.as_ref() == "UTC" => column
            .as_primitive::<TimestampNanosecondType>()
            .value(row)
            .to_string(),
        DataType::UInt64 => column.as_primitive::<UInt64Type>().value(row).to_string(),
        DataType::Boolean => column.as_boolean().value(row).to_string(),
        DataType::Utf8 => column.as_string::<i32>().value(row).to_owned(),
        DataType::Dictionary(key, _) if **key == DataType::Int32 => {
            let dict = column.as_dictionary::<Int32Type>();
            let values = dict.values().as_string::<i32>();
            values.value(dict.keys().value(row) as usize).to_owned()
        }
        DataType::Dictionary(key, _) if **key == DataType::Int8 => {
            let dict = column.as_dictionary::<Int8Type>();
            let values = dict.values().as_string::<i32>();
            values.value(dict.keys().value(row) as usize).to_owned()
        }
        other => panic!("{name}: unexpected type {other}"),
    }
}

fn quoted(detail: &str) -> String {
    if detail.contains([',', '"', '\n']) {
        format!("\"{}\"", detail.replace('"', "\"\""))
    } else {
        detail.to_owned()
    }
}

/// A Parquet table's rows as the CSV export's lines for the same events.
fn as_csv(channel: &str, batches: &[RecordBatch]) -> Vec<String> {
    let mut lines = Vec::new();
    for b in batches {
        for r in 0..b.num_rows() {
            let t = |name: &str| text(b, name, r);
            let head = format!(
                "{},{channel},{},{},{},{}",
                t("instrument"),
                t("sequence"),
                t("exchange_time"),
                t("receive_time"),
                t("publish_time")
            );
            if !t("status").is_empty() {
                lines.push(format!("{head},status,,,,{}", quoted(&t("detail"))));
                continue;
            }
            match channel {
                "trades" => lines.push(format!(
                    "{head},trade,{},{},{},{}",
                    t("aggressor"),
                    t("price"),
                    t("qty"),
                    quoted(&t("trade_id"))
                )),
                "book" => {
                    if t("side").is_empty() {
                        continue; // an empty snapshot: no level, no CSV row
                    }
                    let kind = match (t("is_snapshot").as_str(), t("resync").as_str()) {
                        ("true", "true") => "resync",
                        ("true", _) => "snapshot",
                        _ => "delta",
                    };
                    lines.push(format!(
                        "{head},{kind},{},{},{},",
                        t("side"),
                        t("price"),
                        t("qty")
                    ));
                }
                "bbo" => {
                    for side in ["bid", "ask"] {
                        let (price, qty) = (t(&format!("{side}_price")), t(&format!("{side}_qty")));
                        let detail = if price.is_empty() { "empty" } else { "" };
                        lines.push(format!("{head},bbo,{side},{price},{qty},{detail}"));
                    }
                }
                "candles" => lines.push(format!(
                    "{head},candle,,{},{},interval={};open_time={};open={};high={};low={};trades={}",
                    t("close"),
                    t("volume"),
                    t("interval"),
                    t("open_time"),
                    t("open"),
                    t("high"),
                    t("low"),
                    t("trades")
                )),
                other => panic!("{other}"),
            }
        }
    }
    lines
}

#[test]
fn parquet_export_reads_back_equal_to_the_csv_export() {
    let dir = raven_testkit::scratch_dir!("parquet");
    let mut command = Command::new(RAVEN);
    command
        .current_dir(&dir)
        .args(["serve", "--listen", "127.0.0.1:0", "--http", "off"])
        .args(["--rate", "5000"])
        .env("RAVEN_LOG", "warn")
        .stderr(Stdio::inherit());
    let served = Served::start(command);
    let url = served.url();
    publish_extremes(&url);
    std::thread::sleep(Duration::from_millis(1500));
    // A fixed range, so that both exports read the same events while the simulator runs.
    let to = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
        .to_string();
    std::thread::sleep(Duration::from_millis(200));
    let history = ["history", "SIM:BTC-USD", EXTREME];

    let csv = dir.join("all.csv");
    let mut args = history.to_vec();
    args.extend([
        "--to",
        &to,
        "--format",
        "csv",
        "--out",
        csv.to_str().unwrap(),
    ]);
    succeeded(raven(&args, &url));
    let mut expected: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in std::fs::read_to_string(&csv).unwrap().lines().skip(1) {
        let channel = line.split(',').nth(1).unwrap().to_owned();
        expected.entry(channel).or_default().push(line.to_owned());
    }

    // Every channel: one file per channel, with the prefix given.
    let prefix = dir.join("day.parquet");
    let mut args = history.to_vec();
    args.extend([
        "--to",
        &to,
        "--format",
        "parquet",
        "--out",
        prefix.to_str().unwrap(),
    ]);
    let out = succeeded(raven(&args, &url));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for channel in ["book", "bbo", "trades", "candles"] {
        let path = dir.join(format!("day.{channel}.parquet"));
        let batches = read(&path);
        let got = as_csv(channel, &batches);
        let want = expected.remove(channel).unwrap_or_default();
        assert!(!want.is_empty(), "no {channel} in the CSV export");
        assert_eq!(got.len(), want.len(), "{channel}");
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g, w, "{channel}");
        }
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        assert!(
            stderr.contains(&format!("{}: {rows} rows", path.display())),
            "{stderr}"
        );
        // The schema: decimals, UTC nanosecond times, a dictionary of instruments.
        let schema = batches[0].schema();
        assert_eq!(
            schema.field_with_name("publish_time").unwrap().data_type(),
            &DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into()))
        );
        assert_eq!(
            schema.field_with_name("instrument").unwrap().data_type(),
            &DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8))
        );
    }
    assert!(expected.is_empty(), "channels left: {:?}", expected.keys());

    // One channel: exactly the file named, holding the extremes exactly.
    let trades = dir.join("extreme-trades.parquet");
    succeeded(raven(
        &[
            "history",
            EXTREME,
            "--channel",
            "trades",
            "--format",
            "parquet",
            "--out",
            trades.to_str().unwrap(),
        ],
        &url,
    ));
    let batches = read(&trades);
    let rows: Vec<(String, String, String, String)> = batches
        .iter()
        .flat_map(|b| {
            (0..b.num_rows()).map(move |r| {
                (
                    text(b, "price", r),
                    text(b, "qty", r),
                    text(b, "aggressor", r),
                    text(b, "sequence", r),
                )
            })
        })
        .collect();
    assert_eq!(
        rows,
        vec![
            (
                Price::MAX.to_string(),
                Qty::from_units(BIG_QTY as i128).to_string(),
                "buy".to_owned(),
                "1".to_owned()
            ),
            (
                Price::from_units(-1).to_string(),
                Qty::from_units(1).to_string(),
                String::new(),
                "2".to_owned()
            ),
        ]
    );
    assert_eq!(rows[0].0, "9223372036.854775807");
    assert_eq!(rows[0].1, "18446744073.709551623");
    let price = batches[0].column_by_name("price").unwrap();
    assert_eq!(
        price.as_primitive::<Decimal128Type>().value(0),
        i64::MAX as i128
    );

    // Bad input: a quantity decimal128(38, 9) cannot hold stops the export, naming the
    // event; parquet without --out is a usage error.
    let out = raven(
        &[
            "history",
            HUGE,
            "--format",
            "parquet",
            "--out",
            dir.join("huge.parquet").to_str().unwrap(),
        ],
        &url,
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("TEST:HUGE sequence 1")
            && stderr.contains("quantity of 100000000000000000000000000000000000000 units"),
        "{stderr}"
    );
    let out = raven(&["history", EXTREME, "--format", "parquet"], &url);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--out <OUT>") && stderr.contains("Usage:"),
        "{stderr}"
    );
}
