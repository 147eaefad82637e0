//! What Raven's integration tests share, so that each test file says only what it checks:
//!
//! - [`scratch_dir!`]: a directory of its own per use, swept once its test process ends.
//! - [`served`]: `raven serve` as a child process, and the address it prints.
//! - [`rows`]: every row a store holds, read with plain SQL, and the sequence audit.
//! - [`pg`]: the shared PostgreSQL server, a schema per test.
//! - [`python`]: virtualenvs for the tests that run Python.
//! - [`raw_h2`]: gRPC by hand, for peers tonic would not be.
//! - [`tls`]: certificates made per test, good and bad.
//! - [`skip_or_fail`]: what a test does on a machine without the service it needs.

pub mod nats;
pub mod pg;
pub mod python;
pub mod raw_h2;
pub mod rows;
pub mod scratch;
pub mod served;
pub mod tls;

/// Skips the calling test with a message naming `what` (PostgreSQL, NATS, Python,
/// Node.js, …) and `why`, or fails it when `RAVEN_REQUIRE_SERVICES=1` (CI, which installs
/// them all) says every service must be there.
pub fn skip_or_fail(what: &str, why: &str) {
    if std::env::var("RAVEN_REQUIRE_SERVICES").is_ok_and(|v| v == "1") {
        panic!("{what} required (RAVEN_REQUIRE_SERVICES=1) but {why}");
    }
    eprintln!("SKIPPED {what}: {why}");
}
