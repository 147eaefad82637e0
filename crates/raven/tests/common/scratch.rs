//! Scratch directories under cargo's target tmpdir, one per use. Part of `common`, and
//! included on its own (`#[path]`) by tests that start no server.

use std::sync::atomic::{AtomicUsize, Ordering};

/// A directory of its own for each use (a server's SQLite file and spill file).
pub fn scratch_dir(what: &str) -> std::path::PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("{what}-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create a scratch directory");
    dir
}
