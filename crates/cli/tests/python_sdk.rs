//! The Python SDK (`python/`, package `raven-md`) as its users get it: the wheel built
//! from the repository and installed with every extra in a virtualenv of its own, then
//! `pytest python/tests` against a real `raven serve` (simulator, SQLite store), the CLI
//! beside it for the exports it must equal. Afterwards the Parquet files the CLI and the
//! SDK wrote are read with the Rust `parquet` reader and compared. Without Python the test
//! is skipped with a message, unless `RAVEN_REQUIRE_SERVICES=1` (CI) makes that a failure.

mod parquet_files;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use arrow_array::RecordBatch;
use arrow_select::concat::concat_batches;
use parquet_files::read;
use raven_testkit::python::{run, venv};
use raven_testkit::served::Served;
use raven_testkit::skip_or_fail;

const RAVEN: &str = env!("CARGO_BIN_EXE_raven");
const WHAT: &str = "the Python SDK";

fn source() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../python")
}

/// A virtualenv with the SDK's dependencies and the test tools; the wheel is built and
/// installed again on every run (the code under test changes, its dependencies rarely).
fn sdk_env(scratch: &Path) -> Result<Option<PathBuf>, String> {
    let pyproject = std::fs::read_to_string(source().join("pyproject.toml"))
        .map_err(|e| format!("python/pyproject.toml: {e}"))?;
    let packages: Vec<String> = [
        "grpcio>=1.85.1",
        "protobuf>=7.35.1,<8",
        "pyarrow",
        "pandas",
        "polars",
        "pytest>=9,<10",
        "nbclient",
        "ipykernel",
        "matplotlib",
        "hatchling",
        "grpcio-tools==1.85.1",
    ]
    .map(String::from)
    .to_vec();
    // A new virtualenv whenever the package's or the tests' requirements change.
    let key = pyproject
        .bytes()
        .chain(packages.concat().into_bytes())
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("py-sdk-{key:016x}"));
    let Some(python) = venv(&root, &packages)? else {
        return Ok(None);
    };
    let wheels = scratch.join("wheels");
    run(Command::new(&python)
        .args([
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "-w",
        ])
        .arg(&wheels)
        .arg(source()))?;
    let wheel = std::fs::read_dir(&wheels)
        .map_err(|e| e.to_string())?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or("pip wheel made no wheel")?;
    run(Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .arg(format!("{}[arrow,pandas,polars]", wheel.display())))?;
    run(Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--force-reinstall",
            "--no-deps",
        ])
        .arg(&wheel))?;
    Ok(Some(python))
}

/// A file's batches as one (the two writers cut record batches at different rows).
fn concat(batches: &[RecordBatch]) -> RecordBatch {
    concat_batches(&batches[0].schema(), batches).unwrap()
}

/// A second server that takes only mutual TLS and API keys, for `Client(key=…, tls=…)`.
struct Secure {
    served: Served,
    key: String,
    ca: PathBuf,
    client: raven_testkit::tls::Pair,
}

impl Secure {
    fn start(scratch: &Path) -> Secure {
        let dir = scratch.join("secure");
        std::fs::create_dir_all(&dir).unwrap();
        let authority = raven_testkit::tls::Authority::new("Raven SDK test CA");
        let ca = authority.write(&dir, "ca");
        let server = authority.issue(&dir, "server", false);
        let client = authority.issue(&dir, "client", false);
        let keys = dir.join("keys.toml");
        let added = Command::new(RAVEN)
            .args(["keys", "add", "--file"])
            .arg(&keys)
            .args(["--id", "sdk", "--role", "subscribe,history"])
            .output()
            .unwrap();
        assert!(added.status.success(), "{added:?}");
        let key = String::from_utf8(added.stdout).unwrap().trim().to_owned();
        std::fs::write(
            dir.join("raven.toml"),
            format!("[auth]\nkeys_file = {keys:?}\n"),
        )
        .unwrap();
        let mut command = Command::new(RAVEN);
        command
            .current_dir(&dir)
            .args(["serve", "--listen", "127.0.0.1:0", "--http", "off"])
            .args(["--config", "raven.toml", "--tls-cert"])
            .arg(&server.cert)
            .arg("--tls-key")
            .arg(&server.key)
            .arg("--tls-ca")
            .arg(&ca)
            .env("RAVEN_LOG", "warn")
            .stderr(Stdio::inherit());
        Secure {
            served: Served::start(command),
            key,
            ca,
            client,
        }
    }
}

#[test]
fn python_sdk_against_a_live_server() {
    let scratch = raven_testkit::scratch_dir!("python-sdk");
    let python = match sdk_env(&scratch) {
        Ok(Some(python)) => python,
        Ok(None) => return skip_or_fail(WHAT, "python3 is not installed"),
        Err(e) => {
            return skip_or_fail(
                WHAT,
                &format!("the Python environment could not be prepared: {e}"),
            );
        }
    };
    let mut command = Command::new(RAVEN);
    command
        .current_dir(&scratch)
        .args(["serve", "--listen", "127.0.0.1:0", "--http", "off"])
        .args(["--rate", "5000"])
        .env("RAVEN_LOG", "warn")
        .stderr(Stdio::inherit());
    let served = Served::start(command);
    let secure = Secure::start(&scratch);
    let files = scratch.join("files");
    let out = Command::new(&python)
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
        .arg(source().join("tests"))
        .env("RAVEN_SERVER", served.addr().to_string())
        .env("RAVEN_BIN", RAVEN)
        .env("RAVEN_SCRATCH", &files)
        .env("RAVEN_PYTHON_SOURCE", source())
        .env("PYTHON", &python)
        .env("RAVEN_SECURE_SERVER", secure.served.addr().to_string())
        .env("RAVEN_KEY", &secure.key)
        .env("RAVEN_CA", &secure.ca)
        .env("RAVEN_CLIENT_CERT", &secure.client.cert)
        .env("RAVEN_CLIENT_KEY", &secure.client.key)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pytest failed:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Everything ran: nothing skipped, nothing deselected.
    assert!(!stdout.contains("skipped"), "{stdout}");

    // The Rust reader reads the CLI's and the SDK's files as the same table.
    for channel in ["book", "bbo", "trades", "candles"] {
        let from_cli = concat(&read(&files.join(format!("cli.{channel}.parquet"))));
        let from_sdk = concat(&read(&files.join(format!("sdk.{channel}.parquet"))));
        assert!(from_cli.num_rows() > 0, "{channel}");
        assert_eq!(from_cli.schema(), from_sdk.schema(), "{channel}");
        assert_eq!(from_cli, from_sdk, "{channel}");
    }
}
