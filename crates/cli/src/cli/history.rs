//! The history commands: `history` exports stored events as JSON lines or CSV (to stdout
//! or `--out`, with a progress line on stderr while it runs), `book-at` prints a book as
//! it was, `replay` prints a replay as `subscribe` prints live events. Times are RFC 3339
//! (`2026-11-28T05:00:00Z`, fractions and offsets allowed) or Unix nanoseconds.

use std::io::{BufWriter, IsTerminal, Write};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use raven_arrow::Table;
use raven_model::{EventBody, Side, UnixNanos};
use raven_proto::convert::body_from_pb;
use raven_proto::pb::{self, history_client::HistoryClient};

use super::client::{Conn, channel, ok_if_pipe_closed, print_stream, status_error};
use super::parquet::{self, ParquetExport};
use super::render::{Printer, print_snapshot};
use super::{BookAtArgs, ExportFormat, HistoryArgs, ReplayArgs, ServerArg};

async fn connect(server: &ServerArg) -> anyhow::Result<HistoryClient<Conn>> {
    Ok(HistoryClient::new(channel(server).await?).max_decoding_message_size(64 << 20))
}

/// Parses `--from`, `--to` and `--at`: Unix nanoseconds, or RFC 3339.
pub(super) fn parse_time(text: &str) -> Result<u64, String> {
    UnixNanos::parse(text).map(UnixNanos::as_u64)
}

fn channels(args: &[super::ChannelArg]) -> Vec<i32> {
    args.iter().map(|&c| super::channel_pb(c) as i32).collect()
}

pub(super) async fn history(args: HistoryArgs) -> anyhow::Result<()> {
    let mut client = connect(&args.server).await?;
    let request = pb::HistoryRequest {
        instruments: args.instruments.clone(),
        channels: channels(&args.channel),
        from: args.from.unwrap_or(0),
        to: args.to.unwrap_or(0),
        limit: args.limit,
    };
    let mut stream = client
        .query(request.clone())
        .await
        .map_err(status_error)?
        .into_inner();
    // Progress goes to stderr when someone watches it, or when stdout is the export.
    let show_progress = args.out.is_some() || std::io::stderr().is_terminal();
    let mut progress = Progress::new(show_progress, &request);
    let mut exported = 0u64;
    if let ExportFormat::Parquet = args.format {
        let out = args
            .out
            .as_deref()
            .expect("clap requires --out with parquet");
        let tables = tables(&args.channel);
        let paths = parquet::paths(out, &tables);
        let mut export = ParquetExport::create(&tables, &paths)?;
        while let Some(message) = stream.message().await.map_err(status_error)? {
            for event in &message.events {
                export.push(event)?;
                exported += 1;
                progress.update(exported, event.publish_time);
            }
        }
        let rows = export.finish()?;
        progress.finish(exported);
        if progress.show {
            for (path, rows) in paths.iter().zip(rows) {
                eprintln!("{}: {rows} rows", path.display());
            }
        }
        return Ok(());
    }
    let out: Box<dyn Write> = match &args.out {
        Some(path) => Box::new(
            std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))?,
        ),
        None => Box::new(std::io::stdout().lock()),
    };
    let mut out = BufWriter::new(out);
    let mut printer = Printer::new(true);
    if matches!(args.format, ExportFormat::Csv) {
        ok_if_pipe_closed(writeln!(out, "{CSV_HEADER}"))?;
    }
    while let Some(message) = stream.message().await.map_err(status_error)? {
        for event in &message.events {
            let written = match args.format {
                ExportFormat::Csv => write_csv(&mut out, event),
                _ => printer.print(&mut out, event).map(|_| ()),
            };
            ok_if_pipe_closed(written)?;
            exported += 1;
            progress.update(exported, event.publish_time);
        }
    }
    ok_if_pipe_closed(out.flush())?;
    progress.finish(exported);
    Ok(())
}

/// The Parquet tables of `--channel` (every channel's when none is given).
fn tables(args: &[super::ChannelArg]) -> Vec<Table> {
    if args.is_empty() {
        return Table::ALL.to_vec();
    }
    Table::ALL
        .into_iter()
        .filter(|t| {
            args.iter().any(|&c| {
                matches!(
                    (c, t),
                    (super::ChannelArg::Book, Table::Book)
                        | (super::ChannelArg::Bbo, Table::Bbo)
                        | (super::ChannelArg::Trades, Table::Trades)
                        | (super::ChannelArg::Candles, Table::Candles)
                )
            })
        })
        .collect()
}

const CSV_HEADER: &str = "instrument,channel,sequence,exchange_time,receive_time,publish_time,type,side,price,qty,detail";

