//! A WebSocket client for `--transport ws`: subscribes to the bench instruments' trades on
//! Raven's gateway (`/ws`) and counts what arrives with the same tally as the gRPC
//! clients, reading the few fields it needs of each JSON object.
//!
//! It speaks the protocol itself (RFC 6455: the upgrade, one masked text frame out,
//! unmasked frames in) and reads the frames in place from one buffer: the load
//! generator shares the machine with the server it measures, and a general-purpose
//! WebSocket library's cost per message (a buffer per message, a UTF-8 check, a poll per
//! message) would be charged to the server's latency.

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, watch};

use super::BenchError;
use super::workload::{ClientResult, Shared, Tally};

/// What one read asks the kernel for at most.
const READ_BYTES: usize = 256 << 10;
/// The largest upgrade response read before giving up on it.
const MAX_RESPONSE_BYTES: usize = 16 << 10;

const TEXT: u8 = 0x1;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

fn ws_error(why: impl std::fmt::Display) -> BenchError {
    BenchError::Stalled(format!("WebSocket: {why}"))
}

/// One client on `url` (`ws://host:port/path`) subscribed to `names`' trades.
pub(super) async fn client(
    url: String,
    names: Vec<String>,
    shared: Arc<Shared>,
    ready: oneshot::Sender<()>,
    mut finished: watch::Receiver<bool>,
) -> Result<ClientResult, BenchError> {
    let (host, path) = url
        .strip_prefix("ws://")
        .map(|rest| rest.split_once('/').unwrap_or((rest, "")))
        .ok_or_else(|| BenchError::Config(format!("not a ws:// URL: {url}")))?;
    let mut tcp = TcpStream::connect(host).await?;
    tcp.set_nodelay(true)?;
    let mut input = upgrade(&mut tcp, host, path).await?;
    let subscribe = serde_json::json!({
        "op": "subscribe", "id": 1, "instruments": names, "channel": "trades",
    });
    tcp.write_all(&client_frame(TEXT, subscribe.to_string().as_bytes()))
        .await?;
    let mut tally = Tally::new(names.len());
    let mut ready = Some(ready);
    let mut ended = false;
    loop {
        // Every whole frame read so far, then what it left (a frame's start) moved to the front.
        let mut at = 0;
        while let Some((frame, len)) = parse(&input[at..])? {
            match frame.opcode {
                TEXT => tally.json(frame.payload, &shared)?,
                PING => {
                    tcp.write_all(&client_frame(PONG, frame.payload)).await?;
                }
                CLOSE if !*finished.borrow() => return Err(closed(frame.payload)),
                CLOSE => ended = true,
                _ => {}
            }
            at += len;
        }
        input.drain(..at);
        if tally.subscribed() {
            ready.take().map(|r| r.send(()));
        }
        if *finished.borrow() && tally.complete(&shared) {
            return Ok(tally.result());
        }
        if ended {
            return Err(BenchError::Stalled(
                "the server closed a WebSocket before every trade arrived".into(),
            ));
        }
        // Reserving reallocates only while the buffer is smaller than one read.
        input.reserve(READ_BYTES);
        let read = tokio::select! {
            read = tcp.read_buf(&mut input) => read?,
            // Publishing ended: check above whether everything has arrived already.
            _ = finished.changed() => continue,
        };
        // The server closed the connection: whether that was early is checked above.
        ended |= read == 0;
    }
}

/// Sends the upgrade request and reads the `101` response; returns what followed it
/// (the first frames' bytes, if the server was quick).
async fn upgrade(tcp: &mut TcpStream, host: &str, path: &str) -> Result<Vec<u8>, BenchError> {
    // The key only has to be 16 bytes in base64; the server's accept value is not
    // checked (this client talks to the server it started, over loopback).
    let request = format!(
        "GET /{path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: cmF2ZW4tYmVuY2gtY2xpZW50\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).await?;
    let mut response = Vec::with_capacity(READ_BYTES);
    loop {
        if let Some(end) = memchr::memmem::find(&response, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&response[..end]).into_owned();
            if !head.starts_with("HTTP/1.1 101") {
                // The status line, and the body as far as it came with the head (the
                // server's reason, such as its connection limit).
                let status = head.lines().next().unwrap_or_default();
                let body = String::from_utf8_lossy(&response[end + 4..]);
                return Err(ws_error(format!(
                    "the upgrade was refused: {status} {}",
                    body.trim()
                )));
            }
            response.drain(..end + 4);
            return Ok(response);
        }
        if response.len() > MAX_RESPONSE_BYTES || tcp.read_buf(&mut response).await? == 0 {
            return Err(ws_error("no upgrade response"));
        }
    }
}

