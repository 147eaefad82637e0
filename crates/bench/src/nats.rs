//! One NATS row for `--compare`: the same workload on NATS core pub/sub. One publisher
//! connection sends each trade as its own message, carrying the exact bytes a Raven
//! client receives for that trade (a one-event `StreamResponse`), to a subject per
//! instrument; N subscriber connections each subscribe to all of them. Clients count with
//! the same `Tally` as Raven's. NATS core drops messages for slow consumers without
//! telling anyone, so a client stops waiting once it has been idle for `IDLE` after
//! publishing ends, and whatever it did not receive is loss.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::{oneshot, watch};

use super::report::Row;
use super::server::{Target, Usage};
use super::workload::{self, ClientResult, Clients, Pacer, Shared, Tally};
use super::{BenchConfig, BenchError, RowPlan};

/// How long a client waits for more after publishing ended before counting the rest lost.
const IDLE: Duration = Duration::from_secs(2);

fn nats_error(error: impl std::fmt::Display) -> BenchError {
    BenchError::Nats(error.to_string())
}

async fn connect(url: &str) -> Result<async_nats::Client, BenchError> {
    async_nats::connect(url)
        .await
        .map_err(|e| BenchError::Nats(format!("cannot connect to {url}: {e}")))
}

async fn client(
    nats: async_nats::Client,
    subjects: String,
    instruments: usize,
    shared: Arc<Shared>,
    ready: oneshot::Sender<()>,
    mut finished: watch::Receiver<bool>,
) -> Result<ClientResult, BenchError> {
    let mut subscription = nats.subscribe(subjects).await.map_err(nats_error)?;
    // The round trip makes sure the server has the subscription before publishing starts.
    nats.flush().await.map_err(nats_error)?;
    let _ = ready.send(());
    let mut tally = Tally::new(instruments);
    let mut last = Instant::now();
    loop {
        let idle = tokio::time::sleep_until((last + IDLE).into());
        tokio::select! {
            message = subscription.next() => match message {
                Some(message) => {
                    tally.message(&message.payload, &shared)?;
                    last = Instant::now();
                }
                None => return Err(BenchError::Nats("the subscription ended".into())),
            },
            _ = finished.changed() => {}
            _ = idle, if *finished.borrow() => return Ok(tally.result()),
        }
        if *finished.borrow() && tally.complete(&shared) {
            return Ok(tally.result());
        }
    }
}

/// Publishes the paced workload, one message per trade; returns the events sent inside
/// the measurement window.
async fn publish(
    nats: &async_nats::Client,
    subjects: &[String],
    names: &[String],
    mut pacer: Pacer<'_>,
) -> Result<u64, BenchError> {
    let mut sequence = vec![0u64; names.len()];
    while let Some((stamp, due)) = pacer.next().await {
        for i in due {
            sequence[i] += 1;
            let payload = workload::delivered_bytes(&names[i], sequence[i], stamp);
            nats.publish(subjects[i].clone(), Bytes::from(payload))
                .await
                .map_err(nats_error)?;
        }
    }
    nats.flush().await.map_err(nats_error)?;
    Ok(pacer.finish())
}

pub(super) async fn run_row(
    config: &BenchConfig,
    plan: RowPlan,
    target: &Target,
    progress: &mut impl FnMut(&str),
) -> Result<Row, BenchError> {
    let RowPlan { clients, rate } = plan;
    let names = workload::instrument_names(config.instruments);
    // A prefix of its own per row: the NATS server outlives this run and is shared.
    let prefix = format!("raven-bench.{}-{}", std::process::id(), workload::now_ns());
    let subjects: Vec<String> = (0..names.len()).map(|i| format!("{prefix}.T{i}")).collect();
    let shared = Arc::new(Shared::new(names.len()));
    let (finish, finished) = watch::channel(false);

    progress(&format!("N={clients}: connecting {clients} NATS clients"));
    let mut fleet = Clients::new(clients);
    for _ in 0..clients {
        let nats = connect(&target.url).await?;
        let (subjects, shared, finished) =
            (format!("{prefix}.*"), shared.clone(), finished.clone());
        let instruments = names.len();
        fleet.spawn(|ready| client(nats, subjects, instruments, shared, ready, finished));
    }
    fleet.all_ready().await?;

    progress(&format!(
        "N={clients}: publishing {rate} events/s to NATS for {:.1}s after {:.1}s of warm-up",
        config.duration.as_secs_f64(),
        config.warmup.as_secs_f64()
    ));
    let publisher = connect(&target.url).await?;
    let (before, client_before) = (target.usage(), Usage::own());
    let wall = Instant::now();
    let pacer = Pacer::start(&shared, rate, config.warmup, config.duration);
    let published = publish(&publisher, &subjects, &names, pacer).await?;
    let elapsed = wall.elapsed();
    let (after, client_after) = (target.usage(), Usage::own());
    finish.send_replace(true);

    progress(&format!(
        "N={clients}: waiting for NATS clients to receive everything (or go idle for {}s)",
        IDLE.as_secs()
    ));
    let results = fleet.results().await?;
    Ok(Row::new(
        plan,
        published,
        &results,
        (config.duration, elapsed),
        (before, after),
        (client_before, client_after),
        Vec::new(),
    ))
}
