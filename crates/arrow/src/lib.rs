//! Raven events as Arrow tables, one per channel, each with its channel's schema: what
//! `raven history --format parquet` writes and `History.QueryArrow` sends (the Python
//! SDK's `to_parquet` writes the same).
//!
//! Every schema starts with `instrument` (dictionary), `sequence` and the three times, and
//! ends with `status`, `missed` and `detail`, which only a status event's row fills (its
//! other columns are null then), so that a gap in the history stays in the table.
//!
//! | channel | its own columns |
//! |---|---|
//! | trades | `price`, `qty`, `aggressor` (`buy`/`sell`, null when unknown), `trade_id` |
//! | book | `side` (`bid`/`ask`), `price`, `qty` (0 removes the level), `is_snapshot`, `resync`: one row per level of a snapshot or change of a delta (an empty snapshot is one row with no side) |
//! | bbo | `bid_price`, `bid_qty`, `ask_price`, `ask_qty` (null for an empty side) |
//! | candles | `interval` (`1s`/`1m`), `open_time`, `open`, `high`, `low`, `close`, `volume`, `trades` |
//!
//! Prices and quantities are `decimal128(38, 9)` made from the raw integers (units of
//! 10⁻⁹), never through floats; a quantity of 10³⁸ units or more does not fit and is an
//! [`ExportError`] naming the event. Times are `timestamp[ns, UTC]`.

use std::sync::Arc;

use arrow_array::builder::{
    BooleanBuilder, Decimal128Builder, StringBuilder, StringDictionaryBuilder,
    TimestampNanosecondBuilder, UInt64Builder,
};
use arrow_array::types::{Int8Type, Int32Type};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use raven_model::{Aggressor, CandleInterval, EventBody, Level, Side, SnapshotKind, Status};
use raven_proto::convert::body_from_pb;
use raven_proto::pb;

/// Builders are made with room for this many rows.
const CAPACITY: usize = 16_384;
/// `decimal128(38, 9)` holds magnitudes below 10³⁸ units.
const DECIMAL_LIMIT: i128 = 10i128.pow(38);

/// An event a table cannot hold, named by its instrument and sequence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{instrument} sequence {sequence}: {what}")]
pub struct ExportError {
    /// The event's instrument.
    pub instrument: String,
    /// The event's sequence.
    pub sequence: u64,
    /// What does not fit.
    pub what: String,
}

/// The channels a table can hold, in the order files are named and listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// Book snapshots and deltas, a row per level.
    Book,
    /// Top-of-book changes.
    Bbo,
    /// Trades.
    Trades,
    /// Candles.
    Candles,
}

impl Table {
    /// Every table, in channel order.
    pub const ALL: [Table; 4] = [Table::Book, Table::Bbo, Table::Trades, Table::Candles];

    /// The channel's name, as the CLI and the SDK spell it.
    pub fn name(self) -> &'static str {
        match self {
            Table::Book => "book",
            Table::Bbo => "bbo",
            Table::Trades => "trades",
            Table::Candles => "candles",
        }
    }

    /// The channel's number on the wire.
    pub fn channel(self) -> i32 {
        match self {
            Table::Book => pb::Channel::Book as i32,
            Table::Bbo => pb::Channel::Bbo as i32,
            Table::Trades => pb::Channel::Trades as i32,
            Table::Candles => pb::Channel::Candles as i32,
        }
    }

    /// The table of a wire channel, if it has one.
    pub fn of_channel(channel: i32) -> Option<Table> {
        Table::ALL.into_iter().find(|t| t.channel() == channel)
    }

    /// The table's schema.
    pub fn schema(self) -> SchemaRef {
        let price = || DataType::Decimal128(38, 9);
        let time = || DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into()));
        let label = || DataType::Dictionary(Box::new(DataType::Int8), Box::new(DataType::Utf8));
        let mut fields = vec![
            Field::new(
                "instrument",
                DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
                false,
            ),
            Field::new("sequence", DataType::UInt64, false),
            Field::new("exchange_time", time(), false),
            Field::new("receive_time", time(), false),
            Field::new("publish_time", time(), false),
        ];
        let own: Vec<Field> = match self {
            Table::Trades => vec![
                Field::new("price", price(), true),
                Field::new("qty", price(), true),
                Field::new("aggressor", label(), true),
                Field::new("trade_id", DataType::Utf8, true),
            ],
            Table::Book => vec![
                Field::new("side", label(), true),
                Field::new("price", price(), true),
                Field::new("qty", price(), true),
                Field::new("is_snapshot", DataType::Boolean, false),
                Field::new("resync", DataType::Boolean, false),
            ],
            Table::Bbo => vec![
                Field::new("bid_price", price(), true),
                Field::new("bid_qty", price(), true),
                Field::new("ask_price", price(), true),
                Field::new("ask_qty", price(), true),
            ],
            Table::Candles => vec![
                Field::new("interval", label(), true),
                Field::new("open_time", time(), true),
                Field::new("open", price(), true),
                Field::new("high", price(), true),
                Field::new("low", price(), true),
                Field::new("close", price(), true),
                Field::new("volume", price(), true),
                Field::new("trades", DataType::UInt64, true),
            ],
        };
        fields.extend(own);
        fields.extend([
            Field::new("status", label(), true),
            Field::new("missed", DataType::UInt64, true),
            Field::new("detail", DataType::Utf8, true),
        ]);
        Arc::new(Schema::new(fields))
    }
}

