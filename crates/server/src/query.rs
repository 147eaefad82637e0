//! The read side: what the recorder stored, read back for `History` and for subscriptions
//! that start in the past. Everything here goes through a [`Reader`], one store connection
//! per request that owns the blocking calls (PostgreSQL's client blocks; SQLite reads
//! do file I/O), so that callers stay async.
//!
//! - [`stream_rows`]: a query's rows in record order, in messages, paced for a replay.
//! - [`book_at`]: a book as it was at an instant, rebuilt from the nearest checkpoint.
//! - [`backlog`]: the history→live handover of a subscription with a start time; it
//!   waits on the recorder's commit watermark, not on a timer.
//!
//! Errors are [`QueryError`]s; the API turns them into gRPC statuses in one place.

mod arrow;
mod book_at;
mod handover;
mod rows;

pub use arrow::stream_arrow;
pub use book_at::book_at;
pub use handover::{Backfill, Backlog, Recorded, backfill};
pub use rows::stream_rows;

use crate::config::StoreConfig;
use crate::store::{self, Store, StoreError};

/// Why a read did not answer.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The store failed, or holds bytes that do not read back.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Nothing recorded matches (an instrument never recorded, no book before an instant).
    #[error("{0}")]
    NotFound(String),
    /// Recorded events were lost where the answer needed them.
    #[error("{0}")]
    DataLoss(String),
    /// The answer would pass a limit on what one request may hold.
    #[error("{0}")]
    TooLarge(String),
    /// The recorder has not stored what the answer needs yet.
    #[error("{0}")]
    Behind(String),
    /// The server is shutting down; the stream ended early.
    #[error("server shutting down; resume the query after the last event received")]
    ShuttingDown,
    /// An event the Arrow tables cannot hold (a quantity of 10³⁸ units or more).
    #[error(transparent)]
    Export(#[from] raven_arrow::ExportError),
    /// A reading task failed (a defect).
    #[error("a store reading task failed: {0}")]
    Task(String),
}

/// Opens [`Reader`]s on the store the recorder writes.
#[derive(Debug, Clone)]
pub struct StoreReader {
    config: StoreConfig,
}

impl StoreReader {
    /// Reads the store `config` describes.
    pub fn new(config: StoreConfig) -> StoreReader {
        StoreReader { config }
    }

    /// A connection of its own (the recorder keeps its own for writing), opened off the
    /// runtime.
    pub async fn open(&self) -> Result<Reader, QueryError> {
        let config = self.config.clone();
        let store = blocking(move || store::open(&config.url, &config.schema)).await??;
        Ok(Reader { store: Some(store) })
    }
}

/// One request's connection to the store.
pub struct Reader {
    /// `None` only while a read has it on a blocking thread (and holds `&mut self`).
    store: Option<Box<dyn Store>>,
}

impl Reader {
    /// Runs `read` on the connection on a blocking thread.
    pub async fn run<R: Send + 'static>(
        &mut self,
        read: impl FnOnce(&mut dyn Store) -> R + Send + 'static,
    ) -> Result<R, QueryError> {
        let mut store = self.take()?;
        let (store, result) = blocking(move || {
            let result = read(store.as_mut());
            (store, result)
        })
        .await?;
        self.store = Some(store);
        Ok(result)
    }

    /// The connection itself, for a read that streams on a blocking thread of its own.
    pub fn into_store(mut self) -> Result<Box<dyn Store>, QueryError> {
        self.take()
    }

    fn take(&mut self) -> Result<Box<dyn Store>, QueryError> {
        // A read that panicked on its blocking thread took the connection with it.
        self.store
            .take()
            .ok_or_else(|| QueryError::Task("the connection was lost with a failed read".into()))
    }

    /// The names of every recorded instrument, sorted.
    pub async fn instruments(&mut self) -> Result<Vec<String>, QueryError> {
        Ok(self.run(|store| store.instruments()).await??)
    }

    /// Fails with [`QueryError::NotFound`] unless every one of `names` was recorded.
    pub async fn check_recorded(&mut self, names: &[String]) -> Result<(), QueryError> {
        let known = self.instruments().await?;
        match names.iter().find(|n| known.binary_search(n).is_err()) {
            Some(name) => Err(QueryError::NotFound(format!(
                "no recorded events for instrument {name:?}"
            ))),
            None => Ok(()),
        }
    }
}

/// Runs `work` on the blocking pool.
async fn blocking<R: Send + 'static>(
    work: impl FnOnce() -> R + Send + 'static,
) -> Result<R, QueryError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| QueryError::Task(e.to_string()))
}
