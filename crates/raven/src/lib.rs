//! Raven, a market-data server. Data flows one way:
//!
//! `feed` (the seam every source plugs into: the simulator, the publish API) →
//! `engine` (one writer per instrument: books, sequences, BBO, candles; encodes each
//! event once) → `fanout` (bounded per-subscriber mailboxes) → `api` (gRPC streams).
//! The `recorder` taps the engine and writes every event to a `store` (SQLite or
//! PostgreSQL). `app` wires them together from a `config`, with the time from a
//! `clock`; `bench` is the whole-server load generator.

pub mod api;
pub mod app;
pub mod bench;
pub mod clock;
pub mod config;
pub mod engine;
pub mod fanout;
pub mod feed;
pub mod recorder;
pub mod shutdown;
pub mod store;
