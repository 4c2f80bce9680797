#!/usr/bin/env bash
# flush=never acknowledged after the device write (--journal-dir none) vs. from the tmpfs
# journal (the default), alternating runs against a separate broker on the real disk.
#
#   benches/compare-journal.sh [RATES] [RUNS] [SECONDS]     e.g. benches/compare-journal.sh "5000 30000" 3 20
#
# Needs `cargo build --release -p spate-broker -p spate-loadgen --bins`. Prints one line per
# run and the medians: e2e latency (ms) at each rate, 1 KiB messages, 1 partition, acks=all.
set -euo pipefail
cd "$(dirname "$0")/.."
rates=${1:-"5000 30000"}
runs=${2:-3}
seconds=${3:-20}
spate=target/release/spate
loadgen=target/release/spate-loadgen
work=$(mktemp -d -p "${BENCH_DIR:-/work}" compare-journal.XXXX)
trap 'rm -rf "$work"' EXIT
port=29650
results="$work/results.txt"
for rate in $rates; do
  for run in $(seq 1 "$runs"); do
    for mode in after-write journal; do
      data="$work/data-$mode-$rate-$run"
      journal_flag=(--journal-dir none)
      [ "$mode" = journal ] && journal_flag=(--journal-dir "/dev/shm/spate-bench-$$")
      "$spate" serve --data-dir "$data" --listen "127.0.0.1:$port" "${journal_flag[@]}" >"$work/broker.log" 2>&1 &
      broker=$!
      for _ in $(seq 1 100); do "$spate" topic list -b "127.0.0.1:$port" >/dev/null 2>&1 && break; sleep 0.1; done
      "$loadgen" e2e -b "127.0.0.1:$port" --rate "$rate" --partitions 1 --duration "$seconds" --warmup 1 \
        --no-ceiling --json "$work/out.json" >/dev/null 2>&1
      kill "$broker"; wait "$broker" || true
      rm -rf "/dev/shm/spate-bench-$$" "$data"
      python3 - "$work/out.json" "$mode" "$rate" <<'PY' | tee -a "$results"
import json, sys
r = json.load(open(sys.argv[1])); e = r["e2e_latency_us"]
print(f'{sys.argv[3]} {sys.argv[2]} p50 {e["p50"]/1e3:.2f} p99 {e["p99"]/1e3:.2f} p99.9 {e["p999"]/1e3:.2f} max {e["max"]/1e3:.1f} ms msgs/s {r["msgs_per_sec"]:.0f}')
PY
    done
  done
done
echo "medians (ms):"
python3 - "$results" <<'PY'
import sys, statistics, collections
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    f = line.split()
    rows[(int(f[0]), f[1])].append((float(f[3]), float(f[5]), float(f[7])))
for (rate, mode), v in sorted(rows.items()):
    med = [statistics.median(x[i] for x in v) for i in range(3)]
    print(f"{rate:>6} msg/s {mode:<12} e2e p50 {med[0]:.2f}  p99 {med[1]:.2f}  p99.9 {med[2]:.2f}  ({len(v)} runs)")
PY
