//! The spill file against its promises: order across reopens, the reservation and its
//! headroom, damage skipped, torn tails, laps over released records, the first layout.

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
    let name = raven_model::InstrumentName::parse("SIM:BTC-USD").unwrap();
    let mut batch = Batch::new(7, number);
    for i in 0..rows {
        let event = Event {
            instrument: InstrumentId(0),
            sequence: Sequence(number * 1000 + i + 1),
            exchange_time: UnixNanos(i),
            receive_time: UnixNanos(i),
            publish_time: UnixNanos(i),
            venue_seq: 0,
            body: EventBody::Trade(Trade {
                price: "65000.5".parse().unwrap(),
                qty: "0.25".parse().unwrap(),
                aggressor: Aggressor::Buy,
                trade_id: format!("{number}-{i}"),
            }),
        };
        batch.push(&name, &event);
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
