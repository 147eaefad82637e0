#!/usr/bin/env bash
# Fuzzes each target for a set time with cargo fuzz (libFuzzer, nightly): the spill
# file reader, the stored-row scanner, Ingest.Publish request conversion and the config
# parser (fuzz/fuzz_targets). Installs cargo-fuzz from crates.io when missing. Corpora
# stay in fuzz/corpus between runs; a crash stops the script with its input in
# fuzz/artifacts.
#
#   scripts/fuzz.sh                          # every target, 10 minutes each
#   SECONDS_EACH=60 scripts/fuzz.sh config   # one target, a minute
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
seconds=${SECONDS_EACH:-600}
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(spill_records stored_row ingest_request config)
fi
mkdir -p artifacts
for target in "${targets[@]}"; do
    echo "== $target: ${seconds} s"
    log=artifacts/$target.log
    if ! cargo +nightly fuzz run "$target" -- -max_total_time="$seconds" -rss_limit_mb=2048 \
        >"$log" 2>&1; then
        tail -n 40 "$log"
        echo "fuzz: $target failed (log: fuzz/$log; a crashing input is kept in fuzz/artifacts/$target)"
        exit 1
    fi
    grep -E "^Done [0-9]+ runs" "$log" | tail -n 1
done
