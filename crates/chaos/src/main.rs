//! `raven-chaos`: Raven's reliability suite. Each scenario runs a fault against the
//! release binary (`raven serve` as a child process, real sockets, a real SQLite file on
//! a real filesystem, a real PostgreSQL stopped and started), then audits what was
//! stored row by row, and prints one row: events published, stored, lost, recorded as
//! gaps, silently missing, duplicated, the longest pause a live subscriber saw, and the
//! time from SIGTERM to exit, against the targets of issue 10 (and, for an edge node's
//! subscriber, issue 15's: nothing missing through a NATS outage). `scripts/chaos.sh`
//! runs it; RELIABILITY.md holds the results.

mod db;
mod pg;
mod probe;
mod scenarios;
mod server;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

/// One scenario's outcome.
#[derive(Debug, Default)]
pub struct Row {
    /// Its name, as given on the command line.
    pub scenario: String,
    /// Events the engine published (the recorder's count), when the server said.
    pub published: Option<u64>,
    /// Events stored.
    pub stored: u64,
    /// Events published and not stored.
    pub lost: u64,
    /// Of those, counted by gap rows history returns.
    pub gaps: u64,
    /// Sequences missing with no gap row: silent loss.
    pub silent: u64,
    /// Events stored twice.
    pub duplicates: u64,
    /// Longest time between two messages a live subscriber saw.
    pub pause: Option<Duration>,
    /// SIGTERM to exit.
    pub exit: Option<Duration>,
    /// Met its targets.
    pub pass: bool,
    /// What else was seen.
    pub note: String,
}

const HEADER: &str = "| scenario | published | stored | lost | as gaps | silent | dup | longest pause | exit | result | notes |\n|---|---|---|---|---|---|---|---|---|---|---|";

impl Row {
    fn markdown(&self) -> String {
        let ms = |d: Option<Duration>| {
            d.map_or("—".into(), |d| format!("{:.0} ms", d.as_secs_f64() * 1e3))
        };
        let s =
            |d: Option<Duration>| d.map_or("—".into(), |d| format!("{:.2} s", d.as_secs_f64()));
        format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            self.scenario,
            self.published.map_or("—".into(), |p| p.to_string()),
            self.stored,
            self.lost,
            self.gaps,
            self.silent,
            self.duplicates,
            ms(self.pause),
            s(self.exit),
            if self.pass { "pass" } else { "**FAIL**" },
            self.note
        )
    }
}

/// What to run.
pub struct Options {
    /// The `raven` binary.
    pub raven: PathBuf,
    /// Scratch space.
    pub work: PathBuf,
    /// Minutes for each WAL run.
    pub wal_minutes: u64,
    /// The binary is an older build (for before/after tables): it lacks the log lines
    /// the scenarios wait for, so they wait a fixed time instead.
    pub baseline: bool,
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut options = Options {
        raven: PathBuf::from("target/release/raven"),
        work: std::env::temp_dir().join(format!("raven-chaos-{}", std::process::id())),
        wal_minutes: 10,
        baseline: false,
    };
    let mut only: Vec<String> = Vec::new();
    let mut out = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--raven" => options.raven = args.next().context("--raven PATH")?.into(),
            "--wal-minutes" => {
                options.wal_minutes = args.next().context("--wal-minutes N")?.parse()?;
            }
            "--out" => out = Some(PathBuf::from(args.next().context("--out FILE")?)),
            "--baseline" => options.baseline = true,
            "--help" | "-h" => {
                println!(
                    "raven-chaos [--raven PATH] [--wal-minutes N] [--baseline] [--out FILE] [SCENARIO...]\nscenarios: {}",
                    scenarios::NAMES.join(" ")
                );
                return Ok(());
            }
            name => only.push(name.to_owned()),
        }
    }
    options.raven = options
        .raven
        .canonicalize()
        .with_context(|| format!("no raven binary at {}", options.raven.display()))?;
    for name in &only {
        anyhow::ensure!(
            scenarios::NAMES.contains(&name.as_str()),
            "unknown scenario {name:?}; one of {}",
            scenarios::NAMES.join(", ")
        );
    }
    raise_fd_limit();
    std::fs::create_dir_all(&options.work)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    println!("{HEADER}");
    let mut rows = Vec::new();
    for name in scenarios::NAMES {
        if !only.is_empty() && !only.iter().any(|o| o == name) {
            continue;
        }
        eprintln!("== {name}");
        let row = runtime
            .block_on(scenarios::run(name, &options))
            .unwrap_or_else(|e| Row {
                scenario: (*name).to_owned(),
                note: format!("could not run: {e:#}"),
                ..Row::default()
            });
        println!("{}", row.markdown());
        rows.push(row);
    }
    if let Some(out) = out {
        let mut text = format!("{HEADER}\n");
        for row in &rows {
            text += &row.markdown();
            text.push('\n');
        }
        std::fs::write(&out, text)?;
    }
    let _ = std::fs::remove_dir_all(&options.work);
    let failed: Vec<_> = rows
        .iter()
        .filter(|r| !r.pass)
        .map(|r| r.scenario.as_str())
        .collect();
    anyhow::ensure!(failed.is_empty(), "failed: {}", failed.join(", "));
    Ok(())
}

/// Thousands of sockets need descriptors: the soft limit goes up to the hard one (the
/// servers started inherit it).
fn raise_fd_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    limit.current = limit.maximum;
    if let Err(e) = setrlimit(Resource::Nofile, limit) {
        eprintln!("raven-chaos: cannot raise the descriptor limit: {e}");
    }
}
