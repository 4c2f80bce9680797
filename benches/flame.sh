#!/usr/bin/env bash
# A flame graph of the load generator's CPU (the client side of a produce workload), against a
# fresh release broker, the generator on the last CPU as in compare-iggy.sh.
#
#   benches/flame-loadgen.sh NAME LOADGEN_BINARY [PRODUCE ARGS...]
#   e.g. benches/flame-loadgen.sh W2-after target/release/spate-loadgen --topic w2 --message-size 100
#
# Writes benches/results/flame-loadgen-NAME.svg. Needs perf (Debian: linux-perf) and inferno
# (cargo install inferno). Samples 3 s at 499 Hz with DWARF call graphs, from second 3 of a
# 7 s run (8 s with the warmup).
set -euo pipefail
cd "$(dirname "$0")/.."
name=${1:?usage: $0 NAME LOADGEN_BINARY [PRODUCE ARGS...]}
loadgen=${2:?usage: $0 NAME LOADGEN_BINARY [PRODUCE ARGS...]}
shift 2
for tool in perf inferno-collapse-perf inferno-flamegraph; do
    command -v "$tool" >/dev/null || { echo "flame-loadgen: $tool is missing (see the header)" >&2; exit 1; }
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
target/release/spate serve --data-dir "$work/data" --listen "127.0.0.1:$port" \
    --metrics-listen "127.0.0.1:$((port + 90))" >"$work/broker.log" 2>&1 &
broker=$!
for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
taskset -c "$(( $(nproc) - 1 ))" "$loadgen" produce -b "127.0.0.1:$port" --duration 7 --warmup 1 \
    --no-ceiling "$@" >"$work/loadgen.txt" 2>&1 &
generator=$!
sleep 3
perf record -q -F 499 --call-graph dwarf,16384 -p "$generator" -o "$work/perf.data" -- sleep 3 \
    >/dev/null 2>&1
wait "$generator"
grep -E "^produce" "$work/loadgen.txt"
perf script -i "$work/perf.data" 2>/dev/null | inferno-collapse-perf >"$work/folded"
inferno-flamegraph --title "spate-loadgen $name" <"$work/folded" >"benches/results/flame-loadgen-$name.svg"
echo "benches/results/flame-loadgen-$name.svg"
