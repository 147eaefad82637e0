//! The spill file reader on arbitrary bytes: whatever a damaged or hostile file holds,
//! reading it back finds sound records or skips damage; it never panics, and every
//! batch it returns scans row by row.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((batches, _damage)) = raven_server::store::spill::read_all(data) {
        for (batch, _kind) in batches {
            for row in batch.rows() {
                let scanned = raven_server::store::row(row.bytes)
                    .expect("a batch read back from the spill file scans");
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
    }
});
