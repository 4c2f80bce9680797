#!/usr/bin/env bash
# Replication on one machine: three brokers on loopback (one core each, the disk they share),
# measured with the load generator.
#
#   benches/replication.sh [RUNS] [SECONDS] [FAILOVERS]      e.g. benches/replication.sh 3 8 20
#
# 1. Throughput and latency, RF 3 (acks=all: committed on two of three, by the topic's flush
#    policy, the default flush=never) against RF 1 on the same cluster, 1 KiB messages, 1 and
#    8 partitions: `spate-loadgen produce` as fast as it goes (MB/s, produce p99), then
#    `spate-loadgen e2e --rate 5000` (e2e p50/p99). Runs alternate RF 1 and RF 3; medians.
# 2. Failover, FAILOVERS times: `spate-loadgen failover` kills the leader of a fresh RF 3
#    partition with SIGKILL mid-stream and times the first acknowledgement of a message sent
#    after the kill; the broker is restarted between runs. p50 and max.
#
# Builds the release binaries first. Brokers' logs and data live in a temporary directory
# (removed at the end); ports 29700-29730 (TCP) and 29750-29780 (UDP) on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
seconds=${2:-8}
failovers=${3:-20}
cargo build --release -p spate-broker -p spate-loadgen --bins >&2
spate=$PWD/target/release/spate
loadgen=$PWD/target/release/spate-loadgen
work=$(mktemp -d -p "${BENCH_DIR:-/work}" replication.XXXX)
pids=(0 0 0 0)
stop_all() {
  for i in 1 2 3; do [ "${pids[$i]}" != 0 ] && kill -9 "${pids[$i]}" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work" /dev/shm/spate-repl-bench-$$-*
}
trap stop_all EXIT
"$spate" cluster certs --out "$work/certs" --brokers 3 >/dev/null
client_port() { echo $((29700 + 10 * ($1 - 1))); }
quic_port() { echo $((29750 + 10 * ($1 - 1))); }
peers=$(for i in 1 2 3; do printf '%s@127.0.0.1:%s,' "$i" "$(quic_port "$i")"; done)
peers=${peers%,}
bootstrap=$(for i in 1 2 3; do printf '127.0.0.1:%s,' "$(client_port "$i")"; done)
bootstrap=${bootstrap%,}
start() {
  local i=$1
  "$spate" serve --data-dir "$work/broker-$i" --listen "127.0.0.1:$(client_port "$i")" --cores 1 \
    --journal-dir "/dev/shm/spate-repl-bench-$$-$i" \
    --node-id "$i" --replication-listen "127.0.0.1:$(quic_port "$i")" --peers "$peers" \
    --tls-ca "$work/certs/ca.pem" --tls-cert "$work/certs/broker-$i.pem" \
    --tls-key "$work/certs/broker-$i.key" 2>>"$work/broker-$i.log" &
  pids[$i]=$!
}
# Every broker answers and sees the other two alive (bounded).
wait_cluster() {
  for _ in $(seq 1 150); do
    local ok=1
    for i in 1 2 3; do
      "$spate" cluster status -b "127.0.0.1:$(client_port "$i")" 2>/dev/null | grep -c alive \
        | grep -qx 3 || ok=0
    done
    [ $ok = 1 ] && return 0
    sleep 0.2
  done
  echo "the cluster did not come up; logs in $work" >&2
  exit 1
}
for i in 1 2 3; do start "$i"; done
wait_cluster

results="$work/results.txt"
for run in $(seq 1 "$runs"); do
  for partitions in 1 8; do
    for rf in 1 3; do
      topic="t-$run-$partitions-rf$rf"
      "$loadgen" produce -b "$bootstrap" --topic "$topic" --partitions "$partitions" \
        --replication-factor "$rf" --duration "$seconds" --warmup 1 --no-ceiling \
        --json "$work/produce.json" >/dev/null 2>&1
      "$loadgen" e2e -b "$bootstrap" --topic "$topic-e2e" --partitions "$partitions" \
        --replication-factor "$rf" --rate 5000 --duration "$seconds" --warmup 1 --no-ceiling \
        --json "$work/e2e.json" >/dev/null 2>&1
      python3 - "$work/produce.json" "$work/e2e.json" "$partitions" "$rf" <<'PY' | tee -a "$results"
import json, sys
p = json.load(open(sys.argv[1])); e = json.load(open(sys.argv[2]))
lat = p["produce_latency_us"]; e2e = e["e2e_latency_us"]
print(f'{sys.argv[3]} {sys.argv[4]} MB/s {p["mb_per_sec"]:.1f} produce_p99_ms {lat["p99"]/1e3:.2f} '
      f'e2e5k_p50_ms {e2e["p50"]/1e3:.2f} e2e5k_p99_ms {e2e["p99"]/1e3:.2f}')
PY
    done
  done
done
echo "medians over $runs runs (partitions, RF):"
python3 - "$results" <<'PY'
import sys, statistics, collections
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    f = line.split()
    rows[(int(f[0]), int(f[1]))].append([float(f[i]) for i in (3, 5, 7, 9)])
med = {k: [statistics.median(x[i] for x in v) for i in range(4)] for k, v in rows.items()}
print("| partitions | RF | MB/s | produce p99 ms | e2e p50 ms at 5k/s | e2e p99 ms at 5k/s | RF3/RF1 MB/s |")
print("|---:|---:|---:|---:|---:|---:|---:|")
for (p, rf), m in sorted(med.items()):
    ratio = f'{m[0] / med[(p, 1)][0]:.2f}' if rf == 3 and (p, 1) in med else ''
    print(f"| {p} | {rf} | {m[0]:.1f} | {m[1]:.2f} | {m[2]:.2f} | {m[3]:.2f} | {ratio} |")
PY

echo "failover, $failovers runs:"
: >"$work/failover.txt"
for run in $(seq 1 "$failovers"); do
  "$loadgen" failover -b "$bootstrap" --topic "failover-$run" \
    --pids "1=${pids[1]},2=${pids[2]},3=${pids[3]}" --json "$work/failover.json" \
    2>>"$work/loadgen.log" | tee -a "$work/failover.log"
  python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["recovery_ms"])' \
    "$work/failover.json" >>"$work/failover.txt"
  for i in 1 2 3; do
    if ! kill -0 "${pids[$i]}" 2>/dev/null; then wait "${pids[$i]}" 2>/dev/null || true; start "$i"; fi
  done
  wait_cluster
done
python3 - "$work/failover.txt" <<'PY'
import sys, statistics
v = [float(x) for x in open(sys.argv[1]) if x.strip()]
print(f"leader kill -> first acknowledged produce on the new leader: p50 {statistics.median(v):.0f} ms, "
      f"max {max(v):.0f} ms, min {min(v):.0f} ms ({len(v)} runs)")
PY
