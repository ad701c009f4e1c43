#!/usr/bin/env bash
# The cost of the storage seam (src/storage), measured.
#
# Every read and write of the log goes through an enum over storage
# backends. In a normal build the enum has one variant (real files) and
# each `match` compiles away; with `--cfg backbone_sim` (the test-only
# crash simulator compiled in, as in the crate's own test build) it has two
# and every storage call and every read of a mapped segment is a real
# branch. This script runs the same criterion benchmarks (replay, random
# gets, Buffered appends) from both builds, alternately, three times each,
# and prints the medians side by side. Equal medians within the noise
# show that the dispatch costs nothing measurable even when it is real.
#
#   scripts/seam_cost.sh            # about 12 minutes on a 2-core machine
set -euo pipefail
cd "$(dirname "$0")/.."

filter='^(replay/|get/|append/1t/(single|batch256)/buffered)'
args=(--warm-up-time 1 --measurement-time 4 --noplot)
out=target/seam-cost
rm -rf "$out"
mkdir -p "$out"

run() { # build-name [RUSTFLAGS]
    local name=$1
    local flags=${2:-}
    local target="target/seam-$name"
    for bench in read append; do
        CARGO_TARGET_DIR="$target" RUSTFLAGS="$flags" cargo bench -q --bench "$bench" -- "${args[@]}" "$filter" >/dev/null
    done
    # criterion keeps the last run's estimates per benchmark.
    find "$target/criterion" -path '*/new/estimates.json' | while read -r f; do
        id=${f#"$target/criterion/"}
        id=${id%/new/estimates.json}
        median=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["median"]["point_estimate"])' "$f")
        echo "$id $median" >>"$out/$name.txt"
    done
}

for round in 1 2 3; do
    echo "round $round: one-variant seam (default build)" >&2
    run default
    echo "round $round: two-variant seam (--cfg backbone_sim)" >&2
    run sim "--cfg backbone_sim"
done

python3 - "$out" <<'PY'
import collections, statistics, sys
out = sys.argv[1]
runs = {}
for name in ("default", "sim"):
    d = collections.defaultdict(list)
    for line in open(f"{out}/{name}.txt"):
        ident, ns = line.rsplit(" ", 1)
        d[ident].append(float(ns))
    runs[name] = d
print("| benchmark | one variant (default), median ns | two variants (sim), median ns | sim / default |")
print("| --- | ---: | ---: | ---: |")
for ident in sorted(runs["default"]):
    a = statistics.median(runs["default"][ident])
    b = statistics.median(runs["sim"].get(ident, [float("nan")]))
    print(f"| {ident} | {a:,.0f} | {b:,.0f} | {b / a:.3f} |")
PY
