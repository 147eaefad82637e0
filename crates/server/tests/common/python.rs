//! The Python side of the interop tests: a virtualenv with the stock `grpcio` and stubs
//! generated from our .proto, made once and cached under the target directory. Included
//! with `#[path]` by the tests that run Python.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use raven_testkit::python::{run, venv};
use raven_testkit::skip_or_fail;

const GRPCIO: &str = "1.85.1";
const WHAT: &str = "python grpcio interop";

/// A virtualenv with grpcio and grpcio-tools, and the generated stubs.
fn python_env() -> Result<Option<(PathBuf, PathBuf)>, String> {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("py-interop-{GRPCIO}"));
    let packages = [
        format!("grpcio=={GRPCIO}"),
        format!("grpcio-tools=={GRPCIO}"),
    ];
    let Some(python) = venv(&root, &packages)? else {
        return Ok(None);
    };
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

/// The interpreter and stubs, made ready off the runtime; `None` when the test is skipped
/// (it fails instead when services are required).
pub async fn ready() -> Option<(PathBuf, PathBuf)> {
    match tokio::task::spawn_blocking(python_env).await.unwrap() {
        Ok(Some(env)) => Some(env),
        Ok(None) => {
            skip_or_fail(WHAT, "python3 is not installed");
            None
        }
        Err(e) => {
            skip_or_fail(
                WHAT,
                &format!("the Python environment could not be prepared: {e}"),
            );
            None
        }
    }
}

/// Runs `tests/python/SCRIPT ARGS…` with the stubs on its path and returns what it
/// printed, after checking it succeeded. Scripts keep their own deadlines; this one
/// catches a wedged interpreter.
pub async fn run_script(env: &(PathBuf, PathBuf), script: &str, args: &[&OsStr]) -> String {
    let (python, stubs) = env;
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(script);
    let run = tokio::process::Command::new(python)
        .arg(script)
        .args(args)
        .env("PYTHONPATH", stubs)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(std::time::Duration::from_secs(120), run)
        .await
        .expect("python client did not finish within 120 s")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "python client failed:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}
