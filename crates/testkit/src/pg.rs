//! PostgreSQL for the tests that need it: the shared server on 127.0.0.1:5432, a schema
//! per test.

/// The shared server's test database.
pub const PG: &str = "postgres://postgres@127.0.0.1:5432/test";

/// True when the server answers; without it the caller's test is skipped with a
/// message, unless `RAVEN_REQUIRE_SERVICES=1` makes that a failure.
pub fn postgres_available() -> bool {
    if std::net::TcpStream::connect("127.0.0.1:5432").is_ok() {
        return true;
    }
    crate::skip_or_fail("PostgreSQL", "nothing listens on 127.0.0.1:5432");
    false
}

/// A schema no other run uses; dropped by the test that made it.
pub fn unique_schema(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("raven_test_{what}_{}_{nanos}", std::process::id())
}

/// Drops a test's schema and everything in it.
pub fn drop_schema(schema: &str) {
    let mut client = postgres::Client::connect(PG, postgres::NoTls).unwrap();
    client
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .unwrap();
}
