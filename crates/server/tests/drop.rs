//! A server dropped without `shutdown` (a test that panicked) stops its threads: no
//! simulator, shard, recorder or SQLite thread outlives it inside the test binary. A file of its
//! own, so that no other test's server runs in this process while threads are counted.

mod common;

/// The threads of this process whose name starts with `raven-`.
fn raven_threads() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| name.starts_with("raven-"))
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_server_stops_its_threads() {
    assert_eq!(raven_threads(), Vec::<String>::new());
    let server = common::server(|f| f.engine.shards = 2).await;
    // Linux keeps 15 bytes of a thread's name: "raven-checkpoint" reads "raven-checkpoin".
    let expected = [
        "raven-checkpoin",
        "raven-recorder",
        "raven-shard-0",
        "raven-shard-1",
        "raven-sim",
        "raven-writer",
    ];
    // A thread takes its name once it first runs, which on a loaded machine can be a
    // while after it was spawned.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut running = raven_threads();
    while running != expected && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        running = raven_threads();
    }
    assert_eq!(running, expected);
    drop(server);
    assert_eq!(raven_threads(), Vec::<String>::new());
}
