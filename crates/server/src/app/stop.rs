//! Stopping a running server, in order (the module above says why in this order): the
//! drain, the feeds, client streams and connections, the engine, then the recorder and the
//! replication publisher with their deadlines, the HTTP listener last; and the abrupt
//! stop of a server dropped without it. [`Progress`] says which step is under way, for the
//! message when a shutdown takes too long.

use std::sync::Arc;

use raven_proto::history_server::HistoryServer;
use raven_proto::ingest_server::IngestServer;
use raven_proto::market_server::MarketServer;

use super::{AppError, RunningServer};
use crate::api::drain;
use crate::api::history::HistoryApi;
use crate::api::ingest::IngestApi;
use crate::api::market::MarketApi;
use crate::fanout::Closed;
use crate::feed::FeedHandle;

/// Where a shutdown is, for the message when it takes too long.
#[derive(Clone, Default)]
pub struct Progress(Arc<std::sync::Mutex<&'static str>>);

impl Progress {
    fn set(&self, step: &'static str) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = step;
    }

    /// The step under way.
    pub fn step(&self) -> &'static str {
        let step = *self.0.lock().unwrap_or_else(|p| p.into_inner());
        if step.is_empty() { "not started" } else { step }
    }
}

/// How long an ingest node may take at shutdown to publish what waits to NATS.
const REPLICATION_FINISH: std::time::Duration = std::time::Duration::from_secs(2);

/// How long the recorder may take at shutdown to store what waits; the rest waits in
/// the spill file for the next start.
const RECORDER_FINISH: std::time::Duration = std::time::Duration::from_millis(1500);

/// How often the drain looks whether any call is left.
const DRAIN_POLL: std::time::Duration = std::time::Duration::from_millis(50);

/// How long connections get to close once their streams have ended, before they are cut
/// (a client may keep an idle connection, or a health watch, open).
const CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// How long cut connections get to close before the server stops waiting for them.
const CUT_GRACE: std::time::Duration = std::time::Duration::from_millis(500);

impl RunningServer {
    /// Where [`RunningServer::shutdown`] is, readable while it runs.
    pub fn progress(&self) -> Progress {
        self.progress.clone()
    }

    /// Drains, then stops in order. The drain: health goes `NOT_SERVING` and `/readyz`
    /// 503, new streams are refused, every open stream gets a `GOING_AWAY` status event
    /// and is served on for the drain time (less if no call is left). Then: stops the
    /// feeds; ends client streams with `UNAVAILABLE` and stops gRPC, cutting the
    /// connections still open after a grace; lets the engine finish what it has queued;
    /// then has the recorder store its last batches (what it cannot store in time waits
    /// in the spill file).
    pub async fn shutdown(mut self) -> Result<(), AppError> {
        self.progress
            .set("draining: telling clients the server is going away");
        self.drain_trigger.fire();
        // Health checkers (load balancers) see the server going before it is gone.
        self.health
            .set_not_serving::<MarketServer<MarketApi>>()
            .await;
        self.health
            .set_not_serving::<IngestServer<IngestApi>>()
            .await;
        self.health
            .set_not_serving::<HistoryServer<HistoryApi>>()
            .await;
        self.health
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        let told = self
            .fanout
            .broadcast_control(&drain::going_away(self.clock.now(), self.drain));
        tracing::info!(
            streams = told,
            drain_secs = self.drain.as_secs(),
            "draining: every stream told the server is going away; new streams refused"
        );
        self.progress
            .set("draining: serving the open streams for the drain time");
        let deadline = tokio::time::Instant::now() + self.drain;
        // WebSocket clients are subscribers without a gRPC call: they count too.
        while (self.connections.in_flight() > 0 || self.fanout.subscribers() > 0)
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + DRAIN_POLL)).await;
        }
        self.progress.set("stopping the feeds");
        if let Some((follower, stop)) = self.follower.take() {
            stop.fire();
            tokio::task::spawn_blocking(move || follower.join())
                .await
                .map_err(std::io::Error::other)?;
        }
        let feeds = std::mem::take(&mut self.feeds);
        tokio::task::spawn_blocking(move || feeds.into_iter().try_for_each(FeedHandle::stop))
            .await
            .map_err(std::io::Error::other)??;
        self.shutdown.fire();
        self.progress
            .set("ending client streams and closing connections");
        self.fanout
            .close_all(Closed::Refused(tonic::Status::unavailable(
                "server shutting down",
            )));
        // Connections still in their handshake hold no work: they go now.
        self.connections.cut_handshaking();
        self.stop_grpc.fire();
        let Some(mut grpc) = self.grpc.take() else {
            return Ok(());
        };
        let served = match tokio::time::timeout(CLOSE_GRACE, &mut grpc).await {
            Ok(served) => served,
            Err(_) => {
                let cut = self.connections.cut_all();
                tracing::warn!(
                    connections = cut,
                    "connections still open after their streams ended; cut them"
                );
                match tokio::time::timeout(CUT_GRACE, &mut grpc).await {
                    Ok(served) => served,
                    Err(_) => {
                        grpc.abort();
                        tracing::error!("connections did not close after being cut; left behind");
                        Ok(Ok(()))
                    }
                }
            }
        };
        served.map_err(std::io::Error::other)??;
        self.progress
            .set("the engine finishing the events it accepted");
        if let Some(engine) = self.engine.take() {
            tokio::task::spawn_blocking(move || engine.shutdown())
                .await
                .map_err(std::io::Error::other)?;
        }
        self.progress.set("the recorder storing its last batches");
        let recorder = self.recorder.take();
        let replicator = self.replicator.take();
        // Both at once: each has its own deadline.
        let replicated = tokio::task::spawn_blocking(move || {
            if let Some(replicator) = replicator {
                replicator.finish(REPLICATION_FINISH);
            }
        });
        if let Some(recorder) = recorder {
            tokio::task::spawn_blocking(move || recorder.finish(RECORDER_FINISH))
                .await
                .map_err(std::io::Error::other)?;
        }
        self.progress.set("publishing the last batches to NATS");
        replicated.await.map_err(std::io::Error::other)?;
        // Last, so that the drain and the recorder's end can be watched.
        self.progress.set("closing the HTTP listener");
        if let Some(http) = self.http.take() {
            http.stop.fire();
            if tokio::time::timeout(CUT_GRACE, http.task).await.is_err() {
                tracing::warn!("HTTP requests still open at the end of shutdown; left behind");
            }
        }
        Ok(())
    }
}

impl Drop for RunningServer {
    /// Without [`RunningServer::shutdown`]: the feed, gRPC and the engine stop at once,
    /// and the recorder gets its usual time to store what waits (the rest waits in the
    /// spill file). Blocks on the threads' ends, as a dropped thread pool would.
    fn drop(&mut self) {
        let Some(engine) = self.engine.take() else {
            return;
        };
        let feeds = std::mem::take(&mut self.feeds);
        if let Some((follower, stop)) = self.follower.take() {
            stop.fire();
            follower.join();
        }
        self.shutdown.fire();
        self.fanout
            .close_all(Closed::Refused(tonic::Status::unavailable(
                "server shutting down",
            )));
        self.stop_grpc.fire();
        if let Some(grpc) = self.grpc.take() {
            grpc.abort();
        }
        self.connections.cut_all();
        if let Some(http) = self.http.take() {
            http.task.abort();
        }
        drop(feeds);
        engine.shutdown();
        if let Some(recorder) = self.recorder.take() {
            recorder.finish(RECORDER_FINISH);
        }
        if let Some(replicator) = self.replicator.take() {
            replicator.finish(REPLICATION_FINISH);
        }
    }
}
