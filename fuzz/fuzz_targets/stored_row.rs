//! The stored-row scanner on arbitrary bytes: a row read from the database (or a batch
//! rebuilt from spilled parts) is either scanned or refused, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use raven_server::store::{Batch, row};

fuzz_target!(|data: &[u8]| {
    let _ = row(data);
    for header in raven_proto::wire::scan::events(data) {
        if header.is_err() {
            break;
        }
    }
    // The first byte says how many row ends lead the rest.
    let Some((&count, rest)) = data.split_first() else {
        return;
    };
    let split = (usize::from(count % 16) * 4).min(rest.len());
    let (ends, bytes) = rest.split_at(split);
    let ends = ends
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    if let Ok(batch) = Batch::from_parts(1, 1, bytes.to_vec(), ends) {
        for row in batch.rows() {
            let scanned =
                raven_server::store::row(row.bytes).expect("a batch that was accepted scans");
            assert_eq!(
                (
                    scanned.instrument,
                    scanned.channel,
                    scanned.sequence,
                    scanned.publish_time
                ),
                (row.instrument, row.channel, row.sequence, row.publish_time),
                "the columns kept are the ones the bytes hold"
            );
        }
    }
});
