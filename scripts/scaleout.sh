#!/usr/bin/env bash
# Scale-out, whole: a private `nats-server -js` (memory storage, a free port, a scratch
# store), one ingest node and two edges of it (release build), then `raven bench` with
# one client directly on the ingest node and through the edges (latency at 10k events/s),
# and 100 clients through each edge count (highest sustained rate). Prints each process's
# CPU over every row (from /proc/PID/stat: user + system, % of one core).
#
# Environment: DURATION (default 10s per row), OUT (default target/scaleout/<UTC time>).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
OUT=${OUT:-target/scaleout/$(date -u +%Y-%m-%dT%H%MZ)}
mkdir -p "$OUT"
cargo build --release -p raven 2>"$OUT/build.txt"
raven=target/release/raven

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

# Starts `raven serve` with "$@"; sets $served to its gRPC URL and $served_pid.
serve() {
  local log=$OUT/$1.log
  shift
  RAVEN_LOG=warn "$raven" serve --config "$OUT/raven.toml" --listen 127.0.0.1:0 \
    --http 127.0.0.1:0 --store off --rate 1 "$@" >"$log.out" 2>"$log" &
  served_pid=$!
  pids+=("$served_pid")
  until grep -q "serving gRPC on" "$log.out" 2>/dev/null; do sleep 0.05; done
  served=http://$(grep -o 'serving gRPC on [0-9.:]*' "$log.out" | awk '{print $4}')
}
serve ingest --role ingest; ingest=$served; ingest_pid=$served_pid
serve edge1 --role edge; edge1=$served; edge1_pid=$served_pid
serve edge2 --role edge; edge2=$served; edge2_pid=$served_pid

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# Runs one bench row ("$@" after the name) and prints each process's CPU over it.
row() {
  local name=$1
  shift
  declare -A before
  for p in ingest_pid edge1_pid edge2_pid nats_pid; do before[$p]=$(ticks "${!p}"); done
  local began
  began=$(date +%s%N)
  "$raven" bench --server "$ingest" "$@" --duration "$DURATION" --warmup 2s --instruments 8 \
    >"$OUT/$name.txt" 2>"$OUT/$name.err"
  local seconds
  seconds=$(( ($(date +%s%N) - began) / 1000000 ))
  echo "== $name"
  grep -E '^ +N |Raven' "$OUT/$name.txt" | tail -2
  for p in ingest_pid edge1_pid edge2_pid nats_pid; do
    local used=$(( $(ticks "${!p}") - before[$p] ))
    # USER_HZ is 100: a tick is 10 ms.
    echo "  ${p%_pid}: $(( used * 1000 / seconds ))% of a core"
  done
}

row direct-n1 --clients 1 --rate 10000
row edge-n1 --via-edge "$edge1" --clients 1 --rate 10000
row direct-n100 --clients 100 --rate 50000 --max 3000000
row one-edge-n100 --via-edge "$edge1" --clients 100 --rate 50000 --max 3000000
row two-edges-n100 --via-edge "$edge1,$edge2" --clients 100 --rate 50000 --max 3000000
echo "(everything in $OUT)"
