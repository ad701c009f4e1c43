#!/usr/bin/env bash
# The extended reliability tier of backbone (docs/RELIABILITY.md), as one
# command. Each part also runs alone, since a sitting has limited time:
#
#   scripts/extended.sh [all|kills|sim|fuzz|soak] ...
#
#   kills  SIGKILL harness, tests/crash.rs     BACKBONE_CRASH_KILLS (20000)
#          and stream jobs and tables,         BACKBONE_STREAM_KILLS (2000 per
#          tests/stream_kills.rs               pipeline and durability)
#   sim    seeded power-loss campaign of       BACKBONE_SIM_CRASHES (1000000 seeds)
#          tests/sim/model.rs on the simulator
#   fuzz   the cargo-fuzz targets in fuzz/,    FUZZ_SECONDS (600 per target),
#          one after the other                 FUZZ_TARGETS (all five), FUZZ_JOBS (1)
#   soak   tests/soak.rs                       SOAK_SECONDS (600)
#
# Several parts may be given: `scripts/extended.sh sim soak`. Longer runs are
# the same command with larger numbers, e.g.
# `BACKBONE_CRASH_KILLS=100000 scripts/extended.sh kills`.
#
# Fuzzing needs cargo-fuzz (`cargo install cargo-fuzz`) and a nightly
# toolchain; without one it uses the stable compiler with RUSTC_BOOTSTRAP=1.
# The fuzzer keeps going after a crash (libFuzzer fork mode): every crash
# input lands in fuzz/artifacts/<target>/ and is then replayed once, to print
# how many crashes there were of each kind. Minimize one with
# `cargo +nightly fuzz tmin <target> <file>` and commit it under
# fuzz/regressions/<target>/, which `cargo test` replays.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

KILLS=${BACKBONE_CRASH_KILLS:-20000}
STREAM_KILLS=${BACKBONE_STREAM_KILLS:-2000}
SIM=${BACKBONE_SIM_CRASHES:-1000000}
FUZZ_SECONDS=${FUZZ_SECONDS:-600}
FUZZ_TARGETS=${FUZZ_TARGETS:-"frame_decode segment_recover dir_recover index_parse api_ops"}
FUZZ_JOBS=${FUZZ_JOBS:-1}
SOAK=${SOAK_SECONDS:-600}

banner() { printf '\n== %s\n' "$*"; }

elapsed() { # seconds since $1
    echo $(( $(date +%s) - $1 ))
}

run_kills() {
    banner "kills: BACKBONE_CRASH_KILLS=$KILLS cargo test --all-features --test crash"
    local t0; t0=$(date +%s)
    BACKBONE_CRASH_KILLS=$KILLS cargo test --all-features --test crash -- \
        --nocapture --test-threads=1 2>&1 | grep -vE '^\s*(Compiling|Running|Finished|Blocking)'
    banner "kills: BACKBONE_STREAM_KILLS=$STREAM_KILLS cargo test --all-features --test stream_kills"
    BACKBONE_STREAM_KILLS=$STREAM_KILLS cargo test --all-features --test stream_kills -- \
        --nocapture 2>&1 | grep -vE '^\s*(Compiling|Running|Finished|Blocking)'
    echo "kills: done in $(elapsed "$t0") s"
}

run_sim() {
    banner "sim: BACKBONE_SIM_CRASHES=$SIM cargo test --all-features --lib sim_suites::model::seeded_power_loss_campaign"
    local t0; t0=$(date +%s)
    BACKBONE_SIM_CRASHES=$SIM cargo test --all-features --lib sim_suites::model::seeded_power_loss_campaign -- \
        --nocapture 2>&1 | grep -vE '^\s*(Compiling|Running|Finished|Blocking)'
    echo "sim: done in $(elapsed "$t0") s"
}

fuzz_cargo() {
    if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
        cargo +nightly fuzz "$@"
    else
        RUSTC_BOOTSTRAP=1 cargo fuzz "$@"
    fi
}

