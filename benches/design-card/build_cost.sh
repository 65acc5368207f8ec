#!/bin/sh
# Build cost of the agent with and without the packages the design card weighs.
#
# usage: sh build_cost.sh [RUNS] [FEATURE_SETS...]     (defaults: 2 runs of "none otel kube")
#
# Each build is `cargo build --release --locked --bin agent` of this crate (the agent's
# main.rs verbatim, see src/bin/agent.rs) in a fresh CARGO_TARGET_DIR, so every crate is
# compiled; runs alternate between feature sets so a change in the machine's load hits all
# of them. AYA_BUILD_SKIP=1: the kernel programs' build (nightly, bpf-linker) is the same
# whatever userspace crates are added, and is left out. Prints, per build: wall seconds,
# CPU seconds (user + system, all compiler processes: less sensitive than wall time to
# other tenants of a shared machine), packages compiled, binary bytes (as built, and
# stripped); keeps cargo's --timings report.
set -eu
cd "$(dirname "$0")"
runs=${1:-2}
[ $# -gt 0 ] && shift
sets=${*:-none otel kube}
out=${OUT:-/tmp/design-card-build-cost}
mkdir -p "$out"
export AYA_BUILD_SKIP=1
# Every crate compiled, none taken from a compiler cache.
unset RUSTC_WRAPPER
echo "features run wall_s cpu_s packages binary_bytes stripped_bytes"
i=1
while [ "$i" -le "$runs" ]; do
    for f in $sets; do
        dir=$(mktemp -d /tmp/design-card-target.XXXXXX)
        flag=""
        [ "$f" != none ] && flag="--features $f"
        # shellcheck disable=SC2086
        CARGO_TARGET_DIR="$dir" /usr/bin/time -f "%e %U %S" -o "$out/$f-$i.time" \
            cargo build --release --locked --bin agent $flag --timings >"$out/$f-$i.log" 2>&1
        packages=$(grep -c '^ *Compiling ' "$out/$f-$i.log")
        cp "$dir/release/agent" "$out/agent-$f"
        strip -o "$out/agent-$f.stripped" "$out/agent-$f"
        cp "$dir/cargo-timings/cargo-timing.html" "$out/timing-$f-$i.html"
        times=$(awk '{ printf "%.0f %.0f", $1, $2 + $3 }' "$out/$f-$i.time")
        echo "$f $i $times $packages $(stat -c %s "$out/agent-$f") $(stat -c %s "$out/agent-$f.stripped")"
        rm -rf "$dir"
    done
    i=$((i + 1))
done
