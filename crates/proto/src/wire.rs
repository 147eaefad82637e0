//! The encode-once wire path. The engine encodes each event exactly once, here, into bytes
//! that are already a complete `events` entry of a `StreamResponse` (field key, length,
//! `Event` message). Concatenating any number of such entries is a valid
//! `StreamResponse`, so a subscriber's batch is assembled by queueing shared `Bytes`
//! handles — no re-encoding, no per-subscriber copy until the socket write.
//!
//! The encoder writes protobuf by hand (prost's primitives, no intermediate structs, no
//! allocation). Its output is checked against prost's own encoding of the same event in
//! the tests below.

use bytes::{BufMut, Bytes, BytesMut};
use prost::encoding::{
    DecodeContext, WireType, encode_key, encode_varint, encoded_len_varint, skip_field,
};
use raven_model::{
    Aggressor, Bbo, BookDelta, BookSnapshot, Candle, CandleInterval, Channel, Event, EventBody,
    Level, Qty, Side, SnapshotKind, Status, StatusKind, Trade,
};

/// `StreamResponse.events` is field 1.
const RESPONSE_EVENTS: u32 = 1;

/// Protobuf value of a channel.
pub fn channel_number(channel: Channel) -> u64 {
    match channel {
        Channel::Book => 1,
        Channel::Bbo => 2,
        Channel::Trades => 3,
        Channel::Candles => 4,
    }
}

/// Protobuf value of a status kind.
pub fn status_number(kind: StatusKind) -> u64 {
    match kind {
        StatusKind::Gap => 1,
        StatusKind::Resync => 2,
        StatusKind::FeedDown => 3,
        StatusKind::FeedUp => 4,
        StatusKind::Stale => 5,
        StatusKind::Rejected => 6,
    }
}

fn aggressor_number(a: Aggressor) -> u64 {
    match a {
        Aggressor::Unknown => 0,
        Aggressor::Buy => 1,
        Aggressor::Sell => 2,
    }
}

fn interval_number(i: CandleInterval) -> u64 {
    match i {
        CandleInterval::Second1 => 1,
        CandleInterval::Minute1 => 2,
    }
}

/// Low and high 64-bit words of a quantity. Books never hold negative quantities and the
/// engine refuses negative trades, so the unsigned reinterpretation is exact.
fn qty_words(q: Qty) -> (u64, u64) {
    debug_assert!(!q.is_negative(), "negative quantity reached the wire: {q}");
    let u = q.units() as u128;
    (u as u64, (u >> 64) as u64)
}

#[inline]
fn varint_field_len(tag: u32, v: u64) -> usize {
    if v == 0 {
        0
    } else {
        key_len(tag) + encoded_len_varint(v)
    }
}

#[inline]
fn key_len(tag: u32) -> usize {
    encoded_len_varint(u64::from(tag << 3))
}

#[inline]
fn put_varint_field(tag: u32, v: u64, buf: &mut impl BufMut) {
    if v != 0 {
        encode_key(tag, WireType::Varint, buf);
        encode_varint(v, buf);
    }
}

#[inline]
fn bytes_field_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

#[inline]
fn put_len_prefix(tag: u32, len: usize, buf: &mut impl BufMut) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(len as u64, buf);
}

fn put_string_field(tag: u32, s: &str, buf: &mut impl BufMut) {
    if !s.is_empty() {
        put_len_prefix(tag, s.len(), buf);
        buf.put_slice(s.as_bytes());
    }
}

fn string_field_len(tag: u32, s: &str) -> usize {
    if s.is_empty() {
        0
    } else {
        bytes_field_len(tag, s.len())
    }
}

fn level_len(price: i64, qty: Qty) -> usize {
    let (lo, hi) = qty_words(qty);
    varint_field_len(1, price as u64) + varint_field_len(2, lo) + varint_field_len(3, hi)
}

fn put_level(tag: u32, price: i64, qty: Qty, buf: &mut impl BufMut) {
    let (lo, hi) = qty_words(qty);
    put_len_prefix(tag, level_len(price, qty), buf);
    put_varint_field(1, price as u64, buf);
    put_varint_field(2, lo, buf);
    put_varint_field(3, hi, buf);
}

fn levels_len(tag: u32, levels: impl Iterator<Item = (i64, Qty)>) -> usize {
    levels
        .map(|(p, q)| bytes_field_len(tag, level_len(p, q)))
        .sum()
}

fn snapshot_len(s: &BookSnapshot) -> usize {
    levels_len(1, s.bids.iter().map(|l| (l.price.units(), l.qty)))
        + levels_len(2, s.asks.iter().map(|l| (l.price.units(), l.qty)))
        + varint_field_len(3, u64::from(s.kind == SnapshotKind::Resync))
}

