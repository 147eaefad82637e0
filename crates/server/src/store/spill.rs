//! The spill file: where the recorder's batches wait, in order, while the store cannot
//! take them, until the store is backfilled from it. It owns the file's layout, its
//! space, and reading it back past damage; what goes into it, and when, is the
//! recorder's business.
//!
//! **Space is reserved when it opens** (`posix_fallocate`, [`Spill::open`]'s `reserve`
//! bytes), so a disk that fills up later (the database often shares it) cannot refuse
//! a batch that fits in the reservation. [`HEADROOM`] bytes of it are kept for the
//! recorder's small gap batches ([`Kind::Gaps`]), so that when even the spill is full,
//! the record of what was lost still fits.
//!
//! **Layout.** A 64-byte header at offset 0: `RVSPILL2`, the generation (u64), a flag
//! saying the file holds nothing (u64: 1 = empty), 32 bytes reserved, FNV-1a 64 of the
//! first 56 bytes. Then records from offset 64, back to back: `RVS2`, generation (u64),
//! run (u64), number (u64), rows (u32), byte length (u32), kind (u32: 0 events, 1 gaps),
//! the rows' end offsets (u32 each), the bytes, FNV-1a 64 of everything after the magic.
//! Integers little-endian.
//!
//! **A ring of laps.** Records are written one after another from offset 64; when the
//! next one does not fit before the end and the records at the front have been
//! released (stored elsewhere), writing goes on from offset 64 in a new lap under the
//! next generation, over the released records, while the older lap is still read to its
//! end. So the reservation bounds what *waits*, not what has passed through since the
//! file was last empty: a store that backfills while live batches keep spilling never
//! finds the file full while it keeps up. At most two laps hold waiting records: the
//! header's generation (read first) and the next one. When the older lap has been
//! released the header moves on to the newer one; when nothing waits the file starts
//! over at offset 64 under a fresh generation, so records of earlier generations (still
//! on disk) are never read again. The reading position is not kept on disk: after a
//! crash, released records still in the file are read again, which the store's
//! per-batch dedupe makes harmless.
//!
//! **Damage never wedges it.** A failed append leaves the file as it was: the tail does
//! not move, and the bytes it may have written are overwritten by the next append (or
//! cut off, on a file without a reservation). Reading skips a damaged record to the
//! next sound one instead of stopping, and opening never cuts off sound records that
//! follow a damaged one. A record is sound only if its magic, generation, lengths and
//! checksum all agree, so a record's bytes are never mistaken for the next record.
//!
//! The records of the first layout (`RVSP` from offset 0, no header) are carried over
//! into this one when such a file is opened.

mod format;

use std::fs::{File, OpenOptions};
use std::io::BufReader;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

pub use format::read_all;
use format::{
    DATA_START, FILE_MAGIC, FNV_OFFSET, V1_MAGIC, all_zero, encode, fnv1a, locate, parse_header,
    read_v1_record, record_length, take,
};

use super::{Batch, StoreError};

/// The end of the reservation kept for gap batches (see [`Kind`]): room for about
/// 30,000 gap rows.
pub const HEADROOM: u64 = 4 << 20;
/// The smallest reservation: a few batches beside the headroom.
pub const MIN_RESERVE: u64 = 2 * HEADROOM;

/// What a spilled batch holds, which says how much of the reservation it may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Recorded events: everything but the headroom.
    Events,
    /// The recorder's gap rows (see `recorder::ledger`): everything, since the record
    /// of a loss must fit when nothing else does.
    Gaps,
}

/// Why an append did not happen.
#[derive(Debug, thiserror::Error)]
pub enum SpillError {
    /// The reservation is used up; nothing was written.
    #[error(
        "the spill file is full ({used} of {capacity} bytes used; a record of {needed} bytes does not fit)"
    )]
    Full {
        /// Bytes of records in the file.
        used: u64,
        /// Bytes the reservation holds for records.
        capacity: u64,
        /// Bytes the record needs.
        needed: u64,
    },
    /// The file system refused; the file is as it was before the append.
    #[error("cannot append to the spill file: {0}")]
    Io(#[from] std::io::Error),
}

