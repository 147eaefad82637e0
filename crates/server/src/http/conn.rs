//! The HTTP listener's connections, served by hyper (HTTP/1.1, with upgrades for `/ws`)
//! under a time limit for each request's head (`http.request_head_timeout_secs`): a
//! client that connects and sends nothing, or sends a request slowly, is closed after it
//! rather than holding a descriptor for as long as it likes (`axum::serve` sets no
//! limit). How many may be open at once is bounded too (`limits.max_http_connections`,
//! [`HttpConnections`]): the listener's descriptors come out of the reserve the store and
//! the feeds draw on, so a client opening thousands must not leave the store unable to
//! open a file. At shutdown each connection finishes the request it is serving and
//! closes; a WebSocket, once upgraded, is no longer hyper's and ends through the
//! gateway's own drain.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::shutdown::Shutdown;

/// How long accepting pauses after it failed (descriptors exhausted, say).
const ACCEPT_PAUSE: Duration = Duration::from_millis(50);

/// What a connection over the limit is answered, whatever it asked, before it is
/// closed.
const BUSY: &str = "too many HTTP connections (limits.max_http_connections)\n";

/// How often a refusal is logged at most.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// Refused connections being answered at once, at most: each holds its descriptor for up
/// to [`LINGER`], so a flood of them is bounded too (past it they are closed unanswered).
const MAX_LINGERING: usize = 64;

/// How long a refused connection is given to read its answer and close.
const LINGER: Duration = Duration::from_secs(2);

/// The HTTP listener's connections: how many are open (a WebSocket's for as long as its
/// socket lives) and how many were refused over the limit, which SIGHUP can change.
#[derive(Debug, Default)]
pub struct HttpConnections {
    open: AtomicUsize,
    max: AtomicUsize,
    refused: AtomicU64,
    /// Refused connections still being answered.
    lingering: AtomicUsize,
    refusal_logged: Mutex<Option<Instant>>,
}

impl HttpConnections {
    /// At most `max` open at once (0: no limit).
    pub fn new(max: usize) -> Arc<HttpConnections> {
        let connections = HttpConnections::default();
        connections.set_max(max);
        Arc::new(connections)
    }

    /// From the next connection accepted on; those open stay.
    pub fn set_max(&self, max: usize) {
        self.max.store(max, Ordering::Relaxed);
    }

    /// Open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Answered 503 and closed at accept.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// A slot for one more, unless the limit is reached.
    fn admit(self: &Arc<Self>) -> Option<Slot> {
        let max = self.max.load(Ordering::Relaxed);
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (max == 0 || n < max).then_some(n + 1)
            })
            .ok()?;
        Some(Slot(self.clone()))
    }

    /// Tells `tcp` the server is busy and closes it; says so at most every
    /// [`REFUSAL_LOG_EVERY`].
    fn refuse(self: &Arc<Self>, tcp: TcpStream) {
        self.refused.fetch_add(1, Ordering::Relaxed);
        let mut logged = self
            .refusal_logged
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if logged.is_none_or(|at| at.elapsed() >= REFUSAL_LOG_EVERY) {
            *logged = Some(Instant::now());
            let max = self.max.load(Ordering::Relaxed);
            let peer = tcp
                .peer_addr()
                .map(|a| a.ip().to_string())
                .unwrap_or_default();
            tracing::warn!(%peer, max_http_connections = max, "refusing HTTP connections over the limit (said at most every 10 s)");
        }
        drop(logged);
        // Past its own bound the answer is not waited for: dropped at once, the client
        // sees its connection closed.
        let lingering = self.lingering.fetch_add(1, Ordering::AcqRel);
        if lingering >= MAX_LINGERING {
            self.lingering.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        let connections = self.clone();
        tokio::spawn(async move {
            answer_busy(tcp).await;
            connections.lingering.fetch_sub(1, Ordering::AcqRel);
        });
    }
}

/// Answers 503 and closes without a reset: the answer and a FIN go out, then whatever the
/// client sends is read and dropped until it closes (for at most [`LINGER`]). Closing a
/// socket with unread input, or closing it before the request arrives, resets the
/// connection, and a reset can discard the answer before the client reads it.
async fn answer_busy(mut tcp: TcpStream) {
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\nretry-after: 1\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n{BUSY}",
        BUSY.len()
    );
    let _ = tokio::time::timeout(LINGER, async {
        tcp.write_all(response.as_bytes()).await?;
        tcp.shutdown().await?;
        let mut sink = [0; 1024];
        while tcp.read(&mut sink).await? > 0 {}
        Ok::<_, io::Error>(())
    })
    .await;
}

/// One open connection's place in the count, given back when its socket closes.
#[derive(Debug)]
struct Slot(Arc<HttpConnections>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A socket that holds its connection's [`Slot`] for as long as it lives: in hyper's
/// hands, then, once upgraded, in a WebSocket's.
struct Counted {
    tcp: TcpStream,
    _slot: Slot,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// Serves `app` on `listener`, at most `connections`' limit at once, until `shutdown`
/// fires, then waits for the connections' requests in flight. A connection has
/// `head_time` to send a request's head (all of its headers), from the accept or from the
/// end of its previous response: an idle keep-alive connection is closed after it too (a
/// browser or a scraper opens another).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    connections: Arc<HttpConnections>,
    head_time: Duration,
    mut shutdown: Shutdown,
) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(head_time);
    // Each connection holds a receiver; the sender sees them all gone at the end.
    let (open, _) = watch::channel(());
    loop {
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    tracing::warn!(error = %e, "the HTTP listener could not accept; pausing");
                    tokio::time::sleep(ACCEPT_PAUSE).await;
                    continue;
                }
            },
            () = shutdown.wait() => break,
        };
        let Some(slot) = connections.admit() else {
            connections.refuse(tcp);
            continue;
        };
        // Streams (the WebSocket gateway, a history) write small messages: Nagle's
        // algorithm would hold each behind the peer's delayed acknowledgement.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY refused on an HTTP connection");
        }
        let service = TowerToHyperService::new(app.clone());
        let connection = builder
            .serve_connection(TokioIo::new(Counted { tcp, _slot: slot }), service)
            .with_upgrades();
        let mut stop = shutdown.clone();
        let held = open.subscribe();
        tokio::spawn(async move {
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => report(result),
                () = stop.wait() => {
                    connection.as_mut().graceful_shutdown();
                    report(connection.await);
                }
            }
            drop(held);
        });
    }
    open.closed().await;
}

fn report(result: Result<(), hyper::Error>) {
    if let Err(e) = result {
        // A client that went away, or one past the header limit: routine.
        tracing::debug!(error = %e, "HTTP connection ended");
    }
}
