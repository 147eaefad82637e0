//! A Python client on the stock `grpcio` package, with stubs generated from our .proto,
//! against the real server. The test makes its own virtualenv (installing grpcio and
//! grpcio-tools from PyPI once, cached under the target directory). Without Python it is
//! skipped with a message, unless `RAVEN_REQUIRE_SERVICES=1` (CI) makes that a failure.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

const GRPCIO: &str = "1.85.1";

fn skip_or_fail(why: &str) {
    if std::env::var("RAVEN_REQUIRE_SERVICES").is_ok_and(|v| v == "1") {
        panic!("python interop required (RAVEN_REQUIRE_SERVICES=1) but {why}");
    }
    eprintln!("SKIPPED python grpcio interop: {why}");
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// A virtualenv with grpcio and grpcio-tools, and the generated stubs.
fn python_env() -> Result<Option<(PathBuf, PathBuf)>, String> {
    if Command::new("python3").arg("--version").output().is_err() {
        return Ok(None);
    }
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("py-interop-{GRPCIO}"));
    let python = root.join("venv/bin/python");
    if !python.exists() {
        run(Command::new("python3")
            .args(["-m", "venv"])
            .arg(root.join("venv")))?;
        run(Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args([
                format!("grpcio=={GRPCIO}"),
                format!("grpcio-tools=={GRPCIO}"),
            ]))?;
    }
    let stubs = root.join("stubs");
    let proto = Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto/proto");
    std::fs::create_dir_all(&stubs).map_err(|e| e.to_string())?;
    run(Command::new(&python)
        .args(["-m", "grpc_tools.protoc", "-I"])
        .arg(&proto)
        .arg(format!("--python_out={}", stubs.display()))
        .arg(format!("--grpc_python_out={}", stubs.display()))
        .arg("raven/v1/raven.proto"))?;
    Ok(Some((python, stubs)))
}

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
