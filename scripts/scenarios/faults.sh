#!/usr/bin/env bash
# The store fails under N checkouts (300 by default) while the server keeps
# running: commits that fail, commits whose answer is lost although they
# committed, and statements that fail, at random points (the fault points
# of a test build, armed by BACKBONE_FAULTS; see docs/testing.md). A client
# retries each checkout with its key until it gets its 202; the PSP
# declines a share of the payments (DECLINE_RATE, 0.1), so compensations
# meet the faults too. Where kill -9 (crash.sh) wipes the process's memory,
# here the process lives on and must not trust what it did not see
# committed. At the end there is one saga per checkout, every one COMPLETED
# or FAILED, and money, stock, orders and fulfilment jobs reconcile
# exactly. Starts its own server, which must be a test build (build/, not
# build-release/):
#   BACKBONE_BIN  the binary (default ./build/backbone)
#   BACKBONE_DB   its database (default a fresh SQLite file under /tmp)
#   KEEP=1        keep the work directory (database, server log, pages read);
#                 a failed run keeps it anyway
#   N=300 FAULTS=... SEED=1 DECLINE_RATE=0.1 scripts/scenarios/faults.sh
BACKBONE_URL=http://127.0.0.1:${PORT:-18400}
. "$(dirname "$0")/lib.sh"
N=${N:-300} DECLINE_RATE=${DECLINE_RATE:-0.1} SEED=${SEED:-1}
# 1 in K calls fails, at most M times in all (1/Kx M): bounded, so that
# the run settles once the budget is spent.
FAULTS=${FAULTS:-store.commit=1/25x60,store.commit_lost=1/50x30,store.statement=1/400x60}
own_server faults
up BACKBONE_FAULTS="$FAULTS" BACKBONE_FAULTS_SEED="$SEED"
sku=FAULTS-$RUN
until product "$sku" 100000 && [ "$(stock_of "$sku" | jq -r .on_hand)" = 100000 ]; do sleep 0.05; done
say "== $N checkouts of $sku (a client retrying each with its Idempotency-Key until it"
say "   gets its 202), the store failing on the way: $FAULTS"
accept_all faults
wait "$load"
reconcile
injected() { curl -sf "$URL/metrics" | awk -v p="point=\"$1\"" 'index($0, p) && /^backbone_faults_injected_total/ {print $2}'; }
for point in store.commit store.commit_lost store.statement; do
  n=$(injected "$point")
  say "  faults injected at $point: ${n:-0}"
  [ "${n:-0}" -gt 0 ] || { say "  FAIL  no fault injected at $point"; failures=$((failures + 1)); }
done
say "== SIGTERM: the server stops cleanly"
kill -TERM "$pid"
code=0; wait "$pid" || code=$?; pid=
check "exit code after SIGTERM" 0 "$code"
done_