/// One CSV row per level (snapshot, delta, BBO side) or per trade, candle or status.
fn write_csv(out: &mut impl Write, e: &pb::Event) -> std::io::Result<()> {
    let body =
        body_from_pb(e).map_err(|err| std::io::Error::new(std::io::ErrorKind::InvalidData, err))?;
    let channel = match e.channel {
        1 => "book",
        2 => "bbo",
        3 => "trades",
        4 => "candles",
        _ => "",
    };
    let mut row = |kind: &str, side: &str, price: String, qty: String, detail: &str| {
        // Only `detail` can hold commas or quotes.
        let detail = if detail.contains([',', '"', '\n']) {
            format!("\"{}\"", detail.replace('"', "\"\""))
        } else {
            detail.to_owned()
        };
        writeln!(
            out,
            "{},{channel},{},{},{},{},{kind},{side},{price},{qty},{detail}",
            e.instrument, e.sequence, e.exchange_time, e.receive_time, e.publish_time
        )
    };
    let side_name = |s: Side| if s == Side::Bid { "bid" } else { "ask" };
    match body {
        Some(EventBody::Snapshot(s)) => {
            let kind = if s.kind == raven_model::SnapshotKind::Resync {
                "resync"
            } else {
                "snapshot"
            };
            for (side, levels) in [("bid", &s.bids), ("ask", &s.asks)] {
                for l in levels {
                    row(kind, side, l.price.to_string(), l.qty.to_string(), "")?;
                }
            }
            Ok(())
        }
        Some(EventBody::Delta(d)) => {
            for c in &d.changes {
                row(
                    "delta",
                    side_name(c.side),
                    c.price.to_string(),
                    c.qty.to_string(),
                    "",
                )?;
            }
            Ok(())
        }
        Some(EventBody::Trade(t)) => {
            let aggressor = match t.aggressor {
                raven_model::Aggressor::Buy => "buy",
                raven_model::Aggressor::Sell => "sell",
                raven_model::Aggressor::Unknown => "",
            };
            row(
                "trade",
                aggressor,
                t.price.to_string(),
                t.qty.to_string(),
                &t.trade_id,
            )
        }
        Some(EventBody::Bbo(b)) => {
            for (side, level) in [("bid", b.bid), ("ask", b.ask)] {
                match level {
                    Some(l) => row("bbo", side, l.price.to_string(), l.qty.to_string(), "")?,
                    None => row("bbo", side, String::new(), String::new(), "empty")?,
                }
            }
            Ok(())
        }
        Some(EventBody::Candle(c)) => {
            let interval = match c.interval {
                raven_model::CandleInterval::Second1 => "1s",
                raven_model::CandleInterval::Minute1 => "1m",
            };
            let detail = format!(
                "interval={interval};open_time={};open={};high={};low={};trades={}",
                c.open_time.0, c.open, c.high, c.low, c.trades
            );
            row(
                "candle",
                "",
                c.close.to_string(),
                c.volume.to_string(),
                &detail,
            )
        }
        Some(EventBody::Status(s)) => row("status", "", String::new(), String::new(), &s.detail),
        None => Ok(()),
    }
}

/// A progress line on stderr, redrawn at most every 200 ms: events so far and, when the
/// query has a time range, how far through it the export is.
struct Progress {
    show: bool,
    range: Option<(u64, u64)>,
    last: Instant,
}

impl Progress {
    fn new(show: bool, request: &pb::HistoryRequest) -> Progress {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let to = if request.to == 0 { now } else { request.to };
        Progress {
            show,
            range: (request.from > 0 && to > request.from).then_some((request.from, to)),
            last: Instant::now(),
        }
    }

    fn update(&mut self, exported: u64, at: u64) {
        if !self.show || self.last.elapsed() < Duration::from_millis(200) {
            return;
        }
        self.last = Instant::now();
        match self.range {
            Some((from, to)) => {
                let done = at.saturating_sub(from) as f64 / (to - from) as f64;
                let width = 30;
                let filled = ((done.min(1.0)) * width as f64) as usize;
                eprint!(
                    "\r[{}{}] {:>3.0}%  {exported} events",
                    "#".repeat(filled),
                    " ".repeat(width - filled),
                    done.min(1.0) * 100.0
                );
            }
            None => eprint!("\r{exported} events"),
        }
    }

    fn finish(&self, exported: u64) {
        if self.show {
            eprintln!("\rexported {exported} events{}", " ".repeat(30));
        }
    }
}

pub(super) async fn book_at(args: BookAtArgs) -> anyhow::Result<()> {
    let mut client = connect(&args.server).await?;
    let event = client
        .book_at(pb::BookAtRequest {
            instrument: args.instrument,
            at: args.at,
            depth: args.depth,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    ok_if_pipe_closed(print_snapshot(
        &mut std::io::stdout().lock(),
        &event,
        args.json,
    ))
}

pub(super) async fn replay(args: ReplayArgs) -> anyhow::Result<()> {
    let request = pb::ReplayRequest {
        query: Some(pb::HistoryRequest {
            instruments: args.instruments,
            channels: channels(&args.channel),
            from: args.from.unwrap_or(0),
            to: args.to.unwrap_or(0),
            limit: args.limit,
        }),
        speed: args.speed,
    };
    if args.stats {
        let (events, elapsed) = raven_bench::replay_rate(&args.server.server, request)
            .await
            .map_err(|e| match e {
                raven_bench::BenchError::Call(status) => status_error(status),
                other => anyhow!(other),
            })?;
        println!(
            "replayed {events} events in {:.3} s: {:.0} events/s",
            elapsed.as_secs_f64(),
            events as f64 / elapsed.as_secs_f64().max(1e-9)
        );
        return Ok(());
    }
    let mut client = connect(&args.server).await?;
    let mut stream = client
        .replay(request)
        .await
        .map_err(status_error)?
        .into_inner();
    print_stream(&mut stream, args.json, None).await?;
    Ok(())
}
