#!/usr/bin/env bash
# The set-oriented saga unit, measured before it is built: the first unit of
# the checkout saga (order, item, timeline, reservation, stock, two events,
# the payment lock, the saga's row and timeline) on copies of Backbone's own
# tables, once per checkout as now and for 32 checkouts per transaction
# (docs/checkout-throughput.md). pgbench, prepared statements, PostgreSQL
# with synchronous_commit=on; prints the unit's checkouts per second each way.
#
#   bench/checkout/unit.sh   (DUR=8 s per point)
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
DUR=${DUR:-8}
. bench/lib.sh
url=$(fresh_db postgres unit)
"$bin" migrate --db "$url" --log-level warn
psql -q -d "$url" -f bench/checkout/unit/setup.sql >/dev/null
point() { # label script clients rows-per-transaction
  local tps
  tps=$(pgbench -n -M prepared -c "$3" -j 2 -T "$DUR" -f "bench/checkout/unit/$2" "$url" 2>&1 |
    awk '/^tps/ {print $3}')
  printf '{"bench":"saga-unit","label":"%s","clients":%s,"transactions_per_s":%.0f,"checkouts_per_s":%.0f}\n' \
    "$1" "$3" "$tps" "$(python3 -c "print($tps * $4)")"
}
point per-checkout one.sql 16 1
for c in 1 2 4; do point batch-of-32 batch.sql "$c" 32; done
