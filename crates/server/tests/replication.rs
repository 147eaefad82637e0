//! An ingest node publishing to NATS JetStream, against a real `nats-server -js` of each
//! test's own (a free loopback port, a scratch store: stopping it disturbs nothing
//! else). Skipped with a message where `nats-server` is missing, unless
//! `RAVEN_REQUIRE_SERVICES=1` (CI) makes that a failure.

mod common;
#[path = "common/live.rs"]
mod live;
#[path = "common/scaleout.rs"]
mod scaleout;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream::StorageType};
use prost::Message;
use raven_proto::pb;
use raven_server::app::RunningServer;
use raven_server::config::{FileConfig, Role};
use raven_server::replication::{Control, ReplicationStats, Storage};
use raven_testkit::nats::{PrivateNats, nats_server_available};
use scaleout::{LIVENESS, cluster, load, wait_for};

/// One message read back from the stream.
struct Stored {
    sequence: u64,
    subject: String,
    id: String,
    payload: bytes::Bytes,
}

/// Every message in stream `RAVEN_<cluster>`, in stream order.
async fn read_stream(url: &str, cluster: &str) -> Vec<Stored> {
    let js = jetstream::new(async_nats::connect(url).await.unwrap());
    let mut stream = js.get_stream(format!("RAVEN_{cluster}")).await.unwrap();
    let state = stream.info().await.unwrap().state.clone();
    let mut messages = Vec::new();
    for sequence in state.first_sequence..=state.last_sequence {
        let m = stream.get_raw_message(sequence).await.unwrap();
        let id = m
            .headers
            .get("Nats-Msg-Id")
            .expect("every message has an id")
            .to_string();
        messages.push(Stored {
            sequence,
            subject: m.subject.to_string(),
            id,
            payload: m.payload,
        });
    }
    messages
}

/// The one-event `StreamResponse`s a payload holds end to end, each as its bytes.
fn split_events(payload: &[u8]) -> Vec<&[u8]> {
    raven_proto::wire::scan::split(payload)
        .collect::<Result<_, _>>()
        .expect("the engine's bytes")
}

/// What the checks below need from the stream.
#[derive(Default)]
struct Replicated {
    run: Option<u64>,
    /// Batch numbers by shard, in stream order.
    batches: BTreeMap<u32, Vec<u64>>,
    /// Every event's bytes, by (instrument, channel, sequence); checkpoints left out.
    events: HashMap<(String, i32, u64), Vec<u8>>,
    /// Events in event messages, checkpoints included.
    count: u64,
    heartbeats: usize,
    gaps: Vec<Control>,
}

fn replicated(messages: &[Stored], cluster: &str) -> Replicated {
    let mut r = Replicated::default();
    let ev = format!("raven.{cluster}.ev.");
    for m in messages {
        let parts: Vec<&str> = m.id.split('.').collect();
        assert_eq!(parts.len(), 3, "id {}", m.id);
        let run: u64 = parts[0].parse().unwrap();
        assert_eq!(*r.run.get_or_insert(run), run, "one run");
        if let Some(shard) = m.subject.strip_prefix(&ev) {
            let shard: u32 = shard.parse().unwrap();
            assert_eq!(parts[1], shard.to_string(), "id {} on {}", m.id, m.subject);
            r.batches
                .entry(shard)
                .or_default()
                .push(parts[2].parse().unwrap());
            assert!(m.payload.len() <= raven_server::replication::MAX_MESSAGE_BYTES);
            for bytes in split_events(&m.payload) {
                let mut decoded = pb::StreamResponse::decode(bytes).unwrap();
                assert_eq!(decoded.events.len(), 1);
                let event = decoded.events.remove(0);
                r.count += 1;
                if matches!(&event.body, Some(pb::event::Body::Snapshot(s)) if s.checkpoint) {
                    continue;
                }
                let key = (event.instrument.clone(), event.channel, event.sequence);
                assert!(
                    r.events.insert(key.clone(), bytes.to_vec()).is_none(),
                    "{key:?} twice"
                );
            }
        } else {
            assert_eq!(m.subject, format!("raven.{cluster}.ctl"));
            assert_eq!(parts[1], "ctl");
            match serde_json::from_slice::<Control>(&m.payload).unwrap() {
                Control::Heartbeat { run: beat, .. } => {
                    assert_eq!(beat, run);
                    r.heartbeats += 1;
                }
                gap @ Control::Gap { .. } => r.gaps.push(gap),
            }
        }
    }
    r
}

