#!/usr/bin/env bash
# kill -9 of the server at random points during N checkouts (1000 by
# default), restarted each time; a client retries each checkout with its
# key until it is accepted; the PSP declines a share of the payments
# (DECLINE_RATE, 0.1), so failures and their compensations are crashed into
# too. At the end there is one saga per checkout, every one COMPLETED or
# FAILED, and money (the ledger's and the PSP's own record), stock, orders
# and fulfilment jobs reconcile exactly. This one starts its own server (it
# has to kill it):
#   BACKBONE_BIN  the binary (default ./build/backbone)
#   BACKBONE_DB   its database (default a fresh SQLite file under /tmp)
#   KEEP=1        keep the work directory (a failed run keeps it anyway)
#   N=1000 KILLS=5 DECLINE_RATE=0.1 scripts/scenarios/crash.sh
BACKBONE_URL=http://127.0.0.1:${PORT:-18400}
. "$(dirname "$0")/lib.sh"
N=${N:-1000} KILLS=${KILLS:-5} DECLINE_RATE=${DECLINE_RATE:-0.1}
own_server crash
up
sku=CRASH-$RUN
product "$sku" 100000
say "== $N checkouts of $sku (a client retrying each with its Idempotency-Key until it"
say "   gets its 202), the server killed with kill -9 $KILLS times on the way"
accept_all crash
for kills in $(seq "$KILLS"); do
  # A random point in the kills-th slice of the run, and a random delay within a request.
  target=$(((kills - 1) * N / KILLS + RANDOM % (N / KILLS / 2 + 1) + 1))
  while [ "$(accepted)" -lt "$target" ]; do sleep 0.01; done
  sleep "0.00$((RANDOM % 10))"
  kill -9 "$pid"; wait "$pid" 2>/dev/null || true
  say "  kill -9 #$kills after $(accepted) accepted; restarting"
  up
done
wait "$load"
reconcile
done_
