//! The system under test: a `raven serve` child process the bench starts (so its memory
//! and CPU can be read from /proc apart from the load generator's), a Raven URL, the
//! plain-tonic relay for `--floor` (a child too), or the NATS server for `--compare` (read
//! from /proc too when it runs on this machine).
//!
//! A child server never outlives the bench: dropping its [`Target`] kills it (an error,
//! or a signal that ends the run), and the child asks the kernel to kill it when the
//! thread that started it ends (the bench killed outright), as [`PARENT_ENV`] tells it.

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::BenchError;

/// Set in a child server's environment to the bench's pid: the server then asks for
/// SIGKILL when the thread that spawned it ends, and exits at once if that process is
/// already gone. Every child is spawned from the bench's main thread, which lives as long
/// as the bench does.
pub const PARENT_ENV: &str = "RAVEN_EXIT_WITH_PARENT";

/// Called first by a server the bench may have started: with [`PARENT_ENV`] set, the
/// kernel kills it when the bench's spawning thread ends, even when the bench is killed
/// outright (its `Drop` kills the server on every other way out).
pub fn exit_with_parent() -> std::io::Result<()> {
    let Ok(parent) = std::env::var(PARENT_ENV) else {
        return Ok(());
    };
    let parent: i32 = parent
        .parse()
        .map_err(|_| std::io::Error::other(format!("{PARENT_ENV}={parent:?}: not a pid")))?;
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL)).map_err(
        |e| std::io::Error::other(format!("cannot ask for the parent-death signal: {e}")),
    )?;
    // The parent may have gone before the request: then no signal would ever come.
    if rustix::process::getppid().map(rustix::process::Pid::as_raw_pid) != Some(parent) {
        return Err(std::io::Error::other(format!(
            "the bench that started this server (pid {parent}) has gone"
        )));
    }
    Ok(())
}

/// Where the load goes.
pub struct Target {
    /// Server URL (`http://…` for Raven, `nats://…` for NATS).
    pub url: String,
    /// Raven's WebSocket gateway (`ws://…/ws`), when the server was started with HTTP.
    pub ws: Option<String>,
    child: Option<Child>,
    /// The server process, when it runs on this machine.
    pid: Option<u32>,
}

/// A reading of the server process's resources.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    /// Resident set, bytes.
    pub rss: u64,
    /// User + system CPU time, clock ticks.
    pub cpu_ticks: u64,
}

/// The server's resident memory at one moment of a row.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct RssSample {
    /// Seconds since publishing started.
    pub t_s: f64,
    /// Resident set, MiB.
    pub rss_mib: f64,
}

impl Usage {
    /// The load generator's own (this process).
    pub fn own() -> Option<Usage> {
        Usage::of(std::process::id())
    }

    /// Reads `pid`'s RSS and CPU time from /proc.
    fn of(pid: u32) -> Option<Usage> {
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
}

/// The pid of the process named `name` (as in /proc/PID/comm), if exactly one runs.
fn find_process(name: &str) -> Option<u32> {
    let mut found = std::fs::read_dir("/proc").ok()?.filter_map(|entry| {
        let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        (comm.trim_end() == name).then_some(pid)
    });
    let pid = found.next()?;
    found.next().is_none().then_some(pid)
}

impl Target {
    pub fn remote(url: String) -> Target {
        Target {
            url,
            ws: None,
            child: None,
            pid: None,
        }
    }

    /// A NATS server; its process is read from /proc when the URL is on this machine.
    pub fn nats(url: String) -> Target {
        let local = ["://127.0.0.1", "://localhost", "://[::1]"]
            .iter()
            .any(|host| url.contains(host));
        let pid = if local {
            find_process("nats-server")
        } else {
            None
        };
        Target {
            url,
            ws: None,
            child: None,
            pid,
        }
    }

