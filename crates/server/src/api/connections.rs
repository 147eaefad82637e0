//! The gRPC listener's connections: each accepted socket is wrapped ([`Guarded`]) so that
//! the server can cut it, taken through its TLS handshake when TLS is on (a task per
//! connection, bounded by the handshake limit; failures counted and logged once per
//! client address), and watched. hyper and tonic put no limit on a connection that
//! never completes the HTTP/2 handshake (3,000 of them held 3,000 descriptors for as long
//! as their peers liked), and their graceful shutdown waits for every connection to
//! finish, however long its client keeps it open. So:
//!
//! - a connection that has not sent the HTTP/2 preface and its first frame header within
//!   the handshake limit is closed;
//! - a connection with no request in flight for the idle limit is closed (a streaming
//!   subscription is a request in flight for as long as it lasts);
//! - [`Connections::cut_handshaking`] closes, at the start of a drain, the connections
//!   that never finished their handshake (they hold no work), and
//!   [`Connections::cut_all`] closes whatever is left when the drain's deadline passes.
//!
//! Cutting a connection makes its socket's reads and writes fail, so hyper ends the
//! connection the next time it touches it; the wrapper wakes it to make sure it does.
//! Requests in flight are counted by a tower layer ([`TrackRequests`]) that finds the
//! connection in the request's extensions (tonic puts a connection's `ConnectInfo` there)
//! and holds a count for as long as the response body lives.

mod descriptors;
mod track;

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::Stream;
use futures::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tonic::transport::server::Connected;

use super::tls::Acceptor;
use crate::net::MaybeTls;
use crate::shutdown::Shutdown;

pub use descriptors::{default_max_connections, raise_descriptor_limit};
pub use track::{TrackRequests, Tracked, TrackedBody};

/// The HTTP/2 client preface and one frame header: what a client that has begun its
/// handshake has sent.
const HANDSHAKE_BYTES: u64 = 24 + 9;

/// How long accepting pauses after it failed for want of resources.
const ACCEPT_PAUSE: Duration = Duration::from_millis(50);

/// Connections accepted (and through TLS) that tonic has not taken yet.
const ACCEPTED_QUEUE: usize = 64;

/// How many client addresses' connection counts are kept; past it those of earlier
/// seconds are forgotten (a bound against connections from many addresses).
const ATTEMPTS_TRACKED: usize = 65_536;

/// How many client addresses' TLS failures are remembered as logged; past it the memory
/// starts over (a bound against a scan from many addresses).
const TLS_LOGGED_PEERS: usize = 4096;

/// How often the watcher looks for connections past a limit.
const SWEEP_EVERY: Duration = Duration::from_millis(250);

/// How many connections may be open or opened, and how long they may stay without doing
/// their part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// From accept to the HTTP/2 preface.
    pub handshake: Duration,
    /// With no request in flight.
    pub idle: Duration,
    /// Open at once (0: no limit).
    pub max_connections: usize,
    /// New connections per second from one IP address (0: no limit).
    pub per_ip_per_s: u32,
}

/// Why a connection was closed as soon as it was accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `limits.max_connections`.
    MaxConnections,
    /// `limits.connections_per_ip_per_s`.
    PerIpRate,
}

impl Refusal {
    /// Both, in the order of [`Connections::refused`].
    pub const ALL: [Refusal; 2] = [Refusal::MaxConnections, Refusal::PerIpRate];

    /// The limit's name, as configured.
    pub fn limit(self) -> &'static str {
        match self {
            Refusal::MaxConnections => "max_connections",
            Refusal::PerIpRate => "connections_per_ip_per_s",
        }
    }
}

/// One connection's state, shared by its socket wrapper, its requests and the watcher.
#[derive(Debug)]
pub struct Conn {
    accepted: Instant,
    /// Bytes received from the client.
    received: AtomicU64,
    /// Requests whose response has not ended.
    in_flight: AtomicU64,
    /// When the connection last went idle, in ms since `accepted`.
    idle_since_ms: AtomicU64,
    cut: AtomicBool,
    reader: AtomicWaker,
    writer: AtomicWaker,
}

impl Conn {
    fn new() -> Conn {
        Conn {
            accepted: Instant::now(),
            received: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            idle_since_ms: AtomicU64::new(0),
            cut: AtomicBool::new(false),
            reader: AtomicWaker::new(),
            writer: AtomicWaker::new(),
        }
    }

