//! Scratch directories under cargo's target tmpdir, one per use: [`crate::scratch_dir!`].
//!
//! A test's directory outlives it (to look at after a failure), but not the next run:
//! the first use in a test process removes the directories of test processes that have
//! ended. Without that, every run left gigabytes behind (each server reserves its spill
//! file's space) until the disk filled.

use std::path::{Path, PathBuf};
use std::sync::Once;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A directory of its own for each use (a server's SQLite file and spill file), named
/// `{what}-{pid}-{n}`, under the calling test crate's target tmpdir.
#[macro_export]
macro_rules! scratch_dir {
    ($what:expr) => {
        $crate::scratch::dir_in(::std::path::Path::new(env!("CARGO_TARGET_TMPDIR")), $what)
    };
}

/// A directory of its own under `root` (see [`crate::scratch_dir!`]).
pub fn dir_in(root: &Path, what: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    static SWEPT: Once = Once::new();
    SWEPT.call_once(|| remove_ended(root));
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = root.join(format!("{what}-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create a scratch directory");
    dir
}

/// Removes the scratch directories whose test process is no longer running.
fn remove_ended(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(owner) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// The pid in a `{what}-{pid}-{n}` name.
fn owner(name: &str) -> Option<u32> {
    let mut parts = name.rsplitn(3, '-');
    parts.next()?.parse::<usize>().ok()?;
    let pid = parts.next()?.parse().ok()?;
    parts.next()?;
    Some(pid)
}
