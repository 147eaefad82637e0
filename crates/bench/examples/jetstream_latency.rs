//! What NATS itself adds to an edge node's latency: one message at a time at a steady
//! rate, publisher and reader on their own connections, over core pub/sub and then
//! through a JetStream stream (memory storage, pipelined publish acks, a pull consumer
//! with no acks: the replication path's settings), alternating. The difference between
//! the two is the least an edge can add over a direct subscriber.
//!
//! ```sh
//! cargo run --release -p raven-bench --example jetstream_latency -- [NATS_URL] [RATE] [SECONDS] [ROUNDS]
//! ```

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::stream::{self, StorageType};
use bytes::Bytes;
use futures::StreamExt;
use hdrhistogram::Histogram;

/// Bytes per message: about one bench trade's `StreamResponse`.
const PAYLOAD: usize = 64;
/// Messages before the measured ones (connections and the consumer warm up).
const WARMUP: u64 = 2_000;

type Error = Box<dyn std::error::Error + Send + Sync>;

fn now_ns() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)
}

fn stamped() -> Bytes {
    let mut payload = vec![0u8; PAYLOAD];
    payload[..8].copy_from_slice(&now_ns().to_le_bytes());
    Bytes::from(payload)
}

fn latency_us(payload: &[u8]) -> u64 {
    let sent = u64::from_le_bytes(payload[..8].try_into().expect("8 bytes (invariant)"));
    now_ns().saturating_sub(sent) / 1000
}

/// Publishes `count` stamped messages at `rate`, through `send`.
async fn pace<F, Fut>(rate: u64, count: u64, mut send: F) -> Result<(), Error>
where
    F: FnMut(Bytes) -> Fut,
    Fut: std::future::Future<Output = Result<(), Error>>,
{
    let mut tick = tokio::time::interval(Duration::from_nanos(1_000_000_000 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for _ in 0..count {
        tick.tick().await;
        send(stamped()).await?;
    }
    Ok(())
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds (invariant)")
}

async fn core_row(
    url: &str,
    subject: &str,
    rate: u64,
    count: u64,
) -> Result<Histogram<u64>, Error> {
    let publisher = async_nats::connect(url).await?;
    let reader = async_nats::connect(url).await?;
    let mut subscription = reader.subscribe(subject.to_owned()).await?;
    reader.flush().await?;
    let reading = tokio::spawn(async move {
        let mut latency = histogram();
        for i in 0..count {
            let message = subscription.next().await.ok_or("the subscription ended")?;
            if i >= WARMUP {
                latency.saturating_record(latency_us(&message.payload));
            }
        }
        Ok::<_, Error>(latency)
    });
    let subject = subject.to_owned();
    pace(rate, count, |payload| {
        let publisher = publisher.clone();
        let subject = subject.clone();
        async move { Ok(publisher.publish(subject, payload).await?) }
    })
    .await?;
    publisher.flush().await?;
    reading.await?
}

async fn jetstream_row(
    url: &str,
    stream_name: &str,
    subject: &str,
    rate: u64,
    count: u64,
) -> Result<Histogram<u64>, Error> {
    let publisher = async_nats::jetstream::new(async_nats::connect(url).await?);
    let reader = async_nats::jetstream::new(async_nats::connect(url).await?);
    let stream = reader.get_stream(stream_name).await?;
    let next = stream.get_info().await?.state.last_sequence + 1;
    let consumer = stream
        .create_consumer(pull::Config {
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: next,
            },
            ack_policy: AckPolicy::None,
            memory_storage: true,
            ..Default::default()
        })
        .await?;
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(1024)
        .messages()
        .await?;
    let reading = tokio::spawn(async move {
        let mut latency = histogram();
        for i in 0..count {
            let message = messages.next().await.ok_or("the consumer ended")??;
            if i >= WARMUP {
                latency.saturating_record(latency_us(&message.payload));
            }
        }
        Ok::<_, Error>(latency)
    });
    // Acks are awaited off the publishing path, as the ingest node's publisher does.
    let (acks, mut acked) = tokio::sync::mpsc::unbounded_channel();
    let acking = tokio::spawn(async move {
        while let Some(ack) = acked.recv().await {
            let ack: async_nats::jetstream::context::PublishAckFuture = ack;
            ack.await?;
        }
        Ok::<_, Error>(())
    });
    let subject = subject.to_owned();
    pace(rate, count, |payload| {
        let ack = publisher.publish(subject.clone(), payload);
        let acks = acks.clone();
        async move {
            acks.send(ack.await?).map_err(|_| "the ack task ended")?;
            Ok(())
        }
    })
    .await?;
    drop(acks);
    acking.await??;
    reading.await?
}

fn arg<T: std::str::FromStr>(args: &[String], i: usize, default: T) -> Result<T, Error> {
    match args.get(i) {
        Some(value) => value
            .parse()
            .map_err(|_| format!("argument {i} ({value}) is not understood").into()),
        None => Ok(default),
    }
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().collect();
    let url = args.get(1).map_or("nats://127.0.0.1:4222", String::as_str);
    let rate: u64 = arg(&args, 2, 10_000)?;
    let seconds: u64 = arg(&args, 3, 10)?;
    let rounds: u32 = arg(&args, 4, 3)?;
    let count = WARMUP + rate * seconds;
    let run = format!("ravenlat{}", std::process::id());
    let js = async_nats::jetstream::new(async_nats::connect(url).await?);
    let stream_name = run.to_uppercase();
    js.create_stream(stream::Config {
        name: stream_name.clone(),
        subjects: vec![format!("{run}.js")],
        storage: StorageType::Memory,
        max_age: Duration::from_secs(120),
        ..Default::default()
    })
    .await?;
    println!("{rate} messages/s for {seconds} s, {PAYLOAD} bytes each, {url}");
    let mut result = Ok(());
    for round in 1..=rounds {
        let core = core_row(url, &format!("{run}.core"), rate, count).await;
        let jetstream = jetstream_row(url, &stream_name, &format!("{run}.js"), rate, count).await;
        match (core, jetstream) {
            (Ok(core), Ok(jetstream)) => println!(
                "round {round}: core p50 {} µs p99 {} µs | JetStream p50 {} µs p99 {} µs | JetStream − core p50 {} µs",
                core.value_at_quantile(0.5),
                core.value_at_quantile(0.99),
                jetstream.value_at_quantile(0.5),
                jetstream.value_at_quantile(0.99),
                jetstream.value_at_quantile(0.5) as i64 - core.value_at_quantile(0.5) as i64,
            ),
            (Err(e), _) | (_, Err(e)) => {
                result = Err(e);
                break;
            }
        }
    }
    js.delete_stream(&stream_name).await?;
    result
}
