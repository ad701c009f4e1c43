#!/usr/bin/env bash
# Miri over the tests that run the crate's `unsafe` blocks where Miri can
# run them (RELIABILITY.md, T5): the append clock's `clock_gettime`
# (`record`) and the writeback hint's `sync_file_range` (`storage::os`),
# which Miri models once isolation is off. The map's block calls mmap,
# which Miri does not model.
#
#   scripts/miri.sh            # needs `rustup +nightly component add miri`
set -euo pipefail
cd "$(dirname "$0")/.."
if ! cargo +nightly miri --version >/dev/null 2>&1; then
    echo "miri: not installed (rustup +nightly component add miri)" >&2
    exit 1
fi
export MIRIFLAGS="${MIRIFLAGS:--Zmiri-disable-isolation}"
cargo +nightly miri test --lib -- record:: storage::os::
