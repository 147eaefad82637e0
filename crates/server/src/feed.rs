//! The feed seam: where normalized [`raven_model::FeedEvent`]s enter the server. A
//! [`Feed`] is spawned with a [`FeedContext`] (the instrument catalog, the engine's input,
//! the clock, and the resync requests for the instruments it owns) and returns a
//! [`FeedHandle`] that stops it. Today's feeds:
//!
//! - [`sim`]: the deterministic built-in market, the default.
//! - publish: outside collectors through the gRPC ingest service (`api::ingest`).
//! - [`exchange`]: exchange connectors, one per `[[feeds]]` table.
//!
//! Replay-as-a-feed and scale-out edges plug in here the same way.
//!
//! The [`Catalog`] records what each feed says about its instruments and which feed owns
//! each one, so that two feeds never write the same book, and routes the engine's resync
//! requests (a book refused an update and waits for a fresh snapshot) to that owner.

pub mod exchange;
pub mod sim;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};
use raven_model::{
    FeedEvent, FeedKind, InstrumentId, InstrumentName, InstrumentRegistry, Price, StatusKind,
};

use crate::clock::Clock;
use crate::engine::{EngineInput, Offered};

/// A source of events for the engine.
pub trait Feed: Send + 'static {
    /// The feed's name, in logs and in errors that name an instrument's owner.
    fn name(&self) -> &str;

    /// Starts the feed: it adds its instruments to `ctx.catalog` as `ctx.id`, sends their
    /// events through `ctx.input` (which blocks while the engine is behind) and answers
    /// `ctx.resync` with fresh snapshots where it can.
    fn spawn(self: Box<Self>, ctx: FeedContext) -> std::io::Result<FeedHandle>;
}

/// Everything a feed is given.
pub struct FeedContext {
    /// The feed's identity in the catalog.
    pub id: FeedId,
    /// Instrument metadata and owners.
    pub catalog: Catalog,
    /// Where events go, with back-pressure, counted for the feed's metrics.
    pub input: FeedInput,
    /// Receive-time source.
    pub clock: Arc<dyn Clock>,
    /// Instruments of this feed whose book waits for a fresh snapshot.
    pub resync: Receiver<InstrumentId>,
}

/// What a feed has sent the engine, for metrics and stats. Written by [`FeedInput`] once
/// per batch (a status, which is rare, costs a little more), read at scrape time.
#[derive(Debug, Default)]
pub struct FeedStats {
    /// Events sent.
    pub events: AtomicU64,
    /// Status events sent, by kind ([`StatusKind`] as an index).
    statuses: [AtomicU64; STATUS_KINDS.len()],
    /// Venue ids (or events) the feed's gaps said were missed.
    pub missed: AtomicU64,
    /// When the last batch was sent, ns since the epoch (the engine's clock).
    pub last_event_ns: AtomicU64,
    /// Connections to the venue opened (exchange feeds), rotations included.
    pub connects: AtomicU64,
    /// Keys of venue messages the decoders did not know, skipped (exchange feeds).
    pub unknown_fields: AtomicU64,
    /// Venue messages not handled: unknown types, symbols not subscribed (exchange feeds).
    pub unhandled: AtomicU64,
    /// Instruments whose last connection status was `FeedDown`.
    down: Mutex<HashSet<InstrumentId>>,
}

/// Every status kind, in the order [`FeedStats::statuses`] counts them.
pub const STATUS_KINDS: [StatusKind; 6] = [
    StatusKind::Gap,
    StatusKind::Resync,
    StatusKind::FeedDown,
    StatusKind::FeedUp,
    StatusKind::Stale,
    StatusKind::Rejected,
];

impl FeedStats {
    /// Status events of `kind` sent so far.
    pub fn statuses(&self, kind: StatusKind) -> u64 {
        STATUS_KINDS
            .iter()
            .position(|&k| k == kind)
            .map_or(0, |i| self.statuses[i].load(Ordering::Relaxed))
    }