/// A decimal from raw units, or an error if `decimal128(38, 9)` cannot hold it.
fn decimal(units: i128, what: &str) -> Result<i128, String> {
    if units.unsigned_abs() >= DECIMAL_LIMIT as u128 {
        return Err(format!(
            "{what} of {units} units (10⁻⁹) is beyond decimal128(38, 9), which holds less than 10³⁸"
        ));
    }
    Ok(units)
}

fn time(nanos: u64, what: &str) -> Result<i64, String> {
    i64::try_from(nanos).map_err(|_| format!("{what} {nanos} ns is beyond timestamp[ns]"))
}

fn decimal_builder() -> Decimal128Builder {
    Decimal128Builder::with_capacity(CAPACITY)
        .with_precision_and_scale(38, 9)
        .expect("38, 9 is a valid decimal128")
}

fn time_builder() -> TimestampNanosecondBuilder {
    TimestampNanosecondBuilder::with_capacity(CAPACITY).with_timezone("UTC")
}

/// The columns every table shares.
struct Common {
    instrument: StringDictionaryBuilder<Int32Type>,
    sequence: UInt64Builder,
    exchange_time: TimestampNanosecondBuilder,
    receive_time: TimestampNanosecondBuilder,
    publish_time: TimestampNanosecondBuilder,
    status: StringDictionaryBuilder<Int8Type>,
    missed: UInt64Builder,
    detail: StringBuilder,
}

impl Common {
    fn new() -> Common {
        Common {
            instrument: StringDictionaryBuilder::new(),
            sequence: UInt64Builder::with_capacity(CAPACITY),
            exchange_time: time_builder(),
            receive_time: time_builder(),
            publish_time: time_builder(),
            status: StringDictionaryBuilder::new(),
            missed: UInt64Builder::with_capacity(CAPACITY),
            detail: StringBuilder::new(),
        }
    }

    /// The event's times, checked before any of its rows is appended.
    fn times(e: &pb::Event) -> Result<[i64; 3], String> {
        Ok([
            time(e.exchange_time, "exchange_time")?,
            time(e.receive_time, "receive_time")?,
            time(e.publish_time, "publish_time")?,
        ])
    }

    fn row(&mut self, e: &pb::Event, times: [i64; 3], status: Option<&Status>) {
        self.instrument.append_value(&e.instrument);
        self.sequence.append_value(e.sequence);
        self.exchange_time.append_value(times[0]);
        self.receive_time.append_value(times[1]);
        self.publish_time.append_value(times[2]);
        match status {
            Some(s) => {
                self.status.append_value(s.kind.name());
                self.missed.append_value(s.missed);
                self.detail.append_value(&s.detail);
            }
            None => {
                self.status.append_null();
                self.missed.append_null();
                self.detail.append_null();
            }
        }
    }

    fn finish_head(&mut self) -> Vec<ArrayRef> {
        vec![
            Arc::new(self.instrument.finish()),
            Arc::new(self.sequence.finish()),
            Arc::new(self.exchange_time.finish()),
            Arc::new(self.receive_time.finish()),
            Arc::new(self.publish_time.finish()),
        ]
    }