fn put_snapshot(s: &BookSnapshot, buf: &mut impl BufMut) {
    for l in &s.bids {
        put_level(1, l.price.units(), l.qty, buf);
    }
    for l in &s.asks {
        put_level(2, l.price.units(), l.qty, buf);
    }
    put_varint_field(3, u64::from(s.kind == SnapshotKind::Resync), buf);
}

fn side_changes(d: &BookDelta, side: Side) -> impl Iterator<Item = (i64, Qty)> + '_ {
    d.changes
        .iter()
        .filter(move |c| c.side == side)
        .map(|c| (c.price.units(), c.qty))
}

fn delta_len(d: &BookDelta) -> usize {
    levels_len(1, side_changes(d, Side::Bid)) + levels_len(2, side_changes(d, Side::Ask))
}

fn put_delta(d: &BookDelta, buf: &mut impl BufMut) {
    for (p, q) in side_changes(d, Side::Bid) {
        put_level(1, p, q, buf);
    }
    for (p, q) in side_changes(d, Side::Ask) {
        put_level(2, p, q, buf);
    }
}

fn trade_len(t: &Trade) -> usize {
    let (lo, hi) = qty_words(t.qty);
    varint_field_len(1, t.price.units() as u64)
        + varint_field_len(2, lo)
        + varint_field_len(3, hi)
        + varint_field_len(4, aggressor_number(t.aggressor))
        + string_field_len(5, &t.trade_id)
}

fn put_trade(t: &Trade, buf: &mut impl BufMut) {
    let (lo, hi) = qty_words(t.qty);
    put_varint_field(1, t.price.units() as u64, buf);
    put_varint_field(2, lo, buf);
    put_varint_field(3, hi, buf);
    put_varint_field(4, aggressor_number(t.aggressor), buf);
    put_string_field(5, &t.trade_id, buf);
}

fn opt_level_len(tag: u32, l: Option<Level>) -> usize {
    l.map_or(0, |l| {
        bytes_field_len(tag, level_len(l.price.units(), l.qty))
    })
}

fn bbo_len(b: &Bbo) -> usize {
    opt_level_len(1, b.bid) + opt_level_len(2, b.ask)
}

fn put_bbo(b: &Bbo, buf: &mut impl BufMut) {
    if let Some(l) = b.bid {
        put_level(1, l.price.units(), l.qty, buf);
    }
    if let Some(l) = b.ask {
        put_level(2, l.price.units(), l.qty, buf);
    }
}

fn candle_fields(c: &Candle) -> [(u32, u64); 9] {
    let (lo, hi) = qty_words(c.volume);
    [
        (1, interval_number(c.interval)),
        (2, c.open_time.0),
        (3, c.open.units() as u64),
        (4, c.high.units() as u64),
        (5, c.low.units() as u64),
        (6, c.close.units() as u64),
        (7, lo),
        (8, hi),
        (9, c.trades),
    ]
}

fn status_len(s: &Status) -> usize {
    varint_field_len(1, status_number(s.kind))
        + varint_field_len(2, s.missed)
        + string_field_len(3, &s.detail)
}

fn put_status(s: &Status, buf: &mut impl BufMut) {
    put_varint_field(1, status_number(s.kind), buf);
    put_varint_field(2, s.missed, buf);
    put_string_field(3, &s.detail, buf);
}

/// `Event.body` oneof tag and encoded length of a body.
fn body_tag_len(body: &EventBody) -> (u32, usize) {
    match body {
        EventBody::Snapshot(s) => (10, snapshot_len(s)),
        EventBody::Delta(d) => (11, delta_len(d)),
        EventBody::Trade(t) => (12, trade_len(t)),
        EventBody::Bbo(b) => (13, bbo_len(b)),
        EventBody::Candle(c) => (
            14,
            candle_fields(c)
                .iter()
                .map(|&(t, v)| varint_field_len(t, v))
                .sum(),
        ),
        EventBody::Status(s) => (15, status_len(s)),
    }
}

fn put_body(body: &EventBody, buf: &mut impl BufMut) {
    match body {
        EventBody::Snapshot(s) => put_snapshot(s, buf),
        EventBody::Delta(d) => put_delta(d, buf),
        EventBody::Trade(t) => put_trade(t, buf),
        EventBody::Bbo(b) => put_bbo(b, buf),
        EventBody::Candle(c) => candle_fields(c)
            .iter()
            .for_each(|&(t, v)| put_varint_field(t, v, buf)),
        EventBody::Status(s) => put_status(s, buf),
    }
}