/// What reading the file found that it could not use.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Damage {
    /// Damaged stretches skipped.
    pub stretches: u64,
    /// Bytes in them.
    pub bytes: u64,
}

/// An open spill file.
pub struct Spill {
    path: PathBuf,
    file: File,
    /// The oldest lap that may hold waiting records (the header's).
    generation: u64,
    /// Offset of the first record not yet released: the oldest waiting.
    head: u64,
    /// Where the head moves when the record [`Spill::read_next`] returned is released.
    next_head: Option<u64>,
    /// While a newer lap (`generation + 1`) is written from offset 64: where the older
    /// lap's records end. The head is in the older lap until it gets there.
    lap_end: Option<u64>,
    /// Offset after the newest record.
    tail: u64,
    /// Records waiting (the one read and not released among them).
    records: u64,
    /// The file's reserved length; records end at or before it.
    end: u64,
    /// The header says the file holds nothing.
    marked_empty: bool,
    /// The header's generation is behind `generation` (its write failed): the front is
    /// not written over until it is right.
    header_behind: bool,
    damage: Damage,
}

impl Spill {
    /// Opens (creating if need be) the spill file at `path` with `reserve` bytes of disk
    /// reserved for it, and finds the records it holds, skipping damaged ones.
    pub fn open(path: &Path, reserve: u64) -> Result<Spill, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let reserve = reserve.max(MIN_RESERVE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let length = file.metadata()?.len();
        let mut first = [0u8; DATA_START as usize];
        let present = (length as usize).min(first.len());
        file.read_exact_at(&mut first[..present], 0)?;
        let header = (present == first.len())
            .then(|| parse_header(&first))
            .flatten();
        let ours = present >= FILE_MAGIC.len() && &first[..FILE_MAGIC.len()] == FILE_MAGIC;
        if ours && header.is_none() {
            return Err(StoreError::Corrupt(format!(
                "the header of the spill file {} is damaged; move it aside",
                path.display()
            )));
        }
        // (The file magic starts with the first layout's record magic.)
        let legacy = !ours && present >= V1_MAGIC.len() && &first[..V1_MAGIC.len()] == V1_MAGIC;
        if header.is_none() && !legacy && !all_zero(&file, length)? {
            return Err(StoreError::Corrupt(format!(
                "{} is not a spill file (no RVSPILL2 header); move it aside",
                path.display()
            )));
        }
        let (generation, marked_empty) = header.unwrap_or((1, true));
        let mut spill = Spill {
            path: path.to_owned(),
            file,
            generation,
            head: DATA_START,
            next_head: None,
            lap_end: None,
            tail: DATA_START,
            records: 0,
            end: DATA_START,
            marked_empty,
            header_behind: false,
            damage: Damage::default(),
        };
        if legacy {
            return spill.carry_over_first_layout(reserve);
        }
        // A file larger than the reservation (it was lowered) keeps its length: records
        // may lie past the new one.
        spill.reserve(length.max(DATA_START + reserve))?;
        if header.is_none() {
            spill.write_header()?;
        } else if !marked_empty {
            spill.find_records()?;
        }
        Ok(spill)
    }

    /// Batches waiting in the file.
    pub fn batches(&self) -> u64 {
        self.records
    }

    /// True when no batch waits.
    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// Bytes of records waiting.
    pub fn used(&self) -> u64 {
        match self.lap_end {
            Some(lap_end) => (lap_end - self.head) + (self.tail - DATA_START),
            None => self.tail - self.head,
        }
    }

    /// Bytes the reservation holds for records (headroom included).
    pub fn capacity(&self) -> u64 {
        self.end - DATA_START
    }

    /// Damage skipped so far while reading back.
    pub fn damage(&self) -> Damage {
        self.damage
    }

