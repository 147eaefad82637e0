//! A NATS server of the test's own (`nats-server -js` on a free loopback port, its
//! JetStream store in a scratch directory), so that a test may stop and restart it
//! without disturbing the shared one on 4222 or another test.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A private `nats-server`; killed when dropped.
pub struct PrivateNats {
    port: u16,
    store: PathBuf,
    /// JetStream's memory, when bounded (NATS's own default is 75% of the machine's).
    memory: Option<u64>,
    child: Option<Child>,
}

/// True when `nats-server` can be run; without it the caller's test is skipped with a
/// message, unless `RAVEN_REQUIRE_SERVICES=1` makes that a failure.
pub fn nats_server_available() -> bool {
    let found = Command::new("nats-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        return true;
    }
    crate::skip_or_fail("NATS JetStream", "`nats-server` is not on the PATH");
    false
}

/// A loopback port nothing listens on (as of now).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind a loopback port")
}

impl PrivateNats {
    /// Starts one with its store in `store` and waits until it accepts connections.
    pub fn start(store: PathBuf) -> PrivateNats {
        let mut nats = PrivateNats::stopped(store);
        nats.restart();
        nats
    }

    /// Starts one whose JetStream holds at most `bytes` in memory, as a NATS sized for
    /// its machine does: past them it refuses what a memory stream is sent.
    pub fn with_memory(store: PathBuf, bytes: u64) -> PrivateNats {
        let mut nats = PrivateNats::stopped(store);
        nats.memory = Some(bytes);
        nats.restart();
        nats
    }

    /// A URL for a NATS that is not running yet: the port is chosen, nothing listens
    /// on it until [`PrivateNats::restart`].
    pub fn stopped(store: PathBuf) -> PrivateNats {
        PrivateNats {
            port: free_port(),
            store,
            memory: None,
            child: None,
        }
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills it (as a crash would) and waits for its end.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes it (SIGSTOP): connections stay open, nothing is answered, as with a server
    /// that hangs.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Lets a frozen server go on (SIGCONT): it reads everything that waited.
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("nats-server is running");
        let sent = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill {signal} {}", child.id());
    }

    /// Starts it (again) on the same port and store, and waits until it accepts
    /// connections.
    pub fn restart(&mut self) {
        self.stop();
        let mut command = Command::new("nats-server");
        command
            .args(["-js", "-a", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .arg("-sd")
            .arg(&self.store);
        if let Some(bytes) = self.memory {
            // Only a configuration file bounds JetStream's memory; flags still win for
            // the rest.
            std::fs::create_dir_all(&self.store).expect("make the NATS store directory");
            let file = self.store.join("nats.conf");
            std::fs::write(
                &file,
                format!("jetstream {{ max_memory_store: {bytes} }}\n"),
            )
            .expect("write the NATS configuration");
            command.arg("-c").arg(file);
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run nats-server");
        self.child = Some(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server did not listen on {addr} within 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        self.stop();
    }
}
