//! Compiles raven.v1 with protox (pure Rust: no system `protoc`), generates the prost types
//! and clients, and generates the servers by hand so that `Market.Stream` and the
//! `History` streams can send batches of pre-encoded events (see `wire`). Also saves the descriptor set for reflection.

use prost::Message;
use tonic_prost_build::manual::{Builder, Method, Service};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["raven/v1/raven.proto"], ["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("raven_v1_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .compile_fds(fds)?;

    let method = |name: &str, route: &str, input: &str, output: &str| {
        Method::builder()
            .name(name)
            .route_name(route)
            .input_type(input)
            .output_type(output)
            .codec_path("tonic_prost::ProstCodec")
    };
    let market = Service::builder()
        .name("Market")
        .package("raven.v1")
        .method(
            method(
                "stream",
                "Stream",
                "crate::pb::StreamRequest",
                "crate::wire::EncodedBatch",
            )
            .codec_path("crate::codec::StreamCodec")
            .client_streaming()
            .server_streaming()
            .build(),
        )
        .method(
            method(
                "get_snapshot",
                "GetSnapshot",
                "crate::pb::GetSnapshotRequest",
                "crate::pb::Event",
            )
            .build(),
        )
        .method(
            method(
                "list_instruments",
                "ListInstruments",
                "crate::pb::ListInstrumentsRequest",
                "crate::pb::ListInstrumentsResponse",
            )
            .build(),
        )
        .build();
    let ingest = Service::builder()
        .name("Ingest")
        .package("raven.v1")
        .method(
            method(
                "publish",
                "Publish",
                "crate::pb::PublishRequest",
                "crate::pb::PublishResponse",
            )
            .client_streaming()
            .build(),
        )
        .build();
    let history = Service::builder()
        .name("History")
        .package("raven.v1")
        .method(
            method(
                "query",
                "Query",
                "crate::pb::HistoryRequest",
                "crate::wire::EncodedBatch",
            )
            .server_streaming()
            .build(),
        )
        .method(
            method(
                "query_arrow",
                "QueryArrow",
                "crate::pb::HistoryRequest",
                "crate::pb::ArrowBatch",
            )
            .server_streaming()
            .build(),
        )
        .method(
            method(
                "book_at",
                "BookAt",
                "crate::pb::BookAtRequest",
                "crate::pb::Event",
            )
            .build(),
        )
        .method(
            method(
                "replay",
                "Replay",
                "crate::pb::ReplayRequest",
                "crate::wire::EncodedBatch",
            )
            .server_streaming()
            .build(),
        )
        .build();
    Builder::new()
        .build_client(false)
        .compile(&[market, ingest, history]);
    Ok(())
}
