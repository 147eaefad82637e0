//! Scale-out over NATS JetStream (DESIGN.md, "Scale-out"): an ingest node publishes every
//! engine batch, the exact bytes its own clients receive, to one JetStream stream that
//! edge nodes consume. This module owns what both sides agree on: the stream's name,
//! subjects and settings, the message ids that make a resent batch a duplicate the stream
//! drops, the control messages (heartbeats, gap markers) and the checkpoints in a KV bucket
//! that edges start from. [`publisher`] is the ingest node's side, [`follower`] the edge
//! node's (whose replica books are the engine's, `engine::replica`).

mod follower;
mod history;
mod outbox;
mod publisher;

use std::time::Duration;

use async_nats::jetstream::stream::{self, DiscardPolicy, RetentionPolicy, StorageType};
use raven_proto::pb;
use serde::{Deserialize, Serialize};

use crate::engine::ReplicaState;

pub use follower::{Follower, FollowerStats, STALE_AFTER};
pub use history::StreamHistory;
pub use publisher::{ReplicationError, ReplicationStats, Replicator};

/// How long the stream remembers message ids: a batch resent within it (after a lost
/// acknowledgement, a reconnect, a NATS restart) is stored once.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// The largest message the ingest node publishes: an engine batch larger than this goes
/// in several, split between events (one event larger than it goes alone). NATS refuses
/// payloads over its `max_payload` (1 MiB by default).
pub const MAX_MESSAGE_BYTES: usize = 256 << 10;

/// `[replication] storage`: where the stream keeps its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    /// In the NATS server's memory: fastest, gone when it restarts.
    Memory,
    /// On the NATS server's disk.
    File,
}

/// Replication settings, resolved from `[replication]`.
#[derive(Debug, Clone)]
pub struct ReplicationConfig {
    /// The NATS server, `nats://HOST:PORT`.
    pub nats: String,
    /// Names the stream (`RAVEN_<cluster>`) and its subjects (`raven.<cluster>.…`): one
    /// ingest node per cluster.
    pub cluster: String,
    /// Where the stream keeps its messages.
    pub storage: Storage,
    /// How long the stream keeps a message.
    pub max_age: Duration,
    /// Bytes the stream keeps at most (the oldest messages go first).
    pub max_bytes: u64,
    /// Bytes of batches the ingest node holds while NATS is unreachable or slow, before it
    /// drops batches and records a replication gap.
    pub buffer_bytes: usize,
    /// Book events between checkpoints (`store.snapshot_every`, which applies with or
    /// without a store).
    pub checkpoint_every: u32,
}

impl ReplicationConfig {
    /// The stream's name.
    pub fn stream(&self) -> String {
        format!("RAVEN_{}", self.cluster)
    }

    /// Where a shard's batches go.
    pub fn event_subject(&self, shard: u32) -> String {
        format!("raven.{}.ev.{shard}", self.cluster)
    }

    /// Every shard's batches.
    pub fn events_subject(&self) -> String {
        format!("raven.{}.ev.*", self.cluster)
    }

    /// Where heartbeats and gap markers go (in the stream, so that a gap marker is read
    /// exactly where the gap is).
    pub fn control_subject(&self) -> String {
        format!("raven.{}.ctl", self.cluster)
    }

    /// The KV bucket of the checkpoints.
    pub fn bucket(&self) -> String {
        format!("RAVEN_{}_BOOKS", self.cluster)
    }

    /// The stream behind the bucket, as the ingest node creates it: the latest checkpoint
    /// of each instrument (`$KV.<bucket>.<key>`), kept for good, as NATS's key-value
    /// convention lays a bucket out. (Made as a stream rather than through the client's
    /// bucket call, which first reads account details NATS 2.9 gives in an older form.)
    pub fn bucket_stream_config(&self) -> stream::Config {
        stream::Config {
            name: format!("KV_{}", self.bucket()),
            subjects: vec![format!("$KV.{}.>", self.bucket())],
            max_messages_per_subject: 1,
            storage: match self.storage {
                Storage::Memory => StorageType::Memory,
                Storage::File => StorageType::File,
            },
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: DiscardPolicy::New,
            // NATS's defaults, written out so that the settings check compares like with
            // like. The bucket is bounded by the instruments: one checkpoint each.
            duplicate_window: DUPLICATE_WINDOW,
            max_bytes: -1,
            num_replicas: 1,
            ..Default::default()
        }
    }

    /// The stream as the ingest node creates it.
    pub fn stream_config(&self) -> stream::Config {
        stream::Config {
            name: self.stream(),
            subjects: vec![self.events_subject(), self.control_subject()],
            retention: RetentionPolicy::Limits,
            discard: DiscardPolicy::Old,
            max_age: self.max_age,
            max_bytes: i64::try_from(self.max_bytes).unwrap_or(i64::MAX),
            duplicate_window: DUPLICATE_WINDOW,
            storage: match self.storage {
                Storage::Memory => StorageType::Memory,
                Storage::File => StorageType::File,
            },
            allow_direct: true,
            num_replicas: 1,
            ..Default::default()
        }
    }
}