    fn handshaken(&self) -> bool {
        self.received.load(Ordering::Relaxed) >= HANDSHAKE_BYTES
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::Release);
        self.reader.wake();
        self.writer.wake();
    }

    fn is_cut(&self) -> bool {
        self.cut.load(Ordering::Acquire)
    }

    /// Why the connection should go, when it should.
    fn overdue(&self, limits: &ConnectionLimits, now: Instant) -> Option<&'static str> {
        let age = now.saturating_duration_since(self.accepted);
        if !self.handshaken() {
            return (age >= limits.handshake).then_some("no HTTP/2 handshake in time");
        }
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let idle_since = Duration::from_millis(self.idle_since_ms.load(Ordering::Relaxed));
        (age.saturating_sub(idle_since) >= limits.idle).then_some("idle, no request in flight")
    }
}

/// Every open connection of the listener.
#[derive(Debug)]
pub struct Connections {
    /// Replaced whole by a reload ([`Connections::set_limits`]).
    limits: Mutex<ConnectionLimits>,
    live: Mutex<HashMap<u64, Arc<Conn>>>,
    next_id: AtomicU64,
    /// Connections closed for a limit or by a drain.
    closed_by_server: AtomicU64,
    tls_failures: AtomicU64,
    /// Client addresses whose failed handshake was logged.
    tls_logged: Mutex<HashSet<IpAddr>>,
    /// Connections closed at accept, by [`Refusal`].
    refused: [AtomicU64; 2],
    /// Per IP: the second (since `started`) of its latest connections and how many.
    attempts: Mutex<HashMap<IpAddr, (u64, u32)>>,
    started: Instant,
    /// When a refusal was last logged.
    refusal_logged: Mutex<Option<Instant>>,
}

impl Connections {
    /// No connections yet.
    pub fn new(limits: ConnectionLimits) -> Arc<Connections> {
        Arc::new(Connections {
            limits: Mutex::new(limits),
            live: Mutex::default(),
            next_id: AtomicU64::new(0),
            closed_by_server: AtomicU64::new(0),
            tls_failures: AtomicU64::new(0),
            tls_logged: Mutex::default(),
            refused: Default::default(),
            attempts: Mutex::default(),
            started: Instant::now(),
            refusal_logged: Mutex::default(),
        })
    }

