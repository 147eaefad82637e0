//! A `raven serve` child process: started in a directory of its own with a config file,
//! its address read from its first line of output, its log kept, then signalled or
//! killed, and timed until it exits.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// A running server.
pub struct Server {
    child: Child,
    /// Where it serves gRPC.
    pub addr: SocketAddr,
    /// Where it serves HTTP.
    pub http: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

/// How a server ended.
pub struct Stopped {
    /// Seconds from the signal to the exit.
    pub exit_s: f64,
    /// Exit status 0.
    pub success: bool,
    /// Everything it logged.
    pub log: Vec<String>,
}

/// The recorder's totals, from its last log line.
#[derive(Debug, Default, Clone, Copy)]
pub struct Totals {
    pub received: u64,
    pub stored: u64,
    pub spilled: u64,
    pub backfilled: u64,
}

impl Server {
    /// Starts `raven serve` in `dir` with `config` (TOML) and `args`.
    pub fn start(raven: &Path, dir: &Path, config: &str, args: &[&str]) -> anyhow::Result<Server> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("raven.toml"), config)?;
        Self::spawn(Command::new(raven), dir, args)
    }

    /// Starts it under `prefix` (e.g. `prlimit --fsize=N --`).
    pub fn spawn(mut command: Command, dir: &Path, args: &[&str]) -> anyhow::Result<Server> {
        let mut child = command
            .args([
                "serve",
                "--config",
                "raven.toml",
                "--listen",
                "127.0.0.1:0",
                "--http",
                "127.0.0.1:0",
            ])
            .args(args)
            .current_dir(dir)
            .env("RAVEN_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot start raven serve")?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("piped");
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                lines.lock().expect("log lock").push(line);
            }
        });
        let mut first = String::new();
        BufReader::new(child.stdout.take().expect("piped")).read_line(&mut first)?;
        let Some(addr) = first
            .strip_prefix("raven: serving gRPC on ")
            .and_then(|rest| rest.split_whitespace().next())
        else {
            let _ = child.kill();
            std::thread::sleep(Duration::from_millis(200));
            bail!(
                "raven serve did not start: {first:?}; log: {:?}",
                log.lock().expect("log lock")
            );
        };
        let http = first
            .split_once(", HTTP on ")
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .with_context(|| format!("no HTTP address in {first:?}"))?;
        Ok(Server {
            child,
            addr: addr.parse()?,
            http: http.parse()?,
            log,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Open file descriptors of the process.
    pub fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid())).map_or(0, |d| d.count())
    }

    /// Sends SIGTERM.
    fn send_sigterm(&self) {
        let pid = i32::try_from(self.pid())
            .ok()
            .and_then(rustix::process::Pid::from_raw);
        if let Some(pid) = pid {
            // It may have exited already: then there is nothing to stop.
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
    }

    /// Waits for a log line containing `needle`.
    pub fn wait_log(&self, needle: &str, within: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(line) = self
                .log
                .lock()
                .expect("log lock")
                .iter()
                .find(|l| l.contains(needle))
            {
                return Ok(line.clone());
            }
            if Instant::now() >= deadline {
                bail!("no {needle:?} in the server log within {within:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then waits for the exit (SIGKILL after `limit`).
    pub fn terminate(self, limit: Duration) -> anyhow::Result<Stopped> {
        self.send_sigterm();
        self.wait(limit)
    }

    /// Waits for the process to exit, killing it after `limit`.
    pub fn wait(mut self, limit: Duration) -> anyhow::Result<Stopped> {
        let start = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            if start.elapsed() >= limit {
                let _ = self.child.kill();
                break self.child.wait()?;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let exit_s = start.elapsed().as_secs_f64();
        // The log thread reads until the pipe closes.
        std::thread::sleep(Duration::from_millis(100));
        let log = self.log.lock().expect("log lock").clone();
        Ok(Stopped {
            exit_s,
            success: status.success(),
            log,
        })
    }

    /// SIGKILL.
    pub fn kill9(mut self) -> anyhow::Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

impl Stopped {
    /// The recorder's totals, when it logged them.
    pub fn totals(&self) -> Option<Totals> {
        let line = self
            .log
            .iter()
            .rev()
            .find(|l| l.contains("recorder stopped"))?;
        let field = |name: &str| -> u64 {
            let key = format!("{name}=");
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(&key))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        Some(Totals {
            received: field("received"),
            stored: field("stored"),
            spilled: field("spilled"),
            backfilled: field("backfilled"),
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
