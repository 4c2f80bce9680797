#!/usr/bin/env bash
# Runs the same workloads against Spate and NATS JetStream on this machine, in one go, and prints
# a side-by-side table with ratios. Installs nats-server from Debian if it is missing (root).
#
# Usage: [TMPDIR=DIR] benches/compare-nats.sh [SECONDS_PER_WORKLOAD]     (default 8; the
# stores take about 2 GB per second of workload in DIR, default /tmp)
#
# Fairness, stated in the output too: both on loopback, same generator binary, same pacer,
# message format and histogram code; 1 KiB messages unless stated, acks awaited for every
# message on both. Spate: topic flush=never (written with O_DIRECT before the ack, not
# fdatasync'd), 64 KiB producer batches, the load generator's default of 5 in flight per
# partition (idempotent producer). NATS JetStream:
# file storage with the server's default sync (periodic, not per message), every publish waits
# for its PubAck, up to 4096 outstanding per producer.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-8}"
# Both stores keep every workload's data until the end: ~16 GB at 8 s per workload here.
free_gb=$(df --output=avail -BG "${TMPDIR:-/tmp}" | tail -1 | tr -dc 0-9)
if [ "$free_gb" -lt $(( seconds * 3 )) ]; then
    echo "compare-nats: ${free_gb} GB free in ${TMPDIR:-/tmp}; the stores need about $(( seconds * 2 )) GB (set TMPDIR)" >&2
    exit 1
fi
work=$(mktemp -d "${TMPDIR:-/tmp}/spate-vs-nats.XXXXXX")
cleanup() {
    [ -n "${nats_pid:-}" ] && kill "$nats_pid" 2>/dev/null || true
    [ -n "${spate_pid:-}" ] && kill "$spate_pid" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

if ! command -v nats-server >/dev/null; then
    echo "compare-nats: installing nats-server from Debian" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server >/dev/null
fi
cargo build --release --quiet -p spate-broker -p spate-loadgen --features spate-loadgen/nats
loadgen=target/release/spate-loadgen

nats_port=24222
spate_port=24292
mkdir -p "$work/nats" "$work/spate"
nats-server -a 127.0.0.1 -p "$nats_port" -js -sd "$work/nats" >"$work/nats.log" 2>&1 &
nats_pid=$!
target/release/spate serve --data-dir "$work/spate" --listen "127.0.0.1:$spate_port" >"$work/spate.log" 2>&1 &
spate_pid=$!
for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$nats_port") 2>/dev/null && (exec 3<>"/dev/tcp/127.0.0.1/$spate_port") 2>/dev/null && break
    sleep 0.1
done

echo "nats-server $(nats-server --version | awk '{print $NF}'): JetStream file storage, default sync; acks awaited"
echo "spate: flush=never, 64 KiB batches, 5 in flight per partition; acks=all awaited"
"$loadgen" ceiling --data-dir "$work/ceiling" --json "$work/ceiling.json" | sed 's/^/ceiling: /'

run() { # name target args...
    local name=$1 target=$2
    shift 2
    local bootstrap=()
    if [ "$target" = spate ]; then bootstrap=(-b "127.0.0.1:$spate_port" --flush never); else bootstrap=(--target "nats://127.0.0.1:$nats_port"); fi
    "$loadgen" "$@" "${bootstrap[@]}" --ceiling-json "$work/ceiling.json" --json "$work/$name-$target.json" >/dev/null 2>"$work/$name-$target.err" \
        || { echo "compare-nats: $name against $target failed:" >&2; cat "$work/$name-$target.err" >&2; exit 1; }
}
for target in spate nats; do
    run W1 "$target" produce --topic w1 --duration "$seconds" --warmup 1
    run W2 "$target" produce --topic w2 --message-size 100 --duration "$seconds" --warmup 1
    run W3 "$target" consume --topic w1
    run W4 "$target" produce --topic w4 --partitions 2 --producers 2 --cores 2 --duration "$seconds" --warmup 1
done
# W5: e2e at half of Spate's W1 rate, for both.
rate=$(python3 -c "import json; print(int(json.load(open('$work/W1-spate.json'))['msgs_per_sec'] / 2))")
for target in spate nats; do
    run W5 "$target" e2e --topic w5 --rate "$rate" --duration "$seconds" --warmup 1
done

python3 - "$work" <<'PY'
import json, sys
work = sys.argv[1]
rows = [("W1 produce 1 KiB", "W1"), ("W2 produce 100 B", "W2"), ("W3 consume W1", "W3"),
        ("W4 2 producers, 2 partitions", "W4"), ("W5 e2e at 50% of W1", "W5")]
print(f"{'workload':<30} {'spate MB/s':>11} {'nats MB/s':>10} {'ratio':>6}   {'spate p99 µs':>12} {'nats p99 µs':>12} {'ratio':>6}")
for label, name in rows:
    s = json.load(open(f"{work}/{name}-spate.json"))
    n = json.load(open(f"{work}/{name}-nats.json"))
    sp, np_ = s["latency_us"]["p99"], n["latency_us"]["p99"]
    ratio_t = s["mb_per_sec"] / max(n["mb_per_sec"], 1e-9)
    ratio_l = (np_ / sp) if sp else float("nan")
    print(f"{label:<30} {s['mb_per_sec']:>11.1f} {n['mb_per_sec']:>10.1f} {ratio_t:>5.2f}x   {sp:>12} {np_:>12} {ratio_l:>5.2f}x")
print("throughput ratio = spate / nats (higher is better for spate); latency ratio = nats p99 / spate p99")
PY
