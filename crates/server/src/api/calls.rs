//! gRPC calls counted by method and status code, for metrics: one counter per (method,
//! code) pair, both from fixed lists, so a client cannot create series by calling
//! methods that do not exist (those count as `other`). The code is read where gRPC puts
//! it: the response headers of a trailers-only answer (a refusal), or the trailers at
//! the end of the body; a body dropped before its trailers (the client left, or the
//! server cut the connection) counts as `CANCELLED`. Beside them, the requests a stream
//! limit refused, by limit: the code says `RESOURCE_EXHAUSTED`, these say which limit.

use std::sync::atomic::{AtomicU64, Ordering};

use http::HeaderMap;

/// The methods counted by name, in label form; anything else is `other`.
pub const METHODS: [&str; 12] = [
    "raven.v1.Market/Stream",
    "raven.v1.Market/GetSnapshot",
    "raven.v1.Market/ListInstruments",
    "raven.v1.Ingest/Publish",
    "raven.v1.History/Query",
    "raven.v1.History/QueryArrow",
    "raven.v1.History/BookAt",
    "raven.v1.History/Replay",
    "grpc.health.v1.Health/Check",
    "grpc.health.v1.Health/Watch",
    "grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];

/// gRPC status codes by number, as their names are written.
pub const CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

const CANCELLED: usize = 1;
const UNKNOWN: usize = 2;

/// Finished calls, by method (the last row: `other`) and code.
#[derive(Debug, Default)]
pub struct CallStats {
    counts: [[AtomicU64; CODES.len()]; METHODS.len() + 1],
    /// Requests refused for a limit on their stream.
    pub limits: StreamLimitHits,
}

/// Requests a stream's own limits refused (each ends its stream `RESOURCE_EXHAUSTED`).
#[derive(Debug, Default)]
pub struct StreamLimitHits {
    /// Subscribe requests over `subscribe_requests_per_s` on their stream.
    pub subscribe_rate: AtomicU64,
    /// Subscribes past the subscriptions one stream may hold.
    pub subscriptions: AtomicU64,
}

/// The row of a request path (`/raven.v1.Market/Stream`).
pub fn method_of(path: &str) -> usize {
    let name = path.strip_prefix('/').unwrap_or(path);
    METHODS
        .iter()
        .position(|&m| m == name)
        .unwrap_or(METHODS.len())
}

/// The code a `grpc-status` header or trailer gives, if there is one.
pub fn code_in(headers: &HeaderMap) -> Option<usize> {
    let value = headers.get("grpc-status")?.to_str().ok()?;
    Some(
        value
            .parse::<usize>()
            .ok()
            .filter(|&c| c < CODES.len())
            .unwrap_or(UNKNOWN),
    )
}

impl CallStats {
    /// Counts a finished call.
    pub fn finished(&self, method: usize, code: usize) {
        self.counts[method.min(METHODS.len())][code.min(CODES.len() - 1)]
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a call whose body went before its status.
    pub fn cancelled(&self, method: usize) {
        self.finished(method, CANCELLED);
    }

    /// Every (method, code, count) with a count, methods by label.
    pub fn counts(&self) -> Vec<(&'static str, &'static str, u64)> {
        let mut out = Vec::new();
        for (m, row) in self.counts.iter().enumerate() {
            let method = METHODS.get(m).copied().unwrap_or("other");
            for (c, n) in row.iter().enumerate() {
                let n = n.load(Ordering::Relaxed);
                if n > 0 {
                    out.push((method, CODES[c], n));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rpc_of_the_proto_is_counted_by_name() {
        let proto = include_str!("../../../proto/proto/raven/v1/raven.proto");
        let mut service = "";
        for line in proto.lines().map(str::trim) {
            if let Some(rest) = line.strip_prefix("service ") {
                service = rest.split_whitespace().next().unwrap();
            }
            if let Some(rest) = line.strip_prefix("rpc ") {
                let rpc = rest.split('(').next().unwrap().trim();
                let name = format!("raven.v1.{service}/{rpc}");
                assert!(
                    METHODS.contains(&name.as_str()),
                    "{name} is not counted by name"
                );
            }
        }
    }

    #[test]
    fn calls_count_by_method_and_code_and_strangers_are_other() {
        let stats = CallStats::default();
        let mut headers = HeaderMap::new();
        headers.insert("grpc-status", "5".parse().unwrap());
        stats.finished(
            method_of("/raven.v1.Market/GetSnapshot"),
            code_in(&headers).unwrap(),
        );
        stats.finished(method_of("/raven.v1.Market/GetSnapshot"), 0);
        stats.finished(method_of("/raven.v1.Market/GetSnapshot"), 0);
        headers.insert("grpc-status", "99".parse().unwrap());
        stats.finished(method_of("/x.Y/Z"), code_in(&headers).unwrap());
        stats.cancelled(method_of("/raven.v1.Market/Stream"));
        assert_eq!(code_in(&HeaderMap::new()), None);
        assert_eq!(
            stats.counts(),
            [
                ("raven.v1.Market/Stream", "CANCELLED", 1),
                ("raven.v1.Market/GetSnapshot", "OK", 2),
                ("raven.v1.Market/GetSnapshot", "NOT_FOUND", 1),
                ("other", "UNKNOWN", 1),
            ]
        );
    }
}
