//! How the client commands print: an aligned ladder for books, a tape for trades, one
//! line per event otherwise; or one JSON object per line with prices and quantities as
//! exact decimal strings (never floats).

use std::collections::HashMap;
use std::io::{self, Write};

use raven_book::BookFollower;
use raven_model::{Aggressor, EventBody, Level, Price};
use raven_proto::convert::{body_from_pb, level_from_pb};
use raven_proto::json;
use raven_proto::pb;

/// What a printed wire event was.
pub enum Printed {
    /// A data event.
    Event,
    /// A marker (snapshot end, heartbeat ack): not counted.
    Marker,
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
        let invalid = |e| io::Error::new(io::ErrorKind::InvalidData, e);
        if self.json {
            let Some(line) = json::event(event).map_err(invalid)? else {
                return Ok(Printed::Marker);
            };
            writeln!(out, "{line}")?;
            let marker = matches!(
                event.body,
                Some(pb::event::Body::SnapshotEnd(_) | pb::event::Body::HistoryEnd(_))
            );
            return Ok(if marker {
                Printed::Marker
            } else {
                Printed::Event
            });
        }
        let Some(body) = body_from_pb(event).map_err(invalid)? else {
            return Ok(Printed::Marker);
        };
        self.print_human(out, event, &body)?;
        Ok(Printed::Event)
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
        let line = json::snapshot(e).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
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
            writeln!(out, "{}", json::instrument(i))?;
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
