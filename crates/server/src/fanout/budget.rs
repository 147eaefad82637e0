//! The write budget: how many stream writes per second all clients share, and the
//! controller that moves it with the machine's CPU load.
//!
//! Spacing each client's writes `subscribers / budget` apart buys many clients a bounded
//! number of writes (so each write carries more events) at the price of latency: up to a
//! gap per event. That price is worth paying only when the CPU is what runs out. So the
//! budget is a range: it sits at its highest while the machine's CPUs have room and falls
//! to `write_budget_per_s` when they are busy, read from `/proc/stat` four times a second.
//! The machine, not the process: the clients, a store, or a load generator on the same box
//! compete for the same cores; and the process's cgroup too where it has a CPU quota.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::shutdown::Shutdown;

/// Below this share of the machine's CPU time busy, the budget doubles (up to its highest).
const ROOM: f64 = 0.50;
/// Above this, it halves (down to its lowest).
const BUSY: f64 = 0.70;
/// How often the load is read.
const EVERY: Duration = Duration::from_millis(250);

/// Stream writes per second over all clients, moved within a range by the CPU load.
#[derive(Debug)]
pub struct WriteBudget {
    /// The budget on a busy machine; 0 means none.
    lowest: u64,
    /// The budget on an idle one.
    highest: u64,
    now: AtomicU64,
}

impl Default for WriteBudget {
    /// No budget: every client writes as soon as it has events.
    fn default() -> Self {
        WriteBudget::new(None, None)
    }
}

impl WriteBudget {
    /// A budget of `lowest` that may rise to `highest` while the CPUs have room (neither
    /// given: no budget). It starts at `lowest`.
    pub fn new(lowest: Option<u64>, highest: Option<u64>) -> WriteBudget {
        let lowest = lowest.unwrap_or(0);
        let highest = highest.unwrap_or(lowest).max(lowest);
        WriteBudget {
            lowest,
            highest,
            now: AtomicU64::new(lowest),
        }
    }

    /// Whether the load moves it at all.
    pub fn adapts(&self) -> bool {
        self.lowest > 0 && self.highest > self.lowest
    }

    /// Writes per second now (None: no budget).
    pub fn per_s(&self) -> Option<u64> {
        Some(self.now.load(Ordering::Relaxed)).filter(|&b| b > 0)
    }

    /// When a client that last wrote at `last` may write again, `subscribers` sharing the
    /// budget: `subscribers / budget` later, so that together they stay within it. Below
    /// the timer's 1 ms resolution spacing would only add latency, so there is none.
    pub fn next_write(&self, subscribers: usize, last: Instant) -> Option<Instant> {
        let budget = self.per_s()?;
        let gap = Duration::from_secs_f64(subscribers as f64 / budget as f64);
        (gap >= Duration::from_millis(1)).then_some(last + gap)
    }

    /// Moves the budget for `busy`, the share of the machine's CPU time busy since the
    /// last reading: doubles with room, halves when busy, stays between.
    pub fn adjust(&self, busy: f64) {
        let now = self.now.load(Ordering::Relaxed);
        let next = if busy < ROOM {
            now.saturating_mul(2).min(self.highest)
        } else if busy > BUSY {
            (now / 2).max(self.lowest)
        } else {
            now
        };
        self.now.store(next, Ordering::Relaxed);
    }

    /// Reads the CPU load every [`EVERY`] and moves the budget, until `shutdown`. Where
    /// `/proc/stat` cannot be read the budget stays at its lowest.
    pub async fn follow_load(self: std::sync::Arc<Self>, mut shutdown: Shutdown) {
        let Some(mut load) = Load::start() else {
            tracing::warn!(
                "/proc/stat is unreadable: the write budget stays at fanout.write_budget_per_s"
            );
            return;
        };
        let mut tick = tokio::time::interval(EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.wait() => return,
            }
            if let Some(busy) = load.busy() {
                self.adjust(busy);
            }
        }
    }
}

/// The CPU load the budget follows: the machine's, or the process's cgroup's where it has
/// a CPU quota (a container's `--cpus`, a systemd `CPUQuota=`) and that is the busier,
/// since a throttled container on an idle host sees an idle machine.
struct Load {
    machine: CpuTimes,
    quota: Option<(Quota, u64, Instant)>,
}

impl Load {
    fn start() -> Option<Load> {
        let quota = Quota::find().and_then(|quota| {
            let usage = quota.usage()?;
            tracing::info!(
                cpus = quota.cpus,
                "the write budget follows the cgroup's CPU quota too"
            );
            Some((quota, usage, Instant::now()))
        });
        Some(Load {
            machine: CpuTimes::read()?,
            quota,
        })
    }

    /// The busy share since the last reading (None when no time passed or nothing could
    /// be read).
    fn busy(&mut self) -> Option<f64> {
        let mut busy = None;
        if let Some(machine) = CpuTimes::read() {
            busy = machine.busy_since(&self.machine);
            self.machine = machine;
        }
        if let Some((quota, usage, at)) = &mut self.quota
            && let Some(now) = quota.usage()
        {
            let wall = at.elapsed().as_secs_f64();
            let used = now.saturating_sub(*usage) as f64 / 1e6;
            if wall > 0.0 {
                let share = used / (wall * quota.cpus);
                busy = Some(busy.map_or(share, |b| b.max(share)));
            }
            (*usage, *at) = (now, Instant::now());
        }
        busy
    }
}

/// A cgroup (v2) CPU quota: how many CPUs' time the process's cgroup may use, and where
/// its usage is counted.
struct Quota {
    cpus: f64,
    stat: std::path::PathBuf,
}

