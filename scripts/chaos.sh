#!/usr/bin/env bash
# The reliability suite: every fault scenario against the release binary, one row each
# (crates/chaos): full disk, torn spill file, PostgreSQL stopped for 15 s and 60 s,
# kill -9, clients attached at SIGTERM, 4,000 silent sockets (gRPC and HTTP), a stalled
# subscriber, SIGTERM under load, the WAL's size over WAL_MINUTES at 2k and 50k
# events/s, and NATS killed under an ingest node and its edge (a private nats-server).
# The full-disk scenario mounts a tmpfs and the PostgreSQL ones run a private server
# (as the postgres user), so run it as root. About 7 minutes plus 2 x WAL_MINUTES.
#
#   scripts/chaos.sh                        # everything, 10-minute WAL runs
#   WAL_MINUTES=1 scripts/chaos.sh          # shorter WAL runs
#   scripts/chaos.sh pg-outage-15s kill-9   # some scenarios
#
# Prints a Markdown table and writes it to $OUT (default target/chaos/<date>.md);
# RELIABILITY.md holds the latest results. Exits non-zero if a scenario misses its target.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p raven -p raven-chaos
out=${OUT:-target/chaos/$(date -u +%Y-%m-%dT%H%M).md}
mkdir -p "$(dirname "$out")"
target/release/raven-chaos --raven target/release/raven \
    --wal-minutes "${WAL_MINUTES:-10}" --out "$out" "$@"
echo "results: $out"
