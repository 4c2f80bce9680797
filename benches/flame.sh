#!/usr/bin/env bash
# A flame graph of one side of a produce workload: the broker's CPU or the load generator's
# (the client side), with one build's `spate` and `spate-loadgen` (a fresh broker on the real
# disk; the generator on the last CPU, as in compare-iggy.sh).
#
#   benches/flame.sh broker|loadgen NAME BIN_DIR [PRODUCE ARGS...]
#   e.g. benches/flame.sh broker W2-after target/release --topic w2 --message-size 100
#        (before: git worktree add /tmp/before COMMIT, build there, BIN_DIR /tmp/before/target/release)
#
# Writes benches/results/flame-SIDE-NAME.svg. Needs perf (Debian: linux-perf) and inferno
# (cargo install inferno). Samples 3 s at 499 Hz with DWARF call graphs (every thread of the
# process: a broker's shards and io_uring workers), from second 3 of a 7 s run (8 s with the
# warmup).
set -euo pipefail
cd "$(dirname "$0")/.."
usage="usage: $0 broker|loadgen NAME BIN_DIR [PRODUCE ARGS...]"
side=${1:?$usage}
name=${2:?$usage}
bin=${3:?$usage}
shift 3
case "$side" in broker|loadgen) ;; *) echo "$usage" >&2; exit 2 ;; esac
for tool in perf inferno-collapse-perf inferno-flamegraph; do
    command -v "$tool" >/dev/null || { echo "flame: $tool is missing (see the header)" >&2; exit 1; }
done
work=$(mktemp -d -p "${BENCH_DIR:-/work}" flame.XXXX)
broker=""
cleanup() {
    [ -n "$broker" ] && kill "$broker" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
port=29500
"$bin/spate" serve --data-dir "$work/data" --listen "127.0.0.1:$port" \
    --metrics-listen "127.0.0.1:$((port + 90))" >"$work/broker.log" 2>&1 &
broker=$!
for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
taskset -c "$(( $(nproc) - 1 ))" "$bin/spate-loadgen" produce -b "127.0.0.1:$port" --duration 7 \
    --warmup 1 --no-ceiling "$@" >"$work/loadgen.txt" 2>&1 &
generator=$!
sampled=$generator
[ "$side" = broker ] && sampled=$broker
sleep 3
perf record -q -F 499 --call-graph dwarf,16384 -p "$sampled" -o "$work/perf.data" -- sleep 3 \
    >/dev/null 2>&1
wait "$generator"
grep -E "^produce" "$work/loadgen.txt"
perf script -i "$work/perf.data" 2>/dev/null | inferno-collapse-perf >"$work/folded"
out="benches/results/flame-$side-$name.svg"
inferno-flamegraph --title "$side $name ($bin)" <"$work/folded" >"$out"
echo "$out"
