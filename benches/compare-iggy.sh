#!/usr/bin/env bash
# Spate against Apache Iggy on this machine, the same workloads through the same generator
# (`spate-loadgen --target iggy://...`: same pacer, message format and histograms), alternating
# runs with a fresh server and data directory each, then a table of medians with ratios.
#
#   IGGY_SERVER=/path/to/iggy-server benches/compare-iggy.sh [RUNS] [SECONDS_PER_WORKLOAD]
#   (defaults: 1 run, 8 s)
#
# Building Iggy (pinned: the release tag server-0.9.0-edge.5, whose SDK is the `iggy =
# 0.11.0-edge.4` crate the driver uses), from a checkout of the public apache/iggy repository:
#   git checkout server-0.9.0-edge.5 && rm rust-toolchain.toml   # asks for a newer Rust
#   apt-get install libhwloc-dev libudev-dev
#   cargo build --release -p server -p iggy-bench                 # ~15 min on 2 cores
#   IGGY_SERVER=$PWD/target/release/iggy-server
#
# What each side acknowledges (also printed):
# - Spate: the topics' default `flush=never`: a batch is acknowledged once copied into the
#   partition's journal on tmpfs (survives kill -9 of the broker, not a power loss), and
#   written with O_DIRECT within the write-behind bound. `--flush always`: after fdatasync.
# - Iggy: without fsync, once appended in the server's memory (persisted when 1024 messages or
#   1 MiB are unsaved; lost on kill -9 until then). With fsync (W1-fsync): the driver creates
#   the topic with enforce_fsync and messages_required_to_save = 1, so every batch is written
#   and fsynced before its acknowledgement.
# - Both: 1 KiB messages unless stated, 64 KiB batches (`--batch-bytes`), 2 ms linger, 2
#   server shards (Iggy's `numa:auto` on 2 cores, Spate's one per core). Spate's producer
#   keeps up to 5 batches in flight per partition (idempotent); the Iggy driver, like
#   iggy-bench, one batch in flight per producer connection. The generator is confined to the
#   last CPU with taskset on both sides; each server pins its shards to all CPUs.
#
# Workloads:
#   W1        produce, 1 partition
#   W1-fsync  produce, 1 partition, fsync per batch
#   W2        produce, 100-byte messages (msgs/s compared)
#   W3-cold   consume W1's data after `drop_caches` (when root): a catch-up read of at least
#             4.4 GB (W1's topic is topped up, unmeasured, when W1 wrote less)
#   W3-tail   e2e at full speed: a consumer keeping up with a producer (consumed MB/s)
#   W4        2 producers, 2 partitions
#   W5        e2e at half of the lower W3-tail rate of the two, both sides (p99.9 compared)
#
# The machine's ceilings are measured first (`spate-loadgen ceiling`): W3-cold is also shown
# against the direct-read ceiling and W1-fsync against the fdatasync'd write ceiling.
#
# Latency columns: per request (a batch sent to its acknowledgement) for produce rows, the
# end-to-end p99.9 for W3-tail and W5. Ratios are Spate/Iggy for throughput (higher is better
# for Spate) and Iggy/Spate for latency (higher is better for Spate). Server CPU seconds per
# run are printed per row: both servers share the 2 cores with the generator.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-1}
seconds=${2:-8}
iggy_server=${IGGY_SERVER:?set IGGY_SERVER to an iggy-server binary (see the header)}
[ -x "$iggy_server" ] || { echo "compare-iggy: $iggy_server is not executable" >&2; exit 1; }
work=$(mktemp -d -p "${BENCH_DIR:-/work}" compare-iggy.XXXX)
server_pid=""
cleanup() {
    [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

cargo build --release --quiet -p spate-broker -p spate-loadgen --features spate-loadgen/iggy
loadgen=target/release/spate-loadgen
spate_port=24392
iggy_port=24390
results="$work/results.txt"
# The generator runs on the last CPU on both sides (taskset: Spate's executors pin there, the
# Iggy driver's tokio threads stay there). Sharing a busy shard's core costs latency at the
# scheduler's time slice (~5 ms at p99 for Spate at 110k msgs/s, against 0.9 ms off it).
generator_cpu=$(( $(nproc) - 1 ))
cpu_seconds() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.1f", ($14 + $15) / hz}' "/proc/$1/stat"; }

start_server() { # target data-dir
    if [ "$1" = spate ]; then
        target/release/spate serve --data-dir "$2" --listen "127.0.0.1:$spate_port" \
            --metrics-listen "127.0.0.1:$((spate_port + 50))" >"$work/server.log" 2>&1 &
        server_pid=$!
        port=$spate_port
    else
        IGGY_ROOT_USERNAME=iggy IGGY_ROOT_PASSWORD=iggy IGGY_SYSTEM_PATH="$2" \
            IGGY_TCP_ADDRESS="127.0.0.1:$iggy_port" IGGY_HTTP_ENABLED=false \
            IGGY_QUIC_ENABLED=false IGGY_WEBSOCKET_ENABLED=false \
            "$iggy_server" >"$work/server.log" 2>&1 &
        server_pid=$!
        port=$iggy_port
    fi
    for _ in $(seq 1 200); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
        kill -0 "$server_pid" 2>/dev/null || break
        sleep 0.1
    done
    echo "compare-iggy: the $1 server did not start:" >&2
    tail -20 "$work/server.log" >&2
    exit 1
}

# Tops W1's topic up to about 4.4 GB (unmeasured) so that W3-cold reads at least 4 GiB.
top_up() { # run target
    local to=(-b "127.0.0.1:$spate_port")
    [ "$2" = iggy ] && to=(--target "iggy://127.0.0.1:$iggy_port")
    local missing
    missing=$(python3 -c "import json; r = json.load(open('$work/W1-$2-$1.json')); written = r['bytes'] * ($seconds + 1) / $seconds; print(max(0, int((4.4e9 - written) / 1024)))")
    [ "$missing" -gt 0 ] || return 0
    taskset -c "$generator_cpu" "$loadgen" produce --topic w1 --messages "$missing" --warmup 0 \
        "${to[@]}" --no-ceiling >/dev/null 2>"$work/err.txt" \
        || { echo "compare-iggy: topping up w1 on $2 failed:" >&2; tail -5 "$work/err.txt" >&2; exit 1; }
}

# Waits (up to 60 s) until the data disk is nearly idle: under 5% busy for two seconds in a
# row. Deleting gigabytes on a disk mounted with `discard`, or a broker's writeback, keeps it
# busy for a while after a heavy phase; W5's tail then measured that, not the broker.
settle_disk() {
    local device stat busy quiet=0
    device=$(basename "$(df --output=source "$work" | tail -1)")
    stat=/sys/class/block/$device/stat
    [ -r "$stat" ] || { sleep 5; return 0; }
    for _ in $(seq 1 60); do
        busy=$(awk '{print $10}' "$stat")
        sleep 1
        busy=$(( $(awk '{print $10}' "$stat") - busy ))
        if [ "$busy" -lt 50 ]; then quiet=$((quiet + 1)); else quiet=0; fi
        [ "$quiet" -ge 2 ] && return 0
    done
}

stop_server() {
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=""
}

drop_caches() {
    sync
    if [ -w /proc/sys/vm/drop_caches ]; then echo 3 >/proc/sys/vm/drop_caches; fi
}

workload() { # run target name args...
    local run=$1 target=$2 name=$3
    shift 3
    local to=(-b "127.0.0.1:$spate_port")
    [ "$target" = iggy ] && to=(--target "iggy://127.0.0.1:$iggy_port")
    local json="$work/$name-$target-$run.json"
    local cpu_before
    cpu_before=$(cpu_seconds "$server_pid")
    taskset -c "$generator_cpu" "$loadgen" "$@" "${to[@]}" --no-ceiling --json "$json" \
        >"$work/out.txt" 2>"$work/err.txt" \
        || { echo "compare-iggy: $name against $target failed:" >&2; tail -5 "$work/err.txt" >&2; exit 1; }
    local cpu_after
    cpu_after=$(cpu_seconds "$server_pid")
    python3 - "$json" "$target" "$name" "$run" "$cpu_before" "$cpu_after" <<'PY' | tee -a "$results"
import json, sys
path, target, name, run, before, after = sys.argv[1:]
r = json.load(open(path))
request = r.get("request_latency_us", {})
e2e = r["e2e_latency_us"]
print(target, name, run, f"{r['mb_per_sec']:.1f}", f"{r['msgs_per_sec']:.0f}",
      request.get("p50", 0), request.get("p99", 0), e2e["p999"], r["errors"],
      f"{float(after) - float(before):.1f}")
PY
}

"$loadgen" ceiling --data-dir "$work/ceiling" --json "$work/ceiling.json" | sed 's/^/ceiling: /'
echo "acknowledgement: spate flush=never acks from its tmpfs journal (O_DIRECT write follows); iggy acks an in-memory append; W1-fsync: both fsync every batch first"
for run in $(seq 1 "$runs"); do
    # Which broker goes first alternates by run: each phase follows the other broker's heavy
    # writes as often as it follows its own.
    order=(spate iggy)
    [ $((run % 2)) -eq 0 ] && order=(iggy spate)
    for target in "${order[@]}"; do
        data="$work/data-$target"
        rm -rf "$data"
        start_server "$target" "$data"
        common=(--duration "$seconds" --warmup 1)
        workload "$run" "$target" W1 produce --topic w1 "${common[@]}"
        workload "$run" "$target" W1-fsync produce --topic w1fsync --flush always "${common[@]}"
        workload "$run" "$target" W2 produce --topic w2 --message-size 100 "${common[@]}"
        top_up "$run" "$target"
        drop_caches
        workload "$run" "$target" W3-cold consume --topic w1
        workload "$run" "$target" W3-tail e2e --topic w3tail "${common[@]}"
        workload "$run" "$target" W4 produce --topic w4 --partitions 2 --producers 2 "${common[@]}"
        stop_server
        rm -rf "$data"
        sync
    done
    # W5 at half of the lower of the two W3-tail rates, so that both can sustain it.
    rate=$(python3 -c "import json; print(int(min(json.load(open(f'$work/W3-tail-{t}-$run.json'))['msgs_per_sec'] for t in ('spate', 'iggy')) / 2))")
    for target in "${order[@]}"; do
        data="$work/data-$target"
        # Let the disk settle after the heavy phase (discards, deferred frees, journal commits).
        sync
        settle_disk
        start_server "$target" "$data"
        workload "$run" "$target" W5 e2e --topic w5 --rate "$rate" --duration "$seconds" --warmup 1
        stop_server
        rm -rf "$data"
        sync
    done
    echo "run $run: W5 rate $rate msgs/s"
done

echo
echo "medians of $runs run(s), $seconds s per workload"
python3 - "$results" "$work/ceiling.json" <<'PY'
import collections, json, statistics, sys
ceiling = json.load(open(sys.argv[2]))
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    f = line.split()
    rows[(f[0], f[1])].append([float(x) for x in f[3:10]])
def med(target, name, i):
    return statistics.median(v[i] for v in rows[(target, name)])
print(f"{'workload':<10} {'spate MB/s':>10} {'iggy MB/s':>10} {'ratio':>7} {'spate msg/s':>12} {'iggy msg/s':>11} {'ratio':>7}"
      f"  {'latency':<12} {'spate µs':>9} {'iggy µs':>9} {'ratio':>7}  {'cpu s s/i':>10}  errors")
for name in ["W1", "W1-fsync", "W2", "W3-cold", "W3-tail", "W4", "W5"]:
    if ("spate", name) not in rows or ("iggy", name) not in rows:
        continue
    s_mb, i_mb = med("spate", name, 0), med("iggy", name, 0)
    s_n, i_n = med("spate", name, 1), med("iggy", name, 1)
    if name in ("W3-tail", "W5"):
        label, s_l, i_l = "e2e p99.9", med("spate", name, 4), med("iggy", name, 4)
    elif name == "W3-cold":
        label, s_l, i_l = "-", 0, 0
    else:
        label, s_l, i_l = "request p99", med("spate", name, 3), med("iggy", name, 3)
    errors = int(sum(v[5] for t in ("spate", "iggy") for v in rows[(t, name)]))
    lat_ratio = f"{i_l / s_l:6.2f}x" if s_l else "      -"
    print(f"{name:<10} {s_mb:>10.1f} {i_mb:>10.1f} {s_mb / max(i_mb, 1e-9):>6.2f}x {s_n:>12.0f} {i_n:>11.0f} {s_n / max(i_n, 1e-9):>6.2f}x"
          f"  {label:<12} {s_l:>9.0f} {i_l:>9.0f} {lat_ratio}  {med('spate', name, 6):>4.1f}/{med('iggy', name, 6):<4.1f}  {errors}")
if ("spate", "W3-cold") in rows:
    read = ceiling.get("direct_read_mb_per_sec", 0)
    print(f"W3-cold: spate {med('spate', 'W3-cold', 0) / max(read, 1e-9):.2f} of the direct-read ceiling ({read:.0f} MB/s); "
          f"W1-fsync: spate {med('spate', 'W1-fsync', 0) / max(ceiling['fdatasync_write_mb_per_sec'], 1e-9):.2f} of the fdatasync'd write ceiling ({ceiling['fdatasync_write_mb_per_sec']:.0f} MB/s)")
print("medians per column; server CPU seconds used during each workload (spate/iggy)")
PY
