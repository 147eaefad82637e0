//! How the client commands print: an aligned ladder for books, a tape for trades, one
//! line per event otherwise; or one JSON object per line with prices and quantities as
//! exact decimal strings (never floats).

use std::collections::HashMap;
use std::io::{self, Write};

use raven_book::BookFollower;
use raven_model::{Aggressor, EventBody, Level, Price, Side};
use raven_proto::convert::{body_from_pb, level_from_pb};
use raven_proto::pb;
use serde_json::{Value, json};

/// What a printed wire event was.
pub enum Printed {
    /// A data event.
    Event,
    /// A marker (snapshot end, heartbeat ack): not counted.
    Marker,
}

fn levels_json(levels: &[Level]) -> Value {
    Value::Array(
        levels
            .iter()
            .map(|l| json!([l.price.to_string(), l.qty.to_string()]))
            .collect(),
    )
}

fn level_json(level: Option<Level>) -> Value {
    level.map_or(
        Value::Null,
        |l| json!({"price": l.price.to_string(), "qty": l.qty.to_string()}),
    )
}

fn channel_name(channel: i32) -> &'static str {
    match pb::Channel::try_from(channel) {
        Ok(pb::Channel::Book) => "book",
        Ok(pb::Channel::Bbo) => "bbo",
        Ok(pb::Channel::Trades) => "trades",
        Ok(pb::Channel::Candles) => "candles",
        _ => "",
    }
}

/// `HH:MM:SS.mmm` UTC.
fn clock(t: u64) -> String {
    let ms = t / 1_000_000;
    let s = ms / 1000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        s / 3600 % 24,
        s / 60 % 60,
        s % 60,
        ms % 1000
    )
}

fn top(level: Option<&Level>) -> String {
    level.map_or_else(|| "-".to_owned(), |l| format!("{} x {}", l.price, l.qty))
}

/// Prints a stream of events, keeping a local book per instrument for the human view.
pub struct Printer {
    json: bool,
    books: HashMap<String, BookFollower>,
}

impl Printer {
    /// A printer for `--json` or human output.
    pub fn new(json: bool) -> Printer {
        Printer {
            json,
            books: HashMap::new(),
        }
    }

    /// Prints one wire event.
    pub fn print(&mut self, out: &mut impl Write, event: &pb::Event) -> io::Result<Printed> {
        let body =
            body_from_pb(event).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let Some(body) = body else {
            let marker = match event.body {
                Some(pb::event::Body::SnapshotEnd(_)) => Some("snapshot_end"),
                Some(pb::event::Body::HistoryEnd(_)) => Some("history_end"),
                _ => None,
            };
            if let (true, Some(marker)) = (self.json, marker) {
                let line = json!({
                    "instrument": event.instrument,
                    "channel": channel_name(event.channel),
                    "sequence": event.sequence,
                    "type": marker,
                });
                writeln!(out, "{line}")?;
            }
            return Ok(Printed::Marker);
        };
        if self.json {
            self.print_json(out, event, &body)?;
        } else {
            self.print_human(out, event, &body)?;
        }
        Ok(Printed::Event)
    }

