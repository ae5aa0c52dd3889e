#!/usr/bin/env bash
# Checkout benchmark: checkouts accepted per second (POST /checkout, 202) and
# inventory reservations per second against one hot SKU and against 10,000
# SKUs, each with 64 clients over HTTP; then checkouts completed end to end
# by the saga (202 -> COMPLETED) per second and their completion latency at
# half that rate, with the PSP mock at 0 and 50 ms; on SQLite and PostgreSQL
# in one run, with the server's peak RSS. Prints JSON lines, then the
# README's tables.
#
#   bench/checkout/run.sh   (DUR=10 s per point, CLIENTS=64, BURST=5 s,
#                            BURSTS=3, SAGA_WORKERS=128, SAGA_POOL=8)
#
# Every 202 and 201 is committed to disk before it is sent (SQLite WAL with
# synchronous=FULL; PostgreSQL synchronous_commit=on). Backbone reaches the
# PostgreSQL beside it over its Unix socket (TCP loopback cost 5 to 10% of
# the saga's bursts, alternated, 2026-12-06).
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
DUR=${DUR:-10}
CLIENTS=${CLIENTS:-64}
BURST=${BURST:-5}
BURSTS=${BURSTS:-3}
SAGA_WORKERS=${SAGA_WORKERS:-128}
SAGA_POOL=${SAGA_POOL:-8}
. bench/lib.sh
# Each measured point starts from a clean slate on PostgreSQL: a CHECKPOINT
# first, so that a checkpoint the points before it made due (by the WAL they
# wrote, about 20 MB per second of checkouts, or by its 5-minute timer) does
# not run, with its full-page images, during it (it took 10% off the saga's
# bursts after the reservation points).
settle() {
  [ "$engine" = postgres ] && psql -q -d "$pg_url" -c CHECKPOINT >/dev/null
  return 0
}
cb() {
  settle
  "$root/build-release/bench/checkoutbench" "$@" --url http://127.0.0.1:18190 \
    --clients "$CLIENTS" --duration "${DUR}s" | tee -a "$results"
}

for engine in sqlite postgres; do
  label=backbone-$engine
  backbone_up "$(fresh_db $engine cb1 socket)" --workers 0
  cb checkout --label "$label"
  cb reserve --skus 1 --label "$label"
  cb reserve --skus 10000 --label "$label"
  backbone_down "$label"
  # End to end through the saga: BURSTS bursts of BURST seconds of
  # checkouts from 16 clients, each drained by the saga workers (completed/s;
  # the machine's speed moves between bursts, so the table shows their
  # median and range), then the same at half the median rate for DUR
  # seconds (completion latency p50/p99).
  backbone_up "$(fresh_db $engine cb2 socket)" --workers "$SAGA_WORKERS" --db-pool "$SAGA_POOL"
  for psp in 0 50; do
    curl -sf -XPUT http://127.0.0.1:18190/psp/config -d "{\"latency_ms\":$psp}" >/dev/null
    sb() {
      settle
      "$root/build-release/bench/checkoutbench" saga --url http://127.0.0.1:18190 --skus 100 \
        --clients 16 --psp-label "${psp}ms" --label "$label" "$@" | tee -a "$results"
    }
    peaks=""
    for _ in $(seq "$BURSTS"); do
      peaks="$peaks $(sb --duration "${BURST}s" | python3 -c 'import json,sys; print(json.load(sys.stdin)["per_s"])')"
    done
    peak=$(python3 -c 'import statistics,sys; print(round(statistics.median(map(float, sys.argv[1:]))))' $peaks)
    sb --duration "${DUR}s" --rate "$(((peak + 1) / 2))" >/dev/null
  done
  backbone_down "$label-saga"
done

python3 "$root/bench/report.py" checkout "$results"
