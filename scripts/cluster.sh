#!/usr/bin/env bash
# Starts N brokers (default 3) on loopback as one cluster, with certificates made by
# `spate cluster certs`, prints their addresses, and stops them all on Ctrl-C.
#
#   scripts/cluster.sh [N] [DIR]      DIR holds certs/ and broker-I/ (default ./spate-cluster)
#
# Broker I serves clients on 127.0.0.1:(9292 + 10*(I-1)) (its shards on the next ports) and its
# peers over QUIC (UDP) on 127.0.0.1:(9500 + 10*(I-1)): membership there, each shard's
# replication on the next ports. Topics are replicated over min(3, N) brokers by default.
set -euo pipefail
count=${1:-3}
dir=${2:-./spate-cluster}
cd "$(dirname "$0")/.."
cargo build --release --bin spate
spate=$PWD/target/release/spate
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
[ -f "$dir/certs/ca.pem" ] || "$spate" cluster certs --out "$dir/certs" --brokers "$count"
peers=$(for i in $(seq 1 "$count"); do printf '%s@127.0.0.1:%s,' "$i" $((9500 + 10 * (i - 1))); done)
peers=${peers%,}
pids=()
stop() {
    echo "stopping ${#pids[@]} brokers"
    kill -TERM "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
}
trap stop INT TERM EXIT
for i in $(seq 1 "$count"); do
    port=$((9292 + 10 * (i - 1)))
    "$spate" serve --data-dir "$dir/broker-$i" --listen "127.0.0.1:$port" --cores 1 \
        --journal-dir "$dir/broker-$i.journal" \
        --node-id "$i" --replication-listen "127.0.0.1:$((9500 + 10 * (i - 1)))" --peers "$peers" \
        --tls-ca "$dir/certs/ca.pem" --tls-cert "$dir/certs/broker-$i.pem" \
        --tls-key "$dir/certs/broker-$i.key" 2>"$dir/broker-$i.log" &
    pids+=($!)
    echo "broker $i: clients 127.0.0.1:$port, peers 127.0.0.1:$((9500 + 10 * (i - 1))), log $dir/broker-$i.log"
done
sleep 2
"$spate" cluster status -b 127.0.0.1:9292 || true
echo "Ctrl-C stops the cluster"
wait
