#!/usr/bin/env bash
# One idempotent producer with 1 vs 5 batches in flight (and the plain at-least-once producer
# with 1), alternating runs against a separate broker on the real disk: 1 KiB messages, 64 KiB
# batches, one partition, acks=all, for flush=never and flush=always.
#
#   benches/compare-in-flight.sh [RUNS] [SECONDS]        e.g. benches/compare-in-flight.sh 3 8
#
# Needs `cargo build --release -p spate-broker -p spate-loadgen --bins` (in $CARGO_TARGET_DIR if
# set). Prints one line per run and the medians: MB/s and produce latency, and the ratio of 5 to
# 1 in flight per flush policy.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
seconds=${2:-8}
bin="${CARGO_TARGET_DIR:-target}/release"
work=$(mktemp -d -p "${BENCH_DIR:-/work}" compare-in-flight.XXXX)
trap 'rm -rf "$work"' EXIT
port=29670
results="$work/results.txt"
for run in $(seq 1 "$runs"); do
  for flush in never always; do
    for mode in idempotent-1 idempotent-5 plain-1; do
      case $mode in
        idempotent-1) flags=(--max-in-flight 1) ;;
        idempotent-5) flags=(--max-in-flight 5) ;;
        plain-1) flags=(--max-in-flight 1 --no-idempotence) ;;
      esac
      data="$work/data"
      "$bin/spate" serve --data-dir "$data" --listen "127.0.0.1:$port" \
        --journal-dir "/dev/shm/spate-bench-$$" >"$work/broker.log" 2>&1 &
      broker=$!
      for _ in $(seq 1 100); do "$bin/spate" topic list -b "127.0.0.1:$port" >/dev/null 2>&1 && break; sleep 0.1; done
      "$bin/spate-loadgen" produce -b "127.0.0.1:$port" --partitions 1 --flush "$flush" --acks all \
        --message-size 1024 --batch-bytes 65536 "${flags[@]}" --duration "$seconds" --warmup 1 \
        --no-ceiling --json "$work/out.json" >/dev/null 2>&1
      kill "$broker"; wait "$broker" || true
      rm -rf "/dev/shm/spate-bench-$$" "$data"
      python3 - "$work/out.json" "$flush" "$mode" <<'PY' | tee -a "$results"
import json, sys
r = json.load(open(sys.argv[1])); l = r["produce_latency_us"]
print(f'{sys.argv[2]} {sys.argv[3]} MB/s {r["mb_per_sec"]:.1f} p50 {l["p50"]/1e3:.2f} p99 {l["p99"]/1e3:.2f} ms errors {r["errors"]}')
PY
    done
  done
done
echo "medians:"
python3 - "$results" <<'PY'
import sys, statistics, collections
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    f = line.split()
    rows[(f[0], f[1])].append((float(f[3]), float(f[5]), float(f[7])))
med = {k: [statistics.median(x[i] for x in v) for i in range(3)] for k, v in rows.items()}
for (flush, mode), m in sorted(med.items()):
    print(f"flush={flush:<6} {mode:<13} {m[0]:7.1f} MB/s  p50 {m[1]:6.2f} ms  p99 {m[2]:6.2f} ms  ({len(rows[(flush, mode)])} runs)")
for flush in ("never", "always"):
    one, five = med.get((flush, "idempotent-1")), med.get((flush, "idempotent-5"))
    if one and five:
        print(f"flush={flush}: 5 in flight / 1 in flight = {five[0] / one[0]:.2f}x")
PY
