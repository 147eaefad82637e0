//! The HTTP listener as the tests that read it see it: a plain `GET`, and `/metrics`
//! read with an OpenMetrics parser as Prometheus reads it. (In `scrape/mod.rs` so that
//! cargo does not build it as a test of its own; only the tests that scrape include it.)

use std::collections::BTreeMap;
use std::net::SocketAddr;

use openmetrics_parser::OpenMetricsValue;
use openmetrics_parser::openmetrics::parse_openmetrics;
use raven_server::app::RunningServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `GET path` over HTTP/1.1: the status and the body.
pub async fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    get_with(addr, path, "").await
}

/// `GET path` with `headers` (each line ending in CRLF), e.g. an `Authorization`.
pub async fn get_with(
    addr: SocketAddr,
    path: &str,
    headers: &str,
) -> std::io::Result<(u16, String)> {
    let mut tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: raven\r\n{headers}Connection: close\r\n\r\n")
            .as_bytes(),
    )
    .await?;
    let mut raw = Vec::new();
    tcp.read_to_end(&mut raw).await?;
    let text = String::from_utf8(raw).expect("UTF-8 answer");
    let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
    let status = head
        .split_whitespace()
        .nth(1)
        .expect("a status")
        .parse()
        .unwrap();
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    Ok((
        status,
        if chunked {
            dechunked(body)
        } else {
            body.to_owned()
        },
    ))
}

/// A body sent in chunks (a streamed answer), joined.
fn dechunked(mut body: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").expect("a chunk size line");
        let size = usize::from_str_radix(size.trim(), 16).expect("a hex chunk size");
        if size == 0 {
            return out;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
}

/// `/metrics` as Prometheus reads it: every sample as `name` or `name{k="v",…}` → value
/// (counters under their family name, without `_total`; labels in name order).
pub async fn scrape(server: &RunningServer) -> BTreeMap<String, f64> {
    let (status, body) = get(server.http_addr().expect("HTTP on"), "/metrics")
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    samples(&body)
}

/// An exposition's samples, keyed as [`scrape`] keys them.
pub fn samples(body: &str) -> BTreeMap<String, f64> {
    let exposition = parse_openmetrics(body).unwrap_or_else(|e| panic!("{e:?} in\n{body}"));
    let mut samples = BTreeMap::new();
    for (name, family) in &exposition.families {
        for sample in family.iter_samples() {
            let labels: Vec<String> = sample
                .get_labelset()
                .map(|set| set.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect())
                .unwrap_or_default();
            let key = if labels.is_empty() {
                name.clone()
            } else {
                format!("{name}{{{}}}", labels.join(","))
            };
            let value = match &sample.value {
                OpenMetricsValue::Counter(c) => c.value.as_f64(),
                OpenMetricsValue::Gauge(g) => g.as_f64(),
                OpenMetricsValue::Info => 1.0,
                OpenMetricsValue::Histogram(h) => {
                    for bucket in &h.buckets {
                        samples.insert(
                            format!("{key}_bucket{{le=\"{}\"}}", bucket.upper_bound),
                            bucket.count.as_f64(),
                        );
                    }
                    samples.insert(format!("{key}_sum"), h.sum.map_or(0.0, |s| s.as_f64()));
                    h.count.unwrap_or(0) as f64
                }
                other => panic!("{key}: unexpected {other:?}"),
            };
            samples.insert(key, value);
        }
    }
    samples
}
