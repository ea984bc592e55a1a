#!/usr/bin/env bash
# The whole test suite N times in a row (default 10) with two CPU-busy processes beside it, as
# the architecture issue asks: `bash bench/suite_under_load.sh [N]` after `make install`.
# Prints one line per run and exits non-zero at the first failing run (its log is kept).
set -u
cd "$(dirname "$0")/.."
runs=${1:-10}
logs=$(mktemp -d)
python3 -c 'while True: pass' & busy1=$!
python3 -c 'while True: pass' & busy2=$!
trap 'kill $busy1 $busy2 2>/dev/null' EXIT
for i in $(seq 1 "$runs"); do
    .venv/bin/pytest -q -p no:cacheprovider > "$logs/run$i.log" 2>&1
    status=$?
    echo "run $i/$runs: exit $status: $(tail -n 1 "$logs/run$i.log")"
    if [ "$status" -ne 0 ]; then
        echo "the log: $logs/run$i.log"
        exit "$status"
    fi
done
git checkout -- docs/playground.png 2>/dev/null || true  # the browser test rewrites it
echo "$runs of $runs runs passed"
