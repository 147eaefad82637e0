//! A subscriber's batch: a `StreamResponse` assembled from `events` entries the engine
//! encoded once ([`super::encode`]), as shared `Bytes` handles, sent by tonic without
//! re-encoding.

use bytes::{BufMut, Bytes};
use prost::encoding::{DecodeContext, WireType, skip_field};

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

    /// The entries, in the order they were pushed.
    pub fn into_chunks(self) -> Vec<Bytes> {
        self.chunks
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