/// A frame from the server, borrowed from the input buffer.
struct Frame<'a> {
    opcode: u8,
    payload: &'a [u8],
}

/// The first frame in `input` and its length in bytes, or `None` until all of it has
/// arrived.
fn parse(input: &[u8]) -> Result<Option<(Frame<'_>, usize)>, BenchError> {
    let [first, second, ..] = *input else {
        return Ok(None);
    };
    if first & 0x80 == 0 || first & 0x0F == 0 {
        // The gateway writes every message as one frame.
        return Err(ws_error("a fragmented message"));
    }
    if second & 0x80 != 0 {
        return Err(ws_error("a masked frame from the server"));
    }
    let (header, len) = match second & 0x7F {
        126 if input.len() >= 4 => (4, u64::from(u16::from_be_bytes([input[2], input[3]]))),
        127 if input.len() >= 10 => (
            10,
            u64::from_be_bytes(input[2..10].try_into().expect("8 bytes (invariant)")),
        ),
        126 | 127 => return Ok(None),
        short => (2, u64::from(short)),
    };
    let end = usize::try_from(len)
        .ok()
        .and_then(|len| len.checked_add(header))
        .ok_or_else(|| ws_error(format!("a frame of {len} bytes")))?;
    if input.len() < end {
        return Ok(None);
    }
    let frame = Frame {
        opcode: first & 0x0F,
        payload: &input[header..end],
    };
    Ok(Some((frame, end)))
}

/// A final frame from the client: clients mask what they send (RFC 6455 §5.3).
fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    const MASK: [u8; 4] = [0x5a, 0xc3, 0x0f, 0x96];
    let mut frame = Vec::with_capacity(payload.len() + 14);
    frame.push(0x80 | opcode);
    match payload.len() {
        len @ 0..126 => frame.push(0x80 | len as u8),
        len @ 126..=0xFFFF => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&MASK);
    frame.extend(payload.iter().zip(MASK.iter().cycle()).map(|(b, m)| b ^ m));
    frame
}

/// Why the server closed: its close frame's code and reason.
fn closed(payload: &[u8]) -> BenchError {
    match payload {
        [high, low, reason @ ..] => ws_error(format!(
            "the server closed the socket ({}): {}",
            u16::from_be_bytes([*high, *low]),
            String::from_utf8_lossy(reason)
        )),
        _ => ws_error("the server closed the socket"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_parse_across_length_forms_and_wait_for_their_end() {
        let mut input = vec![0x81, 3, b'a', b'b', b'c'];
        input.extend_from_slice(&[0x81, 126, 0x01, 0x00]);
        input.extend(std::iter::repeat_n(b'x', 256));
        let (frame, len) = parse(&input).unwrap().unwrap();
        assert_eq!((frame.opcode, frame.payload, len), (TEXT, &b"abc"[..], 5));
        let (frame, len) = parse(&input[5..]).unwrap().unwrap();
        assert_eq!((frame.opcode, frame.payload.len(), len), (TEXT, 256, 260));
        assert!(parse(&input[5..input.len() - 1]).unwrap().is_none());
        assert!(parse(&input[..1]).unwrap().is_none());
        assert!(parse(&[0x01, 1, b'a']).is_err(), "a fragment");
        assert!(parse(&[0x81, 0x81, 0, 0, 0, 0, b'a']).is_err(), "masked");
    }

    #[test]
    fn client_frames_are_masked_and_unmask_to_the_payload() {
        let payload = vec![7u8; 300];
        let frame = client_frame(TEXT, &payload);
        assert_eq!(&frame[..4], &[0x81, 0x80 | 126, 0x01, 0x2c]);
        let mask = &frame[4..8];
        let unmasked: Vec<u8> = frame[8..]
            .iter()
            .zip(mask.iter().cycle())
            .map(|(b, m)| b ^ m)
            .collect();
        assert_eq!(unmasked, payload);
    }
}
