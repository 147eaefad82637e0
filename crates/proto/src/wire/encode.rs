//! Encoding. The engine encodes each event exactly once, here, into bytes
//! that are already a complete `events` entry of a `StreamResponse` (field key, length,
//! `Event` message). Concatenating any number of such entries is a valid
//! `StreamResponse`, so a subscriber's batch is assembled by queueing shared `Bytes`
//! handles — no re-encoding, no per-subscriber copy until the socket write.
//!
//! The encoder writes protobuf by hand into a slice sized to the exact entry length (no
//! intermediate structs, no allocation per field). Its output is checked against prost's
//! own encoding of the same event in the tests below.

use bytes::BytesMut;
use prost::encoding::{WireType, encoded_len_varint};
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
        StatusKind::GoingAway => 7,
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

/// The output of one entry: a slice exactly as long as the entry, consumed from the front.
type Out<'a, 'b> = &'a mut &'b mut [u8];

/// Writes a base-128 varint. Indexing a plain slice costs a compare per byte; going
/// through `BufMut::put_u8` cost about twenty instructions per byte (measured).
#[inline]
fn put_varint(out: Out<'_, '_>, mut v: u64) {
    let buf = std::mem::take(out);
    let mut i = 0;
    while v >= 0x80 {
        buf[i] = (v as u8) | 0x80;
        v >>= 7;
        i += 1;
    }
    buf[i] = v as u8;
    *out = &mut buf[i + 1..];
}

#[inline]
fn put_key(tag: u32, wire_type: WireType, out: Out<'_, '_>) {
    put_varint(out, u64::from(tag << 3 | wire_type as u32));
}

/// A `fixed64` field (omitted when zero, as proto3 does).
#[inline]
fn put_fixed64_field(tag: u32, v: u64, out: Out<'_, '_>) {
    if v != 0 {
        put_key(tag, WireType::SixtyFourBit, out);
        put_bytes(&v.to_le_bytes(), out);
    }
}

#[inline]
fn fixed64_field_len(tag: u32, v: u64) -> usize {
    if v == 0 { 0 } else { key_len(tag) + 8 }
}

#[inline]
fn put_bytes(bytes: &[u8], out: Out<'_, '_>) {
    let buf = std::mem::take(out);
    let (head, tail) = buf.split_at_mut(bytes.len());
    head.copy_from_slice(bytes);
    *out = tail;
}

#[inline]
fn put_varint_field(tag: u32, v: u64, out: Out<'_, '_>) {
    if v != 0 {
        put_key(tag, WireType::Varint, out);
        put_varint(out, v);
    }
}

#[inline]
fn bytes_field_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

#[inline]
fn put_len_prefix(tag: u32, len: usize, out: Out<'_, '_>) {
    put_key(tag, WireType::LengthDelimited, out);
    put_varint(out, len as u64);
}

