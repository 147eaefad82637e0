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

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use super::{Batch, MAX_BATCH_ROWS, StoreError};

const FILE_MAGIC: &[u8; 8] = b"RVSPILL2";
const RECORD_MAGIC: &[u8; 4] = b"RVS2";
/// The first layout's record magic.
const V1_MAGIC: &[u8; 4] = b"RVSP";
/// Where records start.
const DATA_START: u64 = 64;
/// Bytes of a record before the row ends: magic, generation, run, number, rows, length,
/// kind.
const RECORD_HEAD: usize = 4 + 8 + 8 + 8 + 4 + 4 + 4;
/// Bytes of a record after its payload: the checksum.
const RECORD_TAIL: usize = 8;
/// Largest batch byte length a record may claim.
const MAX_RECORD_BYTES: usize = 1 << 30;
/// The end of the reservation kept for gap batches (see [`Kind`]): room for about
/// 30,000 gap rows.
pub const HEADROOM: u64 = 4 << 20;
/// The smallest reservation: a few batches beside the headroom.
pub const MIN_RESERVE: u64 = 2 * HEADROOM;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

fn fnv1a(bytes: &[u8], mut hash: u64) -> u64 {
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

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

/// What a spill file's records can be read from: the file, or (fuzzing, tests) bytes.
trait Source {
    /// Fills `buf` from `offset`.
    fn read_span(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()>;
}

impl Source for File {
    fn read_span(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.read_exact_at(buf, offset)
    }
}

impl Source for [u8] {
    fn read_span(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let from = usize::try_from(offset).unwrap_or(usize::MAX);
        let bytes = from
            .checked_add(buf.len())
            .and_then(|to| self.get(from..to))
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(bytes);
        Ok(())
    }
}

/// Where the waiting records of a file are: the lap of `generation` from `head`, to
/// `lap_end` when a newer lap was being written from the front, and that newer lap to
/// `tail` (or the one lap, `head` to `tail`).
struct Located {
    generation: u64,
    head: u64,
    lap_end: Option<u64>,
    tail: u64,
    records: u64,
    damage: Damage,
}

/// Finds the records of the file's laps: the header's `generation` and the one after
/// it. The newer lap starts at the front; the older one's first sound record lies after
/// it (the newer lap wrote only over released records).
fn locate<S: Source + ?Sized>(src: &S, generation: u64, end: u64) -> Result<Located, StoreError> {
    let older = scan(src, generation, end)?;
    let newer = scan(src, generation + 1, end)?;
    let mut damage = older.damage;
    damage.stretches += newer.damage.stretches;
    damage.bytes += newer.damage.bytes;
    Ok(match (older.records, newer.records) {
        (_, 0) => Located {
            generation,
            head: older.head,
            lap_end: None,
            tail: older.tail,
            records: older.records,
            damage,
        },
        (0, _) => Located {
            generation: generation + 1,
            head: newer.head,
            lap_end: None,
            tail: newer.tail,
            records: newer.records,
            damage,
        },
        _ => Located {
            generation,
            head: older.head,
            lap_end: Some(older.tail),
            tail: newer.tail,
            records: older.records + newer.records,
            damage,
        },
    })
}

/// Where a file's records of one generation are.
struct Found {
    head: u64,
    tail: u64,
    records: u64,
    damage: Damage,
}

/// Finds the records of `generation` in `src` (records end by `end`) from the start:
/// sound ones are counted, damaged stretches between them skipped, and the tail is
/// after the last sound one.
fn scan<S: Source + ?Sized>(src: &S, generation: u64, end: u64) -> Result<Found, StoreError> {
    let mut at = DATA_START;
    let mut first = None;
    let (mut records, mut damage) = (0, Damage::default());
    loop {
        match read_record(src, at, end, generation)? {
            Some((_, _, length)) => {
                first.get_or_insert(at);
                records += 1;
                at += length;
            }
            None => {
                let next = find_sound(src, generation, at + 1, end)?;
                if next >= end {
                    break;
                }
                if first.is_some() {
                    damage.stretches += 1;
                    damage.bytes += next - at;
                }
                first.get_or_insert(next);
                at = next;
            }
        }
    }
    Ok(Found {
        head: first.unwrap_or(DATA_START),
        tail: if records == 0 { DATA_START } else { at },
        records,
        damage,
    })
}

/// The sound record at `*head` (before `tail`) and its length; damaged stretches on
/// the way are skipped (moving `*head` past them) and added to `damage`.
fn take<S: Source + ?Sized>(
    src: &S,
    generation: u64,
    head: &mut u64,
    tail: u64,
    damage: &mut Damage,
) -> Result<Option<(Batch, Kind, u64)>, StoreError> {
    while *head < tail {
        match read_record(src, *head, tail, generation)? {
            Some(record) => return Ok(Some(record)),
            None => {
                let next = find_sound(src, generation, *head + 1, tail)?;
                damage.stretches += 1;
                damage.bytes += next - *head;
                *head = next;
            }
        }
    }
    Ok(None)
}

/// The offset of the first sound record of `generation` at or after `from` and before
/// `to`, or `to` when there is none.
fn find_sound<S: Source + ?Sized>(
    src: &S,
    generation: u64,
    from: u64,
    to: u64,
) -> Result<u64, StoreError> {
    const WINDOW: usize = 1 << 20;
    let span = usize::try_from(to.saturating_sub(from)).unwrap_or(WINDOW);
    let mut buf = vec![0u8; span.min(WINDOW) + RECORD_MAGIC.len()];
    let mut at = from;
    while at < to {
        let want = ((to - at) as usize).min(buf.len());
        src.read_span(&mut buf[..want], at)?;
        for i in memchr::memmem::find_iter(&buf[..want], RECORD_MAGIC) {
            if read_record(src, at + i as u64, to, generation)?.is_some() {
                return Ok(at + i as u64);
            }
        }
        if want < buf.len() {
            break;
        }
        // Step so that a magic across the window's end is seen in the next one.
        at += WINDOW as u64;
    }
    Ok(to)
}

/// Every batch the bytes of a spill file hold, oldest first, and the damage skipped:
/// what opening the file and reading it back would find, without a file (the fuzz
/// target reads arbitrary bytes through this).
pub fn read_all(bytes: &[u8]) -> Result<(Vec<(Batch, Kind)>, Damage), StoreError> {
    let header = bytes
        .get(..DATA_START as usize)
        .and_then(parse_header)
        .ok_or_else(|| StoreError::Corrupt("no RVSPILL2 header".into()))?;
    let (generation, empty) = header;
    let mut batches = Vec::new();
    if empty {
        return Ok((batches, Damage::default()));
    }
    let found = locate(bytes, generation, bytes.len() as u64)?;
    let mut damage = Damage::default();
    let laps = match found.lap_end {
        Some(lap_end) => vec![
            (found.generation, found.head, lap_end),
            (found.generation + 1, DATA_START, found.tail),
        ],
        None => vec![(found.generation, found.head, found.tail)],
    };
    for (generation, mut head, tail) in laps {
        while let Some((batch, kind, length)) =
            take(bytes, generation, &mut head, tail, &mut damage)?
        {
            batches.push((batch, kind));
            head += length;
        }
    }
    Ok((batches, damage))
}

fn parse_header(header: &[u8]) -> Option<(u64, bool)> {
    let word = |at: usize| u64::from_le_bytes(header[at..at + 8].try_into().expect("8 bytes"));
    (&header[..8] == FILE_MAGIC && word(56) == fnv1a(&header[..56], FNV_OFFSET))
        .then(|| (word(8), word(16) == 1))
}

/// A file of zeros is a reservation that never got its header (a crash at creation).
fn all_zero(file: &File, length: u64) -> Result<bool, std::io::Error> {
    let mut buf = vec![0u8; 64 << 10];
    let mut at = 0;
    while at < length {
        let want = ((length - at) as usize).min(buf.len());
        file.read_exact_at(&mut buf[..want], at)?;
        if buf[..want].iter().any(|&b| b != 0) {
            return Ok(false);
        }
        at += want as u64;
    }
    Ok(true)
}

/// Bytes of `batch`'s record.
fn record_length(batch: &Batch) -> u64 {
    (RECORD_HEAD + batch.ends().len() * 4 + batch.bytes().len() + RECORD_TAIL) as u64
}

/// A record's bytes.
fn encode(generation: u64, batch: &Batch, kind: Kind) -> Vec<u8> {
    let mut record = Vec::with_capacity(record_length(batch) as usize);
    record.extend_from_slice(RECORD_MAGIC);
    record.extend_from_slice(&generation.to_le_bytes());
    record.extend_from_slice(&batch.run.to_le_bytes());
    record.extend_from_slice(&batch.number.to_le_bytes());
    record.extend_from_slice(&(batch.len() as u32).to_le_bytes());
    record.extend_from_slice(&(batch.bytes().len() as u32).to_le_bytes());
    record.extend_from_slice(&u32::from(kind == Kind::Gaps).to_le_bytes());
    for end in batch.ends() {
        record.extend_from_slice(&end.to_le_bytes());
    }
    record.extend_from_slice(batch.bytes());
    let sum = fnv1a(&record[RECORD_MAGIC.len()..], FNV_OFFSET);
    record.extend_from_slice(&sum.to_le_bytes());
    record
}

/// The sound record of `generation` at `at` (ending by `limit`), its kind and length,
/// or `None` when what is there is not one.
fn read_record<S: Source + ?Sized>(
    file: &S,
    at: u64,
    limit: u64,
    generation: u64,
) -> Result<Option<(Batch, Kind, u64)>, StoreError> {
    if at + (RECORD_HEAD + RECORD_TAIL) as u64 > limit {
        return Ok(None);
    }
    let mut head = [0u8; RECORD_HEAD];
    file.read_span(&mut head, at)?;
    let word = |from: usize| u64::from_le_bytes(head[from..from + 8].try_into().expect("8 bytes"));
    let half = |from: usize| u32::from_le_bytes(head[from..from + 4].try_into().expect("4 bytes"));
    if &head[..4] != RECORD_MAGIC || word(4) != generation {
        return Ok(None);
    }
    let (rows, len) = (half(28) as usize, half(32) as usize);
    let kind = match half(36) {
        0 => Kind::Events,
        1 => Kind::Gaps,
        _ => return Ok(None),
    };
    // Bounds before allocating: a damaged length must not ask for gigabytes.
    if rows > MAX_BATCH_ROWS || len > MAX_RECORD_BYTES {
        return Ok(None);
    }
    let length = (RECORD_HEAD + rows * 4 + len + RECORD_TAIL) as u64;
    if at + length > limit {
        return Ok(None);
    }
    let mut body = vec![0u8; length as usize - RECORD_HEAD];
    file.read_span(&mut body, at + RECORD_HEAD as u64)?;
    let (payload, sum) = body.split_at(body.len() - RECORD_TAIL);
    let expected = fnv1a(payload, fnv1a(&head[4..], FNV_OFFSET));
    if u64::from_le_bytes(sum.try_into().expect("8 bytes")) != expected {
        return Ok(None);
    }
    let (ends_raw, bytes) = payload.split_at(rows * 4);
    let ends = ends_raw
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
        .collect();
    match Batch::from_parts(word(12), word(20), bytes.to_vec(), ends) {
        Ok(batch) => Ok(Some((batch, kind, length))),
        // Sound bytes whose rows do not scan: damaged before they were written.
        Err(StoreError::Corrupt(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Reads one record of the first layout: `None` at its clean end.
fn read_v1_record(reader: &mut impl Read) -> Result<Option<Batch>, StoreError> {
    let torn = || StoreError::Corrupt("a first-layout spill record is cut short or damaged".into());
    let mut magic = [0u8; 4];
    match reader.read_exact(&mut magic) {
        Ok(()) if &magic == V1_MAGIC => {}
        Ok(()) => return Err(torn()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let mut head = [0u8; 24];
    reader.read_exact(&mut head).map_err(|_| torn())?;
    let rows = u32::from_le_bytes(head[16..20].try_into().expect("4 bytes")) as usize;
    let len = u32::from_le_bytes(head[20..24].try_into().expect("4 bytes")) as usize;
    if rows > MAX_BATCH_ROWS || len > MAX_RECORD_BYTES {
        return Err(torn());
    }
    let mut rest = vec![0u8; rows * 4 + len + 8];
    reader.read_exact(&mut rest).map_err(|_| torn())?;
    let (payload, sum) = rest.split_at(rows * 4 + len);
    if u64::from_le_bytes(sum.try_into().expect("8 bytes"))
        != fnv1a(payload, fnv1a(&head, FNV_OFFSET))
    {
        return Err(torn());
    }
    let (ends_raw, bytes) = payload.split_at(rows * 4);
    let ends = ends_raw
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
        .collect();
    let run = u64::from_le_bytes(head[0..8].try_into().expect("8 bytes"));
    let number = u64::from_le_bytes(head[8..16].try_into().expect("8 bytes"));
    Batch::from_parts(run, number, bytes.to_vec(), ends).map(Some)
}

#[cfg(test)]
mod tests {
    use raven_model::{Aggressor, Event, EventBody, InstrumentId, Sequence, Trade, UnixNanos};

    use super::*;

    /// A spill file's path in a directory of its own, removed with it: each file
    /// reserves megabytes.
    struct Scratch(PathBuf);

    impl std::ops::Deref for Scratch {
        type Target = Path;
        fn deref(&self) -> &Path {
            &self.0
        }
    }

    impl AsRef<Path> for Scratch {
        fn as_ref(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            if let Some(dir) = self.0.parent() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }

    fn scratch(what: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("raven-spill-{what}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir.join("raven.spill"))
    }

    /// Batch `number` of run 7, `rows` trades long.
    fn batch(number: u64, rows: u64) -> Batch {
        let mut batch = Batch::new(7, number);
        for i in 0..rows {
            let event = Event {
                instrument: InstrumentId(0),
                sequence: Sequence(number * 1000 + i + 1),
                exchange_time: UnixNanos(i),
                receive_time: UnixNanos(i),
                publish_time: UnixNanos(i),
                body: EventBody::Trade(Trade {
                    price: "65000.5".parse().unwrap(),
                    qty: "0.25".parse().unwrap(),
                    aggressor: Aggressor::Buy,
                    trade_id: format!("{number}-{i}"),
                }),
            };
            batch.push("SIM:BTC-USD", &event);
        }
        batch
    }

    /// Reads and releases every waiting batch: (number, kind).
    fn drain(spill: &mut Spill) -> Vec<(u64, Kind)> {
        let mut out = Vec::new();
        while let Some((batch, kind)) = spill.read_next().unwrap() {
            out.push((batch.number, kind));
            spill.release();
        }
        out
    }

    #[test]
    fn batches_come_back_in_order_and_survive_a_reopen() {
        let path = scratch("order");
        let mut spill = Spill::open(&path, MIN_RESERVE).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            DATA_START + MIN_RESERVE
        );
        for n in 0..5 {
            spill.append(&batch(n, 10), Kind::Events).unwrap();
        }
        spill.append(&batch(5, 2), Kind::Gaps).unwrap();
        assert_eq!(spill.batches(), 6);
        drop(spill);

        let mut spill = Spill::open(&path, MIN_RESERVE).unwrap();
        assert_eq!(spill.batches(), 6);
        let first = spill.read_next().unwrap().unwrap().0;
        assert_eq!(first, batch(0, 10));
        // Read but not reclaimed: a crash now finds every batch again.
        drop(spill);
        let mut spill = Spill::open(&path, MIN_RESERVE).unwrap();
        let mut expected: Vec<_> = (0..5).map(|n| (n, Kind::Events)).collect();
        expected.push((5, Kind::Gaps));
        assert_eq!(drain(&mut spill), expected);
        spill.reclaim().unwrap();
        assert!(spill.is_empty());
        assert_eq!(spill.used(), 0);
        // Started over: the old records are still on disk, but of another generation.
        spill.append(&batch(9, 3), Kind::Events).unwrap();
        drop(spill);
        let mut spill = Spill::open(&path, MIN_RESERVE).unwrap();
        assert_eq!(drain(&mut spill), [(9, Kind::Events)]);
        spill.reclaim().unwrap();
        drop(spill);
        let spill = Spill::open(&path, MIN_RESERVE).unwrap();
        assert!(spill.is_empty());
        assert_eq!(spill.damage(), Damage::default());
    }

    #[test]
    fn a_full_reservation_refuses_an_append_and_keeps_the_headroom_for_gaps() {
        let path = scratch("full");
        let mut spill = Spill::open(&path, MIN_RESERVE).unwrap();
        let big = batch(0, 4000);
        let mut appended = 0;
        let full = loop {
            match spill.append(&big, Kind::Events) {
                Ok(()) => appended += 1,
                Err(e) => break e,
            }
        };
        assert!(matches!(full, SpillError::Full { .. }), "{full}");
        assert!(appended > 0);
        let used = spill.used();
        assert!(used <= MIN_RESERVE - HEADROOM, "{used}");
        // The refused append changed nothing; gap batches still fit in the headroom,
        // up to the end and never over a batch that waits.
        let mut gaps = 0;
        while spill.append(&batch(1 + gaps, 5), Kind::Gaps).is_ok() {
            gaps += 1;
        }
        assert!(gaps > 1000, "{gaps} gap batches");
        drop(spill);
        let mut spill = Spill::open(&path, MIN_RESERVE).unwrap();
        assert_eq!(spill.batches(), appended + gaps);
        let mut expected = vec![(0, Kind::Events); appended as usize];
        expected.extend((1..=gaps).map(|n| (n, Kind::Gaps)));
        assert_eq!(drain(&mut spill), expected);
        assert_eq!(spill.damage(), Damage::default());
    }

    /// Regression: the file started over only when it was read to its end, so a
    /// backfill that kept pace with live batches still spilling filled the reservation
    /// with records already stored, and the spill refused batches with almost nothing
    /// waiting. Released records at the front are written over in a new lap; a reopen
    /// at any point finds everything that waits, in order.
    #[test]
    fn released_space_is_written_again_so_the_reservation_bounds_what_waits() {
        let path = scratch("ring");
        let mut spill = Spill::open(&path, MIN_RESERVE).unwrap();
        let mut waiting = std::collections::VecDeque::new();
        let mut through = 0;
        let mut laps_seen = std::collections::BTreeSet::new();
        for n in 0..1_500u64 {
            let b = batch(n, 1 + n % 400);
            through += record_length(&b);
            spill.append(&b, Kind::Events).unwrap();
            waiting.push_back(n);
            laps_seen.insert(spill.generation + u64::from(spill.lap_end.is_some()));
            // The store takes two batches for every one spilled, with a lag.
            while waiting.len() > 30 + (n as usize % 7) {
                let (read, _) = spill.read_next().unwrap().unwrap();
                assert_eq!(Some(read.number), waiting.pop_front());
                spill.release();
            }
            if n % 97 == 0 {
                // What a restart would find: everything waiting, in order, maybe after
                // released batches not yet written over (stored already; the store's
                // dedupe drops them).
                let (found, damage) = read_all(&std::fs::read(&path).unwrap()).unwrap();
                let numbers: Vec<u64> = found.iter().map(|(b, _)| b.number).collect();
                let first = *numbers.first().unwrap();
                assert_eq!(numbers, (first..=n).collect::<Vec<_>>());
                assert!(first <= *waiting.front().unwrap());
                assert_eq!(damage, Damage::default());
            }
        }
        assert!(
            through > 2 * MIN_RESERVE,
            "{through} bytes went through the file"
        );
        assert!(laps_seen.len() >= 3, "laps: {laps_seen:?}");
        assert_eq!(spill.batches(), waiting.len() as u64);

        // Full while wrapped: events stop short of the headroom, a gap batch fits in it.
        let big = batch(10_000, 4000);
        while spill.append(&big, Kind::Events).is_ok() {}
        spill.append(&batch(10_001, 5), Kind::Gaps).unwrap();
        let waiting_now = spill.batches();
        drop(spill);
        let mut spill = Spill::open(&path, MIN_RESERVE).unwrap();
        assert!(spill.batches() >= waiting_now);
        let read = drain(&mut spill);
        let oldest = read
            .iter()
            .position(|&(n, _)| n == *waiting.front().unwrap())
            .unwrap();
        let tail: Vec<u64> = read[oldest..].iter().map(|&(n, _)| n).collect();
        let mut expected: Vec<u64> = waiting.iter().copied().collect();
        expected.extend(std::iter::repeat_n(10_000, tail.len() - expected.len() - 1));
        expected.push(10_001);
        assert_eq!(tail, expected);
        assert_eq!(read.last(), Some(&(10_001, Kind::Gaps)));
        spill.reclaim().unwrap();
        drop(spill);
        assert!(Spill::open(&path, MIN_RESERVE).unwrap().is_empty());
    }

    /// Random appends (events and gaps, many sizes), reads, releases, reclaims and
    /// reopens against a model of what waits, in phases like a store's outages and
    /// backfills: every read is the oldest waiting batch, a reopen loses none (it may
    /// read released ones again first), and the file refuses a batch only when the
    /// reservation is close to full.
    #[test]
    fn random_use_against_a_model() {
        for (seed, reserve) in [(1u64, MIN_RESERVE), (2, 3 * HEADROOM)] {
            let path = scratch(&format!("model-{seed}"));
            let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let mut next = move |n: u64| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng % n
            };
            let mut spill = Spill::open(&path, reserve).unwrap();
            let mut waiting: std::collections::VecDeque<(u64, Kind)> = Default::default();
            let mut number = 0;
            let (mut refused, mut reopened, mut wrapped) = (0, 0, 0);
            for step in 0..3_000 {
                // An outage (appends only), then a backfill (reads win), and so on.
                let appends = if (step / 250) % 2 == 0 { 90 } else { 30 };
                let roll = next(100);
                if roll < appends {
                    let kind = if next(10) == 0 {
                        Kind::Gaps
                    } else {
                        Kind::Events
                    };
                    let b = batch(number, 1 + next(300));
                    let needed = record_length(&b);
                    let free = spill.capacity() - spill.used();
                    match spill.append(&b, kind) {
                        Ok(()) => waiting.push_back((number, kind)),
                        Err(SpillError::Full { .. }) => {
                            let keep = if kind == Kind::Events { HEADROOM } else { 0 };
                            assert!(free < needed + keep || free < 3 * needed);
                            refused += 1;
                        }
                        Err(e) => panic!("{e}"),
                    }
                    number += 1;
                    wrapped += u64::from(spill.lap_end.is_some());
                } else if roll < 99 {
                    if appends == 90 {
                        continue;
                    }
                    let read = spill.read_next().unwrap().map(|(b, k)| (b.number, k));
                    assert_eq!(read, waiting.front().copied());
                    if read.is_some() && next(4) != 0 {
                        spill.release();
                        waiting.pop_front();
                    } else if read.is_none() {
                        spill.reclaim().unwrap();
                    }
                } else {
                    drop(spill);
                    spill = Spill::open(&path, reserve).unwrap();
                    reopened += 1;
                    // Released batches not yet written over come first, in order.
                    let mut last = None;
                    loop {
                        let read = spill.read_next().unwrap().map(|(b, k)| (b.number, k));
                        if read == waiting.front().copied() {
                            break;
                        }
                        let (n, _) = read.expect("a waiting batch was lost");
                        assert!(n < waiting.front().map_or(number, |w| w.0));
                        assert!(last < Some(n));
                        last = Some(n);
                        spill.release();
                    }
                    assert!(spill.batches() >= waiting.len() as u64);
                }
                assert_eq!(spill.damage(), Damage::default());
            }
            assert!(
                refused > 0 && reopened > 5 && wrapped > 100,
                "{refused} refused, {reopened} reopened, {wrapped} appends while wrapped"
            );
            let rest: Vec<_> = drain(&mut spill);
            assert_eq!(rest, waiting.iter().copied().collect::<Vec<_>>());
        }
    }

    /// Regression: a record left half-written by a failed append (ENOSPC) made every
    /// later replay stop there, and the next start cut the file at it, deleting the
    /// sound batches written after it.
    #[test]
    fn a_damaged_record_is_skipped_and_the_sound_ones_after_it_are_kept() {
        let path = scratch("damaged");
        let mut spill = Spill::open(&path, MIN_RESERVE).unwrap();
        for n in 0..3 {
            spill.append(&batch(n, 20), Kind::Events).unwrap();
        }
        let second = DATA_START + encode(1, &batch(0, 20), Kind::Events).len() as u64;
        drop(spill);
        // A flipped byte inside the second record.
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&[0xff], second + 100).unwrap();
        drop(file);

        // The same, read from the file's bytes.
        let (read, damage) = read_all(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(
            read.iter().map(|(b, _)| b.number).collect::<Vec<_>>(),
            [0, 2]
        );
        assert_eq!(damage.stretches, 1);
        let mut spill = Spill::open(&path, MIN_RESERVE).unwrap();
        assert_eq!(spill.batches(), 2);
        assert_eq!(drain(&mut spill), [(0, Kind::Events), (2, Kind::Events)]);
        assert_eq!(spill.damage().stretches, 1);
        // Appends go after the last sound record, not after the damage.
        spill.append(&batch(3, 1), Kind::Events).unwrap();
        assert_eq!(drain(&mut spill), [(3, Kind::Events)]);
    }

    /// The bytes a failed append may leave at the tail are overwritten by the next one;
    /// if that one is shorter, what is left of them after it is not read as a record.
    #[test]
    fn torn_bytes_at_the_tail_never_become_records() {
        let path = scratch("torn");
        let mut spill = Spill::open(&path, MIN_RESERVE).unwrap();
        spill.append(&batch(0, 5), Kind::Events).unwrap();
        let tail = spill.tail;
        // What a write cut short by a full disk leaves: the first 3/4 of a long record.
        let long = encode(spill.generation, &batch(1, 500), Kind::Events);
        spill
            .file
            .write_all_at(&long[..long.len() * 3 / 4], tail)
            .unwrap();
        spill.append(&batch(2, 1), Kind::Events).unwrap();
        drop(spill);
        let mut spill = Spill::open(&path, MIN_RESERVE).unwrap();
        assert_eq!(drain(&mut spill), [(0, Kind::Events), (2, Kind::Events)]);
        assert_eq!(spill.damage(), Damage::default());
    }

    #[test]
    fn a_first_layout_file_is_carried_over() {
        let path = scratch("v1");
        let mut v1 = Vec::new();
        for n in [4, 5] {
            let b = batch(n, 3);
            let mut head = Vec::new();
            head.extend_from_slice(&b.run.to_le_bytes());
            head.extend_from_slice(&b.number.to_le_bytes());
            head.extend_from_slice(&(b.len() as u32).to_le_bytes());
            head.extend_from_slice(&(b.bytes().len() as u32).to_le_bytes());
            let mut payload = Vec::new();
            for end in b.ends() {
                payload.extend_from_slice(&end.to_le_bytes());
            }
            payload.extend_from_slice(b.bytes());
            let sum = fnv1a(&payload, fnv1a(&head, FNV_OFFSET));
            v1.extend_from_slice(V1_MAGIC);
            v1.extend_from_slice(&head);
            v1.extend_from_slice(&payload);
            v1.extend_from_slice(&sum.to_le_bytes());
        }
        std::fs::write(&path, &v1).unwrap();
        let mut spill = Spill::open(&path, MIN_RESERVE).unwrap();
        assert_eq!(drain(&mut spill), [(4, Kind::Events), (5, Kind::Events)]);
        assert!(!path.with_extension("spill-v1").exists());
    }

    #[test]
    fn a_file_that_is_not_a_spill_file_is_refused() {
        let path = scratch("foreign");
        std::fs::write(&path, b"hello, this is not a spill file at all").unwrap();
        let err = Spill::open(&path, MIN_RESERVE).err().unwrap().to_string();
        assert!(
            err.ends_with("is not a spill file (no RVSPILL2 header); move it aside"),
            "{err}"
        );
        assert_eq!(
            std::fs::read(&path).unwrap(),
            b"hello, this is not a spill file at all"
        );
    }
}
