//! The client commands: connect, call, print. Server errors become one line naming the
//! gRPC status code.

use std::io::Write;
use std::time::Duration;

use anyhow::{Context, anyhow};
use raven_proto::pb::{self, market_client::MarketClient, stream_request::Request as Req};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::{Interceptor, interceptor::InterceptedService};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use super::render::{Printed, Printer, print_instruments, print_snapshot};
use super::{HealthArgs, InstrumentsArgs, ServerArg, SnapshotArgs, SubscribeArgs};

/// A connection that sends the API key, if one was given, with every call.
pub(super) type Conn = InterceptedService<Channel, Bearer>;

/// Adds `authorization: Bearer KEY` to each call.
#[derive(Clone)]
pub(super) struct Bearer(Option<MetadataValue<Ascii>>);

impl Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

async fn connect(server: &ServerArg) -> anyhow::Result<MarketClient<Conn>> {
    // Batches are capped well below this by the server; snapshots of deep books need room.
    Ok(MarketClient::new(channel(server).await?).max_decoding_message_size(64 << 20))
}

/// A connection to the server, or an error saying how to get one.
pub(super) async fn channel(server: &ServerArg) -> anyhow::Result<Conn> {
    let bearer = match &server.key {
        Some(key) => Some(
            format!("Bearer {}", key.trim())
                .parse()
                .context("the API key is not printable ASCII")?,
        ),
        None => None,
    };
    let url = &server.server;
    let mut endpoint = Endpoint::from_shared(url.to_owned())
        .with_context(|| {
            format!("invalid server URL {url:?} (expected e.g. http://127.0.0.1:50051)")
        })?
        .connect_timeout(Duration::from_secs(5));
    if url.starts_with("https://") {
        endpoint = endpoint.tls_config(tls(server)?)?;
    } else if server.tls_ca.is_some() || server.tls_cert.is_some() {
        anyhow::bail!("--tls-ca and --tls-cert are for TLS: use an https:// server URL");
    }
    let channel = endpoint.connect().await.map_err(|e| {
        let cause = std::error::Error::source(&e).map_or_else(|| e.to_string(), |s| s.to_string());
        anyhow!("cannot connect to {url}: {cause} (is `raven serve` running?)")
    })?;
    Ok(InterceptedService::new(channel, Bearer(bearer)))
}

/// The client's TLS settings: the CA to trust (the public roots without one) and the
/// certificate to present, if any.
fn tls(server: &ServerArg) -> anyhow::Result<ClientTlsConfig> {
    let read = |path: &std::path::Path| {
        std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
    };
    let mut tls = ClientTlsConfig::new();
    tls = match &server.tls_ca {
        Some(ca) => tls.ca_certificate(Certificate::from_pem(read(ca)?)),
        None => tls.with_webpki_roots(),
    };
    if let (Some(cert), Some(key)) = (&server.tls_cert, &server.tls_key) {
        tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
    }
    Ok(tls)
}

/// One line for a gRPC error: the canonical code name and the server's message.
pub(super) fn status_error(status: tonic::Status) -> anyhow::Error {
    use tonic::Code::*;
    let code = match status.code() {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    };
    // A transport failure (a refused TLS handshake, say) keeps its cause in the source.
    let mut message = status.message().to_owned();
    let mut source = std::error::Error::source(&status);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !message.ends_with(&cause_text) {
            message = format!("{message}: {cause_text}");
        }
        source = cause.source();
    }
    anyhow!("{code}: {message}")
}

/// Ends quietly when stdout is closed (e.g. piped into `head`).
pub(super) fn ok_if_pipe_closed(r: std::io::Result<()>) -> anyhow::Result<()> {
    match r {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("cannot write to stdout"),
    }
}

pub(super) async fn subscribe(args: SubscribeArgs) -> anyhow::Result<()> {
    let mut client = connect(&args.server).await?;
    let channel = super::channel_pb(args.channel);
    let (requests, rx) = tokio::sync::mpsc::channel(4);
    requests
        .send(pb::StreamRequest {
            request: Some(Req::Subscribe(pb::Subscribe {
                instruments: args.instruments.clone(),
                channel: channel as i32,
                depth: args.depth,
                start: args.start.unwrap_or(0),
            })),
        })
        .await
        .context("request stream closed")?;
    let mut stream = client
        .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(status_error)?
        .into_inner();
    let done = print_stream(&mut stream, args.json, args.count).await?;
    // `requests` stays alive until here so the server sees an open request stream.
    drop(requests);
    if done {
        Ok(())
    } else {
        Err(anyhow!("the server ended the stream"))
    }
}

/// Prints the events of `stream` until it ends (false) or `count` events were printed,
/// or stdout was closed (true).
pub(super) async fn print_stream(
    stream: &mut tonic::Streaming<pb::StreamResponse>,
    json: bool,
    count: Option<u64>,
) -> anyhow::Result<bool> {
    let stdout = std::io::stdout();
    let mut printer = Printer::new(json);
    let mut printed = 0u64;
    while let Some(batch) = stream.message().await.map_err(status_error)? {
        let mut out = stdout.lock();
        for event in &batch.events {
            match printer.print(&mut out, event) {
                Ok(Printed::Event) => printed += 1,
                Ok(Printed::Marker) => {}
                Err(e) => return ok_if_pipe_closed(Err(e)).map(|()| true),
            }
            if count.is_some_and(|n| printed >= n) {
                return ok_if_pipe_closed(out.flush()).map(|()| true);
            }
        }
        ok_if_pipe_closed(out.flush())?;
    }
    Ok(false)
}

pub(super) async fn snapshot(args: SnapshotArgs) -> anyhow::Result<()> {
    let mut client = connect(&args.server).await?;
    let event = client
        .get_snapshot(pb::GetSnapshotRequest {
            instrument: args.instrument,
            depth: args.depth,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    ok_if_pipe_closed(print_snapshot(
        &mut std::io::stdout().lock(),
        &event,
        args.json,
    ))
}

pub(super) async fn instruments(args: InstrumentsArgs) -> anyhow::Result<()> {
    let mut client = connect(&args.server).await?;
    let list = client
        .list_instruments(pb::ListInstrumentsRequest {})
        .await
        .map_err(status_error)?
        .into_inner();
    ok_if_pipe_closed(print_instruments(
        &mut std::io::stdout().lock(),
        &list,
        args.json,
    ))
}

/// `raven health`: the gRPC health check of `args.service`; an error (exit 1) unless it
/// is `SERVING`, within 5 s.
pub async fn health(args: HealthArgs) -> anyhow::Result<()> {
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};
    let check = async {
        let mut client =
            tonic_health::pb::health_client::HealthClient::new(channel(&args.server).await?);
        let response = client
            .check(HealthCheckRequest {
                service: args.service.clone(),
            })
            .await
            .map_err(status_error)?;
        anyhow::Ok(response.into_inner().status())
    };
    let status = tokio::time::timeout(Duration::from_secs(5), check)
        .await
        .map_err(|_| anyhow!("no health answer from {} within 5 s", args.server.server))??;
    let name = if args.service.is_empty() {
        "the server"
    } else {
        &args.service
    };
    if status == ServingStatus::Serving {
        println!("{name}: SERVING");
        Ok(())
    } else {
        Err(anyhow!("{name}: {}", status.as_str_name()))
    }
}
