//! Reading event headers straight from `StreamResponse` bytes: instrument, channel,
//! sequence, the three timestamps and which body the event has — without decoding (or
//! allocating for) the body. Load generators and latency probes need nothing more, and a
//! full decode would make them the bottleneck they measure.
//!
//! Input is untrusted: every length is checked, malformed bytes give a [`ScanError`],
//! never a panic. Unknown fields are skipped, as protobuf requires.

use prost::encoding::decode_varint;

/// Why bytes are not a `StreamResponse`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScanError {
    /// A length or varint runs past the end.
    #[error("truncated at byte {0}")]
    Truncated(usize),
    /// A varint longer than 10 bytes, or a key with field number 0.
    #[error("malformed varint or key at byte {0}")]
    Malformed(usize),
    /// A wire type protobuf does not define (or the deprecated groups).
    #[error("unsupported wire type {wire_type} at byte {at}")]
    WireType {
        /// The wire type found.
        wire_type: u64,
        /// Where its value would start (just after the key).
        at: usize,
    },
}

/// The header of one event, borrowed from the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EventHeader<'a> {
    /// `VENUE:SYMBOL` bytes (empty for control events).
    pub instrument: &'a [u8],
    /// `Channel` number.
    pub channel: u64,
    /// Sequence (0 for control events).
    pub sequence: u64,
    /// Exchange time, ns.
    pub exchange_time: u64,
    /// Receive time, ns.
    pub receive_time: u64,
    /// Publish time, ns.
    pub publish_time: u64,
    /// The venue's id of the update (0 when it has none).
    pub venue_seq: u64,
    /// Field number of the body in the `Event.body` oneof (10 snapshot, 11 delta, 12
    /// trade, 13 BBO, 14 candle, 15 status, 16 snapshot end, 17 heartbeat ack, 18 history
    /// end); 0 if none.
    pub body: u32,
    /// The body message's bytes, for the rare event a reader wants to decode.
    pub body_bytes: &'a [u8],
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn varint(&mut self) -> Result<u64, ScanError> {
        let at = self.pos;
        let mut rest = &self.buf[self.pos..];
        let before = rest.len();
        let v = decode_varint(&mut rest).map_err(|_| {
            if before < 10 && rest.is_empty() {
                ScanError::Truncated(at)
            } else {
                ScanError::Malformed(at)
            }
        })?;
        self.pos += before - rest.len();
        Ok(v)
    }

    fn bytes(&mut self, len: u64) -> Result<&'a [u8], ScanError> {
        let at = self.pos;
        let end = usize::try_from(len)
            .ok()
            .and_then(|l| at.checked_add(l))
            .filter(|&e| e <= self.buf.len());
        let end = end.ok_or(ScanError::Truncated(at))?;
        self.pos = end;
        Ok(&self.buf[at..end])
    }

    fn fixed64(&mut self) -> Result<u64, ScanError> {
        let b = self.bytes(8)?;
        let mut word = [0u8; 8];
        word.copy_from_slice(b);
        Ok(u64::from_le_bytes(word))
    }

    /// (field number, wire type).
    fn key(&mut self) -> Result<(u64, u64), ScanError> {
        let at = self.pos;
        let key = self.varint()?;
        if key >> 3 == 0 {
            return Err(ScanError::Malformed(at));
        }
        Ok((key >> 3, key & 7))
    }

    fn skip(&mut self, wire_type: u64) -> Result<(), ScanError> {
        let at = self.pos;
        match wire_type {
            0 => self.varint().map(drop),
            1 => self.bytes(8).map(drop),
            2 => {
                let len = self.varint()?;
                self.bytes(len).map(drop)
            }
            5 => self.bytes(4).map(drop),
            other => Err(ScanError::WireType {
                wire_type: other,
                at,
            }),
        }
    }
}

