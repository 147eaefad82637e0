//! The operator's kit in `deploy/` against a real Prometheus (Debian's `prometheus`
//! package; skipped with a message where it is not installed, unless
//! `RAVEN_REQUIRE_SERVICES=1`): the shipped `prometheus.yml` scrapes a live server and
//! its target is up; every alert rule loads and evaluates; every query of the Grafana
//! dashboard succeeds on the query API, the core panels with data; `promtool test rules`
//! fires each alert from the series that should fire it.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const DEPLOY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy");

/// Panels that must show data on a server running its simulator and recording.
const CORE_PANELS: [&str; 7] = [
    "Feed events / s",
    "Receive → publish latency",
    "Subscribers",
    "Recorded events / s",
    "Store up",
    "Process CPU (cores)",
    "Disk free (database, spill file)",
];

/// `prometheus` on the PATH, or why the test does not run.
fn prometheus() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("prometheus"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        if std::env::var("RAVEN_REQUIRE_SERVICES").is_ok_and(|v| v == "1") {
            panic!(
                "Prometheus required (RAVEN_REQUIRE_SERVICES=1) but `prometheus` is not on the PATH"
            );
        }
        eprintln!(
            "SKIPPED Prometheus tests: `prometheus` is not installed (apt-get install prometheus)"
        );
    }
    found
}

/// A child process killed when the test ends, however it ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Query-string encoding of `text`.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `GET path` from Prometheus's API, as JSON (HTTP/1.0: a plain body until close).
async fn api(addr: SocketAddr, path: &str) -> Option<Value> {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    tcp.write_all(format!("GET {path} HTTP/1.0\r\nHost: prometheus\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut raw = Vec::new();
    tcp.read_to_end(&mut raw).await.ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (_, body) = text.split_once("\r\n\r\n")?;
    serde_json::from_str(body).ok()
}

/// Asks `path` until `done` holds of the answer.
async fn api_until(addr: SocketAddr, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(answer) = api(addr, path).await
            && done(&answer)
        {
            return answer;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{path}: {:?}",
            api(addr, path).await
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The shipped config, pointed at `target`, scraping and evaluating every second.
fn config(target: SocketAddr, dir: &Path) -> PathBuf {
    let shipped = std::fs::read_to_string(Path::new(DEPLOY).join("prometheus.yml")).unwrap();
    assert!(shipped.contains("\"127.0.0.1:50052\""), "{shipped}");
    let rules = Path::new(DEPLOY).join("prometheus/raven.rules.yml");
    let text = shipped
        .replace("\"127.0.0.1:50052\"", &format!("\"{target}\""))
        .replace("5s", "1s")
        .replace("prometheus/raven.rules.yml", rules.to_str().unwrap());
    let path = dir.join("prometheus.yml");
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_a_live_server_and_every_query_of_the_kit_runs() {
    let Some(prometheus) = prometheus() else {
        return;
    };
    let server = common::server(|_| {}).await;
    let dir = common::scratch_dir("prometheus");
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let _prometheus = Killed(
        Command::new(prometheus)
            .arg(format!(
                "--config.file={}",
                config(server.http_addr().unwrap(), &dir).display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
            .spawn()
            .unwrap(),
    );

    // The target is up.
    api_until(addr, "/api/v1/targets", |t| {
        t["data"]["activeTargets"]
            .as_array()
            .is_some_and(|a| a.len() == 1 && a[0]["health"] == "up")
    })
    .await;
    // Enough scrapes for a rate over them.
    api_until(
        addr,
        &format!(
            "/api/v1/query?query={}",
            encode("count_over_time(raven_feed_events_total[1m]) >= 4")
        ),
        |a| {
            a["data"]["result"]
                .as_array()
                .is_some_and(|r| !r.is_empty())
        },
    )
    .await;

    // Every alert rule loaded and evaluates without error.
    let rules = api_until(addr, "/api/v1/rules", |r| {
        r["data"]["groups"][0]["rules"]
            .as_array()
            .is_some_and(|rules| {
                rules
                    .iter()
                    .all(|rule| rule["lastEvaluation"] != "0001-01-01T00:00:00Z")
            })
    })
    .await;
    let rules = rules["data"]["groups"][0]["rules"].as_array().unwrap();
    assert_eq!(rules.len(), 11);
    for rule in rules {
        assert_eq!(rule["health"], "ok", "{rule}");
        // A healthy server fires nothing. The disk rules follow the machine's disk,
        // which other processes fill (promtool fires them below).
        if !rule["name"].as_str().unwrap().starts_with("RavenDisk") {
            assert_eq!(rule["state"], "inactive", "{rule}");
        }
    }

    // Every query of the dashboard succeeds; the core panels have data.
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(DEPLOY).join("grafana/raven.json")).unwrap(),
    )
    .unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    let mut core = 0;
    for panel in panels {
        let title = panel["title"].as_str().unwrap();
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap().replace("$instance", ".*");
            let answer = api(addr, &format!("/api/v1/query?query={}", encode(&expr)))
                .await
                .unwrap();
            assert_eq!(answer["status"], "success", "{title}: {expr}: {answer}");
            if CORE_PANELS.contains(&title) && target["refId"] == "A" {
                let result = answer["data"]["result"].as_array().unwrap();
                assert!(!result.is_empty(), "{title}: {expr} has no data");
                core += 1;
            }
        }
    }
    assert_eq!(core, CORE_PANELS.len());
    server.shutdown().await.unwrap();
}

#[test]
fn promtool_fires_each_alert_from_the_series_that_should_fire_it() {
    if prometheus().is_none() {
        return;
    }
    let rules = Path::new(DEPLOY).join("prometheus");
    for args in [
        &["check", "rules", "raven.rules.yml"][..],
        &["test", "rules", "raven.rules.test.yml"][..],
    ] {
        let out = Command::new("promtool")
            .args(args)
            .current_dir(&rules)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Every alert of the rules file has a test.
    let text = std::fs::read_to_string(rules.join("raven.rules.yml")).unwrap();
    let tests = std::fs::read_to_string(rules.join("raven.rules.test.yml")).unwrap();
    for alert in text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
    {
        assert!(
            tests.contains(&format!("alertname: {alert}\n")),
            "{alert} has no test"
        );
    }
    let out = Command::new("promtool")
        .args(["check", "config", "prometheus.yml"])
        .current_dir(DEPLOY)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