    fn print_json(&self, out: &mut impl Write, e: &pb::Event, body: &EventBody) -> io::Result<()> {
        let mut line = json!({
            "instrument": e.instrument,
            "channel": channel_name(e.channel),
            "sequence": e.sequence,
            "exchange_time": e.exchange_time,
            "receive_time": e.receive_time,
            "publish_time": e.publish_time,
        });
        let fields = match body {
            EventBody::Snapshot(s) => json!({
                "type": "snapshot",
                "resync": s.kind == raven_model::SnapshotKind::Resync,
                "bids": levels_json(&s.bids),
                "asks": levels_json(&s.asks),
            }),
            EventBody::Delta(d) => {
                let side = |side| {
                    let levels: Vec<Level> = d
                        .changes
                        .iter()
                        .filter(|c| c.side == side)
                        .map(|c| Level {
                            price: c.price,
                            qty: c.qty,
                        })
                        .collect();
                    levels_json(&levels)
                };
                json!({"type": "delta", "bids": side(Side::Bid), "asks": side(Side::Ask)})
            }
            EventBody::Trade(t) => json!({
                "type": "trade",
                "price": t.price.to_string(),
                "qty": t.qty.to_string(),
                "aggressor": match t.aggressor { Aggressor::Buy => "buy", Aggressor::Sell => "sell", Aggressor::Unknown => "unknown" },
                "trade_id": t.trade_id,
            }),
            EventBody::Bbo(b) => {
                json!({"type": "bbo", "bid": level_json(b.bid), "ask": level_json(b.ask)})
            }
            EventBody::Candle(c) => json!({
                "type": "candle",
                "interval": match c.interval { raven_model::CandleInterval::Second1 => "1s", raven_model::CandleInterval::Minute1 => "1m" },
                "open_time": c.open_time.0,
                "open": c.open.to_string(),
                "high": c.high.to_string(),
                "low": c.low.to_string(),
                "close": c.close.to_string(),
                "volume": c.volume.to_string(),
                "trades": c.trades,
            }),
            EventBody::Status(s) => json!({
                "type": "status",
                "kind": s.kind.name(),
                "missed": s.missed,
                "detail": s.detail,
            }),
        };
        if let (Value::Object(line), Value::Object(fields)) = (&mut line, fields) {
            line.extend(fields);
        }
        writeln!(out, "{line}")
    }

    fn print_human(
        &mut self,
        out: &mut impl Write,
        e: &pb::Event,
        body: &EventBody,
    ) -> io::Result<()> {
        let name = &e.instrument;
        let seq = e.sequence;
        // Book-channel events (statuses too: they take a sequence) keep the local book.
        let followed = match body {
            EventBody::Snapshot(_) | EventBody::Delta(_) | EventBody::Status(_) => {
                Some(self.books.entry(name.clone()).or_default().apply(seq, body))
            }
            _ => None,
        };
        match body {
            EventBody::Snapshot(s) => {
                // The server only sends valid books; if one is not, say so and go on.
                if let Some(Err(err)) = followed {
                    return writeln!(out, "{name:<16} #{seq:<8} invalid snapshot: {err}");
                }
                let label = if s.kind == raven_model::SnapshotKind::Resync {
                    "RESYNC"
                } else {
                    "SNAPSHOT"
                };
                writeln!(
                    out,
                    "{name:<16} #{seq:<8} {label:<8} {}x{} levels  bid {}  ask {}",
                    s.bids.len(),
                    s.asks.len(),
                    top(s.bids.first()),
                    top(s.asks.first())
                )
            }
            EventBody::Delta(d) => {
                if let Some(Err(err)) = followed {
                    return writeln!(out, "{name:<16} #{seq:<8} delta does not apply: {err}");
                }
                let Some(book) = self.books.get(name).and_then(BookFollower::book) else {
                    return writeln!(
                        out,
                        "{name:<16} #{seq:<8} delta    (waiting for a snapshot)"
                    );
                };
                writeln!(
                    out,
                    "{name:<16} #{seq:<8} delta    {:>2} changes  bid {}  ask {}",
                    d.changes.len(),
                    top(book.best_bid().as_ref()),
                    top(book.best_ask().as_ref())
                )
            }
            EventBody::Trade(t) => {
                let side = match t.aggressor {
                    Aggressor::Buy => "BUY ",
                    Aggressor::Sell => "SELL",
                    Aggressor::Unknown => "?   ",
                };
                writeln!(
                    out,
                    "{}  {name:<16} {side} {:>18} @ {:<16} #{}",
                    clock(e.exchange_time),
                    t.qty.to_string(),
                    t.price.to_string(),
                    t.trade_id
                )
            }
            EventBody::Bbo(b) => {
                let spread = match (b.bid, b.ask) {
                    (Some(bid), Some(ask)) => ask
                        .price
                        .checked_sub(bid.price)
                        .map_or_else(String::new, |s| format!("  spread {s}")),
                    _ => String::new(),
                };
                writeln!(
                    out,
                    "{name:<16} #{seq:<8} bid {}  ask {}{spread}",
                    top(b.bid.as_ref()),
                    top(b.ask.as_ref())
                )
            }
            EventBody::Candle(c) => {
                let interval = match c.interval {
                    raven_model::CandleInterval::Second1 => "1s",
                    raven_model::CandleInterval::Minute1 => "1m",
                };
                writeln!(
                    out,
                    "{name:<16} {interval} {}  O {}  H {}  L {}  C {}  V {}  ({} trades)",
                    clock(c.open_time.0),
                    c.open,
                    c.high,
                    c.low,
                    c.close,
                    c.volume,
                    c.trades
                )
            }
            EventBody::Status(s) => writeln!(
                out,
                "{name:<16} #{seq:<8} STATUS {}: {}",
                s.kind.name(),
                s.detail
            ),
        }
    }
}