/// The header fields every `Event` carries.
#[derive(Debug, Clone, Copy)]
pub struct Header<'a> {
    /// `VENUE:SYMBOL`.
    pub instrument: &'a str,
    /// Channel of the event.
    pub channel: Channel,
    /// Sequence (0 for per-subscriber control events).
    pub sequence: u64,
    /// Exchange time.
    pub exchange_time: u64,
    /// Receive time.
    pub receive_time: u64,
    /// Publish time.
    pub publish_time: u64,
}

impl<'a> Header<'a> {
    /// The header of a model event.
    pub fn of(instrument: &'a str, event: &Event) -> Header<'a> {
        Header {
            instrument,
            channel: event.body.channel(),
            sequence: event.sequence.0,
            exchange_time: event.exchange_time.0,
            receive_time: event.receive_time.0,
            publish_time: event.publish_time.0,
        }
    }

    fn len(&self) -> usize {
        string_field_len(1, self.instrument)
            + varint_field_len(2, channel_number(self.channel))
            + varint_field_len(3, self.sequence)
            + varint_field_len(4, self.exchange_time)
            + varint_field_len(5, self.receive_time)
            + varint_field_len(6, self.publish_time)
    }

    fn put(&self, buf: &mut impl BufMut) {
        put_string_field(1, self.instrument, buf);
        put_varint_field(2, channel_number(self.channel), buf);
        put_varint_field(3, self.sequence, buf);
        put_varint_field(4, self.exchange_time, buf);
        put_varint_field(5, self.receive_time, buf);
        put_varint_field(6, self.publish_time, buf);
    }
}

/// Writes `header` with a body of `body_tag`/`body_len` as one `StreamResponse.events`
/// entry; `put` writes the body.
fn put_entry(
    buf: &mut BytesMut,
    header: &Header<'_>,
    body_tag: u32,
    body_len: usize,
    put: impl FnOnce(&mut BytesMut),
) {
    let event_len = header.len() + bytes_field_len(body_tag, body_len);
    buf.reserve(bytes_field_len(RESPONSE_EVENTS, event_len));
    put_len_prefix(RESPONSE_EVENTS, event_len, buf);
    header.put(buf);
    put_len_prefix(body_tag, body_len, buf);
    put(buf);
}

/// Appends `event` to `buf` as one `StreamResponse.events` entry.
pub fn put_event(buf: &mut BytesMut, instrument: &str, event: &Event) {
    let (tag, len) = body_tag_len(&event.body);
    put_entry(buf, &Header::of(instrument, event), tag, len, |b| {
        put_body(&event.body, b)
    });
}

/// Appends a `SnapshotEnd` marker entry.
pub fn put_snapshot_end(buf: &mut BytesMut, header: &Header<'_>) {
    put_entry(buf, header, 16, 0, |_| {});
}

/// Appends a `HeartbeatAck` entry (no instrument).
pub fn put_heartbeat_ack(buf: &mut BytesMut, id: u64, server_time: u64) {
    let header = Header {
        instrument: "",
        channel: Channel::Book,
        sequence: 0,
        exchange_time: 0,
        receive_time: 0,
        publish_time: server_time,
    };
    // The channel of a control event carries no meaning; leave it unspecified.
    let header_len = header.len() - varint_field_len(2, channel_number(Channel::Book));
    let body_len = varint_field_len(1, id) + varint_field_len(2, server_time);
    let event_len = header_len + bytes_field_len(17, body_len);
    put_len_prefix(RESPONSE_EVENTS, event_len, buf);
    put_varint_field(6, server_time, buf);
    put_len_prefix(17, body_len, buf);
    put_varint_field(1, id, buf);
    put_varint_field(2, server_time, buf);
}

/// A `StreamResponse` made of pre-encoded `events` entries. Implements `prost::Message` so
/// tonic can send it; encoding copies the shared chunks into the HTTP/2 frame and nothing
/// else.
#[derive(Debug, Default, Clone)]
pub struct EncodedBatch {
    chunks: Vec<Bytes>,
    bytes: usize,
}

impl EncodedBatch {
    /// An empty batch.
    pub fn new() -> EncodedBatch {
        EncodedBatch::default()
    }

    /// Appends entries produced by the `put_*` functions.
    pub fn push(&mut self, chunk: Bytes) {
        self.bytes += chunk.len();
        self.chunks.push(chunk);
    }

    /// Encoded size in bytes.
    pub fn len_bytes(&self) -> usize {
        self.bytes
    }

    /// True when nothing was pushed.
    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }
}

