//! The spill file reader on arbitrary bytes: whatever a damaged or hostile file holds,
//! reading it back finds sound records or skips damage; it never panics, and every
//! batch it returns scans row by row.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((batches, _damage)) = raven_server::store::spill::read_all(data) {
        for (batch, _kind) in batches {
            for row in batch.rows() {
                row.expect("a batch read back from the spill file scans");
            }
        }
    }
});
