//! `raven bench` end to end: a real server child, real clients, exact accounting; with
//! `--compare`, the real NATS server on 127.0.0.1:4222 (skipped with a message when it is
//! not running, unless `RAVEN_REQUIRE_SERVICES=1` makes that a failure).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use raven_bench::{BenchConfig, Row, run};

const RAVEN: &str = env!("CARGO_BIN_EXE_raven");
const RELAY: &str = env!("CARGO_BIN_EXE_raven-tonic-relay");
const NATS: &str = "nats://127.0.0.1:4222";

fn config(clients: Vec<usize>, rate: u64) -> BenchConfig {
    BenchConfig {
        server: None,
        via_edges: Vec::new(),
        raven_binary: PathBuf::from(RAVEN),
        server_config: None,
        max: None,
        clients,
        rates: vec![rate],
        duration: Duration::from_secs(1),
        warmup: Duration::from_millis(200),
        instruments: 3,
        compare: None,
        floor: None,
        sample_every: None,
        tls_ca: None,
        websocket: false,
    }
}

/// Runs `config`, keeping its progress lines.
async fn run_logged(config: &BenchConfig) -> (raven_bench::BenchReport, Vec<String>) {
    let mut progress = Vec::new();
    let report = run(config, |line| progress.push(line.to_owned()))
        .await
        .unwrap();
    (report, progress)
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
    let (report, progress) = run_logged(&config).await;
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
            .any(|l| l == "N=4: connecting 4 Raven gRPC clients"),
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
    let (report, progress) = run_logged(&config).await;
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
async fn the_websocket_transport_runs_each_row_over_the_json_gateway_beside_grpc() {
    let config = BenchConfig {
        websocket: true,
        ..config(vec![1, 3], 1000)
    };
    let (report, progress) = run_logged(&config).await;
    for (entry, clients) in report.rows.iter().zip([1, 3]) {
        let ws = entry.websocket.as_ref().unwrap();
        assert_exact(entry.raven.as_ref().unwrap());
        // Counted from the gateway's JSON: every trade, by sequence, exactly.
        assert_exact(ws);
        assert_eq!((ws.clients, ws.rate), (clients, 1000));
        let (cpu, grpc) = (ws.server_cpu_percent, entry.raven.as_ref().unwrap());
        let per_delivery = |cpu: f64, row: &Row| cpu / row.delivered_per_s;
        let expected =
            per_delivery(cpu.unwrap(), ws) / per_delivery(grpc.server_cpu_percent.unwrap(), grpc);
        match entry.websocket_cpu_ratio {
            Some(ratio) => assert_eq!(ratio, expected),
            // A row too short for the server to use a clock tick has no ratio.
            None => assert!(!expected.is_finite(), "{entry:?}"),
        }
    }
    assert!(
        progress
            .iter()
            .any(|l| l == "N=3: connecting 3 Raven WebSocket clients"),
        "{progress:?}"
    );
    let table = report.table();
    let systems: Vec<&str> = table
        .lines()
        .skip(2)
        .take(4)
        .map(|l| l.split_whitespace().nth(1).unwrap())
        .collect();
    assert_eq!(systems, ["Raven", "WS", "Raven", "WS"], "{table}");

    // With a server of the caller's, there is no HTTP port to find the gateway on.
    let remote = BenchConfig {
        server: Some("http://127.0.0.1:1".into()),
        ..config
    };
    let error = run(&remote, |_| {}).await.unwrap_err().to_string();
    assert!(
        error.starts_with("--transport ws runs servers of its own"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floor_runs_the_same_workload_on_the_plain_tonic_relay_exactly() {
    let config = BenchConfig {
        floor: Some(PathBuf::from(RELAY)),
        ..config(vec![1, 3], 1000)
    };
    let (report, progress) = run_logged(&config).await;
    for (entry, clients) in report.rows.iter().zip([1, 3]) {
        let floor = entry.floor.as_ref().unwrap();
        assert_exact(entry.raven.as_ref().unwrap());
        assert_exact(floor);
        assert_eq!((floor.clients, floor.rate), (clients, 1000));
        // A child of the bench: its memory and CPU are read like Raven's.
        assert!(floor.server_rss_mib.is_some_and(|m| m > 1.0), "{floor:?}");
        assert!(floor.server_cpu_percent.is_some(), "{floor:?}");
        // Ratios stay Raven over NATS; there is no NATS row here.
        assert_eq!((entry.deliveries_ratio, entry.p99_ratio), (None, None));
    }
    assert!(
        progress
            .iter()
            .any(|l| l == "N=3: starting the plain-tonic relay"),
        "{progress:?}"
    );
    let table = report.table();
    let systems: Vec<&str> = table
        .lines()
        .skip(2)
        .map(|l| l.split_whitespace().nth(1).unwrap())
        .collect();
    assert_eq!(systems, ["Raven", "tonic", "Raven", "tonic"], "{table}");
    // The relay is stopped with its row (other tests' servers are children too).
    let relays: Vec<u32> = children(std::process::id())
        .into_iter()
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.starts_with("raven-tonic"))
        })
        .collect();
    assert_eq!(relays, Vec::<u32>::new());
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
    let (report, progress) = run_logged(&config).await;
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

/// The pids of `parent`'s children (read from /proc).
fn children(parent: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| {
            let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let ppid: u32 = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            (ppid == parent).then_some(pid)
        })
        .collect()
}

/// Whether `pid` runs (a zombie waiting to be reaped by init does not).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .next()?
                .to_owned();
            Some(state != "Z")
        })
        .unwrap_or(false)
}

