//! The Python side of the interop tests: a virtualenv with the stock `grpcio` and stubs
//! generated from our .proto, made once and cached under the target directory. Included
//! with `#[path]` by the tests that run Python.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

const GRPCIO: &str = "1.85.1";

/// Skips the test with a message, or fails it when services are required (CI).
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

/// The interpreter and stubs, made ready off the runtime; `None` when the test is skipped
/// (it fails instead when services are required).
pub async fn ready() -> Option<(PathBuf, PathBuf)> {
    match tokio::task::spawn_blocking(python_env).await.unwrap() {
        Ok(Some(env)) => Some(env),
        Ok(None) => {
            skip_or_fail("python3 is not installed");
            None
        }
        Err(e) => {
            skip_or_fail(&format!(
                "the Python environment could not be prepared: {e}"
            ));
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
