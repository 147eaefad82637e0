//! A connection for a client that stops reading. Included with `#[path]` by the test
//! files that use it, so that the others do not compile it.

use std::net::SocketAddr;

use tonic::transport::Channel;

/// A connection to `addr` with 64 KiB HTTP/2 windows (the client's defaults are MiBs), so
/// that not reading backs up to the server's subscriber queue quickly.
pub async fn small_windows(addr: SocketAddr) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .connect()
        .await
        .unwrap()
}
