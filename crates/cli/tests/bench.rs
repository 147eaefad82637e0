//! `raven bench` end to end: a real server child, real clients, exact accounting; with
//! `--compare`, the real NATS server on 127.0.0.1:4222 (skipped with a message when it is
//! not running, unless `RAVEN_REQUIRE_SERVICES=1` makes that a failure).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use raven_bench::{BenchConfig, Row, run};

const RAVEN: &str = env!("CARGO_BIN_EXE_raven");
const NATS: &str = "nats://127.0.0.1:4222";

fn config(clients: Vec<usize>, rate: u64) -> BenchConfig {
    BenchConfig {
        server: None,
        raven_binary: PathBuf::from(RAVEN),
        server_config: None,
        max: None,
        clients,
        rates: vec![rate],
        duration: Duration::from_secs(1),
        warmup: Duration::from_millis(200),
        instruments: 3,
        compare: None,
        sample_every: None,
        tls_ca: None,
    }
}

/// Every published event reached every client, nothing lost or skipped.
fn assert_exact(row: &Row) {
    assert!(row.published > 0, "{row:?}");
    assert_eq!(row.delivered, row.published * row.clients as u64, "{row:?}");
    assert_eq!((row.lost, row.gaps), (0, 0), "{row:?}");
    let l = row.latency_us;
    assert!(
        l.p50 <= l.p90 && l.p90 <= l.p99 && l.p99 <= l.p999 && l.p999 <= l.max,
        "{l:?}"
    );
}

