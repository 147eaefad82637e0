//! Clients the scenarios attach: a live watcher that measures the longest pause between
//! messages, sockets that never begin HTTP/2, HTTP/2 connections that send no request,
//! and subscribers that stop reading.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use raven_proto::pb::market_client::MarketClient;
use raven_proto::pb::{self, stream_request::Request as Req};
use raven_server::feed::sim::instrument_names;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// What a watcher saw.
#[derive(Debug, Default)]
pub struct Watched {
    /// Messages received while measuring.
    pub messages: u64,
    /// Longest time between two messages while measuring.
    pub longest_pause: Duration,
    /// Live trades: (instrument, sequence).
    pub trades: Vec<(String, u64)>,
    /// Gap statuses received (the watcher fell behind, or an edge missed events).
    pub gaps: u64,
    /// The trades those on the trade channel say were missed.
    pub trades_missed: u64,
    /// Stale statuses received (an edge heard nothing from the ingest node).
    pub stale: u64,
    /// Resync statuses received (an edge's book missed events).
    pub resyncs: u64,
    /// Whether the server said it was going away (its drain).
    pub told_going_away: bool,
}

/// A live subscriber to the book and trades of every simulated instrument.
pub struct Watcher {
    stop: oneshot::Sender<()>,
    task: JoinHandle<anyhow::Result<Watched>>,
}

/// Subscribes and starts measuring once the first live message is in.
pub async fn watch(addr: SocketAddr) -> anyhow::Result<Watcher> {
    let mut client = MarketClient::connect(format!("http://{addr}")).await?;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    for (channel, depth) in [(pb::Channel::Book, 10), (pb::Channel::Trades, 0)] {
        tx.send(pb::StreamRequest {
            request: Some(Req::Subscribe(pb::Subscribe {
                instruments: instrument_names().into_iter().map(str::to_owned).collect(),
                channel: channel as i32,
                depth,
                start: 0,
            })),
        })
        .await?;
    }
    let mut stream = client
        .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    let (stop, mut stopped) = oneshot::channel();
    let task = tokio::spawn(async move {
        let _requests = tx;
        let mut seen = Watched::default();
        let mut last: Option<Instant> = None;
        loop {
            let message = tokio::select! {
                m = stream.message() => m,
                _ = &mut stopped => break,
            };
            // The stream ends with the server (an error, or its end): what was seen stands.
            let Ok(Some(message)) = message else { break };
            let now = Instant::now();
            if let Some(last) = last {
                seen.longest_pause = seen.longest_pause.max(now - last);
            }
            last = Some(now);
            seen.messages += 1;
            for event in message.events {
                match event.body {
                    Some(pb::event::Body::Trade(_)) => {
                        seen.trades.push((event.instrument, event.sequence));
                    }
                    Some(pb::event::Body::Status(s)) if s.kind == pb::StatusKind::Gap as i32 => {
                        seen.gaps += 1;
                        if event.channel == pb::Channel::Trades as i32 {
                            seen.trades_missed += s.missed;
                        }
                    }
                    Some(pb::event::Body::Status(s)) if s.kind == pb::StatusKind::Stale as i32 => {
                        seen.stale += 1;
                    }
                    Some(pb::event::Body::Status(s)) if s.kind == pb::StatusKind::Resync as i32 => {
                        seen.resyncs += 1;
                    }
                    Some(pb::event::Body::Status(s))
                        if s.kind == pb::StatusKind::GoingAway as i32 =>
                    {
                        seen.told_going_away = true;
                    }
                    _ => {}
                }
            }
        }
        Ok(seen)
    });
    Ok(Watcher { stop, task })
}

impl Watcher {
    /// Stops measuring; what was seen.
    pub async fn finish(self) -> anyhow::Result<Watched> {
        let _ = self.stop.send(());
        self.task.await?
    }
}

/// The value of each of `names` (counters summed over their labels) in the server's
/// `/metrics` at `http`.
pub fn metrics(http: SocketAddr, names: &[&str]) -> anyhow::Result<Vec<f64>> {
    use std::io::{Read, Write};
    let mut tcp = std::net::TcpStream::connect(http)?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        tcp,
        "GET /metrics HTTP/1.1\r\nHost: {http}\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    tcp.read_to_string(&mut text)?;
    Ok(names
        .iter()
        .map(|name| {
            text.lines()
                .filter(|l| {
                    l.strip_prefix(name)
                        .is_some_and(|rest| rest.starts_with([' ', '{']))
                })
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum()
        })
        .collect())
}

/// `n` sockets connected that never send a byte.
pub async fn half_open(addr: SocketAddr, n: usize) -> anyhow::Result<Vec<TcpStream>> {
    let mut sockets = Vec::with_capacity(n);
    for _ in 0..n {
        sockets.push(TcpStream::connect(addr).await?);
    }
    Ok(sockets)
}

/// `n` HTTP/2 connections that complete their handshake and send no request; each task
/// ends when the server closes its connection.
pub async fn idle_h2(addr: SocketAddr, n: usize) -> anyhow::Result<Vec<JoinHandle<()>>> {
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let tcp = TcpStream::connect(addr).await?;
        let (client, connection) = h2::client::handshake(tcp).await?;
        tasks.push(tokio::spawn(async move {
            let _client = client;
            let _ = connection.await;
        }));
    }
    Ok(tasks)
}

/// A subscriber that subscribes to every book and trade tape and never reads: its HTTP/2
/// flow-control window fills and the server's queue for it overflows.
pub async fn stalled(addr: SocketAddr) -> anyhow::Result<impl Send> {
    let mut client = MarketClient::connect(format!("http://{addr}")).await?;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    for channel in [pb::Channel::Book, pb::Channel::Trades] {
        tx.send(pb::StreamRequest {
            request: Some(Req::Subscribe(pb::Subscribe {
                instruments: instrument_names().into_iter().map(str::to_owned).collect(),
                channel: channel as i32,
                depth: 0,
                start: 0,
            })),
        })
        .await?;
    }
    let stream = client
        .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    Ok((client, tx, stream))
}
