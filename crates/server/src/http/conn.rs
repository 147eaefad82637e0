//! The HTTP listener's connections, served by hyper (HTTP/1.1, with upgrades for `/ws`)
//! under a time limit for each request's head: a client that connects and sends nothing,
//! or sends a request slowly, is closed after [`HEADER_TIME`] rather than holding a
//! descriptor for as long as it likes (`axum::serve` sets no limit). At shutdown each
//! connection finishes the request it is serving and closes; a WebSocket, once upgraded,
//! is no longer hyper's and ends through the gateway's own drain.

use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::shutdown::Shutdown;

/// How long a connection may take to send a request's head (all of its headers), from
/// the accept or from the end of its previous response: an idle keep-alive connection
/// is closed after it too (a browser or a scraper opens another).
const HEADER_TIME: Duration = Duration::from_secs(10);

/// How long accepting pauses after it failed (descriptors exhausted, say).
const ACCEPT_PAUSE: Duration = Duration::from_millis(50);

/// Serves `app` on `listener` until `shutdown` fires, then waits for the connections'
/// requests in flight.
pub async fn serve(listener: TcpListener, app: Router, mut shutdown: Shutdown) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIME);
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
        // Streams (the WebSocket gateway, a history) write small messages: Nagle's
        // algorithm would hold each behind the peer's delayed acknowledgement.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY refused on an HTTP connection");
        }
        let service = TowerToHyperService::new(app.clone());
        let connection = builder
            .serve_connection(TokioIo::new(tcp), service)
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