    /// Instruments of the feed that are down now.
    pub fn instruments_down(&self) -> usize {
        self.down.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    fn count(&self, batch: &[FeedEvent], now: u64) {
        self.events.fetch_add(batch.len() as u64, Ordering::Relaxed);
        self.last_event_ns.store(now, Ordering::Relaxed);
        for e in batch {
            let FeedKind::Status(s) = &e.kind else {
                continue;
            };
            if let Some(i) = STATUS_KINDS.iter().position(|&k| k == s.kind) {
                self.statuses[i].fetch_add(1, Ordering::Relaxed);
            }
            match s.kind {
                StatusKind::Gap => {
                    self.missed.fetch_add(s.missed, Ordering::Relaxed);
                }
                StatusKind::FeedDown => {
                    self.down
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(e.instrument);
                }
                StatusKind::FeedUp => {
                    self.down
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&e.instrument);
                }
                _ => {}
            }
        }
    }
}

/// A feed's way into the engine: [`EngineInput`] with the feed's [`FeedStats`] kept.
#[derive(Clone)]
pub struct FeedInput {
    engine: EngineInput,
    stats: Arc<FeedStats>,
    clock: Arc<dyn Clock>,
}

impl FeedInput {
    /// Counts into `stats` what goes to `engine`.
    pub fn new(engine: EngineInput, stats: Arc<FeedStats>, clock: Arc<dyn Clock>) -> FeedInput {
        FeedInput {
            engine,
            stats,
            clock,
        }
    }

    /// The feed's counters.
    pub fn stats(&self) -> &FeedStats {
        &self.stats
    }

    /// Sends a batch (see [`EngineInput::send`]): blocks while the engine is behind;
    /// false once it has stopped.
    pub fn send(&self, batch: Vec<FeedEvent>) -> bool {
        self.stats.count(&batch, self.clock.now().0);
        self.engine.send(batch)
    }

    /// Sends a batch where the engine has room, without blocking (see
    /// [`EngineInput::offer`]); it is counted whole, and what comes back goes to
    /// [`FeedInput::send_rest`].
    pub fn offer(&self, batch: Vec<FeedEvent>) -> Offered {
        self.stats.count(&batch, self.clock.now().0);
        self.engine.offer(batch)
    }

    /// Sends what [`FeedInput::offer`] handed back: blocks while the engine is behind;
    /// false once it has stopped.
    pub fn send_rest(&self, rest: Vec<FeedEvent>) -> bool {
        self.engine.send(rest)
    }
}

/// Stops a running feed. Dropped without [`FeedHandle::stop`], it stops the feed too.
pub struct FeedHandle {
    name: String,
    stop: Option<Box<dyn FnOnce() + Send>>,
    thread: Option<JoinHandle<()>>,
}

impl FeedHandle {
    /// A handle that runs `stop` and then waits for `thread`, if the feed has one, to end.
    pub fn new(
        name: &str,
        stop: impl FnOnce() + Send + 'static,
        thread: Option<JoinHandle<()>>,
    ) -> FeedHandle {
        FeedHandle {
            name: name.to_owned(),
            stop: Some(Box::new(stop)),
            thread,
        }
    }

    /// Stops the feed and waits until it has sent its last batch. Blocking.
    pub fn stop(mut self) -> std::io::Result<()> {
        self.stop_now()
    }

    fn stop_now(&mut self) -> std::io::Result<()> {
        if let Some(stop) = self.stop.take() {
            stop();
        }
        match self.thread.take().map(JoinHandle::join) {
            Some(Err(_)) => Err(std::io::Error::other(format!(
                "the {} feed's thread panicked",
                self.name
            ))),
            _ => Ok(()),
        }
    }
}

impl Drop for FeedHandle {
    fn drop(&mut self) {
        let _ = self.stop_now();
    }
}

/// A feed, as the catalog knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FeedId(u16);

/// What a feed says about one of its instruments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstrumentInfo {
    /// `VENUE:SYMBOL`.
    pub name: InstrumentName,
    /// Minimum price increment.
    pub tick_size: Price,
}

