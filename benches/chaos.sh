#!/usr/bin/env bash
# The long fault-injection run: spate-chaos against a single broker or a cluster.
#
#   benches/chaos.sh [--minutes M] [--brokers 1|3|5]
#                    [--faults kill,pause,kill-leader,kill-controller,kill-all,partition,loss,disk]
#                    [--seed S] [--json FILE]
#
# Builds the release binaries, runs `spate-chaos` for M minutes (default 5) with a seeded fault
# schedule (printed), keeps the history, final read and summary in a directory it prints, copies
# the summary to --json FILE, and exits non-zero on any safety violation (lost, inconsistent,
# duplicated or reordered writes, consumers going backwards or skipping, commits regressing).
# Process faults: kill (kill -9 a broker, restart it), pause (SIGSTOP, SIGCONT), kill-leader,
# kill-controller, kill-all. Network faults (a cluster, as root, with nftables installed; each
# broker then runs in its own network namespace): partition (the leader cut off, minority and
# majority, or a bridge broker between two sides) and loss (1-10% of packets at every broker).
# Disk faults (as root): each broker's data directory is its own small tmpfs; `disk` fills one,
# frees it after 1-4 s and restarts that broker. Without root the network and disk faults are
# left out, and the run says so.
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=5 brokers=3 faults=kill,pause seed="" json=""
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) minutes=$2; shift 2 ;;
    --brokers) brokers=$2; shift 2 ;;
    --faults) faults=$2; shift 2 ;;
    --seed) seed=$2; shift 2 ;;
    --json) json=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
cargo build --release -p spate-broker -p spate-chaos --bins >&2
out=$(mktemp -d -p "${BENCH_DIR:-/work}" chaos.XXXX)
echo "history, final read and summary in $out"
status=0
target/release/spate-chaos --seconds $((minutes * 60)) --brokers "$brokers" --faults "$faults" \
  ${seed:+--seed "$seed"} --out "$out" --spate target/release/spate || status=$?
if [ -n "$json" ] && [ -f "$out/summary.json" ]; then cp "$out/summary.json" "$json"; fi
exit $status
