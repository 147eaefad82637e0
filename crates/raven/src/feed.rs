//! Feeds: sources of normalized [`raven_model::FeedEvent`]s for the engine. Each feed
//! registers its instruments, sends batches through an [`crate::engine::EngineInput`],
//! and answers the engine's resync requests with fresh snapshots.
//!
//! - [`sim`]: the deterministic built-in market, the default.
//! - publish: outside collectors, through the gRPC ingest service (`api::ingest`).
//!
//! The [`Catalog`] records what each feed says about its instruments and which feed owns
//! each one, so that two feeds never write the same book.

pub mod sim;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use raven_model::{InstrumentId, InstrumentName, InstrumentRegistry, Price};

/// What a feed says about one of its instruments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstrumentInfo {
    /// `VENUE:SYMBOL`.
    pub name: InstrumentName,
    /// Minimum price increment.
    pub tick_size: Price,
}

/// Which feed writes an instrument's book.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// The built-in simulator.
    Simulator,
    /// Outside collectors through the ingest service.
    Publisher,
}

/// The instruments the server knows, their metadata and owners. Shared; cheap to clone.
#[derive(Clone)]
pub struct Catalog {
    registry: InstrumentRegistry,
    entries: Arc<RwLock<HashMap<InstrumentId, (InstrumentInfo, Owner)>>>,
}

impl Catalog {
    /// An empty catalog over `registry`.
    pub fn new(registry: InstrumentRegistry) -> Catalog {
        Catalog {
            registry,
            entries: Arc::default(),
        }
    }

    /// Adds an instrument for `owner`, unless it exists; returns its id and its owner.
    pub fn add(&self, info: InstrumentInfo, owner: Owner) -> (InstrumentId, Owner) {
        let id = self.registry.intern(&info.name);
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        let (_, owner) = entries.entry(id).or_insert((info, owner));
        (id, *owner)
    }

    /// The id and owner of a known instrument, by name; read locks only, no allocation.
    pub fn lookup(&self, name: &str) -> Option<(InstrumentId, Owner)> {
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
}
