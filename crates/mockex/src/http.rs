//! Just enough HTTP/1.1 for the venues' REST endpoints: one request head read from the
//! socket (after the listener has seen it is not a WebSocket upgrade), one response with
//! `Connection: close`.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A request's method and target (`/api/v3/depth?symbol=BTCUSDT&limit=1000`).
#[derive(Debug, Clone)]
pub struct Request {
    /// `GET`, …
    pub method: String,
    /// Path and query.
    pub target: String,
}

impl Request {
    /// The path without the query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    /// A query parameter's (first) value.
    pub fn query<'a>(&'a self, key: &'a str) -> Option<&'a str> {
        self.queries(key).next()
    }

    /// Every value of a repeated query parameter (`product_ids=A&product_ids=B`).
    pub fn queries<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> {
        let query = self.target.split_once('?').map_or("", |(_, q)| q);
        query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .filter(move |(k, _)| *k == key)
            .map(|(_, v)| v)
    }
}

/// Reads a request head (up to 16 KiB).
pub async fn read_request(stream: &mut TcpStream) -> std::io::Result<Request> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 || head.len() > 16 * 1024 {
            return Err(std::io::Error::other("incomplete request head"));
        }
        head.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&head);
    let mut line = text.lines().next().unwrap_or("").split(' ');
    Ok(Request {
        method: line.next().unwrap_or("").to_owned(),
        target: line.next().unwrap_or("").to_owned(),
    })
}

/// Writes a JSON response and closes.
pub async fn respond(
    stream: &mut TcpStream,
    status: u16,
    headers: &[(&str, String)],
    body: &str,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        418 => "I'm a teapot",
        429 => "Too Many Requests",
        _ => "Error",
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    out.push_str(body);
    stream.write_all(out.as_bytes()).await?;
    stream.shutdown().await
}
