//! What Raven's integration tests share, so that each test file says only what it checks:
//!
//! - [`scratch_dir!`]: a directory of its own per use, swept once its test process ends.
//! - [`served`]: `raven serve` as a child process, and the address it prints.
//! - [`rows`]: every row a store holds, read with plain SQL, and the sequence audit.
//! - [`pg`]: the shared PostgreSQL server, a schema per test.
//! - [`python`]: virtualenvs for the tests that run Python.
//! - [`raw_h2`]: gRPC by hand, for peers tonic would not be.
//! - [`tls`]: certificates made per test, good and bad.

pub mod nats;
pub mod pg;
pub mod python;
pub mod raw_h2;
pub mod rows;
pub mod scratch;
pub mod served;
pub mod tls;