    fn finish_tail(&mut self) -> Vec<ArrayRef> {
        vec![
            Arc::new(self.status.finish()),
            Arc::new(self.missed.finish()),
            Arc::new(self.detail.finish()),
        ]
    }
}

/// One table's rows, gathered event by event and taken as record batches.
pub struct TableBuilder {
    table: Table,
    schema: SchemaRef,
    rows: Rows,
}

impl TableBuilder {
    /// An empty table.
    pub fn new(table: Table) -> TableBuilder {
        TableBuilder {
            table,
            schema: table.schema(),
            rows: Rows::new(table),
        }
    }

    /// Which table it is.
    pub fn table(&self) -> Table {
        self.table
    }

    /// Its schema.
    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// Rows gathered since the last [`TableBuilder::finish`].
    pub fn len(&self) -> usize {
        self.rows.len
    }

    /// True when no row is gathered.
    pub fn is_empty(&self) -> bool {
        self.rows.len == 0
    }

    /// Adds an event's rows: all of them, or none if a value does not fit.
    pub fn push(&mut self, event: &pb::Event) -> Result<(), ExportError> {
        self.rows.push(event).map_err(|what| ExportError {
            instrument: event.instrument.clone(),
            sequence: event.sequence,
            what,
        })
    }

    /// The rows gathered, as one record batch; the builder starts empty again.
    pub fn finish(&mut self) -> RecordBatch {
        let columns = self.rows.finish();
        RecordBatch::try_new(self.schema.clone(), columns)
            .expect("the columns are built for the schema")
    }
}

/// One table's rows being gathered.
struct Rows {
    common: Common,
    own: Own,
    len: usize,
}

/// The columns of one table alone.
enum Own {
    Trades {
        price: Decimal128Builder,
        qty: Decimal128Builder,
        aggressor: StringDictionaryBuilder<Int8Type>,
        trade_id: StringBuilder,
    },
    Book {
        side: StringDictionaryBuilder<Int8Type>,
        price: Decimal128Builder,
        qty: Decimal128Builder,
        is_snapshot: BooleanBuilder,
        resync: BooleanBuilder,
    },
    Bbo {
        bid_price: Decimal128Builder,
        bid_qty: Decimal128Builder,
        ask_price: Decimal128Builder,
        ask_qty: Decimal128Builder,
    },
    Candles {
        interval: StringDictionaryBuilder<Int8Type>,
        open_time: TimestampNanosecondBuilder,
        prices: Box<[Decimal128Builder; 5]>,
        trades: UInt64Builder,
    },
}

impl Rows {
    fn new(table: Table) -> Rows {
        let own = match table {
            Table::Trades => Own::Trades {
                price: decimal_builder(),
                qty: decimal_builder(),
                aggressor: StringDictionaryBuilder::new(),
                trade_id: StringBuilder::new(),
            },
            Table::Book => Own::Book {
                side: StringDictionaryBuilder::new(),
                price: decimal_builder(),
                qty: decimal_builder(),
                is_snapshot: BooleanBuilder::with_capacity(CAPACITY),
                resync: BooleanBuilder::with_capacity(CAPACITY),
            },
            Table::Bbo => Own::Bbo {
                bid_price: decimal_builder(),
                bid_qty: decimal_builder(),
                ask_price: decimal_builder(),
                ask_qty: decimal_builder(),
            },
            Table::Candles => Own::Candles {
                interval: StringDictionaryBuilder::new(),
                open_time: time_builder(),
                prices: Box::new(std::array::from_fn(|_| decimal_builder())),
                trades: UInt64Builder::with_capacity(CAPACITY),
            },
        };
        Rows {
            common: Common::new(),
            own,
            len: 0,
        }
    }

