//! A Python client on the stock `grpcio` package, with stubs generated from our .proto,
//! against the real server. The test makes its own virtualenv (installing grpcio and
//! grpcio-tools from PyPI once, cached under the target directory). Without Python it is
//! skipped with a message, unless `RAVEN_REQUIRE_SERVICES=1` (CI) makes that a failure.

mod common;
#[path = "common/python.rs"]
mod python;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_client_rebuilds_books() {
    let Some(env) = python::ready().await else {
        return;
    };
    let server = common::server(|f| f.sim.rate = 5000).await;
    let addr = server.local_addr().to_string();
    let stdout = python::run_script(&env, "interop.py", &[addr.as_ref()]).await;
    assert!(
        stdout.contains("3 books equal GetSnapshot at the same sequence"),
        "{stdout}"
    );
    server.shutdown().await.unwrap();
}
