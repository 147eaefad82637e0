//! `Market.GetSnapshot` over a real socket, answered two ways by the same server: at
//! depth 1 from the lock-free top of book the shard publishes, at depth 2 by a command
//! to the shard and its reply. The server runs the simulator at 20,000 events/s (store
//! off), so the shard has work of its own while it answers.

use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use raven_proto::pb::{self, market_client::MarketClient};
use raven_server::app::{bind, start};
use raven_server::clock::SystemClock;
use raven_server::config::FileConfig;

fn snapshot(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let mut file = FileConfig::default();
    file.http.listen = "off".into();
    file.store.url = "off".into();
    file.sim.rate = 20_000;
    let config = file.resolve().expect("valid configuration");
    let (server, mut client) = runtime.block_on(async {
        let listener = bind("127.0.0.1:0".parse().expect("an address")).expect("bind");
        let server = start(&config, Arc::new(SystemClock), listener)
            .await
            .expect("server starts");
        let client = MarketClient::connect(format!("http://{}", server.local_addr()))
            .await
            .expect("connect");
        (server, client)
    });
    let mut group = c.benchmark_group("get_snapshot");
    for (name, depth) in [("depth1_top_of_book", 1), ("depth2_via_shard", 2)] {
        group.bench_function(name, |b| {
            b.iter(|| {
                runtime.block_on(async {
                    client
                        .get_snapshot(pb::GetSnapshotRequest {
                            instrument: "SIM:BTC-USD".into(),
                            depth,
                        })
                        .await
                        .expect("a snapshot")
                })
            })
        });
    }
    group.finish();
    drop(client);
    runtime.block_on(server.shutdown()).expect("clean shutdown");
}

criterion_group!(benches, snapshot);
criterion_main!(benches);
