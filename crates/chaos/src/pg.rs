//! A private PostgreSQL for the outage scenarios: `initdb` and `pg_ctl` in a temporary
//! directory, on a free loopback port, so stopping it for real never touches the shared
//! server. PostgreSQL refuses to run as root; as root it runs as the `postgres` user.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

/// A private server; stopped and removed when dropped.
pub struct PrivatePostgres {
    dir: PathBuf,
    port: u16,
}

fn as_owner(program: &str) -> Command {
    if rustix::process::geteuid().is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--", program]);
        command
    } else {
        Command::new(program)
    }
}

fn run(mut command: Command, what: &str) -> anyhow::Result<()> {
    let output = command
        .output()
        .with_context(|| format!("cannot run {what}"))?;
    if !output.status.success() {
        bail!(
            "{what} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

impl PrivatePostgres {
    /// Creates and starts a cluster under `parent`.
    pub fn start(parent: &Path) -> anyhow::Result<PrivatePostgres> {
        let dir = parent.join("pg");
        std::fs::create_dir_all(&dir)?;
        if rustix::process::geteuid().is_root() {
            run(
                {
                    let mut c = Command::new("chown");
                    c.args(["-R", "postgres:postgres"]).arg(parent);
                    c
                },
                "chown",
            )?;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut initdb = as_owner("initdb");
        initdb.args(["-D"]).arg(dir.join("data")).args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
        ]);
        run(initdb, "initdb")?;
        let server = PrivatePostgres { dir, port };
        server.resume()?;
        Ok(server)
    }

    /// A connection URL with the given application name.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops the server (fast: connections are terminated).
    pub fn stop(&self) -> anyhow::Result<()> {
        let mut c = as_owner("pg_ctl");
        c.args(["-D"])
            .arg(self.dir.join("data"))
            .args(["-m", "fast", "-w", "stop"]);
        run(c, "pg_ctl stop")
    }

    /// Starts it again.
    pub fn resume(&self) -> anyhow::Result<()> {
        let mut c = as_owner("pg_ctl");
        c.args(["-D"])
            .arg(self.dir.join("data"))
            .args(["-l"])
            .arg(self.dir.join("log"))
            .args([
                "-o",
                &format!(
                    "-p {} -k {} -c listen_addresses=127.0.0.1",
                    self.port,
                    self.dir.display()
                ),
                "-w",
                "start",
            ]);
        run(c, "pg_ctl start")
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}
