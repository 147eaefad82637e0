#!/usr/bin/env bash
# A/B benchmark of REF (any git revision; A) against the working tree (B), in one sitting:
# both are built into the one target directory (dependencies built once), their binaries
# copied aside, then every criterion bench and `raven bench` row runs alternately
# (A B, B A, A B, ...: neither side always goes first) for ROUNDS rounds. The report gives
# each figure's median and range per side, B/A, and a verdict: "worse" or "better" only
# when the two ranges do not overlap, "~" otherwise. These VMs vary 2x between runs, so
# this is how a claim that a change is faster, or costs nothing, is made.
#
#   scripts/bench-ab.sh REF [ROUNDS]        (ROUNDS: default 3)
#
# Environment:
#   BENCHES  criterion benches as package:bench (default "raven-server:engine raven-server:fanout");
#            "" for none
#   FILTER   criterion filter (a regex on benchmark names; default: all)
#   ROWS     `raven bench` rows (default "n1 n100"; "" for none), from:
#              n1     N=1 at 10k events/s            (p50, p99)
#              n100   N=100 at 10k events/s          (p50, p99, server CPU)
#              n1000  N=1000 at 1k events/s          (p99, server RSS)
#              n1000x10k N=1000 at 10k events/s      (p99, server RSS: clients falling behind)
#              n10000 N=10,000 at 50 events/s         (p99, server RSS; scripts/bench.sh's row)
#              max100 N=100, highest sustained rate  (deliveries/s)
#              max1000 N=1000, highest sustained rate (deliveries/s)
#              ws100  N=100 WebSocket clients at 10k events/s of 8 instruments (p50, p99,
#                     server CPU, CPU per delivery against gRPC in the same run)
#              idle   no subscribers, simulator at 2,000 events/s recording to SQLite
#                     (server CPU % over 20 s, read from /proc 5 s after the start)
#   OUT      where the runs go (default target/bench-ab/<UTC time>); report in OUT/report.md
#
# Exits 1 when any figure is worse beyond the spread.
set -euo pipefail
cd "$(dirname "$0")/.."

ref=${1:?usage: scripts/bench-ab.sh REF [ROUNDS]}
rounds=${2:-3}
BENCHES=${BENCHES-raven-server:engine raven-server:fanout}
FILTER=${FILTER:-}
ROWS=${ROWS-n1 n100}
OUT=${OUT:-target/bench-ab/$(date -u +%Y%m%dT%H%M%SZ)}
commit=$(git rev-parse --verify "$ref^{commit}")
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
root=$(pwd)
target=${CARGO_TARGET_DIR:-$root/target}
began=$(date +%s)
step() { echo "== $* ($(($(date +%s) - began)) s in)" >&2; }

# Builds the tree at $1 into $OUT/$2: the raven binary and each criterion bench's executable.
build() {
  local tree=$1 side=$2
  mkdir -p "$OUT/$side"
  step "building $side ($tree)"
  (cd "$tree" && CARGO_TARGET_DIR=$target cargo build --release -q -p raven)
  cp "$target/release/raven" "$OUT/$side/raven"
  for bench in $BENCHES; do
    local exe
    exe=$(cd "$tree" && CARGO_TARGET_DIR=$target cargo bench -q -p "${bench%%:*}" --bench "${bench#*:}" \
      --no-run --message-format=json 2>/dev/null |
      sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -1)
    [ -n "$exe" ] || { echo "no executable for $bench" >&2; exit 2; }
    cp "$exe" "$OUT/$side/bench-${bench#*:}"
  done
}

worktree=$OUT/ref-tree
git worktree add -q --detach "$worktree" "$commit"
trap 'git worktree remove --force "$worktree" 2>/dev/null || true' EXIT
build "$worktree" A
git worktree remove --force "$worktree"
# Cargo names a workspace's artifacts and fingerprints by paths relative to the workspace
# root, so A's build wrote the very files B's uses, and B's sources, older than A's build,
# would look fresh: B would run A's binaries. Touching what differs from REF rebuilds B
# where it differs.
(git diff --name-only -z --diff-filter=d "$commit" && git ls-files -z --others --exclude-standard) |
  xargs -0 -r touch --
