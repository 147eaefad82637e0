//! A peer that vanishes without closing its socket (the host died, a firewall dropped
//! the flow) is found by HTTP/2 keepalive and cleaned up. A raw `h2` client opens a real
//! gRPC `Stream` call, subscribes, then stops answering while holding the socket open.

mod common;

use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_peer_is_dropped_by_keepalive() {
    let server = common::server(|f| {
        f.server.keepalive_secs = 1;
        f.server.keepalive_timeout_secs = 1;
    })
    .await;

    let tcp = tokio::net::TcpStream::connect(server.local_addr())
        .await
        .unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let driver = tokio::spawn(async move {
        let mut connection = Box::pin(connection);
        tokio::select! {
            _ = &mut connection => panic!("connection ended before the peer went silent"),
            _ = stopped => {}
        }
        // Silent from here on: the socket stays open, nothing is read or answered.
        // (Returned in an Option so it is held, not awaited.)
        Some(connection)
    });

    let (_client, _body, response) =
        raven_testkit::raw_h2::subscribe_to_book(client, server.local_addr()).await;
    let response = response.await.unwrap();
    assert_eq!(response.status(), 200);
    let mut data = response.into_body();
    let first = data.data().await.unwrap().unwrap();
    assert!(first.len() > 5, "the snapshot arrived");

    let mut count = server.fanout().watch_subscribers();
    assert_eq!(*count.borrow(), 1);
    stop.send(()).unwrap();
    let _silent = driver.await.unwrap();
    // Keepalive pings every second and waits one for the answer.
    tokio::time::timeout(Duration::from_secs(15), count.wait_for(|&n| n == 0))
        .await
        .expect("the silent peer was never dropped")
        .unwrap();
    server.shutdown().await.unwrap();
}
