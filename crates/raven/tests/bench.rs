//! `raven bench` end to end: a real server child, real clients, exact accounting.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use raven::bench::{BenchConfig, run};

const RAVEN: &str = env!("CARGO_BIN_EXE_raven");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_published_event_reaches_every_client_and_is_counted() {
    let config = BenchConfig {
        server: None,
        raven_binary: PathBuf::from(RAVEN),
        server_config: None,
        max: None,
        clients: vec![1, 4],
        rate: 2000,
        duration: Duration::from_secs(1),
        warmup: Duration::from_millis(200),
        instruments: 3,
    };
    let mut progress = Vec::new();
    let report = run(&config, |line| progress.push(line.to_owned()))
        .await
        .unwrap();
    assert_eq!(
        report.rows.iter().map(|r| r.clients).collect::<Vec<_>>(),
        vec![1, 4]
    );
    for row in &report.rows {
        assert!(row.published > 0);
        assert_eq!(row.published_per_s, row.published as f64);
        assert_eq!(row.delivered, row.published * row.clients as u64, "{row:?}");
        assert_eq!((row.lost, row.gaps), (0, 0));
        let l = row.latency_us;
        assert!(
            l.p50 <= l.p90 && l.p90 <= l.p99 && l.p99 <= l.p999 && l.p999 <= l.max,
            "{l:?}"
        );
        assert!(row.server_rss_mib.is_some_and(|m| m > 1.0));
        assert!(row.server_cpu_percent.is_some());
    }
    assert!(
        progress
            .iter()
            .any(|l| l.starts_with("N=4: connecting 4 clients")),
        "{progress:?}"
    );
}

#[test]
fn cli_prints_a_table_and_writes_json() {
    let json = std::env::temp_dir().join(format!("raven-bench-{}.json", std::process::id()));
    let out = Command::new(RAVEN)
        .args([
            "bench",
            "--clients",
            "2",
            "--rate",
            "500",
            "--duration",
            "1s",
            "--warmup",
            "200ms",
            "--instruments",
            "2",
            "--json",
        ])
        .arg(&json)
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
    let row = &report["rows"][0];
    assert_eq!(row["clients"], 2);
    assert_eq!(row["lost"], 0);
    assert_eq!(
        row["delivered"].as_u64().unwrap(),
        2 * row["published"].as_u64().unwrap()
    );
    let out = Command::new(RAVEN)
        .args(["bench", "--duration", "ten"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid duration \"ten\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_mode_steps_the_rate_up_to_the_cap_and_reports_the_highest_sustained() {
    let config = BenchConfig {
        server: None,
        raven_binary: PathBuf::from(RAVEN),
        server_config: None,
        clients: vec![2],
        rate: 500,
        duration: Duration::from_millis(400),
        warmup: Duration::from_millis(100),
        instruments: 2,
        // 500, 750, 1125, 1687; the next step (2530) would pass the cap.
        max: Some(2000),
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
    let row = &report.rows[0];
    assert_eq!((row.clients, row.rate, row.lost), (2, 1687, 0));
    assert_eq!(row.delivered, 2 * row.published);
    assert!(row.published_per_s >= 0.97 * 1687.0, "{row:?}");
}