    /// The limits in force.
    pub fn limits(&self) -> ConnectionLimits {
        *self.limits.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies new limits (a reload) to the connections to come, and to the open ones
    /// at the next sweep.
    pub fn set_limits(&self, limits: ConnectionLimits) {
        *self.limits.lock().unwrap_or_else(|p| p.into_inner()) = limits;
    }

    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Conn>>> {
        // The map is consistent between calls: a panic elsewhere does not spoil it.
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Open connections.
    pub fn count(&self) -> usize {
        self.live().len()
    }

    /// Requests in flight over all connections (a stream counts for as long as it lasts).
    pub fn in_flight(&self) -> u64 {
        self.live()
            .values()
            .map(|conn| conn.in_flight.load(Ordering::Acquire))
            .sum()
    }

    /// Connections accepted since the start.
    pub fn accepted(&self) -> u64 {
        self.next_id.load(Ordering::Relaxed)
    }

    /// Connections the server closed (limits and drains).
    pub fn closed_by_server(&self) -> u64 {
        self.closed_by_server.load(Ordering::Relaxed)
    }

    /// The listener's connections, wrapped (and through their TLS handshake, with
    /// `tls`), as tonic takes them. When accepting fails for want of resources
    /// (descriptors, memory), it pauses before trying again rather than spin on a backlog
    /// it cannot take. Accepting stops once tonic drops the stream.
    pub fn incoming(
        self: &Arc<Self>,
        listener: TcpListener,
        tls: Option<Acceptor>,
    ) -> impl Stream<Item = io::Result<Accepted>> + Send + 'static {
        // Bounded: past it, accepting waits for tonic to take connections (backpressure
        // into the kernel's backlog, as accepting in tonic's own loop would).
        let (tx, rx) = tokio::sync::mpsc::channel(ACCEPTED_QUEUE);
        tokio::spawn(self.clone().accept(listener, tls, tx));
        tokio_stream::wrappers::ReceiverStream::new(rx)
    }

    async fn accept(
        self: Arc<Self>,
        listener: TcpListener,
        tls: Option<Acceptor>,
        tx: tokio::sync::mpsc::Sender<io::Result<Accepted>>,
    ) {
        // When accepting last failed, so the warning is said once a while, not twenty
        // times a second.
        let mut warned = None::<Instant>;
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = tx.closed() => return,
            };
            let (stream, remote) = match accepted {
                Ok(accepted) => accepted,
                // The peer gave up before we took it: nothing to do.
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => continue,
                Err(e) => {
                    if warned.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
                        warned = Some(Instant::now());
                        tracing::warn!(error = %e, open = self.count(), "cannot accept connections; pausing");
                    }
                    tokio::time::sleep(ACCEPT_PAUSE).await;
                    continue;
                }
            };
            if let Some(refusal) = self.over_limit(remote.ip()) {
                self.refuse(refusal, remote);
                continue;
            }
            let guarded = match self.guard(stream, remote) {
                Ok(guarded) => guarded,
                Err(e) => {
                    tracing::debug!(%remote, error = %e, "accepted connection unusable");
                    continue;
                }
            };
            match &tls {
                None => {
                    if tx.send(Ok(MaybeTls::Plain(guarded))).await.is_err() {
                        return;
                    }
                }
                Some(acceptor) => {
                    let handshake = acceptor.current().accept(guarded);
                    let (tx, connections) = (tx.clone(), self.clone());
                    tokio::spawn(async move {
                        let limit = connections.limits().handshake;
                        match tokio::time::timeout(limit, handshake).await {
                            Ok(Ok(stream)) => {
                                let stream = tokio_rustls::TlsStream::Server(stream);
                                let _ = tx.send(Ok(MaybeTls::Tls(Box::new(stream)))).await;
                            }
                            Ok(Err(e)) => connections.tls_refused(remote, &e.to_string()),
                            Err(_) => connections.tls_refused(remote, "no TLS handshake in time"),
                        }
                    });
                }
            }
        }
    }

    /// The limit a new connection from `ip` would break, if any.
    fn over_limit(&self, ip: IpAddr) -> Option<Refusal> {
        let limits = self.limits();
        let max = limits.max_connections;
        if max != 0 && self.count() >= max {
            return Some(Refusal::MaxConnections);
        }
        let rate = limits.per_ip_per_s;
        if rate == 0 {
            return None;
        }
        let second = self.started.elapsed().as_secs();
        let mut attempts = self.attempts.lock().unwrap_or_else(|p| p.into_inner());
        if attempts.len() >= ATTEMPTS_TRACKED {
            attempts.retain(|_, (at, _)| *at == second);
        }
        let (at, count) = attempts.entry(ip).or_insert((second, 0));
        if *at != second {
            *at = second;
            *count = 0;
        }
        *count += 1;
        (*count > rate).then_some(Refusal::PerIpRate)
    }

    /// Counts a connection closed at accept (dropping it closes it) and says so, at most
    /// every 10 s.
    fn refuse(&self, refusal: Refusal, remote: SocketAddr) {
        self.refused[refusal as usize].fetch_add(1, Ordering::Relaxed);
        let mut logged = self
            .refusal_logged
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if logged.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
            *logged = Some(Instant::now());
            let limits = self.limits();
            let (max, rate) = (limits.max_connections, limits.per_ip_per_s);
            tracing::warn!(peer = %remote.ip(), limit = refusal.limit(), max_connections = max, connections_per_ip_per_s = rate, "refusing connections over a limit (said at most every 10 s)");
        }
    }

    /// Connections closed at accept for `refusal`.
    pub fn refused(&self, refusal: Refusal) -> u64 {
        self.refused[refusal as usize].load(Ordering::Relaxed)
    }

    /// Counts a failed TLS handshake and logs it, once per client address: a client
    /// retrying with a bad certificate would otherwise fill the log.
    fn tls_refused(&self, remote: SocketAddr, reason: &str) {
        self.tls_failures.fetch_add(1, Ordering::Relaxed);
        let first = {
            let mut logged = self.tls_logged.lock().unwrap_or_else(|p| p.into_inner());
            if logged.len() >= TLS_LOGGED_PEERS {
                logged.clear();
            }
            logged.insert(remote.ip())
        };
        if first {
            tracing::warn!(peer = %remote.ip(), reason, "TLS handshake refused (said once per client address)");
        } else {
            tracing::debug!(peer = %remote, reason, "TLS handshake refused");
        }
    }

    /// TLS handshakes that failed or timed out.
    pub fn tls_failures(&self) -> u64 {
        self.tls_failures.load(Ordering::Relaxed)
    }

    fn guard(self: &Arc<Self>, stream: TcpStream, remote: SocketAddr) -> io::Result<Guarded> {
        // Market data is many small writes; Nagle would add up to 40 ms to each.
        stream.set_nodelay(true)?;
        let conn = Arc::new(Conn::new());
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.live().insert(id, conn.clone());
        Ok(Guarded {
            stream,
            conn,
            id,
            remote: Some(remote),
            connections: Arc::downgrade(self),
        })
    }

    /// Closes connections past a limit, every [`SWEEP_EVERY`], until `shutdown`.
    pub async fn watch(self: Arc<Self>, mut shutdown: Shutdown) {
        let mut ticks = tokio::time::interval(SWEEP_EVERY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = shutdown.wait() => return,
            }
            let now = Instant::now();
            let limits = self.limits();
            let mut reasons: HashMap<&'static str, u64> = HashMap::new();
            for conn in self.live().values() {
                if conn.is_cut() {
                    continue;
                }
                if let Some(reason) = conn.overdue(&limits, now) {
                    conn.cut();
                    *reasons.entry(reason).or_default() += 1;
                }
            }
            for (reason, count) in reasons {
                self.closed_by_server.fetch_add(count, Ordering::Relaxed);
                tracing::info!(connections = count, reason, "closed connections");
            }
        }
    }

    /// Closes the connections that have not finished their handshake; returns how many.
    pub fn cut_handshaking(&self) -> usize {
        self.cut_where(|conn| !conn.handshaken())
    }

    /// Closes every connection; returns how many.
    pub fn cut_all(&self) -> usize {
        self.cut_where(|_| true)
    }

    fn cut_where(&self, which: impl Fn(&Conn) -> bool) -> usize {
        let mut count = 0;
        for conn in self.live().values() {
            if !conn.is_cut() && which(conn) {
                conn.cut();
                count += 1;
            }
        }
        self.closed_by_server
            .fetch_add(count as u64, Ordering::Relaxed);
        count
    }
}