/// Prints a `GetSnapshot` answer: a ladder with asks above bids, or JSON.
pub fn print_snapshot(out: &mut impl Write, e: &pb::Event, json: bool) -> io::Result<()> {
    let Some(pb::event::Body::Snapshot(s)) = &e.body else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "server answered without a snapshot",
        ));
    };
    let bids: Vec<Level> = s.bids.iter().map(level_from_pb).collect();
    let asks: Vec<Level> = s.asks.iter().map(level_from_pb).collect();
    if json {
        let line = json!({
            "instrument": e.instrument,
            "sequence": e.sequence,
            "exchange_time": e.exchange_time,
            "receive_time": e.receive_time,
            "publish_time": e.publish_time,
            "bids": levels_json(&bids),
            "asks": levels_json(&asks),
        });
        return writeln!(out, "{line}");
    }
    writeln!(
        out,
        "{}  sequence {}  exchange time {}",
        e.instrument,
        e.sequence,
        clock(e.exchange_time)
    )?;
    let cells = |l: &Level| (l.price.to_string(), l.qty.to_string());
    let width = |f: fn(&(String, String)) -> usize| {
        bids.iter()
            .chain(&asks)
            .map(cells)
            .map(|c| f(&c))
            .max()
            .unwrap_or(0)
    };
    let (pw, qw) = (width(|c| c.0.len()).max(5), width(|c| c.1.len()).max(7));
    writeln!(
        out,
        "{:>qw$}  {:>pw$}  {:<qw$}",
        "BID QTY", "PRICE", "ASK QTY"
    )?;
    for l in asks.iter().rev() {
        let (p, q) = cells(l);
        writeln!(out, "{:>qw$}  {p:>pw$}  {q:<qw$}", "")?;
    }
    let spread = match (bids.first(), asks.first()) {
        (Some(b), Some(a)) => a
            .price
            .checked_sub(b.price)
            .unwrap_or(Price::ZERO)
            .to_string(),
        _ => "-".to_owned(),
    };
    writeln!(out, "{:>qw$}  {:>pw$}", "", format!("spread {spread}"))?;
    for l in &bids {
        let (p, q) = cells(l);
        writeln!(out, "{q:>qw$}  {p:>pw$}")?;
    }
    Ok(())
}

/// Prints the instrument list.
pub fn print_instruments(
    out: &mut impl Write,
    list: &pb::ListInstrumentsResponse,
    json: bool,
) -> io::Result<()> {
    if !json {
        writeln!(
            out,
            "{:<24} {:<10} {:<14} TICK",
            "INSTRUMENT", "VENUE", "SYMBOL"
        )?;
    }
    for i in &list.instruments {
        let tick = Price::from_units(i.tick_size).to_string();
        if json {
            let line =
                json!({"name": i.name, "venue": i.venue, "symbol": i.symbol, "tick_size": tick});
            writeln!(out, "{line}")?;
        } else {
            writeln!(
                out,
                "{:<24} {:<10} {:<14} {tick}",
                i.name, i.venue, i.symbol
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_formats_utc_time_of_day() {
        assert_eq!(clock(0), "00:00:00.000");
        assert_eq!(
            clock((3600 * 25 + 61) * 1_000_000_000 + 5_000_000),
            "01:01:01.005"
        );
    }
}