    /// Where the file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `batch`: after the newest record, or at the front in a new lap when it
    /// does not fit before the end and the front has been released. It is in the file
    /// (the OS's page cache: safe from a process crash) when this returns; on an error
    /// the file is as it was.
    pub fn append(&mut self, batch: &Batch, kind: Kind) -> Result<(), SpillError> {
        let needed = record_length(batch);
        // Events leave the headroom free for gap batches; those may use all of it.
        let keep = match kind {
            Kind::Events => HEADROOM,
            Kind::Gaps => 0,
        };
        let full = || SpillError::Full {
            used: self.used(),
            capacity: self.capacity() - keep,
            needed,
        };
        if self.used() + needed + keep > self.capacity() {
            return Err(full());
        }
        let (at, wraps) = match self.lap_end {
            Some(_) if self.tail + needed <= self.head => (self.tail, false),
            None if self.tail + needed <= self.end => (self.tail, false),
            None if DATA_START + needed <= self.head => (DATA_START, true),
            // The free space is in two pieces, neither large enough.
            _ => return Err(full()),
        };
        if self.marked_empty || (wraps && self.header_behind) {
            // Said before the record is written: a crash between the two then costs a
            // scan of the file at the next open, never a record.
            let was_empty = self.marked_empty;
            self.marked_empty = false;
            if let Err(e) = self.write_header() {
                self.marked_empty = was_empty;
                return Err(e.into());
            }
        }
        let generation = self.generation + u64::from(wraps || self.lap_end.is_some());
        let record = encode(generation, batch, kind);
        if let Err(e) = self.file.write_all_at(&record, at) {
            self.undo_torn_append(at);
            return Err(e.into());
        }
        if wraps {
            self.lap_end = Some(self.tail);
        }
        self.tail = at + needed;
        self.records += 1;
        Ok(())
    }

    /// The oldest waiting batch, or `None` when none waits; a damaged record is skipped
    /// (see [`Spill::damage`]). It stays the oldest, in the file and here, until
    /// [`Spill::release`] says it is safe elsewhere.
    pub fn read_next(&mut self) -> Result<Option<(Batch, Kind)>, StoreError> {
        loop {
            let limit = self.lap_end.unwrap_or(self.tail);
            let before = self.damage;
            let next = take(
                &self.file,
                self.generation,
                &mut self.head,
                limit,
                &mut self.damage,
            )?;
            if self.damage != before {
                tracing::error!(
                    path = %self.path.display(),
                    bytes = self.damage.bytes - before.bytes,
                    "a damaged spill record was skipped; the events in it are lost"
                );
            }
            match next {
                Some((batch, kind, length)) => {
                    self.next_head = Some(self.head + length);
                    return Ok(Some((batch, kind)));
                }
                None if self.lap_end.is_some() => self.leave_lap(),
                None => {
                    // Only damage was left.
                    self.next_head = None;
                    self.records = 0;
                    return Ok(None);
                }
            }
        }
    }

    /// The batch [`Spill::read_next`] returned is safe elsewhere: its space may be
    /// written over, and the next read returns the batch after it.
    pub fn release(&mut self) {
        let Some(next) = self.next_head.take() else {
            return;
        };
        self.head = next;
        self.records = self.records.saturating_sub(1);
    }

    /// The older lap is read (and released) to its end: the newer one is the oldest now. The header
    /// says so before the lap after it may start over the front (a failed write is
    /// tried again then).
    fn leave_lap(&mut self) {
        self.generation += 1;
        self.head = DATA_START;
        self.next_head = None;
        self.lap_end = None;
        self.header_behind = true;
        match self.write_header() {
            Ok(()) => self.header_behind = false,
            Err(e) => {
                tracing::warn!(error = %e, "cannot update the spill file's header; tried again before the next lap")
            }
        }
    }

    /// Once every batch has been read back (and the last is safe elsewhere), starts the
    /// file over under the next generation, so its space is used again.
    pub fn reclaim(&mut self) -> Result<(), StoreError> {
        if self.records > 0 || self.next_head.is_some() || self.marked_empty {
            return Ok(());
        }
        // Past every generation a record on disk may carry.
        self.generation += 1 + u64::from(self.lap_end.is_some());
        self.head = DATA_START;
        self.lap_end = None;
        self.tail = DATA_START;
        self.marked_empty = true;
        self.write_header()?;
        self.header_behind = false;
        Ok(())
    }

    /// After a failed write at `at`: make what it may have left unreadable. On a
    /// reserved file the next append overwrites it anyway; a file that grew is cut back.
    fn undo_torn_append(&mut self, at: u64) {
        let length = self.file.metadata().map(|m| m.len()).unwrap_or(self.end);
        if length > self.end {
            let _ = self.file.set_len(self.end);
        }
        let _ = self.file.write_all_at(&[0u8; 4], at);
    }

