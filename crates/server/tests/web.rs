//! The browser page's pure modules under `node --test`: the book (`web/book.js`,
//! `web/book.test.js`: snapshots, deltas, a resync, a sequence gap asking for a new
//! subscription) and the chart's ring of points (`web/ring.js`, `web/ring.test.js`). Without Node.js the test is skipped with a message, unless
//! `RAVEN_REQUIRE_SERVICES=1` (CI) makes that a failure.

use std::path::Path;
use std::process::Command;

#[test]
fn the_book_module_passes_its_node_tests() {
    let web = Path::new(env!("CARGO_MANIFEST_DIR")).join("web");
    let out = match Command::new("node").arg("--test").arg(&web).output() {
        Ok(out) => out,
        Err(e) => return raven_testkit::skip_or_fail("Node.js", &format!("cannot run node: {e}")),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "node --test failed:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("# pass 6") && stdout.contains("# fail 0"),
        "{stdout}"
    );
}
