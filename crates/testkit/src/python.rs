//! Python for the tests that run it: a virtualenv per package set, made once under the
//! target directory (a machine without Python: [`crate::skip_or_fail`]).

use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs `cmd`; its output in the error when it fails.
pub fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// The interpreter of a virtualenv in `root` holding `packages` (pip requirement
/// strings), made on first use; `None` when the machine has no `python3`. A marker
/// written after the install makes an interrupted install start over.
pub fn venv(root: &Path, packages: &[String]) -> Result<Option<PathBuf>, String> {
    if Command::new("python3").arg("--version").output().is_err() {
        return Ok(None);
    }
    let python = root.join("venv/bin/python");
    let installed = root.join("installed");
    if !installed.exists() {
        let _ = std::fs::remove_dir_all(root.join("venv"));
        run(Command::new("python3")
            .args(["-m", "venv"])
            .arg(root.join("venv")))?;
        run(Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args(packages))?;
        std::fs::write(&installed, packages.join("\n")).map_err(|e| e.to_string())?;
    }
    Ok(Some(python))
}
