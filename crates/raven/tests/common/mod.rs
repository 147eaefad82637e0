//! Shared by the integration tests: the real server, in process, on a free loopback port.
//! (In `common/mod.rs` so that cargo does not build it as a test of its own.)

mod scratch;

use raven::app::{RunningServer, bind, start};
use raven::config::FileConfig;
pub use scratch::scratch_dir;

/// Starts a server on the defaults (recording to a SQLite file of its own, a 64 MiB
/// spill reservation) with `configure` applied.
pub async fn server(configure: impl FnOnce(&mut FileConfig)) -> RunningServer {
    let mut file = FileConfig::default();
    let dir = scratch_dir("server");
    file.store.url = format!("sqlite:{}", dir.join("raven.db").display());
    file.store.spill = dir.join("raven.spill");
    // A quarter of the default reservation: room for any test's outage, and a suite of
    // servers does not reserve tens of gigabytes.
    file.store.spill_reserve_mb = 64;
    configure(&mut file);
    let config = file.resolve().expect("test configuration is valid");
    start(
        &config,
        bind("127.0.0.1:0".parse().expect("valid address")).expect("bind loopback"),
    )
    .await
    .expect("server starts")
}
