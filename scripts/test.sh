#!/usr/bin/env bash
# The whole test suite: formatting, lints, then every test in the workspace.
# README's quick start runs this; so does CI (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null; then
    echo "cargo not found: install Rust (https://rustup.rs) first" >&2
    exit 1
fi
rustup component add rustfmt clippy >/dev/null 2>&1 || true
echo "== generated protocol code is current"
protocol/regen.sh --check
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo clippy (loadgen with the nats feature)"
cargo clippy -p spate-loadgen --features nats --all-targets --locked -- -D warnings
if [ "$(id -u)" = 0 ] && ! command -v nft >/dev/null; then
    # The fault-injection suite cuts the network between brokers with nftables (as root).
    echo "== installing nftables (the chaos suite's network faults)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nftables >/dev/null
fi
echo "== cargo test"
# Tests that need root (they mount a small tmpfs to fill a disk, or put brokers in network
# namespaces) are marked #[ignore] with the reason; as root (CI runs as root) they run too.
if [ "$(id -u)" = 0 ]; then
    cargo test --workspace --locked -- --include-ignored
else
    echo "(not root: the tests that mount a tmpfs or make network namespaces are skipped; they are listed as ignored)"
    cargo test --workspace --locked
fi
