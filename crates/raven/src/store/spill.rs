//! The spill file: where the recorder appends batches while the store is down, and reads
//! them back, in order, to backfill it when it returns. Append-only records, each with
//! a checksum; a record cut short by a crash (the process killed mid-append) is found on
//! open and cut off, since the batch in flight is the one a crash may lose.
//!
//! Record: `RVSP`, run (u64), number (u64), rows (u32), byte length (u32), the rows' end
//! offsets (u32 each), the bytes, then FNV-1a 64 over everything after the magic. All
//! integers little-endian.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::{Batch, MAX_BATCH_ROWS, StoreError};

const MAGIC: &[u8; 4] = b"RVSP";
/// Largest batch byte length a record may claim.
const MAX_RECORD_BYTES: usize = 1 << 30;

/// An open spill file.
pub struct Spill {
    path: PathBuf,
    file: File,
    /// Batches in the file.
    batches: u64,
}

fn fnv1a(bytes: &[u8], mut hash: u64) -> u64 {
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

impl Spill {
    /// Opens (creating if need be) the spill file at `path`, cutting off a torn last
    /// record.
    pub fn open(path: &Path) -> Result<Spill, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let (batches, sound) = scan(&mut file)?;
        if sound < file.metadata()?.len() {
            tracing::warn!(
                path = %path.display(),
                kept = sound,
                "spill file ends in a torn record (a crash mid-append); cutting it off"
            );
            file.set_len(sound)?;
        }
        file.seek(SeekFrom::End(0))?;
        Ok(Spill {
            path: path.to_owned(),
            file,
            batches,
        })
    }

    /// Batches waiting in the file.
    pub fn batches(&self) -> u64 {
        self.batches
    }

    /// Appends `batch`. It is in the file (the OS's page cache: safe from a process
    /// crash) when this returns.
    pub fn append(&mut self, batch: &Batch) -> Result<(), StoreError> {
        let mut record = Vec::with_capacity(28 + batch.ends().len() * 4 + batch.bytes().len());
        record.extend_from_slice(MAGIC);
        record.extend_from_slice(&batch.run.to_le_bytes());
        record.extend_from_slice(&batch.number.to_le_bytes());
        record.extend_from_slice(&(batch.len() as u32).to_le_bytes());
        record.extend_from_slice(&(batch.bytes().len() as u32).to_le_bytes());
        for end in batch.ends() {
            record.extend_from_slice(&end.to_le_bytes());
        }
        record.extend_from_slice(batch.bytes());
        let sum = fnv1a(&record[4..], FNV_OFFSET);
        record.extend_from_slice(&sum.to_le_bytes());
        let mut out = BufWriter::new(&mut self.file);
        out.write_all(&record)?;
        out.flush()?;
        self.batches += 1;
        Ok(())
    }

    /// Hands every batch in the file to `each`, in order, stopping at the first error.
    pub fn replay(
        &mut self,
        mut each: impl FnMut(Batch) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        self.file.seek(SeekFrom::Start(0))?;
        let mut reader = BufReader::new(&mut self.file);
        let result = loop {
            match read_record(&mut reader) {
                Ok(Some(batch)) => {
                    if let Err(e) = each(batch) {
                        break Err(e);
                    }
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        self.file.seek(SeekFrom::End(0))?;
        result
    }

    /// Empties the file (after a complete backfill).
    pub fn clear(&mut self) -> Result<(), StoreError> {
        self.file.set_len(0)?;
        self.file.seek(SeekFrom::Start(0))?;
        self.batches = 0;
        Ok(())
    }

    /// Where the file is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Counts sound records from the start; returns (records, bytes they cover).
fn scan(file: &mut File) -> Result<(u64, u64), StoreError> {
    file.seek(SeekFrom::Start(0))?;
    let mut reader = BufReader::new(file);
    let (mut records, mut sound) = (0, 0);
    loop {
        match read_record(&mut reader) {
            Ok(Some(batch)) => {
                records += 1;
                sound += 36 + 4 * batch.ends().len() as u64 + batch.bytes().len() as u64;
            }
            Ok(None) | Err(StoreError::Corrupt(_)) => return Ok((records, sound)),
            Err(e) => return Err(e),
        }
    }
}

/// Reads one record: `None` at a clean end, `Corrupt` for a torn or damaged one.
fn read_record(reader: &mut impl Read) -> Result<Option<Batch>, StoreError> {
    let torn = || StoreError::Corrupt("spill record cut short or damaged".into());
    let mut magic = [0u8; 4];
    match reader.read_exact(&mut magic) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    if &magic != MAGIC {
        return Err(torn());
    }
    let mut head = [0u8; 24];
    read_or_torn(reader, &mut head)?;
    let run = u64::from_le_bytes(head[0..8].try_into().expect("8 bytes"));
    let number = u64::from_le_bytes(head[8..16].try_into().expect("8 bytes"));
    let rows = u32::from_le_bytes(head[16..20].try_into().expect("4 bytes")) as usize;
    let len = u32::from_le_bytes(head[20..24].try_into().expect("4 bytes")) as usize;
    // Bounds before allocating: a damaged length must not ask for gigabytes.
    if rows > MAX_BATCH_ROWS || len > MAX_RECORD_BYTES {
        return Err(torn());
    }
    let mut ends_raw = vec![0u8; rows * 4];
    read_or_torn(reader, &mut ends_raw)?;
    let mut bytes = vec![0u8; len];
    read_or_torn(reader, &mut bytes)?;
    let mut sum = [0u8; 8];
    read_or_torn(reader, &mut sum)?;
    let expected = fnv1a(&bytes, fnv1a(&ends_raw, fnv1a(&head, FNV_OFFSET)));
    if u64::from_le_bytes(sum) != expected {
        return Err(torn());
    }
    let ends = ends_raw
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
        .collect();
    Batch::from_parts(run, number, bytes, ends).map(Some)
}

fn read_or_torn(reader: &mut impl Read, buf: &mut [u8]) -> Result<(), StoreError> {
    reader.read_exact(buf).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => {
            StoreError::Corrupt("spill record cut short or damaged".into())
        }
        _ => e.into(),
    })
}