    /// Starts `raven serve` (with `config`, if given) on a free loopback port with the
    /// simulator nearly idle and recording off: these rows measure streaming, and the
    /// recorder has benchmarks of its own. HTTP is off unless `websocket`, which serves it
    /// on a free port too for the WebSocket gateway's clients, with no limit on its
    /// connections unless `config` sets one (the default, 512, is fewer than a row may
    /// ask for).
    pub async fn spawn(
        raven: &Path,
        config: Option<&Path>,
        websocket: bool,
    ) -> Result<Target, BenchError> {
        let mut command = Command::new(raven);
        command.arg("serve");
        let unlimited = match (config, websocket) {
            (None, true) => Some(TempConfig::write("[limits]\nmax_http_connections = 0\n")?),
            _ => None,
        };
        if let Some(config) = config.or(unlimited.as_ref().map(|c| c.0.as_path())) {
            command.arg("--config").arg(config);
        }
        let http = if websocket {
            // Free now; the server binds it a moment later.
            let port = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            Some(format!("127.0.0.1:{port}"))
        } else {
            None
        };
        command
            .args([
                "--listen",
                "127.0.0.1:0",
                "--http",
                http.as_deref().unwrap_or("off"),
                "--rate",
                "1",
                "--store",
                "off",
            ])
            .env("RAVEN_LOG", "warn")
            .env(PARENT_ENV, std::process::id().to_string());
        // The server has read its configuration once it reports its address.
        let mut target = Target::spawn_child(command).await?;
        drop(unlimited);
        target.ws = http.map(|addr| format!("ws://{addr}/ws"));
        Ok(target)
    }

    /// Starts the plain-tonic relay (`raven-tonic-relay`) on a free loopback port.
    pub async fn spawn_relay(relay: &Path) -> Result<Target, BenchError> {
        let mut command = Command::new(relay);
        command
            .arg("127.0.0.1:0")
            .env(PARENT_ENV, std::process::id().to_string());
        Target::spawn_child(command).await
    }

    /// Spawns `command`, a server whose first line on stdout names its `127.0.0.1:PORT`
    /// (with `(TLS` in it when it takes TLS only).
    async fn spawn_child(mut command: Command) -> Result<Target, BenchError> {
        // Spawned here, on the thread that runs the bench (not a blocking-pool thread,
        // which ends when idle and would take the server with it).
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| std::io::Error::other("no stdout"))?;
        let mut target = Target {
            url: String::new(),
            ws: None,
            pid: Some(child.id()),
            child: Some(child),
        };
        // Waiting for the first line blocks; dropping `target` on any error kills the child.
        let line = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line).map(|_| line)
        })
        .await
        .map_err(std::io::Error::other)??;
        let addr = line
            .split_whitespace()
            .find(|w| w.starts_with("127.0.0.1:"))
            .ok_or_else(|| {
                std::io::Error::other(format!("server did not report its address: {line:?}"))
            })?;
        let scheme = if line.contains("(TLS") {
            "https"
        } else {
            "http"
        };
        target.url = format!("{scheme}://{addr}");
        Ok(target)
    }

    /// The server's current resource use, when it runs on this machine.
    pub fn usage(&self) -> Option<Usage> {
        Usage::of(self.pid?)
    }

    /// Runs `work`, reading the server's RSS every `every` from `warmup` on (readings
    /// while load ramps up would only tilt the slope) and reporting each reading through
    /// `progress`.
    pub async fn sample_while<T>(
        &self,
        (every, warmup): (Option<Duration>, Duration),
        progress: &mut impl FnMut(&str),
        work: impl Future<Output = T>,
    ) -> (T, Vec<RssSample>) {
        let mut samples = Vec::new();
        let Some(every) = every else {
            return (work.await, samples);
        };
        let begin = Instant::now();
        let mut ticker = tokio::time::interval_at((begin + warmup).into(), every);
        tokio::pin!(work);
        loop {
            tokio::select! {
                out = &mut work => return (out, samples),
                _ = ticker.tick() => {
                    if let Some(usage) = self.usage() {
                        let sample = RssSample {
                            t_s: begin.elapsed().as_secs_f64(),
                            rss_mib: usage.rss as f64 / (1024.0 * 1024.0),
                        };
                        progress(&format!(
                            "  {:>6.0} s: server RSS {:.1} MiB",
                            sample.t_s, sample.rss_mib
                        ));
                        samples.push(sample);
                    }
                }
            }
        }
    }

    /// Stops a child server.
    pub async fn stop(mut self) {
        if let Some(child) = self.child.take() {
            let _ = tokio::task::spawn_blocking(move || kill(child)).await;
        }
    }
}

impl Drop for Target {
    /// A child server still running (the run failed or was abandoned) is killed.
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            kill(child);
        }
    }
}

/// A configuration file the bench writes for a server it starts, removed when dropped.
struct TempConfig(PathBuf);

impl TempConfig {
    fn write(text: &str) -> std::io::Result<TempConfig> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("raven-bench-{}-{n}.toml", std::process::id()));
        std::fs::write(&path, text)?;
        Ok(TempConfig(path))
    }
}

impl Drop for TempConfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Kills a child server and reaps it (SIGKILL: it is over at once).
fn kill(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}
