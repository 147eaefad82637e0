//! The gRPC surface: `raven.v1.Market` ([`market`]), `raven.v1.Ingest` ([`ingest`]), plus
//! the standard health and reflection services, wired up in [`crate::app`]. Requests are validated here and
//! refused with precise status codes before anything reaches the engine.

pub mod ingest;
pub mod market;
mod session;
