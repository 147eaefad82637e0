//! TLS on the gRPC listener, with certificates made in the test: verified clients are
//! served, plaintext and the wrong CA are refused; with client certificates required,
//! clients without one, with an expired one or with one from another CA are refused while
//! a verified client's stream goes on; an expired server certificate is refused by the
//! client; a reload serves a renewed certificate (and a new client CA) to new handshakes
//! while connections already up go on; the stock Python `grpcio` client speaks mutual TLS
//! to it. Every refusal is counted in `raven_connections_tls_failures`.

mod common;
#[path = "common/python.rs"]
mod python;
#[path = "scrape/mod.rs"]
mod scrape;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use raven_proto::pb::{self, market_client::MarketClient};
use raven_server::app::RunningServer;
use raven_server::config::FileConfig;
use raven_testkit::tls::{Authority, Pair};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// Everything a test may present: the CA the server trusts, the server's certificate,
/// a client's, and the bad kinds.
struct Certs {
    ca: PathBuf,
    server: Pair,
    client: Pair,
    expired_client: Pair,
    expired_server: Pair,
    /// A CA the server does not know, and a client certificate it signed.
    foreign_ca: PathBuf,
    foreign_client: Pair,
}

fn certs() -> Certs {
    let dir = common::scratch_dir("tls");
    let ca = Authority::new("Raven test CA");
    let foreign = Authority::new("Somebody else's CA");
    Certs {
        ca: ca.write(&dir, "ca"),
        server: ca.issue(&dir, "server", false),
        client: ca.issue(&dir, "client", false),
        expired_client: ca.issue(&dir, "expired-client", true),
        expired_server: ca.issue(&dir, "expired-server", true),
        foreign_ca: foreign.write(&dir, "foreign-ca"),
        foreign_client: foreign.issue(&dir, "foreign-client", false),
    }
}

async fn tls_server(server: &Pair, client_ca: Option<&Path>) -> RunningServer {
    common::server(|f: &mut FileConfig| {
        f.tls.cert = Some(server.cert.clone());
        f.tls.key = Some(server.key.clone());
        f.tls.client_ca = client_ca.map(Path::to_path_buf);
    })
    .await
}

/// A TLS channel to `addr` trusting `ca`, presenting `identity` if given.
async fn connect(addr: SocketAddr, ca: &Path, identity: Option<&Pair>) -> Result<Channel, String> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(ca).unwrap()))
        .domain_name("localhost");
    if let Some(pair) = identity {
        tls = tls.identity(Identity::from_pem(
            std::fs::read(&pair.cert).unwrap(),
            std::fs::read(&pair.key).unwrap(),
        ));
    }
    Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| error_chain(&e))
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

/// A TLS handshake by hand, then the HTTP/2 preface: TLS 1.3 clients finish their side
/// before the server checks their certificate, so the server's verdict (an alert, or
/// its HTTP/2 settings) comes with the first read. The error, or `Ok` if served.
async fn handshake(addr: SocketAddr, ca: &Path, identity: Option<&Pair>) -> Result<(), String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(ca).unwrap())
        .unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match identity {
        Some(pair) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_file(&pair.cert).unwrap()],
                PrivateKeyDer::from_pem_file(&pair.key).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut first = [0u8; 9];
    tls.read_exact(&mut first)
        .await
        .map_err(|e| e.to_string())?;
    // A SETTINGS frame header: the server is speaking HTTP/2 to us.
    assert_eq!(first[3], 4, "not a SETTINGS frame: {first:?}");
    Ok(())
}

/// A live book stream of SIM:BTC-USD on `channel`, its first three messages read.
async fn book_stream(channel: Channel) -> tonic::Streaming<pb::StreamResponse> {
    // The sender is dropped on return: the server streams on after the client's half-close.
    let (requests, rx) = tokio::sync::mpsc::channel(1);
    requests
        .send(pb::StreamRequest {
            request: Some(pb::stream_request::Request::Subscribe(pb::Subscribe {
                instruments: vec!["SIM:BTC-USD".into()],
                channel: pb::Channel::Book as i32,
                depth: 0,
                start: 0,
            })),
        })
        .await
        .unwrap();
    let mut stream = MarketClient::new(channel)
        .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    for _ in 0..3 {
        stream.message().await.unwrap().expect("stream open");
    }
    stream
}

