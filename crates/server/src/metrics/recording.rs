//! The recording metrics: the recorder's counts and queues (`raven_recorder_*`,
//! `raven_store_*`) and the disks its files are on (`raven_disk_*`).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;

use super::{counter, gauge, histogram};
use crate::recorder::RecorderStats;

pub(super) fn recorder(e: &mut DescriptorEncoder<'_>, r: &RecorderStats) -> fmt::Result {
    let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    for (name, help, v) in [
        (
            "raven_recorder_received_events",
            "Events the recorder took from the engine: everything published.",
            load(&r.received),
        ),
        (
            "raven_recorder_stored_events",
            "Events in the store.",
            load(&r.stored),
        ),
        (
            "raven_recorder_spilled_events",
            "Events written to the spill file while the store was unavailable.",
            load(&r.spilled),
        ),
        (
            "raven_recorder_backfilled_events",
            "Events moved from the spill file to the store.",
            load(&r.backfilled),
        ),
        (
            "raven_recorder_lost_events",
            "Events lost because the store, memory queue and spill file were all unavailable.",
            load(&r.lost),
        ),
        (
            "raven_recorder_batches",
            "Batches committed to the store.",
            load(&r.batches),
        ),
        (
            "raven_store_errors",
            "Store failures seen.",
            load(&r.failures),
        ),
    ] {
        counter(e, name, help, v)?;
    }
    gauge(
        e,
        "raven_store_up",
        "1 while the store accepts writes.",
        u64::from(r.store_up.load(Ordering::Relaxed)),
    )?;
    gauge(
        e,
        "raven_recorder_queue_bytes",
        "Bytes of batches waiting in memory for the store.",
        load(&r.memory_bytes),
    )?;
    gauge(
        e,
        "raven_recorder_spill_bytes",
        "Bytes of batches waiting in the spill file.",
        load(&r.spill_bytes),
    )?;
    gauge(
        e,
        "raven_recorder_commit_lag_max_seconds",
        "Longest time from a batch's first event to its commit.",
        load(&r.max_lag_ns) as f64 / 1e9,
    )?;
    histogram(
        e,
        "raven_recorder_commit_lag_seconds",
        "Time from a batch's first event being published to its commit (a backfilled batch's includes the outage it waited out).",
        &r.commit_lag.buckets(),
        r.commit_lag.sum_ns(),
    )
}

/// The free and total bytes of each recorder file's filesystem (what an unprivileged
/// writer may still use: the recorder stops storing when it is gone), and the SQLite
/// database's own size with its WAL. Read with `statvfs` and `stat` at each scrape: a
/// disk fills over hours, and `predict_linear` over these says when.
pub(super) fn disks(
    e: &mut DescriptorEncoder<'_>,
    files: &[(&'static str, PathBuf)],
) -> fmt::Result {
    let filesystems: Vec<(&str, rustix::fs::StatVfs)> = files
        .iter()
        .filter_map(|(role, file)| {
            let directory = crate::store::directory(file);
            Some((*role, rustix::fs::statvfs(directory).ok()?))
        })
        .collect();
    if filesystems.is_empty() {
        return Ok(());
    }
    for (name, help, whole) in [
        (
            "raven_disk_free_bytes",
            "Bytes an unprivileged writer may still use on the filesystem of a recorder file (label file: database or spill).",
            false,
        ),
        (
            "raven_disk_size_bytes",
            "Size of the filesystem of a recorder file (label file: database or spill).",
            true,
        ),
    ] {
        let mut family = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
        for (role, fs) in &filesystems {
            let blocks = if whole { fs.f_blocks } else { fs.f_bavail };
            family
                .encode_family(&[("file", *role)])?
                .encode_gauge(&(blocks * fs.f_frsize))?;
        }
    }
    if let Some((_, database)) = files.iter().find(|(role, _)| *role == "database") {
        let size = |path: &Path| std::fs::metadata(path).map_or(0, |m| m.len());
        let mut wal = database.as_os_str().to_owned();
        wal.push("-wal");
        gauge(
            e,
            "raven_store_file_bytes",
            "Bytes of the SQLite database file and its WAL.",
            size(database) + size(Path::new(&wal)),
        )?;
    }
    Ok(())
}
