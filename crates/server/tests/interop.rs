//! A Python client on the stock `grpcio` package, with stubs generated from our .proto,
//! against the real server. The test makes its own virtualenv (installing grpcio and
//! grpcio-tools from PyPI once, cached under the target directory). Without Python it is
//! skipped with a message, unless `RAVEN_REQUIRE_SERVICES=1` (CI) makes that a failure.

mod common;
#[path = "common/python.rs"]
mod python;

use std::path::Path;

use python::{python_env, skip_or_fail};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_client_rebuilds_books() {
    let env = tokio::task::spawn_blocking(python_env).await.unwrap();
    let (python, stubs) = match env {
        Ok(Some(env)) => env,
        Ok(None) => return skip_or_fail("python3 is not installed"),
        Err(e) => {
            return skip_or_fail(&format!(
                "the Python environment could not be prepared: {e}"
            ));
        }
    };
    let server = common::server(|f| f.sim.rate = 5000).await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/interop.py");
    let run = tokio::process::Command::new(python)
        .arg(script)
        .arg(server.local_addr().to_string())
        .env("PYTHONPATH", stubs)
        .kill_on_drop(true)
        .output();
    // The script has its own 60 s deadline; this one catches a wedged interpreter.
    let out = tokio::time::timeout(std::time::Duration::from_secs(120), run)
        .await
        .expect("python client did not finish within 120 s")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python client failed:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("3 books equal GetSnapshot at the same sequence"),
        "{stdout}"
    );
    server.shutdown().await.unwrap();
}
