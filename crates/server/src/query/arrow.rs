//! A query's events as Arrow tables (`History.QueryArrow`): the stored rows decoded once,
//! here, into each channel's table ([`raven_arrow`], the schemas the Parquet export
//! writes), sent as Arrow IPC streams of at most `ROWS_PER_MESSAGE` rows, so that a
//! columnar client (the Python SDK) decodes nothing event by event.

use arrow_ipc::writer::StreamWriter;
use prost::Message;
use raven_arrow::{Table, TableBuilder};
use raven_proto::pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{QueryError, Reader};
use crate::shutdown::Shutdown;
use crate::store::Query;

/// Rows per message: about 1–2 MB of Arrow buffers, under gRPC's usual 4 MiB limit.
const ROWS_PER_MESSAGE: usize = 16_384;

/// Streams the events `query` selects through `reader` as Arrow batches, on a blocking
/// thread of its own. An event a table cannot hold ends the stream with
/// [`QueryError::Export`]; [`QueryError::ShuttingDown`] when `shutdown` fires.
pub fn stream_arrow(
    reader: Reader,
    query: Query,
    shutdown: Shutdown,
) -> ReceiverStream<Result<pb::ArrowBatch, QueryError>> {
    let (tx, rx) = mpsc::channel::<Result<pb::ArrowBatch, QueryError>>(4);
    let mut store = match reader.into_store() {
        Ok(store) => store,
        Err(e) => {
            let _ = tx.try_send(Err(e));
            return ReceiverStream::new(rx);
        }
    };
    let mut tables: Vec<TableBuilder> = Table::ALL
        .into_iter()
        .filter(|t| query.channels.is_empty() || query.channels.contains(&(t.channel() as u8)))
        .map(TableBuilder::new)
        .collect();
    tokio::task::spawn_blocking(move || {
        let send = |table: &mut TableBuilder| tx.blocking_send(encode(table)).is_ok();
        let mut failed = None;
        let mut open = true;
        let mut stopped = false;
        let result = store.query(&query, &mut |_, row| {
            if shutdown.is_set() {
                stopped = true;
                return false;
            }
            let events = match pb::StreamResponse::decode(row) {
                Ok(response) => response.events,
                Err(e) => {
                    failed = Some(QueryError::Task(format!(
                        "a stored row does not decode: {e}"
                    )));
                    return false;
                }
            };
            for event in &events {
                let Some(table) = tables
                    .iter_mut()
                    .find(|t| t.table().channel() == event.channel)
                else {
                    continue;
                };
                if let Err(e) = table.push(event) {
                    failed = Some(QueryError::Export(e));
                    return false;
                }
                if table.len() >= ROWS_PER_MESSAGE && !send(table) {
                    open = false;
                    return false;
                }
            }
            true
        });
        let end = match result {
            Err(e) => Some(e.into()),
            Ok(()) if stopped => Some(QueryError::ShuttingDown),
            Ok(()) => failed,
        };
        match end {
            Some(error) => {
                let _ = tx.blocking_send(Err(error));
            }
            None if open => {
                for table in tables.iter_mut().filter(|t| !t.is_empty()) {
                    if !send(table) {
                        break;
                    }
                }
            }
            None => {}
        }
    });
    ReceiverStream::new(rx)
}

/// The rows gathered in `table` as one message: an IPC stream of its schema and one batch.
fn encode(table: &mut TableBuilder) -> Result<pb::ArrowBatch, QueryError> {
    let batch = table.finish();
    let mut writer = StreamWriter::try_new(Vec::new(), &table.schema())
        .map_err(|e| QueryError::Task(format!("arrow: {e}")))?;
    writer
        .write(&batch)
        .and_then(|()| writer.finish())
        .map_err(|e| QueryError::Task(format!("arrow: {e}")))?;
    let ipc = writer
        .into_inner()
        .map_err(|e| QueryError::Task(format!("arrow: {e}")))?;
    Ok(pb::ArrowBatch {
        channel: table.table().channel(),
        ipc,
    })
}