run_fuzz() {
    banner "fuzz: $FUZZ_SECONDS s per target: $FUZZ_TARGETS"
    if ! cargo fuzz --version >/dev/null 2>&1; then
        echo "fuzz: cargo-fuzz is not installed (cargo install cargo-fuzz)" >&2
        return 1
    fi
    (cd fuzz && fuzz_cargo build) 2>&1 | grep -vE '^\s*(Compiling|Blocking)' || true
    local bin=fuzz/target/x86_64-unknown-linux-gnu/release
    local total_crashes=0
    local summary=""
    for t in $FUZZ_TARGETS; do
        mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
        local log; log=$(mktemp)
        local mark; mark=$(mktemp)
        local before; before=$(find "fuzz/artifacts/$t" -type f | wc -l)
        # Fork mode: a crash is saved and fuzzing goes on.
        "$bin/$t" -artifact_prefix="fuzz/artifacts/$t/" -max_total_time="$FUZZ_SECONDS" \
            -fork="$FUZZ_JOBS" -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1 \
            -timeout=20 -rss_limit_mb=2048 "fuzz/corpus/$t" >"$log" 2>&1 || true
        local last; last=$(grep -E '^#[0-9]+' "$log" | tail -1 || true)
        local execs; execs=$(echo "$last" | sed -nE 's/^#([0-9]+).*/\1/p')
        local cov; cov=$(echo "$last" | sed -nE 's/.*cov: ([0-9]+).*/\1/p')
        local corpus; corpus=$(find "fuzz/corpus/$t" -type f | wc -l)
        local after; after=$(find "fuzz/artifacts/$t" -type f | wc -l)
        local new=$((after - before))
        total_crashes=$((total_crashes + new))
        echo "fuzz $t: ${execs:-0} executions in $FUZZ_SECONDS s, coverage ${cov:-?}, corpus $corpus, new crash inputs: $new"
        if [ "$new" -gt 0 ]; then
            echo "  kinds of crash (each input replayed once):"
            find "fuzz/artifacts/$t" -type f -newer "$mark" | sort |
                while read -r f; do
                    msg=$("$bin/$t" "$f" 2>&1 | grep -E "^$t: " | head -1 | cut -c1-100 | sed -E 's/[0-9]+/N/g')
                    echo "${msg:-$t: (no panic message: a timeout, OOM or signal)}"
                done | sort | uniq -c | sort -rn | sed 's/^/    /'
        fi
        summary="$summary$t=${execs:-0} "
        rm -f "$log" "$mark"
    done
    echo "fuzz: executions per target: $summary; new crash inputs: $total_crashes"
    banner "fuzz: replaying fuzz/regressions as tests"
    local tmp_replay; tmp_replay=$(mktemp)
    local replay=0
    cargo test --all-features --lib sim_suites::fuzz_oracles::fuzz_regressions_replay -- --nocapture \
        >"$tmp_replay" 2>&1 || replay=1
    grep -E 'replayed|test result|regressions/' "$tmp_replay" | cut -c1-300 || true
    rm -f "$tmp_replay"
    # Failing parts: new crashes, or committed regressions that still fail.
    [ "$total_crashes" -eq 0 ] && [ "$replay" -eq 0 ]
}

run_soak() {
    banner "soak: SOAK_SECONDS=$SOAK cargo test --all-features --test soak"
    SOAK_SECONDS=$SOAK cargo test --all-features --test soak -- --nocapture 2>&1 |
        grep -vE '^\s*(Compiling|Running|Finished|Blocking)'
}

parts=("$@")
[ ${#parts[@]} -eq 0 ] && parts=(all)
status=0
for part in "${parts[@]}"; do
    case "$part" in
        all) run_kills || status=1; run_sim || status=1; run_fuzz || status=1; run_soak || status=1 ;;
        kills) run_kills || status=1 ;;
        sim) run_sim || status=1 ;;
        fuzz) run_fuzz || status=1 ;;
        soak) run_soak || status=1 ;;
        -h|--help|help) sed -n '2,27p' "$0"; exit 0 ;;
        *) echo "unknown part: $part (all|kills|sim|fuzz|soak)" >&2; exit 2 ;;
    esac
done
exit $status
