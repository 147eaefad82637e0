#!/usr/bin/env bash
# CPU the recorder and the shard spend per stored row, for A/B runs of two builds:
#   scripts/recorder-cpu.sh BINARY [RATE] [SECONDS]
# Starts `BINARY serve --rate RATE` (simulator, SQLite store) in a temporary directory,
# reads its threads' CPU from /proc after SECONDS, stops it with SIGTERM, and divides by
# the rows the recorder says it stored.
set -euo pipefail
bin=$(realpath "$1"); rate=${2:-50000}; secs=${3:-20}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
cd "$dir"
RAVEN_LOG=info "$bin" serve --listen 127.0.0.1:0 --http off --rate "$rate" >out.log 2>err.log &
pid=$!
sleep "$secs"
tck=$(getconf CLK_TCK)
declare -A cpu
for task in /proc/$pid/task/*; do
  name=$(cat "$task/comm" 2>/dev/null) || continue
  read -r -a stat < "$task/stat" 2>/dev/null || continue
  # utime and stime, fields 14 and 15 (thread names here have no spaces).
  cpu[$name]=$(( ${cpu[$name]:-0} + stat[13] + stat[14] ))
done
kill -TERM "$pid"; wait "$pid"
stored=$(grep "recorder stopped" err.log | grep -o 'stored=[0-9]*' | cut -d= -f2)
recorder=$(( (${cpu[raven-recorder]:-0} + ${cpu[raven-writer]:-0}) * 1000 / tck ))
shard=$(( ${cpu[raven-shard-0]:-0} * 1000 / tck ))
echo "stored=$stored recorder_ms=$recorder shard_ms=$shard" \
  "recorder_ns_per_row=$(( recorder * 1000000 / stored ))" \
  "shard_ns_per_row=$(( shard * 1000000 / stored ))"
