//! The spill file's bytes: the header, the record layout (see the parent module), and
//! finding and reading sound records in a file or in plain bytes, past damage and across
//! the file's two laps. What the records mean and when they are written is the parent's.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;

use super::{Damage, Kind};
use crate::store::{Batch, MAX_BATCH_ROWS, StoreError};

pub(super) const FILE_MAGIC: &[u8; 8] = b"RVSPILL2";
const RECORD_MAGIC: &[u8; 4] = b"RVS2";
/// The first layout's record magic.
pub(super) const V1_MAGIC: &[u8; 4] = b"RVSP";
/// Where records start.
pub(super) const DATA_START: u64 = 64;
/// Bytes of a record before the row ends: magic, generation, run, number, rows, length,
/// kind.
const RECORD_HEAD: usize = 4 + 8 + 8 + 8 + 4 + 4 + 4;
/// Bytes of a record after its payload: the checksum.
const RECORD_TAIL: usize = 8;
/// Largest batch byte length a record may claim.
const MAX_RECORD_BYTES: usize = 1 << 30;
pub(super) const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

pub(super) fn fnv1a(bytes: &[u8], mut hash: u64) -> u64 {
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// What a spill file's records can be read from: the file, or (fuzzing, tests) bytes.
pub(super) trait Source {
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
pub(super) struct Located {
    pub(super) generation: u64,
    pub(super) head: u64,
    pub(super) lap_end: Option<u64>,
    pub(super) tail: u64,
    pub(super) records: u64,
    pub(super) damage: Damage,
}

/// Finds the records of the file's laps: the header's `generation` and the one after
/// it. The newer lap starts at the front; the older one's first sound record lies after
/// it (the newer lap wrote only over released records).
pub(super) fn locate<S: Source + ?Sized>(
    src: &S,
    generation: u64,
    end: u64,
) -> Result<Located, StoreError> {
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
pub(super) fn take<S: Source + ?Sized>(
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

pub(super) fn parse_header(header: &[u8]) -> Option<(u64, bool)> {
    let word = |at: usize| u64::from_le_bytes(header[at..at + 8].try_into().expect("8 bytes"));
    (&header[..8] == FILE_MAGIC && word(56) == fnv1a(&header[..56], FNV_OFFSET))
        .then(|| (word(8), word(16) == 1))
}

/// A file of zeros is a reservation that never got its header (a crash at creation).
pub(super) fn all_zero(file: &File, length: u64) -> Result<bool, std::io::Error> {
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
pub(super) fn record_length(batch: &Batch) -> u64 {
    (RECORD_HEAD + batch.ends().len() * 4 + batch.bytes().len() + RECORD_TAIL) as u64
}

/// A record's bytes.
pub(super) fn encode(generation: u64, batch: &Batch, kind: Kind) -> Vec<u8> {
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
pub(super) fn read_v1_record(reader: &mut impl Read) -> Result<Option<Batch>, StoreError> {
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
