#!/bin/sh
# Instructions per span (or per export) of each bench case, counted by callgrind: a count
# that does not depend on the load of a shared machine, unlike time.
#
# usage: sh callgrind.sh            (builds the benches, then counts every case)
#
# Each case runs alone (DESIGN_CARD_CASE, see src/cpu.rs) LO and HI times in two processes;
# (I(HI) - I(LO)) / (HI - LO) is the cost of one call with everything the process does
# once (setup, the spans' pipeline, one-time initialisation) cancelled out. All threads
# are counted (the SDK exports on its batch and reader threads). Span cases copy their
# batch before each call: `baseline/copy` (the copy alone) is subtracted from them.
set -eu
cd "$(dirname "$0")"
export AYA_BUILD_SKIP=1
LO=${LO:-2}
HI=${HI:-12}
out=${OUT:-/tmp/design-card-callgrind}
mkdir -p "$out"
exe() {
    cargo bench --locked --features bench --bench "$1" --no-run --message-format=json 2>/dev/null |
        grep '"kind":\["bench"\]' | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -1
}
# Instructions (Ir) of `bench` running `case` n times.
count() {
    f="$out/$1-$(echo "$2" | tr / _)-$3"
    DESIGN_CARD_CASE=$2 DESIGN_CARD_ITERS=$3 valgrind --tool=callgrind --callgrind-out-file="$f.out" \
        "$(exe "$1")" --bench >"$f.log" 2>&1
    sed -n 's/^summary: //p' "$f.out"
}
per_call() {
    lo=$(count "$1" "$2" "$LO")
    hi=$(count "$1" "$2" "$HI")
    echo $(((hi - lo) / (HI - LO)))
}
spans=512
base=$(per_call spans baseline/copy)
echo "case instructions_per_unit"
echo "spans/baseline/copy $((base / spans)) (per span, subtracted below)"
for c in agent/direct_encode agent/to_request_prost sdk/convert_and_export sdk/tracer_batch; do
    echo "spans/$c $(((($(per_call spans "$c") - base)) / spans)) per span"
done
series=2000
for c in record/agent record/sdk record/sdk_attrs_prebuilt; do
    echo "metrics/$c $(($(per_call metrics "$c") / series)) per recorded span"
done
for c in export/agent export/sdk; do
    echo "metrics/$c $(per_call metrics "$c") per export of $series series"
done