/// Every (instrument, channel) has sequences 1..=n, each once.
fn assert_sequences_whole(events: &HashMap<(String, i32, u64), Vec<u8>>) {
    let mut by: BTreeMap<(String, i32), Vec<u64>> = BTreeMap::new();
    for (instrument, channel, sequence) in events.keys() {
        by.entry((instrument.clone(), *channel))
            .or_default()
            .push(*sequence);
    }
    assert!(!by.is_empty());
    for (key, mut sequences) in by {
        sequences.sort_unstable();
        assert_counts_up(&sequences, &format!("{key:?}'s sequences"));
    }
}

/// An ingest node publishing to `nats` as `cluster`, its simulator at `rate` events/s
/// over `shards` shards, with `configure` applied last; and its replication counters.
async fn ingest(
    nats: &PrivateNats,
    cluster: &str,
    shards: usize,
    rate: u64,
    configure: impl FnOnce(&mut FileConfig),
) -> (RunningServer, Arc<ReplicationStats>) {
    let server = common::server(|f| {
        f.server.role = Role::Ingest;
        f.replication.nats = nats.url();
        f.replication.cluster = cluster.to_owned();
        f.engine.shards = shards;
        f.sim.rate = rate;
        configure(f);
    })
    .await;
    let stats = server.replication_stats().expect("an ingest node");
    (server, stats)
}

/// Every shard's batches are 1..=n in stream order.
fn assert_batches_whole(r: &Replicated, shards: u32) {
    assert_eq!(r.batches.len() as u32, shards, "{:?}", r.batches.keys());
    for (shard, batches) in &r.batches {
        assert_counts_up(batches, &format!("shard {shard}'s batches"));
    }
}

/// `numbers` is 1, 2, 3, …; if not, says where it first is not.
fn assert_counts_up(numbers: &[u64], what: &str) {
    if let Some(at) = (0..numbers.len()).find(|&i| numbers[i] != i as u64 + 1) {
        let around = &numbers[at.saturating_sub(3)..(at + 4).min(numbers.len())];
        panic!(
            "{what}: position {at} holds {} (around it: {around:?})",
            numbers[at]
        );
    }
}