    /// Reserves disk for the file up to `length` bytes.
    fn reserve(&mut self, length: u64) -> Result<(), StoreError> {
        let len = libc::off_t::try_from(length)
            .map_err(|_| StoreError::Corrupt(format!("spill reservation {length} too large")))?;
        // The workspace's one unsafe call: glibc's posix_fallocate, which also reserves on
        // file systems without fallocate(2) (by writing zeros), as no safe wrapper does.
        // SAFETY: the descriptor is open for writing for the whole call; posix_fallocate
        // only allocates blocks for it.
        #[allow(unsafe_code)]
        let result = unsafe { libc::posix_fallocate(self.file.as_raw_fd(), 0, len) };
        if result != 0 {
            let error = std::io::Error::from_raw_os_error(result);
            return Err(StoreError::Io(std::io::Error::new(
                error.kind(),
                format!(
                    "cannot reserve {} MiB for the spill file {}: {error}; free disk space or lower store.spill_reserve_mb",
                    length >> 20,
                    self.path.display()
                ),
            )));
        }
        self.end = length;
        Ok(())
    }

    fn write_header(&mut self) -> Result<(), std::io::Error> {
        let mut header = [0u8; DATA_START as usize];
        header[..8].copy_from_slice(FILE_MAGIC);
        header[8..16].copy_from_slice(&self.generation.to_le_bytes());
        header[16..24].copy_from_slice(&u64::from(self.marked_empty).to_le_bytes());
        let sum = fnv1a(&header[..56], FNV_OFFSET);
        header[56..].copy_from_slice(&sum.to_le_bytes());
        self.file.write_all_at(&header, 0)
    }

    /// Finds the records waiting in the file's one or two laps (see [`locate`]).
    fn find_records(&mut self) -> Result<(), StoreError> {
        let found = locate(&self.file, self.generation, self.end)?;
        if found.damage.stretches > 0 {
            tracing::error!(
                path = %self.path.display(),
                stretches = found.damage.stretches,
                bytes = found.damage.bytes,
                "the spill file has damaged records between sound ones; skipping them"
            );
        }
        // The damage is counted as it is skipped, when the records are read back.
        self.head = found.head;
        self.lap_end = found.lap_end;
        self.tail = found.tail;
        self.records = found.records;
        if found.generation != self.generation {
            // Only the newer lap holds records: it is the oldest now.
            self.generation = found.generation;
            self.write_header()?;
        }
        if self.records > 0 {
            tracing::info!(
                path = %self.path.display(),
                batches = self.records,
                bytes = self.used(),
                "the spill file holds batches from an earlier run"
            );
        }
        Ok(())
    }

    /// Moves the first layout's records into this one: the file is renamed aside, read
    /// record by record into a fresh file at `path`, then removed.
    fn carry_over_first_layout(self, reserve: u64) -> Result<Spill, StoreError> {
        let old = self.path.with_extension("spill-v1");
        std::fs::rename(&self.path, &old)?;
        let mut spill = Spill::open(&self.path, reserve)?;
        let mut reader = BufReader::new(File::open(&old)?);
        let mut carried = 0u64;
        let whole = loop {
            match read_v1_record(&mut reader) {
                Ok(Some(batch)) => {
                    spill.append(&batch, Kind::Events).map_err(|e| match e {
                        SpillError::Io(e) => StoreError::Io(e),
                        full => StoreError::Corrupt(format!(
                            "carrying {} over: {full}; raise store.spill_reserve_mb",
                            old.display()
                        )),
                    })?;
                    carried += 1;
                }
                Ok(None) => break true,
                Err(e) => {
                    tracing::error!(error = %e, path = %old.display(), "the first-layout spill file is damaged past this point; it is kept for inspection");
                    break false;
                }
            }
        };
        if whole {
            std::fs::remove_file(&old)?;
        }
        tracing::info!(batches = carried, path = %spill.path.display(), "spill file carried over from the first layout");
        Ok(spill)
    }
}

#[cfg(test)]
mod tests;
