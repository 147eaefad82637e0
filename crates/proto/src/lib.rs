//! The `raven.v1` API: generated protobuf types and clients ([`pb`]), the generated
//! servers ([`market_server`], [`ingest_server`], [`history_server`]), the hand-written
//! encode-once wire encoder ([`wire`]), the codec of the long-lived streams ([`codec`]),
//! conversions between the model and protobuf
//! ([`convert`]), the JSON form of events ([`json`]), and the request limits the server
//! enforces ([`limits`]).
//!
//! This is the one crate where generated types live: servers and clients share it.

pub mod codec;
pub mod convert;
pub mod json;
pub mod limits;
pub mod wire;

/// Types and client stubs generated from `proto/raven/v1/raven.proto`.
#[allow(missing_docs, clippy::all)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/raven.v1.rs"));
}

/// The `raven.v1.Market` server, generated with `Stream` answering in
/// [`wire::EncodedBatch`] so events are encoded once for all subscribers.
#[allow(missing_docs, clippy::all)]
mod generated_market {
    include!(concat!(env!("OUT_DIR"), "/raven.v1.Market.rs"));
}
pub use generated_market::market_server;

/// The `raven.v1.Ingest` server.
#[allow(missing_docs, clippy::all)]
mod generated_ingest {
    include!(concat!(env!("OUT_DIR"), "/raven.v1.Ingest.rs"));
}
pub use generated_ingest::ingest_server;

/// The `raven.v1.History` server, its streams answering in [`wire::EncodedBatch`]: stored
/// events are already encoded, so they go out as stored.
#[allow(missing_docs, clippy::all)]
mod generated_history {
    include!(concat!(env!("OUT_DIR"), "/raven.v1.History.rs"));
}
pub use generated_history::history_server;

/// The encoded `FileDescriptorSet` of raven.v1, served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/raven_v1_descriptor.bin"));
