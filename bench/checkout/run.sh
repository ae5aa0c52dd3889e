#!/usr/bin/env bash
# Checkout benchmark: checkouts accepted per second (POST /checkout, 202) and
# inventory reservations per second against one hot SKU and against 10,000
# SKUs, each with 64 clients over HTTP, on SQLite and PostgreSQL in one run,
# with the server's peak RSS. Prints JSON lines, then the README's table.
#
#   bench/checkout/run.sh           (DUR=10 seconds per point, CLIENTS=64)
#
# Every 202 and 201 is committed to disk before it is sent (SQLite WAL with
# synchronous=FULL; PostgreSQL synchronous_commit=on).
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
DUR=${DUR:-10}
CLIENTS=${CLIENTS:-64}
. bench/lib.sh
cb() {
  "$root/build-release/bench/checkoutbench" "$@" --url http://127.0.0.1:18190 \
    --clients "$CLIENTS" --duration "${DUR}s" | tee -a "$results"
}

for engine in sqlite postgres; do
  label=backbone-$engine
  backbone_up "$(fresh_db $engine cb1)" --workers 0
  cb checkout --label "$label"
  cb reserve --skus 1 --label "$label"
  cb reserve --skus 10000 --label "$label"
  backbone_down "$label"
done

python3 "$root/bench/report.py" checkout "$results"
