//! The service manager's readiness protocol (`sd_notify`): when `NOTIFY_SOCKET` is set (a
//! systemd unit of `Type=notify`), one datagram per state change: `READY=1` once the
//! listeners are bound and the store is open, `STOPPING=1` when a drain begins. Without
//! the variable it does nothing. A path, or `@name` for an abstract socket.

use std::os::unix::net::UnixDatagram;

/// Tells the service manager `state` (`READY=1`, `STOPPING=1`, `STATUS=…` lines).
pub fn notify(state: &str) {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = send(&socket.to_string_lossy(), state) {
        tracing::warn!(socket = %socket.to_string_lossy(), error = %e, "cannot notify the service manager");
    }
}

fn send(socket: &str, state: &str) -> std::io::Result<usize> {
    let datagram = UnixDatagram::unbound()?;
    match socket.strip_prefix('@') {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
            datagram.send_to_addr(state.as_bytes(), &addr)
        }
        None => datagram.send_to(state.as_bytes(), socket),
    }
}