#[test]
fn a_signal_or_a_kill_ends_the_bench_and_the_server_it_started() {
    use std::io::{BufRead, BufReader};

    for signal in ["TERM", "INT", "KILL"] {
        let mut bench = Command::new(RAVEN)
            .args(["bench", "--clients", "2", "--rate", "100"])
            .args(["--duration", "10m", "--warmup", "0s", "--instruments", "1"])
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut stderr = BufReader::new(bench.stderr.take().unwrap());
        // Signalled mid-row: the server up, the clients connected, publishing under way.
        let mut progress = String::new();
        while !progress.contains("publishing 100 events/s") {
            progress.clear();
            assert_ne!(stderr.read_line(&mut progress).unwrap(), 0, "bench ended");
        }
        let servers = children(bench.id());
        assert_eq!(servers.len(), 1, "{signal}: one server child: {servers:?}");
        let killed = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(bench.id().to_string())
            .status()
            .unwrap();
        assert!(killed.success());

        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = bench.try_wait().unwrap() {
                break status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{signal}: bench still runs"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
        if signal == "KILL" {
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(status.signal(), Some(9));
        } else {
            assert_eq!(status.code(), Some(1), "{signal}: {rest}");
            let name = if signal == "TERM" {
                "SIGTERM"
            } else {
                "SIGINT"
            };
            assert!(
                rest.contains(&format!(
                    "error: stopped by {name}; the servers it started are stopped"
                )),
                "{rest}"
            );
        }
        // Killed with it: by the bench itself, or by the kernel when the bench was killed.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while running(servers[0]) {
            assert!(
                std::time::Instant::now() < deadline,
                "{signal}: server {} outlived its bench",
                servers[0]
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_refused_while_connecting_fails_the_run_at_once() {
    // The publisher and two clients fit; the third client's connection is closed.
    let dir = std::env::temp_dir().join(format!("raven-bench-refused-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let server_config = dir.join("raven.toml");
    std::fs::write(&server_config, "[limits]\nmax_connections = 3\n").unwrap();
    let mut config = config(vec![5], 100);
    config.server_config = Some(server_config);
    let error = tokio::time::timeout(Duration::from_secs(60), run(&config, |_| {}))
        .await
        .expect("the run ends rather than waiting on the clients that did connect")
        .unwrap_err()
        .to_string();
    assert!(
        error.starts_with("client 3 of 5 did not subscribe: "),
        "{error}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
