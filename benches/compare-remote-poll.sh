#!/usr/bin/env bash
# End-to-end latency and broker CPU of long-polling through another shard, for two `spate`
# binaries (e.g. before and after a change), alternating, three rounds each. Needs
# `cargo build --release -p spate-loadgen`. RATE (messages/s, default 2000) sets the load.
#
#   benches/compare-remote-poll.sh /tmp/spate-before target/release/spate
set -euo pipefail
cd "$(dirname "$0")/.."
loadgen=target/release/spate-loadgen
rate=${RATE:-2000}
for round in 1 2 3; do
  for bin in "$@"; do
    dir=$(mktemp -d)
    port=$((20000 + RANDOM % 20000))
    "$bin" serve --data-dir "$dir" --listen "127.0.0.1:$port" >/dev/null 2>&1 &
    pid=$!
    # Bounded: 5 s for the broker to come up.
    for _ in $(seq 50); do "$bin" topic list -b "127.0.0.1:$port" >/dev/null 2>&1 && break; sleep 0.1; done
    before=$(awk '{print $14 + $15}' "/proc/$pid/stat")
    out=$("$loadgen" e2e -b "127.0.0.1:$port" --via-bootstrap --partitions 2 --rate "$rate" \
      --message-size 256 --duration 8 --no-ceiling 2>&1)
    after=$(awk '{print $14 + $15}' "/proc/$pid/stat")
    ticks=$(getconf CLK_TCK)
    echo "$bin round $round: broker cpu $(echo "scale=2; ($after - $before) / $ticks" | bc) s; $(echo "$out" | grep 'e2e latency')"
    kill "$pid"; wait "$pid" 2>/dev/null || true
    rm -rf "$dir"
  done
done
