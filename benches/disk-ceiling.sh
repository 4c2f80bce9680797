#!/usr/bin/env bash
# Measures, in one run on one device: raw direct-IO sequential write (dd, 1 MiB, O_DIRECT),
# fdatasync'd write (dd, 256 KiB, O_DIRECT|O_DSYNC: each write durable before the next), and the
# partition log's append throughput; prints the log's MB/s as a ratio of each ceiling.
#
# Usage: benches/disk-ceiling.sh [DIR]   (DIR on the device to measure; default ./target/ceiling)
# Needs ~2 GiB free in DIR. Compare ratios within one run: this machine is shared and noisy.
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${1:-target/ceiling}"
mkdir -p "$dir"
if [ "$(stat -f -c %T "$dir")" = "tmpfs" ]; then
    echo "disk-ceiling: $dir is on tmpfs; direct IO is not measured there" >&2
    exit 1
fi
cargo build --release --quiet -p spate-storage --bin spate-logtool
tool=target/release/spate-logtool

dd_mb_per_sec() { # prints MB/s from dd's summary line
    LC_ALL=C dd "$@" 2>&1 | awk '/copied/ { print $(NF-1) * ($NF == "GB/s" ? 1000 : ($NF == "kB/s" ? 0.001 : 1)) }'
}
log_mb_per_sec() {
    "$tool" bench "$dir" "$@" | sed -E 's/.*: ([0-9]+) MB\/s.*/\1/'
}

echo "device of $dir: $(df --output=source "$dir" | tail -1), fs $(stat -f -c %T "$dir")"
raw=$(dd_mb_per_sec if=/dev/zero of="$dir/ceiling.tmp" bs=1M count=2048 oflag=direct)
rm -f "$dir/ceiling.tmp"
synced=$(dd_mb_per_sec if=/dev/zero of="$dir/ceiling.tmp" bs=256k count=2000 oflag=direct,dsync)
rm -f "$dir/ceiling.tmp"
never_1=$(log_mb_per_sec --flush never --batch-bytes 262144 --appenders 1 --total-bytes 2147483648)
never_8=$(log_mb_per_sec --flush never --batch-bytes 262144 --appenders 8 --total-bytes 2147483648)
always_8=$(log_mb_per_sec --flush always --batch-bytes 262144 --appenders 8 --total-bytes 1073741824)
always_8_small=$(log_mb_per_sec --flush always --batch-bytes 16384 --appenders 8 --total-bytes 268435456)

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
printf '%-52s %8s MB/s\n' "ceiling: dd 1 MiB O_DIRECT" "$raw"
printf '%-52s %8s MB/s\n' "ceiling: dd 256 KiB O_DIRECT|O_DSYNC" "$synced"
printf '%-52s %8s MB/s  %s of raw\n' "log flush=never, 256 KiB batches, 1 appender" "$never_1" "$(ratio "$never_1" "$raw")"
printf '%-52s %8s MB/s  %s of raw\n' "log flush=never, 256 KiB batches, 8 appenders" "$never_8" "$(ratio "$never_8" "$raw")"
printf '%-52s %8s MB/s  %s of fdatasync-ed\n' "log flush=always, 256 KiB batches, 8 appenders" "$always_8" "$(ratio "$always_8" "$synced")"
printf '%-52s %8s MB/s  %s of fdatasync-ed\n' "log flush=always, 16 KiB batches, 8 appenders" "$always_8_small" "$(ratio "$always_8_small" "$synced")"