/// Resync requests a feed may have waiting; more are implied (the book stays refused
/// until a snapshot arrives), so the engine never blocks on a slow feed.
const RESYNC_REQUESTS: usize = 1024;

struct FeedEntry {
    name: String,
    resync: Sender<InstrumentId>,
    stats: Arc<FeedStats>,
}

/// The instruments the server knows, their metadata and owners. Shared; cheap to clone.
#[derive(Clone)]
pub struct Catalog {
    registry: InstrumentRegistry,
    entries: Arc<RwLock<HashMap<InstrumentId, (InstrumentInfo, FeedId)>>>,
    feeds: Arc<RwLock<Vec<FeedEntry>>>,
}

impl Catalog {
    /// An empty catalog over `registry`.
    pub fn new(registry: InstrumentRegistry) -> Catalog {
        Catalog {
            registry,
            entries: Arc::default(),
            feeds: Arc::default(),
        }
    }

    /// The names behind the ids.
    pub fn registry(&self) -> &InstrumentRegistry {
        &self.registry
    }

    /// Adds a feed; returns its id, where its resync requests arrive and its counters.
    pub fn add_feed(&self, name: &str) -> (FeedId, Receiver<InstrumentId>, Arc<FeedStats>) {
        let (resync, requests) = crossbeam_channel::bounded(RESYNC_REQUESTS);
        let stats = Arc::new(FeedStats::default());
        let mut feeds = self.feeds.write().unwrap_or_else(|p| p.into_inner());
        let id = FeedId(u16::try_from(feeds.len()).expect("fewer than 65,536 feeds"));
        feeds.push(FeedEntry {
            name: name.to_owned(),
            resync,
            stats: stats.clone(),
        });
        (id, requests, stats)
    }

    /// A feed's name.
    pub fn feed_name(&self, feed: FeedId) -> String {
        let feeds = self.feeds.read().unwrap_or_else(|p| p.into_inner());
        feeds
            .get(usize::from(feed.0))
            .map_or_else(|| format!("#{}", feed.0), |f| f.name.clone())
    }

    /// Adds an instrument for `owner`, unless it exists; returns its id and its owner.
    pub fn add(&self, info: InstrumentInfo, owner: FeedId) -> (InstrumentId, FeedId) {
        let id = self.registry.intern(&info.name);
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        let (_, owner) = entries.entry(id).or_insert((info, owner));
        (id, *owner)
    }

    /// Sets an instrument's tick size once its feed has learned it from the venue.
    pub fn set_tick_size(&self, id: InstrumentId, tick_size: Price) {
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        if let Some((info, _)) = entries.get_mut(&id) {
            info.tick_size = tick_size;
        }
    }

    /// An instrument's tick size, once known.
    pub fn tick_size(&self, id: InstrumentId) -> Option<Price> {
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        entries.get(&id).map(|(info, _)| info.tick_size)
    }

    /// Every feed's name, the number of instruments it owns and its counters, in feed
    /// order.
    pub fn feeds(&self) -> Vec<(String, usize, Arc<FeedStats>)> {
        let feeds = self.feeds.read().unwrap_or_else(|p| p.into_inner());
        let mut owned = vec![0; feeds.len()];
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        for (_, owner) in entries.values() {
            if let Some(n) = owned.get_mut(usize::from(owner.0)) {
                *n += 1;
            }
        }
        feeds
            .iter()
            .zip(owned)
            .map(|(f, n)| (f.name.clone(), n, f.stats.clone()))
            .collect()
    }

    /// The id and owner of a known instrument, by name; read locks only, no allocation.
    pub fn lookup(&self, name: &str) -> Option<(InstrumentId, FeedId)> {
        let id = self.registry.id_of(name)?;
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        entries.get(&id).map(|(_, owner)| (id, *owner))
    }

    /// Every instrument, in id order.
    pub fn list(&self) -> Vec<InstrumentInfo> {
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<_> = entries
            .iter()
            .map(|(id, (info, _))| (*id, info.clone()))
            .collect();
        all.sort_by_key(|(id, _)| *id);
        all.into_iter().map(|(_, info)| info).collect()
    }