async fn instruments(channel: Channel) -> Result<usize, tonic::Status> {
    let listed = MarketClient::new(channel)
        .list_instruments(pb::ListInstrumentsRequest {})
        .await?;
    Ok(listed.into_inner().instruments.len())
}

async fn tls_failures(server: &RunningServer) -> f64 {
    scrape::scrape(server).await["raven_connections_tls_failures"]
}

/// Waits for the server's count of refused handshakes to reach `want` (the server sees
/// a client's refusal a moment after the client does).
async fn await_failures(server: &RunningServer, want: f64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let seen = tls_failures(server).await;
        if seen == want {
            return;
        }
        assert!(
            seen < want && tokio::time::Instant::now() < deadline,
            "TLS failures: {seen}, expected {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A plaintext HTTP/2 client on the TLS port gets no HTTP/2 back: the server's first
/// bytes (if any) are a TLS alert record (content type 21), never a SETTINGS frame.
async fn plaintext_is_refused(addr: SocketAddr) {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut answer))
        .await
        .expect("the server closes a plaintext connection");
    // A reset instead of a close is as good a refusal.
    if read.is_ok() && !answer.is_empty() {
        assert_eq!(answer[0], 21, "not a TLS alert: {answer:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_verified_clients_and_refuses_plaintext_and_strangers() {
    let certs = certs();
    let server = tls_server(&certs.server, None).await;
    let addr = server.local_addr();

    let channel = connect(addr, &certs.ca, None).await.unwrap();
    assert_eq!(instruments(channel).await.unwrap(), 8);
    assert_eq!(tls_failures(&server).await, 0.0);

    plaintext_is_refused(addr).await;
    await_failures(&server, 1.0).await;

    // A client that trusts another CA refuses the server, and says so to it.
    let refused = connect(addr, &certs.foreign_ca, None).await.unwrap_err();
    assert!(refused.contains("UnknownIssuer"), "{refused}");
    await_failures(&server, 2.0).await;

    // Verified clients are still served.
    let channel = connect(addr, &certs.ca, None).await.unwrap();
    assert_eq!(instruments(channel).await.unwrap(), 8);
    assert_eq!(tls_failures(&server).await, 2.0);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_refuses_missing_expired_and_foreign_client_certificates_alone() {
    let certs = certs();
    let server = tls_server(&certs.server, Some(&certs.ca)).await;
    let addr = server.local_addr();

    // A verified client's live stream, watched across the refusals.
    let channel = connect(addr, &certs.ca, Some(&certs.client)).await.unwrap();
    let mut stream = book_stream(channel).await;

    for (count, (identity, alert)) in [
        (None, "CertificateRequired"),
        (Some(&certs.expired_client), "CertificateExpired"),
        (Some(&certs.foreign_client), "UnknownCA"),
    ]
    .into_iter()
    .enumerate()
    {
        let refused = handshake(addr, &certs.ca, identity).await.unwrap_err();
        assert_eq!(refused, format!("received fatal alert: {alert}"));
        await_failures(&server, count as f64 + 1.0).await;
    }

    // The verified stream never noticed.
    for _ in 0..3 {
        stream.message().await.unwrap().expect("stream still open");
    }
    handshake(addr, &certs.ca, Some(&certs.client))
        .await
        .unwrap();
    let channel = connect(addr, &certs.ca, Some(&certs.client)).await.unwrap();
    assert_eq!(instruments(channel).await.unwrap(), 8);
    assert_eq!(tls_failures(&server).await, 3.0);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_serves_the_renewed_certificate_to_new_handshakes_only() {
    let certs = certs();
    let dir = common::scratch_dir("tls-renewal");
    let live = Pair {
        cert: dir.join("live.pem"),
        key: dir.join("live.key"),
    };
    std::fs::copy(&certs.server.cert, &live.cert).unwrap();
    std::fs::copy(&certs.server.key, &live.key).unwrap();
    let server = tls_server(&live, None).await;
    let addr = server.local_addr();
    let mut stream = book_stream(connect(addr, &certs.ca, None).await.unwrap()).await;

    // Renewed in place, by another CA, as a rotation may be.
    let renewed = Authority::new("Renewed CA");
    let renewed_ca = renewed.write(&dir, "renewed-ca");
    assert_eq!(renewed.issue(&dir, "live", false), live);
    let reread = |client_ca: Option<&Path>| {
        common::config(|f| {
            f.tls.cert = Some(live.cert.clone());
            f.tls.key = Some(live.key.clone());
            f.tls.client_ca = client_ca.map(Path::to_path_buf);
        })
    };
    server.reload(Some(&reread(None)));

    let refused = connect(addr, &certs.ca, None).await.unwrap_err();
    assert!(refused.contains("UnknownIssuer"), "{refused}");
    let channel = connect(addr, &renewed_ca, None).await.unwrap();
    assert_eq!(instruments(channel).await.unwrap(), 8);
    // The connection made before the renewal keeps its session and its stream.
    for _ in 0..3 {
        stream.message().await.unwrap().expect("stream still open");
    }

    // A client CA added by a reload is required from the next handshake.
    server.reload(Some(&reread(Some(&certs.ca))));
    let refused = handshake(addr, &renewed_ca, None).await.unwrap_err();
    assert_eq!(refused, "received fatal alert: CertificateRequired");
    handshake(addr, &renewed_ca, Some(&certs.client))
        .await
        .unwrap();
    stream.message().await.unwrap().expect("stream still open");
    assert_eq!(tls_failures(&server).await, 2.0);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_server_certificate_is_refused_by_clients() {
    let certs = certs();
    let server = tls_server(&certs.expired_server, None).await;
    let refused = connect(server.local_addr(), &certs.ca, None)
        .await
        .unwrap_err();
    assert!(refused.contains("certificate expired"), "{refused}");
    await_failures(&server, 1.0).await;
    server.shutdown().await.unwrap();
}

#[test]
fn unusable_tls_settings_name_the_field_and_the_file() {
    let certs = certs();
    let check = |configure: &dyn Fn(&mut FileConfig)| {
        let mut file = FileConfig::default();
        configure(&mut file);
        file.resolve().unwrap_err().to_string()
    };
    assert_eq!(
        check(&|f| f.tls.cert = Some(certs.server.cert.clone())),
        format!(
            "cannot use tls.cert = {}: tls.key must be set too",
            certs.server.cert.display()
        )
    );
    assert_eq!(
        check(&|f| {
            f.tls.cert = Some("/nonexistent/cert.pem".into());
            f.tls.key = Some(certs.server.key.clone());
        }),
        "cannot use tls.cert = /nonexistent/cert.pem: No such file or directory (os error 2)"
    );
    assert_eq!(
        check(&|f| {
            f.tls.cert = Some(certs.server.cert.clone());
            f.tls.key = Some(certs.client.key.clone());
        }),
        format!(
            "cannot use tls.key = {}: not the key of the certificate in tls.cert",
            certs.client.key.display()
        )
    );
    assert_eq!(
        check(&|f| {
            f.tls.cert = Some(certs.server.cert.clone());
            f.tls.key = Some(certs.server.cert.clone());
        }),
        format!(
            "cannot use tls.key = {}: no PEM private key in it",
            certs.server.cert.display()
        )
    );
    assert_eq!(
        check(&|f| f.tls.client_ca = Some(certs.ca.clone())),
        format!(
            "cannot use tls.client_ca = {}: client certificates need TLS: set tls.cert and tls.key too",
            certs.ca.display()
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_speaks_mutual_tls() {
    let Some(env) = python::ready().await else {
        return;
    };
    let certs = certs();
    let server = tls_server(&certs.server, Some(&certs.ca)).await;
    let addr = server.local_addr().to_string();
    let args = [
        addr.as_ref(),
        certs.ca.as_os_str(),
        certs.client.cert.as_os_str(),
        certs.client.key.as_os_str(),
    ];
    let stdout = python::run_script(&env, "tls.py", &args).await;
    assert!(
        stdout.contains("mutual TLS: 8 instruments with a client certificate, refused without one"),
        "{stdout}"
    );
    // One refusal, of the client without a certificate (grpcio may retry it).
    assert!(tls_failures(&server).await >= 1.0);
    server.shutdown().await.unwrap();
}
