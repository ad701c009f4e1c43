#!/usr/bin/env bash
# Line, region and branch coverage of the whole test suite (RELIABILITY.md,
# T8), per module of src/.
#
#   scripts/coverage.sh        # report in target/coverage/report.txt
#
# Needs llvm-profdata and llvm-cov of LLVM 19 or newer (Debian:
# `apt-get install llvm-19`; set LLVM_SUFFIX="" for unsuffixed tools).
# Branch coverage is a nightly option of rustc; the stable compiler accepts
# it with RUSTC_BOOTSTRAP=1. The kill and soak suites run shorter than in
# CI (BACKBONE_CRASH_KILLS, SOAK_SECONDS) since coverage, not volume, is
# the point here; killed children write no profile, the rest do.
set -euo pipefail
cd "$(dirname "$0")/.."
suffix=${LLVM_SUFFIX--19}
out=$PWD/target/coverage
rm -rf "$out"
mkdir -p "$out/profraw"
export CARGO_TARGET_DIR=target/cov RUSTC_BOOTSTRAP=1
export RUSTFLAGS="-C instrument-coverage -Z coverage-options=branch"
export LLVM_PROFILE_FILE="$out/profraw/%p-%m.profraw"
export BACKBONE_CRASH_KILLS=${BACKBONE_CRASH_KILLS:-200} SOAK_SECONDS=${SOAK_SECONDS:-10}
cargo test --all-features --tests
objects=$(cargo test --all-features --tests --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        print(m["executable"])')
"llvm-profdata$suffix" merge -sparse "$out"/profraw/*.profraw -o "$out/all.profdata"
args=()
for o in $objects; do args+=(-object "$o"); done
"llvm-cov$suffix" report --instr-profile="$out/all.profdata" "${args[@]}" \
    --ignore-filename-regex='(/\.cargo/|/rustc/|/tests/|/benches/)' | tee "$out/report.txt"