/// An accepted socket the server can cut.
pub struct Guarded {
    stream: TcpStream,
    conn: Arc<Conn>,
    id: u64,
    remote: Option<SocketAddr>,
    connections: Weak<Connections>,
}

impl Drop for Guarded {
    fn drop(&mut self) {
        if let Some(connections) = self.connections.upgrade() {
            connections.live().remove(&self.id);
        }
    }
}

fn cut_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "connection closed by the server",
    )
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // Registered before the check, so a cut that lands between the two still wakes.
        self.conn.reader.register(cx.waker());
        if self.conn.is_cut() {
            return Poll::Ready(Err(cut_error()));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let read = (buf.filled().len() - before) as u64;
            self.conn.received.fetch_add(read, Ordering::Relaxed);
        }
        polled
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.conn.writer.register(cx.waker());
        if self.conn.is_cut() {
            return Poll::Ready(Err(cut_error()));
        }
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.conn.writer.register(cx.waker());
        if self.conn.is_cut() {
            return Poll::Ready(Err(cut_error()));
        }
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.conn.is_cut() {
            return Poll::Ready(Err(cut_error()));
        }
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// What tonic puts in each request's extensions for a [`Guarded`] connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    conn: Arc<Conn>,
    /// The client's address.
    pub remote: Option<SocketAddr>,
}

impl Connected for Guarded {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        ConnInfo {
            conn: self.conn.clone(),
            remote: self.remote,
        }
    }
}

/// An accepted connection as tonic serves it: plain, or through its TLS handshake.
pub type Accepted = MaybeTls<Guarded>;

impl Connected for MaybeTls<Guarded> {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.inner().connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::track::InFlight;
    use super::*;

    const LIMITS: ConnectionLimits = ConnectionLimits {
        handshake: Duration::from_secs(10),
        idle: Duration::from_secs(300),
        max_connections: 2,
        per_ip_per_s: 3,
    };

    #[test]
    fn connections_over_the_limits_are_refused_by_name() {
        let connections = Connections::new(LIMITS);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        // Three a second from one address, the fourth refused; another address is apart.
        for _ in 0..3 {
            assert_eq!(connections.over_limit(a), None);
        }
        assert_eq!(connections.over_limit(a), Some(Refusal::PerIpRate));
        assert_eq!(connections.over_limit(b), None);
        // Two open at once, whoever asks.
        for id in 0..2 {
            connections.live().insert(id, Arc::new(Conn::new()));
        }
        assert_eq!(connections.over_limit(b), Some(Refusal::MaxConnections));
    }

    #[test]
    fn a_connection_is_overdue_without_a_handshake_or_when_idle() {
        let conn = Arc::new(Conn::new());
        let at = |secs| conn.accepted + Duration::from_secs(secs);
        assert_eq!(conn.overdue(&LIMITS, at(9)), None);
        assert_eq!(
            conn.overdue(&LIMITS, at(10)),
            Some("no HTTP/2 handshake in time")
        );
        conn.received.store(HANDSHAKE_BYTES, Ordering::Relaxed);
        assert_eq!(conn.overdue(&LIMITS, at(299)), None);
        {
            let _request = InFlight::new(conn.clone());
            assert_eq!(conn.in_flight.load(Ordering::Relaxed), 1);
            assert_eq!(
                conn.overdue(&LIMITS, at(10_000)),
                None,
                "a request in flight"
            );
        }
        assert_eq!(conn.in_flight.load(Ordering::Relaxed), 0);
        // Idle since the request ended (just now), not since the connection opened.
        conn.idle_since_ms.store(5_000, Ordering::Relaxed);
        assert_eq!(conn.overdue(&LIMITS, at(304)), None);
        assert_eq!(
            conn.overdue(&LIMITS, at(305)),
            Some("idle, no request in flight")
        );
    }
}