impl prost::Message for EncodedBatch {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        for c in &self.chunks {
            buf.put_slice(c);
        }
    }

    /// Servers never decode a batch (clients use `pb::StreamResponse`); skipping keeps the
    /// trait contract without a second decoder.
    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl bytes::Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.bytes
    }

    fn clear(&mut self) {
        self.chunks.clear();
        self.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::convert::event_to_pb;
    use crate::pb;
    use prost::Message;
    use raven_model::{InstrumentId, LevelChange, Price, Sequence, UnixNanos};

    fn event(body: EventBody) -> Event {
        Event {
            instrument: InstrumentId(3),
            sequence: Sequence(42),
            exchange_time: UnixNanos(1_700_000_000_000_000_001),
            receive_time: UnixNanos(1_700_000_000_000_000_002),
            publish_time: UnixNanos(1_700_000_000_000_000_003),
            body,
        }
    }

    fn lvl(p: &str, q: &str) -> Level {
        Level {
            price: p.parse().unwrap(),
            qty: q.parse().unwrap(),
        }
    }

    fn bodies() -> Vec<EventBody> {
        vec![
            EventBody::Snapshot(BookSnapshot {
                bids: vec![lvl("65000.1", "1.5"), lvl("-0.5", "1000000000000")],
                asks: vec![lvl("65000.2", "0.00000001")],
                kind: SnapshotKind::Resync,
            }),
            EventBody::Snapshot(BookSnapshot {
                bids: vec![],
                asks: vec![],
                kind: SnapshotKind::Initial,
            }),
            EventBody::Delta(BookDelta {
                changes: vec![
                    LevelChange {
                        side: Side::Ask,
                        price: Price::from_units(5),
                        qty: Qty::ZERO,
                    },
                    LevelChange {
                        side: Side::Bid,
                        price: Price::from_units(4),
                        qty: Qty::from_units(1 << 70),
                    },
                    LevelChange {
                        side: Side::Bid,
                        price: Price::from_units(3),
                        qty: Qty::from_units(9),
                    },
                ],
            }),
            EventBody::Trade(Trade {
                price: "0.0001234".parse().unwrap(),
                qty: "17".parse().unwrap(),
                aggressor: Aggressor::Sell,
                trade_id: "t-981".into(),
            }),
            EventBody::Bbo(Bbo {
                bid: Some(lvl("1", "2")),
                ask: None,
            }),
            EventBody::Bbo(Bbo {
                bid: None,
                ask: Some(lvl("0", "0")),
            }),
            EventBody::Candle(Candle {
                interval: CandleInterval::Minute1,
                open_time: UnixNanos(60_000_000_000),
                open: Price::from_units(10),
                high: Price::from_units(12),
                low: Price::from_units(-1),
                close: Price::from_units(11),
                volume: Qty::from_units(123_456),
                trades: 7,
            }),
            EventBody::Status(Status {
                kind: StatusKind::Gap,
                channel: Channel::Trades,
                missed: 12,
                detail: "subscriber lagged".into(),
            }),
        ]
    }

    #[test]
    fn hand_encoding_decodes_to_what_prost_would_send() {
        for body in bodies() {
            let ev = event(body);
            let mut buf = BytesMut::new();
            put_event(&mut buf, "SIM:BTC-USD", &ev);
            let decoded = pb::StreamResponse::decode(buf.freeze()).unwrap();
            assert_eq!(
                decoded.events,
                vec![event_to_pb("SIM:BTC-USD", &ev)],
                "{ev:?}"
            );
        }
    }

    #[test]
    fn concatenated_entries_form_one_response() {
        let mut batch = EncodedBatch::new();
        let mut expected = Vec::new();
        for body in bodies() {
            let ev = event(body);
            let mut buf = BytesMut::new();
            put_event(&mut buf, "SIM:ETH-USD", &ev);
            batch.push(buf.freeze());
            expected.push(event_to_pb("SIM:ETH-USD", &ev));
        }
        let mut buf = BytesMut::new();
        put_snapshot_end(
            &mut buf,
            &Header {
                instrument: "SIM:ETH-USD",
                channel: Channel::Book,
                sequence: 9,
                exchange_time: 0,
                receive_time: 0,
                publish_time: 5,
            },
        );
        put_heartbeat_ack(&mut buf, 77, 1234);
        batch.push(buf.freeze());
        let bytes = batch.encode_to_vec();
        assert_eq!(bytes.len(), batch.encoded_len());
        let decoded = pb::StreamResponse::decode(bytes.as_slice()).unwrap();
        expected.push(pb::Event {
            instrument: "SIM:ETH-USD".into(),
            channel: pb::Channel::Book as i32,
            sequence: 9,
            publish_time: 5,
            body: Some(pb::event::Body::SnapshotEnd(pb::SnapshotEnd {})),
            ..Default::default()
        });
        expected.push(pb::Event {
            publish_time: 1234,
            body: Some(pb::event::Body::HeartbeatAck(pb::HeartbeatAck {
                id: 77,
                server_time: 1234,
            })),
            ..Default::default()
        });
        assert_eq!(decoded.events, expected);
    }
}
