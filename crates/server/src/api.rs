//! The gRPC surface: `raven.v1.Market` ([`market`]), `raven.v1.Ingest` ([`ingest`]),
//! `raven.v1.History` ([`history`]), plus the standard health and reflection services,
//! wired up in [`crate::app`], over the listener's [`connections`] (handshake and idle
//! limits, cut at a drain's deadline). Requests are validated here and refused with
//! precise status codes before anything reaches the engine.

pub mod connections;
pub mod history;
pub mod ingest;
pub mod market;
mod session;
