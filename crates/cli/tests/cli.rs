//! The `raven` binary as a user runs it: `raven serve` in the background, client commands
//! against it, output parsed and checked.

use std::process::{Command, Output, Stdio};

use raven_book::{BookFollower, Step};
use raven_model::{
    BookDelta, BookSnapshot, EventBody, Level, LevelChange, Price, Qty, Side, SnapshotKind,
};
use raven_testkit::served::Served;
use serde_json::Value;

const RAVEN: &str = env!("CARGO_BIN_EXE_raven");

/// A directory of its own for each server: its `./data` (SQLite file, spill) goes there.
fn scratch_dir() -> std::path::PathBuf {
    raven_testkit::scratch_dir!("cli")
}

fn serve(extra: &[&str]) -> Served {
    serve_in(&scratch_dir(), extra)
}

/// `raven serve` with `dir` as its working directory (for a `raven.toml` placed there).
fn serve_in(dir: &std::path::Path, extra: &[&str]) -> Served {
    let mut command = Command::new(RAVEN);
    command
        .current_dir(dir)
        .args(["serve", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"])
        .args(extra)
        .env("RAVEN_LOG", "warn")
        .stderr(Stdio::inherit());
    Served::start(command)
}

fn raven(args: &[&str], url: &str) -> Output {
    Command::new(RAVEN)
        .args(args)
        .args(["--server", url])
        .output()
        .unwrap()
}

fn json_lines(out: &Output) -> Vec<Value> {
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// An integer the JSON form writes as a decimal string (times, sequences: they pass 2⁵³).
fn number(v: &Value) -> u64 {
    v.as_str()
        .unwrap_or_else(|| panic!("{v} is not a decimal string"))
        .parse()
        .unwrap()
}

fn levels(v: &Value) -> Vec<Level> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|pair| Level {
            price: pair[0].as_str().unwrap().parse::<Price>().unwrap(),
            qty: pair[1].as_str().unwrap().parse::<Qty>().unwrap(),
        })
        .collect()
}

#[test]
fn serve_subscribe_snapshot_instruments_as_a_user_would() {
    let server = serve(&["--rate", "3000", "--seed", "5"]);

    let instruments = json_lines(&raven(&["instruments", "--json"], &server.url()));
    assert_eq!(instruments.len(), 8);
    assert_eq!(instruments[0]["name"], "SIM:BTC-USD");
    assert_eq!(instruments[0]["tick_size"], "0.01");
    assert_eq!(instruments[5]["tick_size"], "0.0000001");

    // A book rebuilt from `subscribe --json` output: snapshot first, contiguous deltas,
    // and prices that are exact multiples of the tick.
    let lines = json_lines(&raven(
        &["subscribe", "SIM:BTC-USD", "--json", "--count", "300"],
        &server.url(),
    ));
    let events: Vec<&Value> = lines
        .iter()
        .filter(|l| l["type"] != "snapshot_end")
        .collect();
    assert_eq!(events.len(), 300);
    assert_eq!(events[0]["type"], "snapshot");
    let mut book = BookFollower::new();
    let first = number(&events[0]["sequence"]);
    let snapshot = BookSnapshot {
        bids: levels(&events[0]["bids"]),
        asks: levels(&events[0]["asks"]),
        kind: SnapshotKind::Initial,
    };
    assert!(snapshot.bids.len() >= 20 && snapshot.asks.len() >= 20);
    book.apply(first, &EventBody::Snapshot(snapshot)).unwrap();
    for e in &events[1..] {
        assert_eq!(e["type"], "delta");
        let mut changes = Vec::new();
        for (side, key) in [(Side::Bid, "bids"), (Side::Ask, "asks")] {
            for l in levels(&e[key]) {
                assert_eq!(
                    l.price.units() % 10_000_000,
                    0,
                    "price {} off the 0.01 tick",
                    l.price
                );
                changes.push(LevelChange {
                    side,
                    price: l.price,
                    qty: l.qty,
                });
            }
        }
        // Contiguous: the follower refuses a skipped sequence.
        let sequence = number(&e["sequence"]);
        let delta = EventBody::Delta(BookDelta { changes });
        assert_eq!(book.apply(sequence, &delta), Ok(Step::Applied));
    }

    let trades = json_lines(&raven(
        &[
            "subscribe",
            "SIM:ETH-USD",
            "--channel",
            "trades",
            "--json",
            "--count",
            "20",
        ],
        &server.url(),
    ));
    let trades: Vec<&Value> = trades.iter().filter(|l| l["type"] == "trade").collect();
    assert_eq!(trades.len(), 20);
    for t in &trades {
        assert!(t["qty"].as_str().unwrap().parse::<Qty>().unwrap() > Qty::ZERO);
        assert!(["buy", "sell"].contains(&t["aggressor"].as_str().unwrap()));
    }

    let snap = json_lines(&raven(
        &["snapshot", "SIM:PEPE-USD", "--depth", "5", "--json"],
        &server.url(),
    ));
    let (bids, asks) = (levels(&snap[0]["bids"]), levels(&snap[0]["asks"]));
    assert_eq!((bids.len(), asks.len()), (5, 5));
    assert!(bids.windows(2).all(|w| w[0].price > w[1].price));
    assert!(asks.windows(2).all(|w| w[0].price < w[1].price));
    assert!(bids[0].price < asks[0].price);

    // Human output reads as a ladder.
    let human = raven(&["snapshot", "SIM:BTC-USD", "--depth", "3"], &server.url());
    let text = String::from_utf8(human.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1 + 1 + 3 + 1 + 3, "{text}");
    assert!(
        lines[1].contains("BID QTY") && lines[1].contains("PRICE") && lines[1].contains("ASK QTY")
    );
    assert!(lines[5].contains("spread"));

    // Errors: one line, non-zero exit, no panic.
    for (args, expected) in [
        (
            vec!["snapshot", "SIM:NOPE"],
            "error: NOT_FOUND: unknown instrument \"SIM:NOPE\"",
        ),
        (
            vec!["subscribe", "not-an-instrument"],
            "error: INVALID_ARGUMENT: invalid instrument name",
        ),
    ] {
        let out = raven(&args, &server.url());
        assert_eq!(out.status.code(), Some(1));
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.starts_with(expected), "{stderr}");
    }
    let out = raven(&["instruments"], "http://127.0.0.1:1");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8(out.stderr)
            .unwrap()
            .starts_with("error: cannot connect to http://127.0.0.1:1")
    );

    // The HTTP listener the first line named answers as a probe would ask it.
    let http = server.http_addr().expect("HTTP on");
    let mut probe = std::net::TcpStream::connect(http).unwrap();
    std::io::Write::write_all(
        &mut probe,
        b"GET /readyz HTTP/1.1\r\nHost: raven\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut probe, &mut answer).unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 200 OK\r\n") && answer.ends_with("ready\n"),
        "{answer}"
    );

    // `raven health` for scripts and container health checks.
    let healthy = raven(&["health"], &server.url());
    assert_eq!(healthy.status.code(), Some(0));
    assert_eq!(
        String::from_utf8(healthy.stdout).unwrap(),
        "raven.v1.Market: SERVING\n"
    );
    let nobody = raven(&["health"], "http://127.0.0.1:1");
    assert_eq!(nobody.status.code(), Some(1));
    assert!(
        String::from_utf8(nobody.stderr)
            .unwrap()
            .starts_with("error: cannot connect to http://127.0.0.1:1")
    );

    // SIGTERM: a clean exit.
    assert!(server.terminate().success());
}