build "$root" B
# Each side's binaries, checked apart: the same bytes mean the build went wrong.
if [ "$(git diff --name-only "$commit" -- crates Cargo.toml Cargo.lock | head -1)" ] &&
  cmp -s "$OUT/A/raven" "$OUT/B/raven"; then
  echo "A and B built the same raven binary though the sources differ" >&2
  exit 2
fi
{
  echo "A: $ref ($(git rev-parse --short "$commit"))"
  echo "B: working tree at $(git rev-parse --short HEAD)$(git diff --quiet HEAD || echo ' with uncommitted changes')"
  echo "machine: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), $(uname -sr)"
  echo "began: $(date -u '+%Y-%m-%d %H:%M UTC'), rounds: $rounds"
} >"$OUT/sides.txt"

row_args() {
  case $1 in
    n1) echo --clients 1 --rate 10000 --duration 5s --warmup 1s ;;
    n100) echo --clients 100 --rate 10000 --duration 3s --warmup 1s ;;
    n1000) echo --clients 1000 --rate 1000 --duration 3s --warmup 1s ;;
    n1000x10k) echo --clients 1000 --rate 10000 --duration 3s --warmup 1s ;;
    n10000) echo --clients 10000 --rate 50 --duration 5s --warmup 2s ;;
    max100) echo --clients 100 --rate 20000 --max 2000000 --duration 2s --warmup 1s ;;
    max1000) echo --clients 1000 --rate 1000 --max 1000000 --duration 2s --warmup 1s ;;
    ws100) echo --clients 100 --rate 10000 --instruments 8 --duration 10s --warmup 2s --transport ws ;;
    *) echo "unknown row $1" >&2; exit 2 ;;
  esac
}

# The idle row: a server with no clients, the simulator at 2,000 events/s, recording to
# SQLite; its CPU (user + system) over 20 s, from 5 s after the start.
idle_row() {
  local side=$1 round=$2 dir=$OUT/idle-$1-$2 pid before after
  mkdir -p "$dir"
  "$OUT/$side/raven" serve --listen 127.0.0.1:0 --http off --rate 2000 \
    --store "sqlite:$dir/raven.db" >"$dir/serve.log" 2>&1 &
  pid=$!
  sleep 5
  before=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  sleep 20
  after=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  kill "$pid"
  wait "$pid" || true
  awk -v t="$((after - before))" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.2f\n", t / hz / 20 * 100 }' \
    >"$OUT/$side-idle-$round.txt"
  rm -rf "$dir"
}

run_side() {
  local side=$1 round=$2
  for bench in $BENCHES; do
    step "round $round, $side: criterion ${bench#*:}"
    # Its own criterion directory per side: no comparison against the other side's
    # saved baseline, and no plots.
    CRITERION_HOME=$OUT/criterion-$side "$OUT/$side/bench-${bench#*:}" --bench \
      --warm-up-time 1 --measurement-time 3 --noplot ${FILTER:+"$FILTER"} \
      >"$OUT/$side-criterion-${bench#*:}-$round.txt" 2>&1
  done
  for row in $ROWS; do
    if [ "$row" = idle ]; then
      step "round $round, $side: idle server"
      idle_row "$side" "$round"
      continue
    fi
    step "round $round, $side: raven bench $row"
    # shellcheck disable=SC2046 # the row's arguments are words
    "$OUT/$side/raven" bench $(row_args "$row") --json "$OUT/$side-row-$row-$round.json" \
      >"$OUT/$side-row-$row-$round.txt" 2>&1
  done
}

for round in $(seq 1 "$rounds"); do
  if ((round % 2)); then
    run_side A "$round"
    run_side B "$round"
  else
    run_side B "$round"
    run_side A "$round"
  fi
done

step "report: $OUT/report.md"
python3 scripts/bench-ab-report.py "$OUT" | tee "$OUT/report.md"