    /// Appends the event's rows: all of them, or none if a value does not fit.
    fn push(&mut self, e: &pb::Event) -> Result<(), String> {
        let body = body_from_pb(e).map_err(|err| err.to_string())?;
        let times = Common::times(e)?;
        if let Some(EventBody::Status(status)) = &body {
            self.common.row(e, times, Some(status));
            self.own.append_nulls();
            self.len += 1;
            return Ok(());
        }
        match (&mut self.own, body) {
            (
                Own::Trades {
                    price,
                    qty,
                    aggressor,
                    trade_id,
                },
                Some(EventBody::Trade(t)),
            ) => {
                let q = decimal(t.qty.units(), "quantity")?;
                self.common.row(e, times, None);
                price.append_value(t.price.units().into());
                qty.append_value(q);
                match t.aggressor {
                    Aggressor::Buy => aggressor.append_value("buy"),
                    Aggressor::Sell => aggressor.append_value("sell"),
                    Aggressor::Unknown => aggressor.append_null(),
                }
                trade_id.append_value(&t.trade_id);
                self.len += 1;
            }
            (
                Own::Book {
                    side,
                    price,
                    qty,
                    is_snapshot,
                    resync,
                },
                Some(body @ (EventBody::Snapshot(_) | EventBody::Delta(_))),
            ) => {
                let (changes, snapshot, resynced): (Vec<(Side, Level)>, bool, bool) = match body {
                    EventBody::Snapshot(s) => (
                        s.bids
                            .iter()
                            .map(|l| (Side::Bid, *l))
                            .chain(s.asks.iter().map(|l| (Side::Ask, *l)))
                            .collect(),
                        true,
                        s.kind == SnapshotKind::Resync,
                    ),
                    EventBody::Delta(d) => (
                        d.changes
                            .iter()
                            .map(|c| {
                                (
                                    c.side,
                                    Level {
                                        price: c.price,
                                        qty: c.qty,
                                    },
                                )
                            })
                            .collect(),
                        false,
                        false,
                    ),
                    _ => unreachable!("matched above"),
                };
                for (_, level) in &changes {
                    decimal(level.qty.units(), "quantity")?;
                }
                if changes.is_empty() {
                    // An empty book is still a snapshot: one row without a level.
                    self.common.row(e, times, None);
                    side.append_null();
                    price.append_null();
                    qty.append_null();
                    is_snapshot.append_value(snapshot);
                    resync.append_value(resynced);
                    self.len += 1;
                }
                for (s, level) in changes {
                    self.common.row(e, times, None);
                    side.append_value(if s == Side::Bid { "bid" } else { "ask" });
                    price.append_value(level.price.units().into());
                    qty.append_value(level.qty.units());
                    is_snapshot.append_value(snapshot);
                    resync.append_value(resynced);
                    self.len += 1;
                }
            }
            (
                Own::Bbo {
                    bid_price,
                    bid_qty,
                    ask_price,
                    ask_qty,
                },
                Some(EventBody::Bbo(b)),
            ) => {
                for level in [b.bid, b.ask].iter().flatten() {
                    decimal(level.qty.units(), "quantity")?;
                }
                self.common.row(e, times, None);
                for (level, price, qty) in
                    [(b.bid, bid_price, bid_qty), (b.ask, ask_price, ask_qty)]
                {
                    match level {
                        Some(l) => {
                            price.append_value(l.price.units().into());
                            qty.append_value(l.qty.units());
                        }
                        None => {
                            price.append_null();
                            qty.append_null();
                        }
                    }
                }
                self.len += 1;
            }
            (
                Own::Candles {
                    interval,
                    open_time,
                    prices,
                    trades,
                },
                Some(EventBody::Candle(c)),
            ) => {
                let volume = decimal(c.volume.units(), "volume")?;
                let opened = time(c.open_time.0, "open_time")?;
                self.common.row(e, times, None);
                interval.append_value(match c.interval {
                    CandleInterval::Second1 => "1s",
                    CandleInterval::Minute1 => "1m",
                });
                open_time.append_value(opened);
                for (builder, value) in prices.iter_mut().zip([
                    c.open.units().into(),
                    c.high.units().into(),
                    c.low.units().into(),
                    c.close.units().into(),
                    volume,
                ]) {
                    builder.append_value(value);
                }
                trades.append_value(c.trades);
                self.len += 1;
            }
            (_, None) => {}
            (_, Some(_)) => return Err("an event of another channel's kind in the channel".into()),
        }
        Ok(())
    }

