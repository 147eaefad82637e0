#!/usr/bin/env bash
# Raven's whole benchmark suite, in one go (under 20 minutes on a 2-core box with the
# release build already made, 10 of them the soak): criterion hot-path benches, then `raven bench` side by side with
# NATS core pub/sub (latency per client count, highest sustained rates, 1,000 clients on
# everything at 10k events/s, 10,000 clients at 50 events/s), then the soak. The first
# three also run on the plain-tonic relay (`--floor`): what gRPC alone costs here.
#
# Writes bench-results/<UTC time>/summary.md with the JSON and SVG of each `raven bench`
# run beside it, and every tool's full output under raw/ (not committed). Every run is
# kept: scripts/bench-trend draws their history.
#
# Environment: NATS_URL (default nats://127.0.0.1:4222), SOAK (default 10m; e.g. SOAK=2m
# for a quicker pass), OUT (default bench-results/<UTC time, as 2026-12-02T2310Z>).
set -euo pipefail
cd "$(dirname "$0")/.."

NATS_URL=${NATS_URL:-nats://127.0.0.1:4222}
SOAK=${SOAK:-10m}
OUT=${OUT:-bench-results/$(date -u +%Y-%m-%dT%H%MZ)}
RAW=$OUT/raw
mkdir -p "$RAW"
began=$(date +%s)
step() { echo "== $* ($(($(date +%s) - began)) s in)" >&2; }

step "building (release)"
cargo build --release -p raven 2>"$RAW/build.txt"
for bench in raven-model:fixed raven-book:book raven-server:engine raven-server:fanout; do
  cargo bench -p "${bench%%:*}" --bench "${bench#*:}" --no-run 2>>"$RAW/build.txt"
done
raven=target/release/raven

# Criterion: short runs (0.3 s warm-up, 0.7 s measurement, 20 samples) are enough to
# compare against the targets; BENCHMARKS.md has longer runs. The store bench is left to
# BENCHMARKS.md: it writes gigabytes.
criterion_flags=(--warm-up-time 0.3 --measurement-time 0.7 --sample-size 20 --noplot)
for bench in raven-model:fixed raven-book:book raven-server:engine raven-server:fanout; do
  step "criterion ${bench#*:}"
  cargo bench -q -p "${bench%%:*}" --bench "${bench#*:}" -- "${criterion_flags[@]}" \
    >"$RAW/criterion-${bench#*:}.txt" 2>&1
done

# `raven bench` runs: NAME ARGS...; each writes NAME.json, NAME.svg and raw/NAME.md.
run_bench() {
  local name=$1
  shift
  step "raven bench: $name"
  "$raven" bench "$@" --json "$OUT/$name.json" --svg "$OUT/$name.svg" \
    --markdown "$RAW/$name.md" 2> >(tee "$RAW/$name.progress.txt" >&2) >"$RAW/$name.txt"
}
run_bench latency --clients 1,10,100,1000 --rate 10000,10000,10000,1000 \
  --duration 3s --warmup 1s --floor --compare "$NATS_URL"
run_bench throughput --clients 100,1000 --rate 20000,1000 --max 1000000 \
  --duration 2s --warmup 1s --floor --compare "$NATS_URL"
run_bench everything --clients 1000 --rate 10000 --duration 3s --warmup 1s --floor \
  --compare "$NATS_URL"
run_bench ten-thousand --clients 10000 --rate 50 --duration 5s --warmup 2s --compare "$NATS_URL"
# A soak with any loss or gap exits non-zero; the summary still gets written, and says so.
soak_status=passed
run_bench soak --soak "$SOAK" || soak_status=FAILED

step "writing $OUT/summary.md"
{
  echo "# raven bench suite, $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  echo "- machine: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr)"
  echo "- commit: $(git rev-parse --short HEAD)$(git diff --quiet HEAD || echo ' (with uncommitted changes)')"
  echo "- NATS: $NATS_URL; server and load generator share this machine"
  echo "- command: scripts/bench.sh (SOAK=$SOAK)"
  echo
  echo "## Hot path (criterion; [low median high] of the 95% interval, 20 samples)"
  echo
  echo '```'
  for f in "$RAW"/criterion-*.txt; do
    # A long benchmark name sits on its own line above its "time:" line.
    awk '/time:/ { if ($1 == "time:") print name "  " $0; else print $0; next }
         /^[^ ]/ { name = $1 }' "$f"
  done
  echo '```'
  section() {
    echo
    echo "## $1"
    echo
    echo "$2"
    echo
    cat "$RAW/$3.md"
    echo
    echo "Plot: [$3.svg]($3.svg); data: [$3.json]($3.json)."
  }
  echo
  echo "Rows: Raven; tonic, the plain-tonic relay (\`--floor\`: no engine, one broadcast"
  echo "channel); NATS core pub/sub. R/N is Raven over NATS."
  section "Latency per client count" \
    "Fixed rates: 10k events/s for N = 1, 10, 100; 1k events/s for N = 1000." latency
  section "Highest sustained rate" \
    "Rate stepped ×1.5 (down ÷1.5 when the start fails) until loss > 0.1% or p99 > 100 ms." throughput
  section "1,000 clients on everything at 10k events/s" \
    "Loss is accounted: Raven reports every drop as a gap; NATS drops silently." everything
  section "10,000 clients at 50 events/s" \
    "Each client on its own connection, all on every instrument." ten-thousand
  section "Soak ($soak_status)" \
    "One row: RSS read every 10 s; slope by least squares; must lose nothing." soak
  echo
  echo "Total time: $(($(date +%s) - began)) s."
} >"$OUT/summary.md"
step "done: $OUT/summary.md"
[ "$soak_status" = passed ]
