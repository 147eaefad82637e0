//! `raven serve` as a child process: started with its addresses (gRPC, and HTTP unless
//! it is off) read from the first line it prints, killed if the test ends without
//! stopping it.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};

/// A running `raven serve`.
pub struct Served {
    child: Child,
    addr: SocketAddr,
    http: Option<SocketAddr>,
}

impl Served {
    /// Spawns `command` (a `raven serve` invocation, perhaps behind a wrapper such as
    /// `prlimit`, listening on `127.0.0.1:0`) with its stdout piped, and waits for the
    /// line that names the address it serves on.
    pub fn start(mut command: Command) -> Served {
        let mut child = command
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout is piped"))
            .read_line(&mut line)
            .expect("read the server's first line");
        assert!(line.starts_with("raven: serving gRPC on"), "{line:?}");
        let addr = line
            .split_whitespace()
            .find_map(|w| w.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        let http = line
            .split_once("HTTP on ")
            .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok());
        Served { child, addr, http }
    }

    /// Where its HTTP listener serves, unless it is off.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http
    }

    /// Where it serves.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://` and the address, for clients.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The process.
    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Sends SIGTERM, as an operator stopping it would, and waits for the exit.
    pub fn terminate(mut self) -> ExitStatus {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM {}", self.child.id());
        self.child.wait().expect("wait for the server")
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