    fn finish(&mut self) -> Vec<ArrayRef> {
        self.len = 0;
        let mut columns = self.common.finish_head();
        match &mut self.own {
            Own::Trades {
                price,
                qty,
                aggressor,
                trade_id,
            } => columns.extend([
                Arc::new(price.finish()) as ArrayRef,
                Arc::new(qty.finish()),
                Arc::new(aggressor.finish()),
                Arc::new(trade_id.finish()),
            ]),
            Own::Book {
                side,
                price,
                qty,
                is_snapshot,
                resync,
            } => columns.extend([
                Arc::new(side.finish()) as ArrayRef,
                Arc::new(price.finish()),
                Arc::new(qty.finish()),
                Arc::new(is_snapshot.finish()),
                Arc::new(resync.finish()),
            ]),
            Own::Bbo {
                bid_price,
                bid_qty,
                ask_price,
                ask_qty,
            } => columns.extend([
                Arc::new(bid_price.finish()) as ArrayRef,
                Arc::new(bid_qty.finish()),
                Arc::new(ask_price.finish()),
                Arc::new(ask_qty.finish()),
            ]),
            Own::Candles {
                interval,
                open_time,
                prices,
                trades,
            } => {
                columns.push(Arc::new(interval.finish()));
                columns.push(Arc::new(open_time.finish()));
                columns.extend(prices.iter_mut().map(|p| Arc::new(p.finish()) as ArrayRef));
                columns.push(Arc::new(trades.finish()));
            }
        }
        columns.extend(self.common.finish_tail());
        columns
    }
}

impl Own {
    /// A status row's table columns: all null (a book row's flags false).
    fn append_nulls(&mut self) {
        match self {
            Own::Trades {
                price,
                qty,
                aggressor,
                trade_id,
            } => {
                price.append_null();
                qty.append_null();
                aggressor.append_null();
                trade_id.append_null();
            }
            Own::Book {
                side,
                price,
                qty,
                is_snapshot,
                resync,
            } => {
                side.append_null();
                price.append_null();
                qty.append_null();
                is_snapshot.append_value(false);
                resync.append_value(false);
            }
            Own::Bbo {
                bid_price,
                bid_qty,
                ask_price,
                ask_qty,
            } => {
                for b in [bid_price, bid_qty, ask_price, ask_qty] {
                    b.append_null();
                }
            }
            Own::Candles {
                interval,
                open_time,
                prices,
                trades,
            } => {
                interval.append_null();
                open_time.append_null();
                for p in prices.iter_mut() {
                    p.append_null();
                }
                trades.append_null();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_hold_less_than_ten_to_the_38_units() {
        assert_eq!(decimal(DECIMAL_LIMIT - 1, "q").unwrap(), DECIMAL_LIMIT - 1);
        assert_eq!(
            decimal(-(DECIMAL_LIMIT - 1), "q").unwrap(),
            -(DECIMAL_LIMIT - 1)
        );
        assert_eq!(
            decimal(DECIMAL_LIMIT, "quantity").unwrap_err(),
            "quantity of 100000000000000000000000000000000000000 units (10⁻⁹) is beyond decimal128(38, 9), which holds less than 10³⁸"
        );
        assert!(decimal(i128::MIN, "q").is_err());
    }

    #[test]
    fn an_event_that_does_not_fit_adds_no_row_and_is_named() {
        let level = |price, qty: u128| pb::Level {
            price,
            qty: qty as u64,
            qty_hi: (qty >> 64) as u64,
        };
        let event = pb::Event {
            instrument: "X:Y".into(),
            channel: pb::Channel::Book as i32,
            sequence: 7,
            body: Some(pb::event::Body::Delta(pb::BookDelta {
                bids: vec![level(1, 5)],
                asks: vec![level(2, 10u128.pow(38))],
            })),
            ..Default::default()
        };
        let mut book = TableBuilder::new(Table::Book);
        let error = book.push(&event).unwrap_err();
        assert_eq!(
            error.to_string(),
            "X:Y sequence 7: quantity of 100000000000000000000000000000000000000 units (10⁻⁹) is beyond decimal128(38, 9), which holds less than 10³⁸"
        );
        assert!(book.is_empty());
        let mut fits = event.clone();
        fits.body = Some(pb::event::Body::Delta(pb::BookDelta {
            bids: vec![level(1, 5)],
            asks: vec![level(2, 10u128.pow(38) - 1)],
        }));
        book.push(&fits).unwrap();
        assert_eq!(book.len(), 2);
        let batch = book.finish();
        assert_eq!(batch.num_rows(), 2);
        assert_eq!(batch.schema(), Table::Book.schema());
        assert!(book.is_empty());
    }
}
