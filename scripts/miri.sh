#!/usr/bin/env bash
# Miri over the tests that run the crate's `unsafe` blocks where Miri can
# run them (RELIABILITY.md, T5). The map's block (`storage::os`) calls mmap,
# which Miri does not model; the append clock's (`record::now_micros`) calls
# clock_gettime, which Miri models once isolation is off.
#
#   scripts/miri.sh            # needs `rustup +nightly component add miri`
set -euo pipefail
cd "$(dirname "$0")/.."
if ! cargo +nightly miri --version >/dev/null 2>&1; then
    echo "miri: not installed (rustup +nightly component add miri)" >&2
    exit 1
fi
export MIRIFLAGS="${MIRIFLAGS:--Zmiri-disable-isolation}"
cargo +nightly miri test --lib record::
