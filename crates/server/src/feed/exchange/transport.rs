//! The connectors' sockets: a WebSocket or one HTTP/1.1 GET over plain TCP (`ws://`,
//! `http://`: the mock exchange in tests) or TLS (`wss://`, `https://`: rustls with ring
//! and the webpki roots). Everything has a deadline; nothing here retries (the
//! connection loop and the snapshot client decide when to try again).

use std::io;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::net::MaybeTls;

/// The largest REST body read (a 5,000-level depth snapshot is ~300 KB).
const MAX_BODY: usize = 16 << 20;
/// The largest WebSocket message or frame accepted; larger is a protocol error.
pub const MAX_MESSAGE: usize = 4 << 20;

/// A URL the connectors can reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `wss`/`https`.
    pub tls: bool,
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
}

impl Target {
    /// Parses `ws://`, `wss://`, `http://` or `https://` URLs.
    pub fn parse(url: &str) -> io::Result<Target> {
        let bad = || io::Error::new(io::ErrorKind::InvalidInput, format!("unusable URL {url:?}"));
        let (scheme, rest) = url.split_once("://").ok_or_else(bad)?;
        let tls = match scheme {
            "ws" | "http" => false,
            "wss" | "https" => true,
            _ => return Err(bad()),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (h, p.parse().map_err(|_| bad())?),
            None => (authority, if tls { 443 } else { 80 }),
        };
        if host.is_empty() {
            return Err(bad());
        }
        Ok(Target {
            tls,
            host: host.to_owned(),
            port,
            path: path.to_owned(),
        })
    }
}

/// A connector's socket.
pub type Stream = MaybeTls<TcpStream>;

fn tls_config(alpn: &[u8]) -> Arc<rustls::ClientConfig> {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
        // ring supports the default versions; this cannot fail (invariant).
        .expect("ring supports TLS 1.2 and 1.3");
    if !alpn.is_empty() {
        config.alpn_protocols = vec![alpn.to_vec()];
    }
    Arc::new(config)
}

/// Opens TCP, then TLS when the target asks for it.
async fn open(target: &Target, alpn: &'static [u8], deadline: Duration) -> io::Result<Stream> {
    static WS: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    static HTTP: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    let timed_out = || {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!("{}:{} did not answer in time", target.host, target.port),
        )
    };
    let tcp = tokio::time::timeout(
        deadline,
        TcpStream::connect((target.host.as_str(), target.port)),
    )
    .await
    .map_err(|_| timed_out())??;
    tcp.set_nodelay(true)?;
    if !target.tls {
        return Ok(MaybeTls::Plain(tcp));
    }
    let config = if alpn.is_empty() {
        WS.get_or_init(|| tls_config(b""))
    } else {
        HTTP.get_or_init(|| tls_config(alpn))
    };
    let name = rustls::pki_types::ServerName::try_from(target.host.clone())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let tls = tokio::time::timeout(
        deadline,
        TlsConnector::from(config.clone()).connect(name, tcp),
    )
    .await
    .map_err(|_| timed_out())??;
    Ok(MaybeTls::Tls(Box::new(tokio_rustls::TlsStream::Client(
        tls,
    ))))
}

/// Opens a WebSocket to `url` within `deadline`.
pub async fn websocket(url: &str, deadline: Duration) -> io::Result<WebSocketStream<Stream>> {
    let target = Target::parse(url)?;
    let stream = open(&target, b"", deadline).await?;
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE));
    let handshake = tokio_tungstenite::client_async_with_config(url, stream, Some(config));
    let (ws, _) = tokio::time::timeout(deadline, handshake)
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("WebSocket handshake with {url} timed out"),
            )
        })?
        .map_err(io::Error::other)?;
    Ok(ws)
}

/// A REST answer: status, the headers the connectors read, the body.
#[derive(Debug, Clone)]
pub struct Response {
    /// HTTP status.
    pub status: u16,
    /// `Retry-After` in seconds, when sent.
    pub retry_after: Option<u64>,
    /// Binance's `X-MBX-USED-WEIGHT-1M`, when sent.
    pub used_weight: Option<u32>,
    /// The body.
    pub body: Bytes,
}

/// One `GET url` within `deadline`.
pub async fn get(url: &str, deadline: Duration) -> io::Result<Response> {
    let target = Target::parse(url)?;
    let request = async {
        let stream = open(&target, b"http/1.1", deadline).await?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(io::Error::other)?;
        tokio::spawn(conn);
        let host = if (target.tls && target.port == 443) || (!target.tls && target.port == 80) {
            target.host.clone()
        } else {
            format!("{}:{}", target.host, target.port)
        };
        let req = http::Request::get(target.path.as_str())
            .header(http::header::HOST, host)
            .header(http::header::USER_AGENT, "raven")
            .body(Empty::<Bytes>::new())
            .map_err(io::Error::other)?;
        let resp = sender.send_request(req).await.map_err(io::Error::other)?;
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let retry_after = header("retry-after").and_then(|v| v.trim().parse().ok());
        let used_weight = header("x-mbx-used-weight-1m").and_then(|v| v.trim().parse().ok());
        let status = resp.status().as_u16();
        let body = Limited::new(resp.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| io::Error::other(format!("reading the body of {url}: {e}")))?
            .to_bytes();
        Ok(Response {
            status,
            retry_after,
            used_weight,
            body,
        })
    };
    tokio::time::timeout(deadline, request)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, format!("GET {url} timed out")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_their_default_ports() {
        let t = Target::parse("wss://data-stream.binance.vision/stream").unwrap();
        assert_eq!(
            t,
            Target {
                tls: true,
                host: "data-stream.binance.vision".into(),
                port: 443,
                path: "/stream".into()
            }
        );
        let t = Target::parse("http://127.0.0.1:4000").unwrap();
        assert_eq!((t.tls, t.port, t.path.as_str()), (false, 4000, "/"));
        for bad in ["ftp://x", "ws://", "127.0.0.1:80", "ws://h:notaport/"] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }
}