/// The id of a shard's batch: `<run>.<shard>.<batch>`, unique over runs (the run is the
/// node's start time in ns).
pub fn batch_id(run: u64, shard: u32, batch: u64) -> String {
    format!("{run}.{shard}.{batch}")
}

/// The id of a control message: `<run>.ctl.<number>`.
pub fn control_id(run: u64, number: u64) -> String {
    format!("{run}.ctl.{number}")
}

/// An instrument's key in the checkpoint bucket: its name in base64url without padding
/// (names hold `:` and `/`, which KV keys may not).
pub fn checkpoint_key(instrument: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(instrument)
}

/// An instrument's checkpoint in the bucket (protobuf): where an edge starts it from.
/// Replaying the stream from `stream_sequence` and skipping each channel's events at or
/// below its sequence here gives exactly the ingest node's events after the checkpoint.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Checkpoint {
    /// The stream sequence of the message that holds `book`.
    #[prost(uint64, tag = "1")]
    pub stream_sequence: u64,
    /// The full book (a checkpoint snapshot) at its channel's sequence.
    #[prost(message, optional, tag = "2")]
    pub book: Option<pb::Event>,
    /// The last BBO, once there is one.
    #[prost(message, optional, tag = "3")]
    pub bbo: Option<pb::Event>,
    /// Each channel's last sequence, in `raven.v1.Channel` order (book, BBO, trades,
    /// candles).
    #[prost(uint64, repeated, tag = "4")]
    pub sequences: Vec<u64>,
    /// The ingest node's shard that publishes the instrument (its events are on
    /// `raven.<cluster>.ev.<shard>`).
    #[prost(uint32, tag = "5")]
    pub shard: u32,
    /// The instrument's tick size, in 1e-9 units.
    #[prost(int64, tag = "6")]
    pub tick_size: i64,
    /// The ingest node's run (its start time, ns): sequences start again with a run.
    #[prost(uint64, tag = "7")]
    pub run: u64,
}

/// A [`Checkpoint`]'s bytes, made from the engine's: `book` and `bbo` are one-event
/// `StreamResponse`s (field 1, the event), which become fields 2 and 3 by their key alone,
/// so the book is neither decoded nor encoded again.
pub fn checkpoint_value(
    run: u64,
    stream_sequence: u64,
    book: &[u8],
    state: &ReplicaState,
) -> Vec<u8> {
    use prost::Message as _;
    const EVENT: u8 = 1 << 3 | 2;
    let mut value = Checkpoint {
        run,
        stream_sequence,
        book: None,
        bbo: None,
        sequences: state.sequences.iter().map(|(_, s)| s.0).collect(),
        shard: state.shard,
        tick_size: state.tick_size.units(),
    }
    .encode_to_vec();
    let bbo = state.bbo.as_deref();
    for (key, event) in [(2 << 3 | 2, Some(book)), (3 << 3 | 2, bbo)] {
        if let Some(event) = event {
            assert_eq!(event.first(), Some(&EVENT), "a one-event StreamResponse");
            value.push(key);
            value.extend_from_slice(&event[1..]);
        }
    }
    value
}

/// What goes to the control subject, as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Control {
    /// Once a second while the stream takes messages: the node is alive, and how many
    /// batches each shard has numbered so far (a later batch than the last one read means
    /// messages are missing).
    Heartbeat {
        /// The ingest node's run.
        run: u64,
        /// Wall-clock time, ns.
        time_ns: u64,
        /// Batches numbered so far, by shard.
        batches: Vec<u64>,
    },
    /// Batches `first..=last` of `shard` were dropped (the buffer was full while NATS was
    /// unreachable or slow): an edge resyncs that shard's instruments.
    Gap {
        /// The ingest node's run.
        run: u64,
        /// The shard.
        shard: u32,
        /// First batch dropped.
        first: u64,
        /// Last batch dropped.
        last: u64,
        /// Events they held.
        events: u64,
        /// Wall-clock time the gap was recorded, ns.
        time_ns: u64,
    },
}

/// Whether NATS said the stream does not exist.
fn stream_not_found(e: &async_nats::jetstream::context::GetStreamError) -> bool {
    matches!(
        e.kind(),
        async_nats::jetstream::context::GetStreamErrorKind::JetStream(ref j)
            if j.error_code() == async_nats::jetstream::ErrorCode::STREAM_NOT_FOUND
    )
}