impl Quota {
    /// The process's cgroup's quota, if it has one.
    fn find() -> Option<Quota> {
        let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        let dir = std::path::Path::new("/sys/fs/cgroup").join(
            cgroup
                .lines()
                .find_map(|l| l.strip_prefix("0::"))?
                .trim_start_matches('/'),
        );
        let cpus = Quota::cpus(&std::fs::read_to_string(dir.join("cpu.max")).ok()?)?;
        Some(Quota {
            cpus,
            stat: dir.join("cpu.stat"),
        })
    }

    /// `cpu.max`: `QUOTA PERIOD` in microseconds, or `max PERIOD` for none.
    fn cpus(max: &str) -> Option<f64> {
        let mut fields = max.split_whitespace();
        let quota: f64 = fields.next()?.parse().ok()?;
        let period: f64 = fields.next()?.parse().ok()?;
        (quota > 0.0 && period > 0.0).then(|| quota / period)
    }

    /// CPU time the cgroup has used, in microseconds (`usage_usec` of `cpu.stat`).
    fn usage(&self) -> Option<u64> {
        Quota::usage_usec(&std::fs::read_to_string(&self.stat).ok()?)
    }

    fn usage_usec(stat: &str) -> Option<u64> {
        stat.lines()
            .find_map(|l| l.strip_prefix("usage_usec "))?
            .trim()
            .parse()
            .ok()
    }
}

/// The machine's CPU time, summed over its CPUs, in `/proc/stat`'s ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CpuTimes {
    total: u64,
    idle: u64,
}

impl CpuTimes {
    fn read() -> Option<CpuTimes> {
        CpuTimes::parse(&std::fs::read_to_string("/proc/stat").ok()?)
    }

    /// The first line: `cpu user nice system idle iowait irq softirq steal …`; idle and
    /// iowait are time no CPU was busy.
    fn parse(stat: &str) -> Option<CpuTimes> {
        let line = stat.lines().next()?.strip_prefix("cpu ")?;
        let ticks: Vec<u64> = line
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?;
        // Guest time is counted in user time already.
        let total = ticks.iter().take(8).sum();
        let idle = ticks.get(3)? + ticks.get(4).copied().unwrap_or(0);
        Some(CpuTimes { total, idle })
    }

    /// The busy share of the time between `earlier` and this reading (None when no tick
    /// passed).
    fn busy_since(&self, earlier: &CpuTimes) -> Option<f64> {
        let total = self.total.checked_sub(earlier.total)?;
        let idle = self.idle.checked_sub(earlier.idle)?;
        (total > 0).then(|| total.saturating_sub(idle) as f64 / total as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_clients_writes_are_spaced_by_subscribers_over_the_budget() {
        let budget = WriteBudget::new(Some(50_000), None);
        let last = Instant::now();
        // 100 clients sharing 50,000 writes/s: one write each per 2 ms.
        assert_eq!(
            budget.next_write(100, last),
            Some(last + Duration::from_millis(2))
        );
        // 10 clients: 0.2 ms apart, under the timer's resolution: no spacing.
        assert_eq!(budget.next_write(10, last), None);
        assert_eq!(WriteBudget::default().next_write(100_000, last), None);
        assert!(!budget.adapts());
    }

    #[test]
    fn the_budget_doubles_with_room_and_halves_when_busy_within_its_range() {
        let budget = WriteBudget::new(Some(50_000), Some(300_000));
        assert!(budget.adapts());
        assert_eq!(budget.per_s(), Some(50_000));
        budget.adjust(0.3);
        assert_eq!(budget.per_s(), Some(100_000));
        budget.adjust(0.6);
        assert_eq!(budget.per_s(), Some(100_000));
        budget.adjust(0.1);
        budget.adjust(0.1);
        assert_eq!(budget.per_s(), Some(300_000));
        budget.adjust(0.9);
        assert_eq!(budget.per_s(), Some(150_000));
        for _ in 0..4 {
            budget.adjust(1.0);
        }
        assert_eq!(budget.per_s(), Some(50_000));
        // 100 clients on an idle machine's 300,000: 0.33 ms, no spacing.
        budget.adjust(0.0);
        budget.adjust(0.0);
        assert_eq!(budget.next_write(100, Instant::now()), None);
    }

    #[tokio::test]
    async fn following_the_load_ends_with_the_shutdown_signal() {
        let budget = std::sync::Arc::new(WriteBudget::new(Some(50_000), Some(800_000)));
        let (trigger, shutdown) = crate::shutdown::channel();
        let task = tokio::spawn(budget.follow_load(shutdown));
        trigger.fire();
        // A task that kept reading the load would hold this until the deadline.
        tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("the task ended")
            .unwrap();
    }

    #[test]
    fn cpu_load_is_read_from_the_first_line_of_proc_stat() {
        let before = CpuTimes::parse("cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3\n").unwrap();
        assert_eq!(
            before,
            CpuTimes {
                total: 1000,
                idle: 850
            }
        );
        let after = CpuTimes::parse("cpu  160 0 80 810 50 0 0 0 0 0\n").unwrap();
        assert_eq!(after.busy_since(&before), Some(0.9));
        assert_eq!(before.busy_since(&before), None);
        assert_eq!(CpuTimes::parse("intr 1 2\n"), None);
        assert_eq!(CpuTimes::parse("cpu  a b\n"), None);
    }

    #[test]
    fn a_cgroup_quota_is_read_from_cpu_max_and_its_usage_from_cpu_stat() {
        assert_eq!(Quota::cpus("150000 100000\n"), Some(1.5));
        assert_eq!(Quota::cpus("max 100000\n"), None);
        assert_eq!(Quota::cpus(""), None);
        assert_eq!(
            Quota::usage_usec("usage_usec 123456\nuser_usec 100000\n"),
            Some(123_456)
        );
        assert_eq!(Quota::usage_usec("user_usec 1\n"), None);
    }
}