fn event(buf: &[u8]) -> Result<EventHeader<'_>, ScanError> {
    let mut r = Reader { buf, pos: 0 };
    let mut h = EventHeader::default();
    while !r.done() {
        let (field, wire_type) = r.key()?;
        match (field, wire_type) {
            (1, 2) => {
                let len = r.varint()?;
                h.instrument = r.bytes(len)?;
            }
            (2, 0) => h.channel = r.varint()?,
            (3, 0) => h.sequence = r.varint()?,
            (4, 1) => h.exchange_time = r.fixed64()?,
            (5, 1) => h.receive_time = r.fixed64()?,
            (6, 1) => h.publish_time = r.fixed64()?,
            (7, 0) => h.venue_seq = r.varint()?,
            (10..=17, 2) => {
                h.body = field as u32;
                let len = r.varint()?;
                h.body_bytes = r.bytes(len)?;
            }
            (_, wire_type) => r.skip(wire_type)?,
        }
    }
    Ok(h)
}

/// Iterates over the events of an encoded `StreamResponse`. After an error the iterator
/// ends.
pub fn events(response: &[u8]) -> impl Iterator<Item = Result<EventHeader<'_>, ScanError>> {
    framed(response).map(|event| event.map(|(_, header)| header))
}

/// Iterates over the events of an encoded `StreamResponse` with each event's own bytes:
/// its field, key and length included, which is itself a one-event `StreamResponse`
/// (how a store splits the events it keeps end to end). Fields other than events are
/// skipped. After an error the iterator ends.
pub fn framed(
    response: &[u8],
) -> impl Iterator<Item = Result<(&[u8], EventHeader<'_>), ScanError>> {
    entries(response).map(|entry| {
        let (own, offset, bytes) = entry?;
        Ok((own, event(bytes).map_err(|e| shifted(e, offset))?))
    })
}

/// Each event's own bytes, as [`framed`] gives them, without reading the events: for a
/// reader that looks into few of them ([`instrument`] picks which). After an error the
/// iterator ends.
pub fn split(response: &[u8]) -> impl Iterator<Item = Result<&[u8], ScanError>> {
    entries(response).map(|entry| entry.map(|(own, _, _)| own))
}

/// The instrument of the first event in `response` (empty for none, or for a control
/// event), reading no further into the event than its instrument field: the first one,
/// as encoders (Raven's and prost) write fields in number order.
pub fn instrument(response: &[u8]) -> Result<&[u8], ScanError> {
    let Some(entry) = entries(response).next() else {
        return Ok(&[]);
    };
    let (_, offset, bytes) = entry?;
    let mut r = Reader { buf: bytes, pos: 0 };
    let found = (|| {
        while !r.done() {
            let (field, wire_type) = r.key()?;
            if (field, wire_type) == (1, 2) {
                let len = r.varint()?;
                return r.bytes(len);
            }
            r.skip(wire_type)?;
        }
        Ok(&[][..])
    })();
    found.map_err(|e| shifted(e, offset))
}

/// The `events` entries of `response`: each one's own bytes, where its event starts,
/// and the event's bytes. After an error it ends.
fn entries(response: &[u8]) -> impl Iterator<Item = Result<(&[u8], usize, &[u8]), ScanError>> {
    let mut r = Reader {
        buf: response,
        pos: 0,
    };
    let mut failed = false;
    std::iter::from_fn(move || {
        while !failed && !r.done() {
            let step = (|| {
                let start = r.pos;
                let (field, wire_type) = r.key()?;
                if (field, wire_type) != (1, 2) {
                    r.skip(wire_type)?;
                    return Ok(None);
                }
                let len = r.varint()?;
                let offset = r.pos;
                let bytes = r.bytes(len)?;
                Ok(Some((&response[start..r.pos], offset, bytes)))
            })();
            match step {
                Ok(None) => continue,
                Ok(Some(found)) => return Some(Ok(found)),
                Err(e) => {
                    failed = true;
                    return Some(Err(e));
                }
            }
        }
        None
    })
}