fn put_string_field(tag: u32, s: &str, out: Out<'_, '_>) {
    if !s.is_empty() {
        put_len_prefix(tag, s.len(), out);
        put_bytes(s.as_bytes(), out);
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

fn put_level(tag: u32, price: i64, qty: Qty, out: Out<'_, '_>) {
    let (lo, hi) = qty_words(qty);
    put_len_prefix(tag, level_len(price, qty), out);
    put_varint_field(1, price as u64, out);
    put_varint_field(2, lo, out);
    put_varint_field(3, hi, out);
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
        + varint_field_len(4, u64::from(s.kind == SnapshotKind::Checkpoint))
}

fn put_snapshot(s: &BookSnapshot, out: Out<'_, '_>) {
    for l in &s.bids {
        put_level(1, l.price.units(), l.qty, out);
    }
    for l in &s.asks {
        put_level(2, l.price.units(), l.qty, out);
    }
    put_varint_field(3, u64::from(s.kind == SnapshotKind::Resync), out);
    put_varint_field(4, u64::from(s.kind == SnapshotKind::Checkpoint), out);
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

fn put_delta(d: &BookDelta, out: Out<'_, '_>) {
    for (p, q) in side_changes(d, Side::Bid) {
        put_level(1, p, q, out);
    }
    for (p, q) in side_changes(d, Side::Ask) {
        put_level(2, p, q, out);
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

fn put_trade(t: &Trade, out: Out<'_, '_>) {
    let (lo, hi) = qty_words(t.qty);
    put_varint_field(1, t.price.units() as u64, out);
    put_varint_field(2, lo, out);
    put_varint_field(3, hi, out);
    put_varint_field(4, aggressor_number(t.aggressor), out);
    put_string_field(5, &t.trade_id, out);
}

fn opt_level_len(tag: u32, l: Option<Level>) -> usize {
    l.map_or(0, |l| {
        bytes_field_len(tag, level_len(l.price.units(), l.qty))
    })
}

fn bbo_len(b: &Bbo) -> usize {
    opt_level_len(1, b.bid) + opt_level_len(2, b.ask)
}

fn put_bbo(b: &Bbo, out: Out<'_, '_>) {
    if let Some(l) = b.bid {
        put_level(1, l.price.units(), l.qty, out);
    }
    if let Some(l) = b.ask {
        put_level(2, l.price.units(), l.qty, out);
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

fn put_status(s: &Status, out: Out<'_, '_>) {
    put_varint_field(1, status_number(s.kind), out);
    put_varint_field(2, s.missed, out);
    put_string_field(3, &s.detail, out);
}

/// `Event.body` oneof tag and encoded length of a body.
/// The `Event.body` field number of `body`: 10 snapshot, 11 delta, 12 trade, 13 BBO,
/// 14 candle, 15 status.
fn body_number(body: &EventBody) -> u32 {
    match body {
        EventBody::Snapshot(_) => 10,
        EventBody::Delta(_) => 11,
        EventBody::Trade(_) => 12,
        EventBody::Bbo(_) => 13,
        EventBody::Candle(_) => 14,
        EventBody::Status(_) => 15,
    }
}

fn body_tag_len(body: &EventBody) -> (u32, usize) {
    match body {
        EventBody::Snapshot(s) => (body_number(body), snapshot_len(s)),
        EventBody::Delta(d) => (body_number(body), delta_len(d)),
        EventBody::Trade(t) => (body_number(body), trade_len(t)),
        EventBody::Bbo(b) => (body_number(body), bbo_len(b)),
        EventBody::Candle(c) => (
            body_number(body),
            candle_fields(c)
                .iter()
                .map(|&(t, v)| varint_field_len(t, v))
                .sum(),
        ),
        EventBody::Status(s) => (body_number(body), status_len(s)),
    }
}

fn put_body(body: &EventBody, out: Out<'_, '_>) {
    match body {
        EventBody::Snapshot(s) => put_snapshot(s, out),
        EventBody::Delta(d) => put_delta(d, out),
        EventBody::Trade(t) => put_trade(t, out),
        EventBody::Bbo(b) => put_bbo(b, out),
        EventBody::Candle(c) => candle_fields(c)
            .iter()
            .for_each(|&(t, v)| put_varint_field(t, v, out)),
        EventBody::Status(s) => put_status(s, out),
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
    /// The venue's id (0: none, not written).
    pub venue_seq: u64,
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
            venue_seq: event.venue_seq,
        }
    }

    fn len(&self) -> usize {
        string_field_len(1, self.instrument)
            + varint_field_len(2, channel_number(self.channel))
            + varint_field_len(3, self.sequence)
            + fixed64_field_len(4, self.exchange_time)
            + fixed64_field_len(5, self.receive_time)
            + fixed64_field_len(6, self.publish_time)
            + if self.venue_seq == 0 {
                0
            } else {
                varint_field_len(7, self.venue_seq)
            }
    }

    fn put(&self, out: Out<'_, '_>) {
        put_string_field(1, self.instrument, out);
        put_varint_field(2, channel_number(self.channel), out);
        put_varint_field(3, self.sequence, out);
        put_fixed64_field(4, self.exchange_time, out);
        put_fixed64_field(5, self.receive_time, out);
        put_fixed64_field(6, self.publish_time, out);
        if self.venue_seq != 0 {
            put_varint_field(7, self.venue_seq, out);
        }
    }
}

/// Writes `header` with a body of `body_tag`/`body_len` as one `StreamResponse.events`
/// entry; `put` writes the body.
///
/// The entry's exact size is known up front, so the buffer grows once and the fields are
/// written into a plain byte slice. Writing through `BufMut` (into the `BytesMut`, or
/// even into a slice) cost about twenty instructions per varint byte under callgrind,
/// most of the encoding cost; the slice writer here costs a few.
fn put_entry(
    buf: &mut BytesMut,
    header: &Header<'_>,
    body_tag: u32,
    body_len: usize,
    put: impl FnOnce(Out<'_, '_>),
) {
    let event_len = header.len() + bytes_field_len(body_tag, body_len);
    let total = bytes_field_len(RESPONSE_EVENTS, event_len);
    let start = buf.len();
    buf.resize(start + total, 0);
    let mut out: &mut [u8] = &mut buf[start..];
    put_len_prefix(RESPONSE_EVENTS, event_len, &mut out);
    header.put(&mut out);
    put_len_prefix(body_tag, body_len, &mut out);
    put(&mut out);
    debug_assert!(
        out.is_empty(),
        "encoded length disagrees with the computed length"
    );
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

/// Appends a `HistoryEnd` marker entry.
pub fn put_history_end(buf: &mut BytesMut, header: &Header<'_>) {
    put_entry(buf, header, 18, 0, |_| {});
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
        venue_seq: 0,
    };
    // The channel of a control event carries no meaning; leave it unspecified.
    let header_len = header.len() - varint_field_len(2, channel_number(Channel::Book));
    let body_len = varint_field_len(1, id) + varint_field_len(2, server_time);
    let event_len = header_len + bytes_field_len(17, body_len);
    let start = buf.len();
    buf.resize(start + bytes_field_len(RESPONSE_EVENTS, event_len), 0);
    let out = &mut &mut buf[start..];
    put_len_prefix(RESPONSE_EVENTS, event_len, out);
    put_fixed64_field(6, server_time, out);
    put_len_prefix(17, body_len, out);
    put_varint_field(1, id, out);
    put_varint_field(2, server_time, out);
    debug_assert!(
        out.is_empty(),
        "encoded length disagrees with the computed length"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::convert::event_to_pb;
    use crate::pb;
    use crate::wire::EncodedBatch;
    use prost::Message;
    use raven_model::{InstrumentId, LevelChange, Price, Sequence, UnixNanos};

    fn event(body: EventBody) -> Event {
        Event {
            instrument: InstrumentId(3),
            sequence: Sequence(42),
            exchange_time: UnixNanos(1_700_000_000_000_000_001),
            receive_time: UnixNanos(1_700_000_000_000_000_002),
            publish_time: UnixNanos(1_700_000_000_000_000_003),
            venue_seq: 0,
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
        // With and without the venue's id (0 is not written, as prost would not).
        for (i, body) in bodies().into_iter().enumerate() {
            let mut ev = event(body);
            ev.venue_seq = [0, 1, 22_611_425_151, u64::MAX][i % 4];
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
                venue_seq: 0,
            },
        );
        put_history_end(
            &mut buf,
            &Header {
                instrument: "SIM:ETH-USD",
                channel: Channel::Trades,
                sequence: 8,
                exchange_time: 0,
                receive_time: 0,
                publish_time: 6,
                venue_seq: 0,
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
            instrument: "SIM:ETH-USD".into(),
            channel: pb::Channel::Trades as i32,
            sequence: 8,
            publish_time: 6,
            body: Some(pb::event::Body::HistoryEnd(pb::HistoryEnd {})),
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