fn assert_published_everything(stats: &ReplicationStats, r: &Replicated) {
    assert_eq!(load(&stats.published_events), r.count);
    assert_eq!(
        load(&stats.published),
        r.batches.values().map(|b| b.len() as u64).sum::<u64>()
    );
    assert_eq!(load(&stats.dropped), 0);
    assert_eq!(load(&stats.gaps), 0);
    assert_eq!(load(&stats.buffered_bytes), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ingest_node_publishes_every_batch_in_order_as_its_clients_receive_it() {
    if !nats_server_available() {
        return;
    }
    let nats = PrivateNats::start(common::scratch_dir("nats"));
    let cluster = cluster("order");
    let (server, stats) = ingest(&nats, &cluster, 2, 4000, |_| {}).await;
    assert!(stats.up.load(Ordering::Relaxed));
    let (_keep, mut trades) =
        live::subscribe(server.local_addr(), "SIM:BTC-USD", pb::Channel::Trades).await;
    let mut received = Vec::new();
    let until = Instant::now() + Duration::from_millis(2500);
    while Instant::now() < until {
        let Ok(response) = tokio::time::timeout(Duration::from_millis(500), trades.message()).await
        else {
            continue;
        };
        received.extend(
            response
                .unwrap()
                .expect("the stream stays open")
                .events
                .into_iter()
                .filter(|e| matches!(e.body, Some(pb::event::Body::Trade(_)))),
        );
    }
    assert!(received.len() > 10, "{} trades", received.len());
    server.shutdown().await.unwrap();

    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let mut stream = js.get_stream(format!("RAVEN_{cluster}")).await.unwrap();
    let config = stream.info().await.unwrap().config.clone();
    assert_eq!(config.storage, StorageType::File);
    assert_eq!(config.max_age, Duration::from_secs(3600));
    assert_eq!(config.duplicate_window, Duration::from_secs(120));
    assert!(config.allow_direct);

    let r = replicated(&read_stream(&nats.url(), &cluster).await, &cluster);
    assert_batches_whole(&r, 2);
    assert_published_everything(&stats, &r);
    assert!(r.heartbeats >= 2, "{} heartbeats", r.heartbeats);
    assert!(r.gaps.is_empty());
    assert_sequences_whole(&r.events);
    // The subscriber's trades are the stream's, byte for byte.
    for trade in &received {
        let key = (trade.instrument.clone(), trade.channel, trade.sequence);
        let bytes = pb::StreamResponse {
            events: vec![trade.clone()],
        }
        .encode_to_vec();
        assert_eq!(r.events.get(&key), Some(&bytes), "{key:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_with_other_settings_stops_the_start_naming_them() {
    if !nats_server_available() {
        return;
    }
    let nats = PrivateNats::start(common::scratch_dir("nats"));
    let cluster = cluster("settings");
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    js.create_stream(jetstream::stream::Config {
        name: format!("RAVEN_{cluster}"),
        subjects: vec![format!("raven.{cluster}.>")],
        max_age: Duration::from_secs(600),
        ..Default::default()
    })
    .await
    .unwrap();
    let config = common::config(|f| {
        f.server.role = Role::Ingest;
        f.replication.nats = nats.url();
        f.replication.cluster = cluster.clone();
    });
    let listener = raven_server::app::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let error = raven_server::app::start(
        &config,
        std::sync::Arc::new(raven_server::clock::SystemClock),
        listener,
    )
    .await
    .err()
    .expect("the start fails")
    .to_string();
    assert_eq!(
        error,
        format!(
            "NATS stream RAVEN_{cluster} exists with other settings: \
             subjects: raven.{cluster}.> (Raven needs raven.{cluster}.ctl,raven.{cluster}.ev.*); \
             max_age: 600s (Raven needs 3600s); \
             max_bytes: -1 (Raven needs 1073741824); \
             allow_direct: false (Raven needs true); \
             delete it or change [replication]"
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_nats_unreachable_an_ingest_node_serves_and_replicates_what_it_held_once_nats_answers()
{
    if !nats_server_available() {
        return;
    }
    let mut nats = PrivateNats::stopped(common::scratch_dir("nats"));
    let cluster = cluster("late");
    let (server, stats) = ingest(&nats, &cluster, 1, 4000, |_| {}).await;
    assert!(!stats.up.load(Ordering::Relaxed));
    // Its own clients are served meanwhile.
    let (_keep, mut trades) =
        live::subscribe(server.local_addr(), "SIM:BTC-USD", pb::Channel::Trades).await;
    let first = tokio::time::timeout(LIVENESS, trades.message())
        .await
        .expect("a live stream while NATS is away")
        .unwrap()
        .unwrap();
    assert!(!first.events.is_empty());
    wait_for("batches held", LIVENESS, || load(&stats.buffered_bytes) > 0).await;
    nats.restart();
    wait_for("replication up", LIVENESS, || {
        stats.up.load(Ordering::Relaxed) && load(&stats.published) > 0
    })
    .await;
    server.shutdown().await.unwrap();
    let r = replicated(&read_stream(&nats.url(), &cluster).await, &cluster);
    // Batch 1 onwards: nothing held while NATS was away was lost.
    assert_batches_whole(&r, 1);
    assert_published_everything(&stats, &r);
    assert_sequences_whole(&r.events);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_frozen_then_killed_and_restarted_mid_run_leaves_every_batch_once_in_order() {
    if !nats_server_available() {
        return;
    }
    let mut nats = PrivateNats::start(common::scratch_dir("nats"));
    let cluster = cluster("restart");
    let (server, stats) = ingest(&nats, &cluster, 2, 10_000, |_| {}).await;
    wait_for("batches published", LIVENESS, || {
        load(&stats.published) > 20
    })
    .await;
    // Frozen: batches go out and no acknowledgement comes; they time out and are sent
    // again, and when NATS goes on it reads both the first copies and the second.
    nats.freeze();
    wait_for("acknowledgements timed out", LIVENESS, || {
        load(&stats.resends) > 0
    })
    .await;
    nats.thaw();
    let before = load(&stats.published);
    wait_for("replication back after the freeze", LIVENESS, || {
        stats.up.load(Ordering::Relaxed) && load(&stats.published) > before + 20
    })
    .await;
    // Killed: the connection goes, with whatever was in flight.
    nats.stop();
    wait_for("replication down", LIVENESS, || {
        !stats.up.load(Ordering::Relaxed)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = load(&stats.published);
    nats.restart();
    wait_for("replication back after the restart", LIVENESS, || {
        stats.up.load(Ordering::Relaxed) && load(&stats.published) > before + 20
    })
    .await;
    server.shutdown().await.unwrap();
    let r = replicated(&read_stream(&nats.url(), &cluster).await, &cluster);
    assert_batches_whole(&r, 2);
    assert_published_everything(&stats, &r);
    assert!(r.gaps.is_empty());
    assert_sequences_whole(&r.events);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_buffer_drops_whole_batches_marks_the_gap_and_checkpoints_the_shard_afresh() {
    if !nats_server_available() {
        return;
    }
    let mut nats = PrivateNats::stopped(common::scratch_dir("nats"));
    let cluster = cluster("gap");
    let (server, stats) = ingest(&nats, &cluster, 2, 50_000, |f| {
        f.replication.buffer_bytes = 1 << 20;
        f.store.url = "off".into();
        // No checkpoint falls due in the test: those in the stream are the ones asked
        // for after a gap.
        f.store.snapshot_every = u32::MAX;
    })
    .await;
    wait_for("batches dropped", LIVENESS, || load(&stats.dropped) > 10).await;
    nats.restart();
    // Until the fresh checkpoints of every instrument are through (nothing else makes
    // checkpoints here): drops go on while the buffer drains, and may take some.
    wait_for("the gap marked and checkpoints through", LIVENESS, || {
        load(&stats.gaps) >= 1 && load(&stats.checkpoints) >= 8
    })
    .await;
    server.shutdown().await.unwrap();
    let messages = read_stream(&nats.url(), &cluster).await;
    let r = replicated(&messages, &cluster);
    assert_eq!(r.gaps.len() as u64, load(&stats.gaps));
    let mut dropped_events = 0;
    let mut missing: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for gap in &r.gaps {
        let Control::Gap {
            shard,
            first,
            last,
            events,
            ..
        } = gap
        else {
            unreachable!()
        };
        dropped_events += events;
        missing.entry(*shard).or_default().extend(*first..=*last);
    }
    assert_eq!(dropped_events, load(&stats.dropped_events));
    assert_eq!(
        missing.values().map(|m| m.len() as u64).sum::<u64>(),
        load(&stats.dropped)
    );
    // What was published and what the markers name as dropped are, together, every batch.
    for (shard, batches) in &r.batches {
        let mut all = batches.clone();
        all.extend(missing.get(shard).into_iter().flatten());
        all.sort_unstable();
        assert_counts_up(&all, &format!("shard {shard}'s batches and gaps"));
    }
    // Each marker comes right before its shard's first batch after the gap, or after
    // every batch of its shard when the gap lasted to the end (the node stopped with the
    // buffer still full).
    let ev = format!("raven.{cluster}.ev.");
    for (i, m) in messages.iter().enumerate() {
        if let Ok(Control::Gap { shard, last, .. }) = serde_json::from_slice::<Control>(&m.payload)
        {
            match messages[i + 1..]
                .iter()
                .find(|n| n.subject == format!("{ev}{shard}"))
            {
                Some(next) => assert!(
                    next.id.ends_with(&format!(".{shard}.{}", last + 1)),
                    "{}",
                    next.id
                ),
                None => assert!(r.batches[&shard].iter().all(|b| *b < last)),
            }
        }
    }
    // After a gap marked before a later batch, the shard's books were checkpointed
    // afresh: every instrument of the shard has a checkpoint after its first marker.
    let mut shard_of: HashMap<String, u32> = HashMap::new();
    let mut marked: BTreeMap<u32, usize> = BTreeMap::new();
    let mut checkpointed: HashMap<String, usize> = HashMap::new();
    for (i, m) in messages.iter().enumerate() {
        if let Some(shard) = m.subject.strip_prefix(&ev) {
            let shard: u32 = shard.parse().unwrap();
            for bytes in split_events(&m.payload) {
                let event = pb::StreamResponse::decode(bytes).unwrap().events.remove(0);
                shard_of.insert(event.instrument.clone(), shard);
                if matches!(&event.body, Some(pb::event::Body::Snapshot(s)) if s.checkpoint) {
                    checkpointed.entry(event.instrument).or_insert(i);
                }
            }
        } else if let Ok(Control::Gap { shard, last, .. }) = serde_json::from_slice(&m.payload)
            && r.batches[&shard].contains(&(last + 1))
        {
            marked.entry(shard).or_insert(i);
        }
    }
    assert!(!marked.is_empty());
    for (instrument, shard) in &shard_of {
        if let Some(marker) = marked.get(shard) {
            let at = checkpointed.get(instrument);
            assert!(
                at.is_some_and(|at| at > marker),
                "{instrument}: checkpoint at {at:?}, gap marked at {marker}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_keeps_its_newest_max_bytes_so_a_nats_smaller_than_the_feed_takes_every_batch() {
    if !nats_server_available() {
        return;
    }
    // A NATS whose JetStream holds 32 MiB in memory, as one sized for its machine holds
    // a share of it: an unbounded stream refuses every batch once full (`insufficient
    // resources`) and the ingest node drops from then on.
    const NATS_MEMORY: u64 = 32 << 20;
    const KEPT: u64 = 16 << 20;
    let nats = PrivateNats::with_memory(common::scratch_dir("nats"), NATS_MEMORY);
    let cluster = cluster("bounded");
    let (server, stats) = ingest(&nats, &cluster, 2, 50_000, |f| {
        f.replication.storage = Storage::Memory;
        f.replication.max_bytes = KEPT;
        f.store.url = "off".into();
    })
    .await;
    wait_for(
        "twice NATS's memory published (or a drop)",
        LIVENESS,
        || load(&stats.published_bytes) > 2 * NATS_MEMORY || load(&stats.dropped) > 0,
    )
    .await;
    server.shutdown().await.unwrap();
    assert_eq!(load(&stats.dropped), 0);
    assert_eq!(load(&stats.gaps), 0);
    assert_eq!(load(&stats.buffered_bytes), 0);

    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let mut stream = js.get_stream(format!("RAVEN_{cluster}")).await.unwrap();
    let info = stream.info().await.unwrap().clone();
    assert_eq!(info.config.max_bytes, KEPT as i64);
    assert!(info.state.bytes <= KEPT, "{} bytes kept", info.state.bytes);
    // The oldest went; the newest, up to the last the node published, are there.
    assert!(info.state.first_sequence > 1);
    assert_eq!(info.state.last_sequence, load(&stats.stream_sequence));
    let r = replicated(&read_stream(&nats.url(), &cluster).await, &cluster);
    assert_eq!(r.batches.len(), 2);
    for (shard, batches) in &r.batches {
        let from = batches[0] - 1;
        let numbered: Vec<u64> = batches.iter().map(|b| b - from).collect();
        assert_counts_up(&numbered, &format!("shard {shard}'s kept batches"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_with_nats_frozen_leaving_what_it_did_not_take() {
    if !nats_server_available() {
        return;
    }
    let nats = PrivateNats::start(common::scratch_dir("nats"));
    let cluster = cluster("frozen");
    let (server, stats) = ingest(&nats, &cluster, 1, 10_000, |_| {}).await;
    wait_for("batches published", LIVENESS, || load(&stats.published) > 0).await;
    nats.freeze();
    // Batches published after the freeze wait for acknowledgements that do not come.
    wait_for("acknowledgements timed out", LIVENESS, || {
        load(&stats.resends) > 0
    })
    .await;
    // Ends (the publisher gives up at its deadline, whatever it waits on), rather than
    // hanging on a NATS that answers nothing.
    tokio::time::timeout(Duration::from_secs(60), server.shutdown())
        .await
        .expect("shutdown ends")
        .unwrap();
    assert!(load(&stats.buffered_bytes) > 0, "{stats:?}");
    nats.thaw();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_from_another_publisher_is_stepped_over_not_a_stall() {
    if !nats_server_available() {
        return;
    }
    let nats = PrivateNats::start(common::scratch_dir("nats"));
    let cluster = cluster("foreign");
    let (server, stats) = ingest(&nats, &cluster, 1, 4000, |_| {}).await;
    wait_for("batches published", LIVENESS, || {
        load(&stats.published) > 10
    })
    .await;
    // Another node, misconfigured with the same cluster, writes into the stream: the
    // next batch, chained to this node's last, is refused as out of order.
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    js.send_publish(
        format!("raven.{cluster}.ctl"),
        jetstream::message::PublishMessage::build()
            .payload("{}".into())
            .message_id("foreign.ctl.1"),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let before = load(&stats.published);
    wait_for("batches published after it", LIVENESS, || {
        load(&stats.published) > before + 10
    })
    .await;
    server.shutdown().await.unwrap();
    assert!(load(&stats.resends) >= 2);
    let mut messages = read_stream(&nats.url(), &cluster).await;
    let foreign = messages.iter().position(|m| m.id == "foreign.ctl.1");
    messages.remove(foreign.expect("the foreign message is in the stream"));
    let r = replicated(&messages, &cluster);
    assert_batches_whole(&r, 1);
    assert_published_everything(&stats, &r);
    assert_sequences_whole(&r.events);
}

/// The last BBO event: its sequence and body.
type LastBbo = Option<(u64, raven_model::EventBody)>;

/// An instrument as the stream has it at a checkpoint snapshot of it.
struct AtCheckpoint {
    stream_sequence: u64,
    book: raven_model::BookSnapshot,
    /// Book, BBO, trades, candles.
    sequences: Vec<u64>,
    bbo: LastBbo,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_instrument_s_latest_checkpoint_is_in_the_bucket_where_the_stream_has_it() {
    if !nats_server_available() {
        return;
    }
    let nats = PrivateNats::start(common::scratch_dir("nats"));
    let cluster = cluster("kv");
    let (server, stats) = ingest(&nats, &cluster, 2, 4000, |f| {
        f.store.snapshot_every = 200;
    })
    .await;
    wait_for("checkpoints written", LIVENESS, || {
        load(&stats.checkpoints) >= 24
    })
    .await;
    server.shutdown().await.unwrap();
    assert_eq!(load(&stats.checkpoints_failed), 0);

    // Walk the stream as an edge would, keeping each instrument's book, sequences and
    // BBO, and note them at each of its checkpoint snapshots.
    let ev = format!("raven.{cluster}.ev.");
    let mut books: HashMap<String, raven_book::BookFollower> = HashMap::new();
    let mut last: HashMap<String, (Vec<u64>, LastBbo)> = HashMap::new();
    let mut at: HashMap<String, Vec<AtCheckpoint>> = HashMap::new();
    for m in read_stream(&nats.url(), &cluster).await {
        if !m.subject.starts_with(&ev) {
            continue;
        }
        for bytes in split_events(&m.payload) {
            let event = pb::StreamResponse::decode(bytes).unwrap().events.remove(0);
            let body = raven_proto::convert::body_from_pb(&event).unwrap().unwrap();
            let (sequences, bbo) = last
                .entry(event.instrument.clone())
                .or_insert((vec![0; 4], None));
            if let raven_model::EventBody::Snapshot(s) = &body
                && s.kind == raven_model::SnapshotKind::Checkpoint
            {
                let book = books[&event.instrument].book().expect("a known book");
                at.entry(event.instrument.clone())
                    .or_default()
                    .push(AtCheckpoint {
                        stream_sequence: m.sequence,
                        book: book.snapshot(0, raven_model::SnapshotKind::Checkpoint),
                        sequences: sequences.clone(),
                        bbo: bbo.clone(),
                    });
                assert_eq!(
                    event.sequence, sequences[0],
                    "a checkpoint repeats the book's sequence"
                );
                continue;
            }
            sequences[event.channel as usize - 1] = event.sequence;
            if matches!(body, raven_model::EventBody::Bbo(_)) {
                *bbo = Some((event.sequence, body.clone()));
            }
            if event.channel == pb::Channel::Book as i32 {
                books
                    .entry(event.instrument.clone())
                    .or_default()
                    .apply(event.sequence, &body)
                    .unwrap();
            }
        }
    }
    assert_eq!(at.len(), 8, "every simulated instrument checkpointed");

    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let bucket = js
        .get_key_value(format!("RAVEN_{cluster}_BOOKS"))
        .await
        .unwrap();
    for (instrument, checkpoints) in &at {
        let key = raven_server::replication::checkpoint_key(instrument);
        let value = bucket
            .get(key.as_str())
            .await
            .unwrap()
            .expect("a checkpoint");
        let stored = raven_server::replication::Checkpoint::decode(value).unwrap();
        let book = stored.book.expect("a book");
        assert_eq!(&book.instrument, instrument);
        let raven_model::EventBody::Snapshot(snapshot) =
            raven_proto::convert::body_from_pb(&book).unwrap().unwrap()
        else {
            panic!("a snapshot")
        };
        let bbo = stored.bbo.map(|e| {
            let body = raven_proto::convert::body_from_pb(&e).unwrap().unwrap();
            (e.sequence, body)
        });
        // The latest checkpoint of the instrument, as the stream has it there.
        let expected = checkpoints.last().unwrap();
        assert_eq!(
            (stored.stream_sequence, &stored.sequences, &bbo),
            (expected.stream_sequence, &expected.sequences, &expected.bbo),
            "{instrument}: stream sequence, channel sequences, BBO"
        );
        assert!(snapshot == expected.book, "{instrument}: the book differs");
    }
}