#[test]
fn config_check_and_show_as_an_operator_would() {
    let dir = scratch_dir();
    let file = dir.join("raven.toml");
    std::fs::write(
        &file,
        "[store]\nurl = \"postgres://raven:s3cret@127.0.0.1:5432/md\"\n[sim]\nrate = 500\n",
    )
    .unwrap();
    let checked = Command::new(RAVEN)
        .args(["config", "check", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(checked.status.code(), Some(0));
    assert_eq!(
        String::from_utf8(checked.stdout).unwrap(),
        format!("{}: ok\n", file.display())
    );

    // Every default written out, the password hidden; what is shown checks as valid.
    let shown = Command::new(RAVEN)
        .args(["config", "show", "--config", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(shown.status.code(), Some(0));
    let text = String::from_utf8(shown.stdout).unwrap();
    assert!(!text.contains("s3cret"), "{text}");
    assert!(
        text.contains("url = \"postgres://raven:***@127.0.0.1:5432/md\""),
        "{text}"
    );
    assert!(
        text.contains("rate = 500") && text.contains("listen = \"127.0.0.1:50052\""),
        "{text}"
    );
    // The connection limit derives from the open-file limit, which raven raises to the
    // hard limit: all of it but 1,024 descriptors.
    let hard = rustix::process::getrlimit(rustix::process::Resource::Nofile).maximum;
    let max = hard.map_or(0, |hard| hard.saturating_sub(1024).max(hard / 2));
    assert!(
        text.contains(&format!("\nmax_connections = {max}\n")),
        "{text}"
    );
    let again = dir.join("shown.toml");
    std::fs::write(&again, &text).unwrap();
    let rechecked = Command::new(RAVEN)
        .args(["config", "check", again.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(rechecked.status.code(), Some(0));

    // A bad value: exit 1, the field and the value named.
    std::fs::write(&file, "[http]\nlisten = \"everywhere\"\n").unwrap();
    let bad = Command::new(RAVEN)
        .args(["config", "check", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert_eq!(
        String::from_utf8(bad.stderr).unwrap(),
        "error: invalid config value http.listen = everywhere: expected IP:PORT, e.g. 127.0.0.1:50052, or \"off\"\n"
    );
}

#[test]
fn bad_configuration_is_one_clear_line() {
    let dir = std::env::temp_dir().join(format!("raven-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("raven.toml");
    std::fs::write(&file, "[server]\nlisen = \"127.0.0.1:1\"\n").unwrap();
    let out = Command::new(RAVEN)
        .args(["serve", "--config", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.starts_with("error: invalid config file")
            && stderr.contains("unknown field `lisen`"),
        "{stderr}"
    );
    let out = Command::new(RAVEN)
        .args(["serve", "--rate", "0", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8(out.stderr).unwrap().trim(),
        "error: invalid config value sim.rate = 0: must be between 1 and 10000000 events/s"
    );
}

#[test]
fn history_book_at_and_replay_read_back_what_was_recorded() {
    let served = serve(&["--rate", "5000"]);
    let url = served.url();
    let url = url.as_str();
    std::thread::sleep(std::time::Duration::from_millis(800));

    // JSON lines, limited: trades with exact decimal strings, contiguous from 1.
    let trades = json_lines(&raven(
        &[
            "history",
            "SIM:BTC-USD",
            "--channel",
            "trades",
            "--limit",
            "5",
        ],
        url,
    ));
    assert_eq!(trades.len(), 5);
    for (i, t) in trades.iter().enumerate() {
        assert_eq!(t["type"], "trade");
        assert_eq!(number(&t["sequence"]), i as u64 + 1);
        assert!(
            t["price"]
                .as_str()
                .unwrap()
                .parse::<raven_model::Price>()
                .is_ok()
        );
    }

    // CSV to a file: a header, then rows whose sequences never go backwards per channel.
    let dir = scratch_dir();
    let csv = dir.join("btc.csv");
    let out = raven(
        &[
            "history",
            "SIM:BTC-USD",
            "--channel",
            "book,trades",
            "--format",
            "csv",
            "--out",
            csv.to_str().unwrap(),
        ],
        url,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("exported "));
    let text = std::fs::read_to_string(&csv).unwrap();
    let mut lines = text.lines();
    assert_eq!(
        lines.next().unwrap(),
        "instrument,channel,sequence,exchange_time,receive_time,publish_time,type,side,price,qty,detail"
    );
    let mut last = std::collections::HashMap::new();
    let mut rows = 0;
    for line in lines {
        let cols: Vec<&str> = line.split(',').collect();
        assert_eq!(cols[0], "SIM:BTC-USD");
        let seq: u64 = cols[2].parse().unwrap();
        let prev = last.insert(cols[1].to_owned(), seq).unwrap_or(0);
        assert!(seq == prev || seq == prev + 1, "{line}");
        assert!(
            matches!(cols[6], "snapshot" | "delta" | "trade" | "status"),
            "{line}"
        );
        rows += 1;
    }
    assert!(rows > 100, "{rows} rows");

    // The book as it was at the last trade's publish time, three levels a side.
    let at = trades[4]["publish_time"].as_str().unwrap().to_owned();
    let book = json_lines(&raven(
        &[
            "book-at",
            "SIM:BTC-USD",
            "--at",
            &at,
            "--depth",
            "3",
            "--json",
        ],
        url,
    ));
    assert_eq!(book[0]["bids"].as_array().unwrap().len(), 3);
    assert_eq!(book[0]["asks"].as_array().unwrap().len(), 3);
    assert!(number(&book[0]["publish_time"]) <= at.parse::<u64>().unwrap());

    // Replay as fast as possible: the same trades as the history.
    let replayed = json_lines(&raven(
        &[
            "replay",
            "SIM:BTC-USD",
            "--channel",
            "trades",
            "--speed",
            "0",
            "--limit",
            "5",
            "--json",
        ],
        url,
    ));
    assert_eq!(replayed, trades);
    let stats = raven(
        &[
            "replay",
            "SIM:BTC-USD",
            "--channel",
            "trades",
            "--speed",
            "0",
            "--limit",
            "5",
            "--stats",
        ],
        url,
    );
    assert!(stats.status.success());
    assert!(
        String::from_utf8_lossy(&stats.stdout).starts_with("replayed 5 events in "),
        "{}",
        String::from_utf8_lossy(&stats.stdout)
    );

    // Errors: one line naming the status, exit 1; a bad time is a usage error, exit 2.
    let out = raven(
        &["history", "SIM:BTC-USD", "--from", "10", "--to", "5"],
        url,
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "error: INVALID_ARGUMENT: from (10) is after to (5)"
    );
    let out = raven(&["book-at", "SIM:BTC-USD", "--at", "yesterday"], url);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid time \"yesterday\""));
}

/// Issue 10, finding 5: a second SIGTERM (or Ctrl-C) ends a drain at once. A client
/// that subscribes with a flow-control window of one byte, takes that byte and never
/// opens the window again holds the drain open (the rest of its snapshot is queued
/// before the end of its stream, which can never be sent); the drain would wait 60 s.
#[test]
fn a_second_signal_exits_at_once() {
    let dir = scratch_dir();
    std::fs::write(
        dir.join("raven.toml"),
        "[shutdown]\ndrain_secs = 60\ntimeout_secs = 120\n",
    )
    .unwrap();
    let mut served = serve_in(&dir, &["--config", "raven.toml"]);
    let addr = served.addr();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let _stuck = runtime.block_on(async {
        let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let (client, connection) = h2::client::Builder::new()
            .initial_window_size(1)
            .handshake::<_, bytes::Bytes>(tcp)
            .await
            .unwrap();
        tokio::spawn(connection);
        let (client, body, response) =
            raven_testkit::raw_h2::subscribe_to_book(client, &addr).await;
        // The first byte has come: the rest is queued behind the closed window. (With a
        // window of zero, a drain that came before anything was queued could end the
        // stream with its trailers, which flow control does not hold.)
        let mut stream = response.await.unwrap().into_body();
        assert_eq!(stream.data().await.unwrap().unwrap().len(), 1);
        (client, body, stream)
    });
    let pid = served.child().id().to_string();
    let signal = |name: &str| Command::new("kill").args([name, &pid]).status().unwrap();
    assert!(signal("-TERM").success());
    std::thread::sleep(std::time::Duration::from_secs(1));
    assert!(
        served.child().try_wait().unwrap().is_none(),
        "the drain ended on its own: nothing held it"
    );
    assert!(signal("-INT").success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(status) = served.child().try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the second signal did not end the server"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(130));
}

#[test]
fn serve_a_binance_feed_from_a_config_file_as_a_user_would() {
    // The venue: the mock exchange, on a runtime of its own for the test's length.
    let venue = tokio::runtime::Runtime::new().unwrap();
    let mock = venue
        .block_on(raven_mockex::MockExchange::start(
            raven_mockex::MockConfig::spot(&["BTCUSDT", "ETHUSDT"]),
        ))
        .unwrap();
    let dir = scratch_dir();
    let config = dir.join("binance.toml");
    std::fs::write(
        &config,
        format!(
            "[store]\nurl = \"off\"\n\n[[feeds]]\nvenue = \"binance\"\nsymbols = [\"BTCUSDT\", \"ETHUSDT\"]\nws_url = \"{}\"\nrest_url = \"{}\"\n",
            mock.ws_url(),
            mock.rest_url()
        ),
    )
    .unwrap();
    let server = serve_in(&dir, &["--config", config.to_str().unwrap()]);
    let listed = json_lines(&raven(&["instruments", "--json"], &server.url()));
    let names: Vec<&str> = listed.iter().map(|i| i["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["BINANCE:BTCUSDT", "BINANCE:ETHUSDT"]);
    // The book arrives once the connector has synced it: a ladder best first.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let snapshot = loop {
        let out = raven(
            &["snapshot", "BINANCE:BTCUSDT", "--depth", "3", "--json"],
            &server.url(),
        );
        if out.status.success() {
            let lines = json_lines(&out);
            if !lines[0]["bids"].as_array().unwrap().is_empty() {
                break lines[0].clone();
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "BINANCE:BTCUSDT never synced"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let (bids, asks) = (levels(&snapshot["bids"]), levels(&snapshot["asks"]));
    assert_eq!((bids.len(), asks.len()), (3, 3));
    assert!(bids[0].price < asks[0].price && bids[1].price < bids[0].price);
    assert!(server.terminate().success());
    assert_eq!(mock.stats().violations, Vec::<String>::new());
}

#[test]
fn serve_and_clients_over_mutual_tls_as_a_user_would() {
    let dir = scratch_dir();
    let ca = raven_testkit::tls::Authority::new("Raven test CA");
    let ca_pem = ca.write(&dir, "ca");
    let server_pair = ca.issue(&dir, "server", false);
    let client = ca.issue(&dir, "client", false);
    let path = |p: &std::path::Path| p.to_str().unwrap().to_owned();
    let server = serve(&[
        "--tls-cert",
        &path(&server_pair.cert),
        "--tls-key",
        &path(&server_pair.key),
        "--tls-ca",
        &path(&ca_pem),
    ]);
    let url = format!("https://{}", server.addr());
    let with_cert = [
        "--tls-ca",
        &path(&ca_pem),
        "--tls-cert",
        &path(&client.cert),
        "--tls-key",
        &path(&client.key),
    ];

    let mut args = vec!["instruments", "--json"];
    args.extend(with_cert);
    let instruments = json_lines(&raven(&args, &url));
    assert_eq!(instruments.len(), 8);
    let mut args = vec!["health"];
    args.extend(with_cert);
    let health = raven(&args, &url);
    assert!(health.status.success(), "{health:?}");
    assert_eq!(
        String::from_utf8_lossy(&health.stdout),
        "raven.v1.Market: SERVING\n"
    );

    // Without a client certificate: refused, one line, exit 1.
    let refused = raven(&["instruments", "--tls-ca", &path(&ca_pem)], &url);
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    // The client sees the alert, or only the closed connection (UNKNOWN or CANCELLED),
    // depending on timing.
    assert!(
        stderr.starts_with("error: ") && stderr.contains("transport error"),
        "{stderr}"
    );
    // TLS flags with a plaintext URL are a mistake, said as such.
    let plain = raven(
        &["instruments", "--tls-ca", &path(&ca_pem)],
        &format!("http://{}", server.addr()),
    );
    assert_eq!(plain.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&plain.stderr),
        "error: --tls-ca and --tls-cert are for TLS: use an https:// server URL\n"
    );
    assert!(server.terminate().success());
}

#[test]
fn api_keys_added_called_and_reloaded_as_an_operator_would() {
    let dir = scratch_dir();
    let keys = dir.join("keys.toml");
    let add = |id: &str, roles: &str, instruments: Option<&str>| {
        let mut command = Command::new(RAVEN);
        command.args([
            "keys",
            "add",
            "--file",
            keys.to_str().unwrap(),
            "--id",
            id,
            "--role",
            roles,
        ]);
        if let Some(instruments) = instruments {
            command.args(["--instruments", instruments]);
        }
        let out = command.output().unwrap();
        assert!(out.status.success(), "{out:?}");
        let secret = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        assert!(secret.starts_with("rvn_") && secret.len() == 68, "{secret}");
        secret
    };
    let reader = add("reader", "subscribe", Some("SIM:BTC-USD,SIM:ETH-USD"));
    // The file holds the hash, never the secret.
    let written = std::fs::read_to_string(&keys).unwrap();
    assert!(!written.contains(&reader), "{written}");
    // A bad role is refused before anything is written.
    let bad = Command::new(RAVEN)
        .args([
            "keys",
            "add",
            "--file",
            keys.to_str().unwrap(),
            "--id",
            "x",
            "--role",
            "root",
        ])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert_eq!(std::fs::read_to_string(&keys).unwrap(), written);
    // A pattern the server would refuse is taken out again.
    let bad = Command::new(RAVEN)
        .args([
            "keys",
            "add",
            "--file",
            keys.to_str().unwrap(),
            "--id",
            "y",
            "--role",
            "subscribe",
            "--instruments",
            "SIM:*-USD",
        ])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("the key was not added"),
        "{bad:?}"
    );
    assert_eq!(std::fs::read_to_string(&keys).unwrap(), written);

    std::fs::write(
        dir.join("raven.toml"),
        format!("[auth]\nkeys_file = {:?}\n", keys.to_str().unwrap()),
    )
    .unwrap();
    let mut server = serve_in(&dir, &["--config", "raven.toml"]);
    let url = server.url();
    let listed = json_lines(&raven(&["instruments", "--json", "--key", &reader], &url));
    let names: Vec<&str> = listed.iter().map(|i| i["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["SIM:BTC-USD", "SIM:ETH-USD"]);
    let refused = raven(&["instruments"], &url);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&refused.stderr)
            .starts_with("error: UNAUTHENTICATED: an API key is required"),
        "{refused:?}"
    );

    // A key added while the server runs works after SIGHUP, not before.
    let ops = add("ops", "admin", None);
    let before = raven(&["instruments", "--key", &ops], &url);
    assert_eq!(before.status.code(), Some(1));
    let pid = server.child().id().to_string();
    assert!(
        Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let listed = loop {
        // The key from the environment, as scripts pass it.
        let out = Command::new(RAVEN)
            .args(["instruments", "--json", "--server", &url])
            .env("RAVEN_KEY", &ops)
            .output()
            .unwrap();
        if out.status.success() {
            break json_lines(&out);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the new key never worked"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(listed.len(), 8);
    assert!(server.terminate().success());
}
