#!/usr/bin/env bash
# Scale-out, whole: a private `nats-server -js` (memory storage, a free port, a scratch
# store), one ingest node and two edges of it (release build), then `raven bench`:
#  - one client at 10k events/s directly on the ingest node and through an edge,
#    alternating ROUNDS times, with what the edge adds at p50 and p99 each round;
#  - 100 clients, highest sustained rate, directly and through one and two edges;
#  - LAG_RATE events/s for LAG_DURATION with the one client on the ingest node, then on
#    the edge: the edge's replication lag over the row (its `raven_edge_lag_seconds`
#    histogram before and after; upper bounds of p50 and p99) and the gaps it counted.
# Prints each process's CPU over every row (from /proc/PID/stat: user + system, % of one
# core).
#
# Environment: DURATION (default 10s per row), ROUNDS (3), LAG_RATE (1000000),
# LAG_DURATION (60s; 0 skips the lag rows), OUT (default target/scaleout/<UTC time>),
# RAVEN (a `raven` binary to run, for an A/B of two builds; default: the working tree's
# release build, built first).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-3}
LAG_RATE=${LAG_RATE:-1000000}
LAG_DURATION=${LAG_DURATION:-60s}
OUT=${OUT:-target/scaleout/$(date -u +%Y-%m-%dT%H%MZ)}
mkdir -p "$OUT"
raven=${RAVEN:-}
if [ -z "$raven" ]; then
  cargo build --release -p raven 2>"$OUT/build.txt"
  raven=target/release/raven
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT

nats_port=$(free_port)
nats-server -js -a 127.0.0.1 -p "$nats_port" -sd "$OUT/nats" >"$OUT/nats.log" 2>&1 &
pids+=($!)
nats_pid=$!
until (exec 3<>"/dev/tcp/127.0.0.1/$nats_port") 2>/dev/null; do sleep 0.05; done
cat >"$OUT/raven.toml" <<EOF
[replication]
nats = "nats://127.0.0.1:$nats_port"
cluster = "scaleout"
storage = "memory"
EOF

# Starts `raven serve` with "$@"; sets $served to its gRPC URL, $served_http to its HTTP
# address and $served_pid.
serve() {
  local log=$OUT/$1.log
  shift
  RAVEN_LOG=warn "$raven" serve --config "$OUT/raven.toml" --listen 127.0.0.1:0 \
    --http 127.0.0.1:0 --store off --rate 1 "$@" >"$log.out" 2>"$log" &
  served_pid=$!
  pids+=("$served_pid")
  until grep -q "serving gRPC on" "$log.out" 2>/dev/null; do sleep 0.05; done
  served=http://$(grep -o 'serving gRPC on [0-9.:]*' "$log.out" | awk '{print $4}')
  served_http=$(grep -o 'HTTP on [0-9.:]*' "$log.out" | awk '{print $3}')
}
serve ingest --role ingest; ingest=$served; ingest_pid=$served_pid
serve edge1 --role edge; edge1=$served; edge1_pid=$served_pid; edge1_http=$served_http
serve edge2 --role edge; edge2=$served; edge2_pid=$served_pid

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# Runs one bench row ("$@" after the name; DURATION unless ROW_DURATION is set) and
# prints each process's CPU over it.
row() {
  local name=$1
  shift
  declare -A before
  local procs=()
  for p in ingest_pid edge1_pid edge2_pid nats_pid; do
    [ -e "/proc/${!p}/stat" ] && procs+=("$p")
  done
  for p in "${procs[@]}"; do before[$p]=$(ticks "${!p}"); done
  local began
  began=$(date +%s%N)
  "$raven" bench --server "$ingest" "$@" --duration "${ROW_DURATION:-$DURATION}" --warmup 2s --instruments 8 \
    >"$OUT/$name.txt" 2>"$OUT/$name.err"
  local seconds
  seconds=$(( ($(date +%s%N) - began) / 1000000 ))
  echo "== $name"
  grep -E '^ +N |Raven' "$OUT/$name.txt" | tail -2
  for p in "${procs[@]}"; do
    local used=$(( $(ticks "${!p}") - before[$p] ))
    # USER_HZ is 100: a tick is 10 ms.
    echo "  ${p%_pid}: $(( used * 1000 / seconds ))% of a core"
  done
}

# p50 and p99 (µs) of Raven's line in a row's report.
latency() { grep -E '^ +[0-9]+ Raven' "$OUT/$1.txt" | tail -1 | awk '{print $8, $10}'; }
added=()
for round in $(seq 1 "$ROUNDS"); do
  row "direct-n1-$round" --clients 1 --rate 10000
  row "edge-n1-$round" --via-edge "$edge1" --clients 1 --rate 10000
  read -r dp50 dp99 <<<"$(latency "direct-n1-$round")"
  read -r ep50 ep99 <<<"$(latency "edge-n1-$round")"
  added+=("round $round: direct p50 $dp50 p99 $dp99, edge p50 $ep50 p99 $ep99, the edge adds $((ep50 - dp50)) at p50 and $((ep99 - dp99)) at p99 (µs)")
done
row direct-n100 --clients 100 --rate 50000 --max 3000000
row one-edge-n100 --via-edge "$edge1" --clients 100 --rate 50000 --max 3000000
row two-edges-n100 --via-edge "$edge1,$edge2" --clients 100 --rate 50000 --max 3000000
printf '%s\n' "${added[@]}"

# The edge's lag histogram as "le count" lines, summed over its shards.
lag_buckets() {
  curl -s "http://$edge1_http/metrics" | awk -F'[{}" ]+' '/^raven_edge_lag_seconds_bucket/ {
    for (i = 1; i <= NF; i++) if ($i == "le=") le = $(i + 1); n[le] += $NF
  } END { for (le in n) print le, n[le] }' | sort -g
}
# Upper bounds of p50 and p99 of the histogram between two lag_buckets outputs (the same
# buckets in the same order).
lag_quantiles() {
  paste -d ' ' <(echo "$1") <(echo "$2") | awk '{ le[NR] = $1; d[NR] = $4 - $2 } END {
    total = d[NR]; q50 = q99 = ""
    for (i = 1; i <= NR; i++) {
      if (q50 == "" && d[i] >= 0.5 * total) q50 = le[i]
      if (q99 == "" && d[i] >= 0.99 * total) q99 = le[i]
    }
    printf "%d messages applied, p50 <= %s s, p99 <= %s s", total, q50, q99
  }'
}
edge_gaps() { curl -s "http://$edge1_http/metrics" | awk '/^raven_edge_gaps_total/ {n += $NF} END {print n + 0}'; }
if [ "$LAG_DURATION" != 0 ]; then
  # One edge: the second would only take the cores the four others share.
  kill "$edge2_pid"
  wait "$edge2_pid" 2>/dev/null || true
  for where in ingest edge; do
    via=()
    [ "$where" = edge ] && via=(--via-edge "$edge1")
    before=$(lag_buckets)
    gaps_before=$(edge_gaps)
    ROW_DURATION=$LAG_DURATION row "lag-client-on-$where" "${via[@]}" --clients 1 --rate "$LAG_RATE"
    echo "  edge lag: $(lag_quantiles "$before" "$(lag_buckets)"); gaps $(( $(edge_gaps) - gaps_before ))"
  done
fi
echo "(everything in $OUT)"
