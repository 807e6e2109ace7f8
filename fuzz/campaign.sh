#!/usr/bin/env bash
# The long campaigns of fuzz/README.md: each target in turn (or those named), one job,
# under nice, until 10 million executions or MAX_SECONDS (default 1800), from the seeds plus
# whatever earlier runs left in corpus/. Prints one markdown table row per target.
#
#   fuzz/campaign.sh                   # every target
#   MAX_SECONDS=240 fuzz/campaign.sh route reference
set -euo pipefail
cd "$(dirname "$0")"
max="${MAX_SECONDS:-1800}"
targets=("$@")
[ "${#targets[@]}" -gt 0 ] || mapfile -t targets < <(cargo fuzz list)
cargo fuzz build -s none --target-dir target >&2
mkdir -p target/campaign
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    log="target/campaign/$t.log"
    start=$(date +%s)
    rc=0
    nice -n 19 cargo fuzz run -s none --target-dir target "$t" "corpus/$t" "seeds/$t" -- \
        -runs=10000000 -max_total_time="$max" -timeout=10 -print_final_stats=1 >"$log" 2>&1 ||
        rc=$?
    secs=$(($(date +%s) - start))
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    result=$([ "$rc" -eq 0 ] && echo "no crash, no hang" || echo "FAILED (exit $rc, see $log)")
    echo "| $t | ${runs:-?} | ${secs}s | $((${runs:-0} / (secs > 0 ? secs : 1))) | $result |"
done