fn nats_available() -> bool {
    if std::net::TcpStream::connect("127.0.0.1:4222").is_ok() {
        return true;
    }
    if std::env::var("RAVEN_REQUIRE_SERVICES").is_ok_and(|v| v == "1") {
        panic!("NATS required (RAVEN_REQUIRE_SERVICES=1) but nothing listens on 127.0.0.1:4222");
    }
    eprintln!("SKIPPED bench --compare: no NATS server on 127.0.0.1:4222");
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_published_event_reaches_every_client_and_is_counted() {
    let config = BenchConfig {
        rates: vec![2000, 1000],
        ..config(vec![1, 4], 0)
    };
    let mut progress = Vec::new();
    let report = run(&config, |line| progress.push(line.to_owned()))
        .await
        .unwrap();
    let rows: Vec<&Row> = report
        .rows
        .iter()
        .map(|e| e.raven.as_ref().unwrap())
        .collect();
    assert_eq!(
        rows.iter().map(|r| (r.clients, r.rate)).collect::<Vec<_>>(),
        vec![(1, 2000), (4, 1000)]
    );
    for row in rows {
        assert_exact(row);
        assert_eq!(row.published_per_s, row.published as f64);
        assert!(row.server_rss_mib.is_some_and(|m| m > 1.0));
        assert!(row.server_cpu_percent.is_some());
        assert!(row.client_cpu_percent.is_some());
        assert!(row.rss_samples.is_empty());
    }
    assert!(report.rows.iter().all(|e| e.nats.is_none()));
    assert!(
        progress
            .iter()
            .any(|l| l.starts_with("N=4: connecting 4 Raven clients")),
        "{progress:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_runs_the_same_workload_on_nats_and_sets_them_side_by_side() {
    if !nats_available() {
        return;
    }
    let config = BenchConfig {
        compare: Some(NATS.into()),
        ..config(vec![3], 1000)
    };
    let mut progress = Vec::new();
    let report = run(&config, |line| progress.push(line.to_owned()))
        .await
        .unwrap();
    let entry = &report.rows[0];
    let (raven, nats) = (entry.raven.as_ref().unwrap(), entry.nats.as_ref().unwrap());
    assert_exact(raven);
    assert_exact(nats);
    assert_eq!((nats.clients, nats.rate), (3, 1000));
    // The NATS server runs on this machine: its memory and CPU are read too.
    assert!(nats.server_rss_mib.is_some_and(|m| m > 1.0), "{nats:?}");
    assert_eq!(
        entry.deliveries_ratio,
        Some(raven.delivered_per_s / nats.delivered_per_s)
    );
    assert_eq!(
        entry.p99_ratio,
        Some(raven.latency_us.p99 as f64 / nats.latency_us.p99 as f64)
    );
    assert!(
        progress
            .iter()
            .any(|l| l.starts_with("N=3: connecting 3 NATS clients")),
        "{progress:?}"
    );
    let table = report.table();
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[2].contains("Raven") && lines[3].contains("NATS"),
        "{table}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_sampling_reads_the_server_rss_through_the_row() {
    let config = BenchConfig {
        sample_every: Some(Duration::from_millis(200)),
        ..config(vec![2], 1000)
    };
    let report = run(&config, |_| {}).await.unwrap();
    let row = report.rows[0].raven.as_ref().unwrap();
    assert_exact(row);
    // Read every 200 ms from the end of the 200 ms warm-up to the end of publishing.
    assert!(row.rss_samples.len() >= 5, "{:?}", row.rss_samples);
    assert!(row.rss_samples.iter().all(|s| s.rss_mib > 1.0));
    assert!(
        row.rss_samples.windows(2).all(|w| w[0].t_s < w[1].t_s),
        "{:?}",
        row.rss_samples
    );
    assert!(row.rss_slope_mib_per_min.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configurations_are_refused_before_anything_starts() {
    let mismatched = BenchConfig {
        rates: vec![100, 200, 300],
        ..config(vec![1, 2], 0)
    };
    let error = run(&mismatched, |_| {}).await.unwrap_err().to_string();
    assert_eq!(
        error,
        "give one rate, or one per client count (3 rates for 2 client counts)"
    );
    let error = run(&config(vec![0], 100), |_| {})
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(error, "client counts must be at least 1");
}

#[test]
fn cli_prints_a_table_and_writes_json_markdown_and_svg() {
    let dir = std::env::temp_dir().join(format!("raven-bench-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (json, markdown, svg) = (
        dir.join("bench.json"),
        dir.join("bench.md"),
        dir.join("bench.svg"),
    );
    let out = Command::new(RAVEN)
        .args([
            "bench",
            "--clients",
            "1,2",
            "--rate",
            "500",
            "--duration",
            "1s",
            "--warmup",
            "200ms",
            "--instruments",
            "2",
        ])
        .arg("--json")
        .arg(&json)
        .arg("--markdown")
        .arg(&markdown)
        .arg("--svg")
        .arg(&svg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(
        table.lines().nth(1).unwrap().contains("deliveries/s"),
        "{table}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let row = &report["rows"][1]["raven"];
    assert_eq!(row["clients"], 2);
    assert_eq!(row["lost"], 0);
    assert_eq!(
        row["delivered"].as_u64().unwrap(),
        2 * row["published"].as_u64().unwrap()
    );
    let markdown = std::fs::read_to_string(&markdown).unwrap();
    let header = markdown.lines().nth(2).unwrap();
    assert!(
        header.starts_with("| N | system | target/s |"),
        "{markdown}"
    );
    let first = markdown.lines().nth(4).unwrap();
    assert!(first.starts_with("| 1 | Raven | 500 |"), "{markdown}");
    let svg = std::fs::read_to_string(&svg).unwrap();
    assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
    assert!(svg.trim_end().ends_with("</svg>"));
    assert!(svg.contains(">N=1</text>") && svg.contains(">N=2</text>"));
    // Two points per latency percentile and two for throughput: one per N.
    assert_eq!(svg.matches("<circle").count(), 8, "{svg}");
    std::fs::remove_dir_all(&dir).unwrap();

    let out = Command::new(RAVEN)
        .args(["bench", "--duration", "ten"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid duration \"ten\""));
    let out = Command::new(RAVEN)
        .args(["bench", "--soak", "1m", "--compare", NATS])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot be used with"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_mode_steps_the_rate_up_to_the_cap_and_reports_the_highest_sustained() {
    let config = BenchConfig {
        duration: Duration::from_millis(400),
        warmup: Duration::from_millis(100),
        instruments: 2,
        // 500, 750, 1125, 1687; the next step (2530) would pass the cap.
        max: Some(2000),
        ..config(vec![2], 500)
    };
    let mut progress = Vec::new();
    let report = run(&config, |line| progress.push(line.to_owned()))
        .await
        .unwrap();
    let steps: Vec<&String> = progress
        .iter()
        .filter(|l| l.contains("deliveries/s, p50"))
        .collect();
    assert_eq!(steps.len(), 4, "{progress:?}");
    assert_eq!(report.rows.len(), 1);
    assert!(report.max);
    let row = report.rows[0].raven.as_ref().unwrap();
    assert_eq!((row.clients, row.rate, row.lost), (2, 1687, 0));
    assert_eq!(row.delivered, 2 * row.published);
    assert!(row.published_per_s >= 0.97 * 1687.0, "{row:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_on_tls_is_benched_over_tls_exactly() {
    let dir = raven_testkit::scratch_dir!("bench-tls");
    let ca = raven_testkit::tls::Authority::new("Raven bench CA");
    let server = ca.issue(&dir, "server", false);
    let toml = dir.join("tls.toml");
    std::fs::write(
        &toml,
        format!(
            "[tls]\ncert = {:?}\nkey = {:?}\n",
            server.cert.to_str().unwrap(),
            server.key.to_str().unwrap()
        ),
    )
    .unwrap();
    let config = BenchConfig {
        server_config: Some(toml),
        tls_ca: Some(ca.write(&dir, "ca")),
        ..config(vec![2], 1000)
    };
    let report = run(&config, |_| {}).await.unwrap();
    assert_exact(report.rows[0].raven.as_ref().unwrap());
}