    /// Asks the feed that owns `instrument` for a fresh snapshot of its book. Never
    /// blocks: a feed with a full request queue already has resyncs to do, and this one
    /// is implied by the book refusing updates until a snapshot arrives. An instrument
    /// no feed owns has no one to ask.
    pub fn request_resync(&self, instrument: InstrumentId) {
        let owner = {
            let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
            entries.get(&instrument).map(|(_, owner)| *owner)
        };
        let Some(owner) = owner else {
            tracing::warn!(
                instrument = instrument.index(),
                "book needs a snapshot but no feed owns it"
            );
            return;
        };
        let feeds = self.feeds.read().unwrap_or_else(|p| p.into_inner());
        if let Some(feed) = feeds.get(usize::from(owner.0)) {
            let _ = feed.resync.try_send(instrument);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str) -> InstrumentInfo {
        InstrumentInfo {
            name: InstrumentName::parse(name).unwrap(),
            tick_size: Price::ZERO,
        }
    }

    #[test]
    fn feed_stats_count_events_statuses_and_instruments_down() {
        let status = |instrument: u32, kind: StatusKind, missed: u64| FeedEvent {
            instrument: InstrumentId(instrument),
            exchange_time: raven_model::UnixNanos::ZERO,
            receive_time: raven_model::UnixNanos::ZERO,
            venue_seq: 0,
            kind: FeedKind::Status(raven_model::Status {
                kind,
                channel: raven_model::Channel::Book,
                missed,
                detail: String::new(),
            }),
        };
        let stats = FeedStats::default();
        stats.count(
            &[
                status(1, StatusKind::FeedDown, 0),
                status(2, StatusKind::FeedDown, 0),
                status(1, StatusKind::Gap, 7),
            ],
            5,
        );
        assert_eq!(stats.instruments_down(), 2);
        stats.count(
            &[
                status(1, StatusKind::FeedUp, 0),
                status(1, StatusKind::Gap, 3),
            ],
            9,
        );
        assert_eq!(stats.events.load(Ordering::Relaxed), 5);
        assert_eq!(stats.statuses(StatusKind::Gap), 2);
        assert_eq!(stats.statuses(StatusKind::FeedDown), 2);
        assert_eq!(stats.statuses(StatusKind::FeedUp), 1);
        assert_eq!(stats.statuses(StatusKind::Stale), 0);
        assert_eq!(stats.missed.load(Ordering::Relaxed), 10);
        assert_eq!(stats.instruments_down(), 1);
        assert_eq!(stats.last_event_ns.load(Ordering::Relaxed), 9);
    }

    #[test]
    fn resync_requests_reach_the_feed_that_owns_the_instrument() {
        let catalog = Catalog::new(InstrumentRegistry::new());
        let (a, a_requests, _) = catalog.add_feed("a");
        let (b, b_requests, _) = catalog.add_feed("b");
        let (x, _) = catalog.add(info("A:X"), a);
        let (y, _) = catalog.add(info("B:Y"), b);
        // A second claim on a name leaves it with its first owner.
        assert_eq!(catalog.add(info("A:X"), b), (x, a));
        catalog.request_resync(y);
        catalog.request_resync(x);
        catalog.request_resync(y);
        assert_eq!(a_requests.try_iter().collect::<Vec<_>>(), vec![x]);
        assert_eq!(b_requests.try_iter().collect::<Vec<_>>(), vec![y, y]);
        assert_eq!(catalog.feed_name(b), "b");
    }

    #[test]
    fn a_feed_that_does_not_answer_never_blocks_the_engine() {
        let catalog = Catalog::new(InstrumentRegistry::new());
        let (feed, requests, _) = catalog.add_feed("slow");
        let (x, _) = catalog.add(info("S:X"), feed);
        for _ in 0..RESYNC_REQUESTS * 2 {
            catalog.request_resync(x);
        }
        assert_eq!(requests.try_iter().count(), RESYNC_REQUESTS);
    }
}
