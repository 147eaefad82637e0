//! Shared by the integration tests: the real server, in process, on a free loopback port.
//! (In `common/mod.rs` so that cargo does not build it as a test of its own.)

use std::sync::Arc;

use raven_server::app::{RunningServer, bind, start};
use raven_server::clock::{Clock, SystemClock};
use raven_server::config::{Config, FileConfig};

/// A directory of its own for each use (see `raven_testkit::scratch_dir!`).
pub fn scratch_dir(what: &str) -> std::path::PathBuf {
    raven_testkit::scratch_dir!(what)
}

/// Starts a server on the defaults (recording to a SQLite file of its own, a 64 MiB
/// spill reservation, HTTP on a free port) with `configure` applied.
pub async fn server(configure: impl FnOnce(&mut FileConfig)) -> RunningServer {
    start_with(&config(configure), Arc::new(SystemClock)).await
}

/// The configuration [`server`] runs.
pub fn config(configure: impl FnOnce(&mut FileConfig)) -> Config {
    let mut file = FileConfig::default();
    let dir = scratch_dir("server");
    file.store.url = format!("sqlite:{}", dir.join("raven.db").display());
    file.store.spill = dir.join("raven.spill");
    // A quarter of the default reservation: room for any test's outage, and a suite of
    // servers does not reserve tens of gigabytes.
    file.store.spill_reserve_mb = 64;
    // Its own HTTP port too: tests run side by side.
    file.http.listen = "127.0.0.1:0".into();
    // Stopping does not wait for clients to move elsewhere; the drain's tests set it.
    file.shutdown.drain_secs = 0;
    configure(&mut file);
    file.resolve().expect("test configuration is valid")
}

/// Starts `config` on a free loopback port, reading the time from `clock`.
pub async fn start_with(config: &Config, clock: Arc<dyn Clock>) -> RunningServer {
    start(
        config,
        clock,
        bind("127.0.0.1:0".parse().expect("valid address")).expect("bind loopback"),
    )
    .await
    .expect("server starts")
}