/// `error`, found in an event that starts at `offset`, with its place in the response.
fn shifted(error: ScanError, offset: usize) -> ScanError {
    match error {
        ScanError::Truncated(at) => ScanError::Truncated(offset + at),
        ScanError::Malformed(at) => ScanError::Malformed(offset + at),
        ScanError::WireType { wire_type, at } => ScanError::WireType {
            wire_type,
            at: offset + at,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb;
    use proptest::prelude::*;
    use prost::Message;

    fn response() -> pb::StreamResponse {
        let event = |instrument: &str, sequence, body| pb::Event {
            instrument: instrument.into(),
            channel: pb::Channel::Book as i32,
            sequence,
            exchange_time: 1_700_000_000_000_000_001,
            receive_time: 1_700_000_000_000_000_002,
            publish_time: 1_700_000_000_000_000_003 + sequence,
            venue_seq: 0,
            body: Some(body),
        };
        let delta = pb::BookDelta {
            bids: vec![pb::Level {
                price: 5,
                qty: 6,
                qty_hi: 0,
            }],
            asks: vec![],
        };
        pb::StreamResponse {
            events: vec![
                event("SIM:BTC-USD", 7, pb::event::Body::Delta(delta)),
                event(
                    "SIM:ETH-USD",
                    8,
                    pb::event::Body::SnapshotEnd(pb::SnapshotEnd {}),
                ),
                pb::Event {
                    publish_time: 9,
                    body: Some(pb::event::Body::HeartbeatAck(pb::HeartbeatAck {
                        id: 1,
                        server_time: 9,
                    })),
                    ..Default::default()
                },
            ],
        }
    }

    #[test]
    fn headers_match_a_full_decode() {
        let response = response();
        let bytes = response.encode_to_vec();
        let headers: Vec<EventHeader<'_>> = events(&bytes).collect::<Result<_, _>>().unwrap();
        assert_eq!(headers.len(), response.events.len());
        for (h, e) in headers.iter().zip(&response.events) {
            assert_eq!(h.instrument, e.instrument.as_bytes());
            assert_eq!((h.channel, h.sequence), (e.channel as u64, e.sequence));
            assert_eq!(
                (h.exchange_time, h.receive_time, h.publish_time),
                (e.exchange_time, e.receive_time, e.publish_time)
            );
        }
        assert_eq!(
            headers.iter().map(|h| h.body).collect::<Vec<_>>(),
            vec![11, 16, 17]
        );
    }

    #[test]
    fn framed_events_are_one_event_responses_that_make_up_the_input() {
        let response = response();
        let bytes = response.encode_to_vec();
        let framed: Vec<(&[u8], EventHeader<'_>)> =
            framed(&bytes).collect::<Result<_, _>>().unwrap();
        assert_eq!(framed.len(), response.events.len());
        assert_eq!(
            framed
                .iter()
                .map(|(own, _)| *own)
                .collect::<Vec<_>>()
                .concat(),
            bytes
        );
        for ((own, header), event) in framed.iter().zip(&response.events) {
            let alone = pb::StreamResponse::decode(*own).unwrap();
            assert_eq!(alone.events, std::slice::from_ref(event));
            assert_eq!(header.sequence, event.sequence);
        }
    }

    #[test]
    fn split_events_and_their_instruments_match_the_headers() {
        let bytes = response().encode_to_vec();
        let own: Vec<&[u8]> = split(&bytes).collect::<Result<_, _>>().unwrap();
        let framed: Vec<(&[u8], EventHeader<'_>)> =
            framed(&bytes).collect::<Result<_, _>>().unwrap();
        assert_eq!(own, framed.iter().map(|(o, _)| *o).collect::<Vec<_>>());
        for (o, header) in &framed {
            assert_eq!(instrument(o).unwrap(), header.instrument);
        }
        assert_eq!(instrument(&[]).unwrap(), b"");
        // Cut inside the first event's instrument: an error, never a panic.
        assert!(matches!(
            instrument(&bytes[..5]),
            Err(ScanError::Truncated(_))
        ));
    }

    #[test]
    fn truncated_and_malformed_input_is_an_error() {
        let bytes = response().encode_to_vec();
        for cut in 1..bytes.len() {
            let scanned: Vec<_> = events(&bytes[..cut]).collect();
            // A cut inside an event is an error; at an event boundary it is just fewer events.
            assert!(scanned.iter().filter(|r| r.is_err()).count() <= 1);
        }
        assert_eq!(
            events(&[0x0a, 0x05, 0x08]).next(),
            Some(Err(ScanError::Truncated(2)))
        );
        assert_eq!(events(&[0x00]).next(), Some(Err(ScanError::Malformed(0))));
        assert!(matches!(
            events(&[0x0b]).next(),
            Some(Err(ScanError::WireType {
                wire_type: 3,
                at: 1
            }))
        ));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            for _ in events(&bytes) {}
            for own in split(&bytes).flatten() {
                let _ = instrument(own);
            }
        }
    }
}
