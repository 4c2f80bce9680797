#!/usr/bin/env bash
# Many partitions, two builds side by side: alternating runs of each build's own `spate serve`
# (a fresh data directory on the real disk each run) and `spate-loadgen produce
# --sweep-partitions`, so that both see the same machine at nearly the same time.
#
#   [AFTER_BIN_DIR=DIR] benches/compare-partitions.sh BEFORE_BIN_DIR [RUNS] [LOADGEN ARGS...]
#
# e.g., for the keyed 5,000-partition case of the performance issue:
#   git worktree add /tmp/before <commit>
#   (cd /tmp/before && cargo build --release -p spate-broker -p spate-loadgen --bins)
#   cargo build --release -p spate-broker -p spate-loadgen --bins
#   benches/compare-partitions.sh /tmp/before/target/release 3 \
#       --topic keyed --sweep-partitions 5000 --keys uniform:100000 --message-size 200
#
# Prints one line per run and step, then the medians per build and partition count: MB/s,
# the produce latency per record from send() (p50/p99, ms), the broker's RSS, and the CPU
# seconds the broker and the load generator used over the whole run (topic creation included).
set -euo pipefail
cd "$(dirname "$0")/.."
before=${1:?usage: $0 BEFORE_BIN_DIR [RUNS] [LOADGEN ARGS...]}
runs=${2:-3}
shift $(( $# >= 2 ? 2 : 1 ))
args=("$@")
[ ${#args[@]} -eq 0 ] && args=(--sweep-partitions 1,100,1000)
work=$(mktemp -d -p "${BENCH_DIR:-/work}" compare-partitions.XXXX)
trap 'rm -rf "$work"' EXIT
port=29660
results="$work/results.txt"
cpu_seconds() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.1f", ($14 + $15) / hz}' "/proc/$1/stat"; }
for run in $(seq 1 "$runs"); do
  for build in before after; do
    bin=${AFTER_BIN_DIR:-target/release}
    [ "$build" = before ] && bin=$before
    data="$work/data-$build-$run"
    "$bin/spate" serve --data-dir "$data" --listen "127.0.0.1:$port" >"$work/broker.log" 2>&1 &
    broker=$!
    for _ in $(seq 1 100); do "$bin/spate" topic list -b "127.0.0.1:$port" >/dev/null 2>&1 && break; sleep 0.1; done
    "$bin/spate-loadgen" produce -b "127.0.0.1:$port" --duration 8 --warmup 1 --no-ceiling \
      --broker-pid "$broker" "${args[@]}" >"$work/out.txt" 2>"$work/err.txt" &
    loadgen=$!
    loadgen_cpu=0
    # Samples the load generator's CPU time until it exits (bounded by its own duration).
    while kill -0 "$loadgen" 2>/dev/null; do
      loadgen_cpu=$(cpu_seconds "$loadgen" 2>/dev/null || echo "$loadgen_cpu")
      sleep 0.2
    done
    wait "$loadgen"
    broker_cpu=$(cpu_seconds "$broker")
    kill "$broker"; wait "$broker" || true
    rm -rf "$data"
    # The next run starts without this one's data still being written back.
    sync
    grep -m1 -E "ERROR|failed" "$work/err.txt" | sed "s/^/$build run $run: /" >&2 || true
    # The sweep table: partitions msgs/s MB/s p50 p99 errors rss.
    awk -v b="$build" -v r="$run" -v bc="$broker_cpu" -v lc="$loadgen_cpu" \
      'found && NF == 7 {print b, r, $1, $3, $4, $5, $7, bc, lc, $6} /^partitions +msgs/ {found = 1}' \
      "$work/out.txt" | tee -a "$results"
  done
done
echo "medians: build partitions MB/s p50-ms p99-ms rss-MB broker-cpu-s loadgen-cpu-s (errors: total)"
python3 - "$results" <<'PY'
import sys, statistics, collections
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    f = line.split()
    rows[(f[0], int(f[2]))].append([float(x) for x in f[3:10]])
for (build, partitions), v in sorted(rows.items(), key=lambda kv: (kv[0][1], kv[0][0] != "before")):
    med = [statistics.median(x[i] for x in v) for i in range(6)]
    errors = int(sum(x[6] for x in v))
    print(f"{build:<7}{partitions:>6} {med[0]:7.1f} {med[1]:8.1f} {med[2]:8.1f} {med[3]:6.0f} {med[4]:6.1f} {med[5]:6.1f}  ({len(v)} runs, errors: {errors})")
PY
