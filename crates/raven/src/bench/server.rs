//! The server under test: a `raven serve` child process the bench starts (so its memory
//! and CPU can be read from /proc apart from the load generator's), or a URL.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use super::BenchError;

/// Where the load goes.
pub struct Target {
    /// gRPC URL.
    pub url: String,
    child: Option<Child>,
}

/// A reading of the server process's resources.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    /// Resident set, bytes.
    pub rss: u64,
    /// User + system CPU time, clock ticks.
    pub cpu_ticks: u64,
}

impl Target {
    pub fn remote(url: String) -> Target {
        Target { url, child: None }
    }

    /// Starts `raven serve` (with `config`, if given) on a free loopback port with the
    /// simulator nearly idle.
    pub async fn spawn(raven: &Path, config: Option<&Path>) -> Result<Target, BenchError> {
        let raven = raven.to_owned();
        let config = config.map(Path::to_owned);
        tokio::task::spawn_blocking(move || {
            let mut command = Command::new(raven);
            if let Some(config) = config {
                command.arg("serve").arg("--config").arg(config);
            } else {
                command.arg("serve");
            }
            let mut child = command
                .args(["--listen", "127.0.0.1:0", "--rate", "1"])
                .env("RAVEN_LOG", "warn")
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()?;
            let mut line = String::new();
            let stdout = child
                .stdout
                .take()
                .ok_or_else(|| std::io::Error::other("no stdout"))?;
            BufReader::new(stdout).read_line(&mut line)?;
            let addr = line
                .split_whitespace()
                .find(|w| w.starts_with("127.0.0.1:"))
                .ok_or_else(|| {
                    std::io::Error::other(format!("server did not report its address: {line:?}"))
                })?;
            Ok(Target {
                url: format!("http://{addr}"),
                child: Some(child),
            })
        })
        .await
        .map_err(std::io::Error::other)?
    }

    /// The server's current resource use, when it is a local child.
    pub fn usage(&self) -> Option<Usage> {
        let pid = self.child.as_ref()?.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let rss_kib: u64 = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the parenthesised command name; utime and stime are 14th and 15th.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let utime: u64 = fields.get(11)?.parse().ok()?;
        let stime: u64 = fields.get(12)?.parse().ok()?;
        Some(Usage {
            rss: rss_kib * 1024,
            cpu_ticks: utime + stime,
        })
    }

    /// Stops a child server.
    pub async fn stop(mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = tokio::task::spawn_blocking(move || {
                let _ = child.kill();
                child.wait()
            })
            .await;
        }
    }
}