/// The settings in which `found` (a stream that already exists) differs from `wanted`,
/// each as `name: found (wanted)`; empty when it can be used.
pub fn differences(wanted: &stream::Config, found: &stream::Config) -> Vec<String> {
    let mut differ = Vec::new();
    let mut check = |name: &str, found: String, wanted: String| {
        if found != wanted {
            differ.push(format!("{name}: {found} (Raven needs {wanted})"));
        }
    };
    let mut subjects = found.subjects.clone();
    subjects.sort();
    let mut needed = wanted.subjects.clone();
    needed.sort();
    check("subjects", subjects.join(","), needed.join(","));
    check(
        "retention",
        format!("{:?}", found.retention),
        format!("{:?}", wanted.retention),
    );
    check(
        "storage",
        format!("{:?}", found.storage),
        format!("{:?}", wanted.storage),
    );
    check(
        "max_age",
        format!("{}s", found.max_age.as_secs()),
        format!("{}s", wanted.max_age.as_secs()),
    );
    check(
        "max_bytes",
        found.max_bytes.to_string(),
        wanted.max_bytes.to_string(),
    );
    check(
        "duplicate_window",
        format!("{}s", found.duplicate_window.as_secs()),
        format!("{}s", wanted.duplicate_window.as_secs()),
    );
    check(
        "allow_direct",
        found.allow_direct.to_string(),
        wanted.allow_direct.to_string(),
    );
    differ
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ReplicationConfig {
        ReplicationConfig {
            nats: "nats://127.0.0.1:4222".into(),
            cluster: "c1".into(),
            storage: Storage::File,
            max_age: Duration::from_secs(3600),
            max_bytes: 1 << 30,
            buffer_bytes: 64 << 20,
            checkpoint_every: 10_000,
        }
    }

    #[test]
    fn names_follow_the_cluster() {
        let c = config();
        assert_eq!(c.stream(), "RAVEN_c1");
        assert_eq!(c.event_subject(3), "raven.c1.ev.3");
        assert_eq!(c.control_subject(), "raven.c1.ctl");
        assert_eq!(batch_id(17, 2, 9), "17.2.9");
        assert_eq!(control_id(17, 4), "17.ctl.4");
        assert_eq!(c.bucket(), "RAVEN_c1_BOOKS");
        assert_eq!(checkpoint_key("SIM:BTC-USD"), "U0lNOkJUQy1VU0Q");
        assert_eq!(checkpoint_key("KRAKEN:BTC/USD"), "S1JBS0VOOkJUQy9VU0Q");
    }

    #[test]
    fn a_stream_with_other_settings_is_named_setting_by_setting() {
        let c = config();
        let wanted = c.stream_config();
        assert!(differences(&wanted, &wanted).is_empty());
        let mut found = wanted.clone();
        found.max_age = Duration::from_secs(60);
        found.storage = StorageType::Memory;
        found.max_bytes = -1;
        assert_eq!(
            differences(&wanted, &found),
            [
                "storage: Memory (Raven needs File)",
                "max_age: 60s (Raven needs 3600s)",
                "max_bytes: -1 (Raven needs 1073741824)"
            ]
        );
    }

    #[test]
    fn a_checkpoint_made_from_the_engine_s_bytes_decodes_as_encoded_whole() {
        use prost::Message as _;
        use raven_model::{Channel, PerChannel, Price, Sequence};
        let event = |sequence, instrument: &str| pb::Event {
            instrument: instrument.into(),
            sequence,
            publish_time: 7,
            ..Default::default()
        };
        let one = |e: &pb::Event| {
            pb::StreamResponse {
                events: vec![e.clone()],
            }
            .encode_to_vec()
        };
        let (book, bbo) = (event(12, "SIM:BTC-USD"), event(5, "SIM:BTC-USD"));
        let whole = Checkpoint {
            stream_sequence: 300,
            book: Some(book.clone()),
            bbo: Some(bbo.clone()),
            sequences: vec![12, 5, 3, 0],
            shard: 1,
            tick_size: 10_000_000,
            run: 77,
        };
        let mut state = ReplicaState {
            row: 0,
            sequences: PerChannel::default(),
            bbo: Some(one(&bbo).into()),
            shard: 1,
            tick_size: Price::from_units(10_000_000),
        };
        for (channel, sequence) in [(Channel::Book, 12), (Channel::Bbo, 5), (Channel::Trades, 3)] {
            state.sequences[channel] = Sequence(sequence);
        }
        let spliced = checkpoint_value(77, 300, &one(&book), &state);
        assert_eq!(Checkpoint::decode(spliced.as_slice()).unwrap(), whole);
        state.bbo = None;
        let without = checkpoint_value(77, 300, &one(&book), &state);
        assert_eq!(Checkpoint::decode(without.as_slice()).unwrap().bbo, None);
    }

    #[test]
    fn control_messages_are_tagged_json() {
        let gap = Control::Gap {
            run: 1,
            shard: 0,
            first: 5,
            last: 7,
            events: 30,
            time_ns: 9,
        };
        let text = serde_json::to_string(&gap).unwrap();
        assert_eq!(
            text,
            r#"{"kind":"gap","run":1,"shard":0,"first":5,"last":7,"events":30,"time_ns":9}"#
        );
        assert_eq!(serde_json::from_str::<Control>(&text).unwrap(), gap);
    }
}
