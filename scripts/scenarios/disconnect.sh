#!/usr/bin/env bash
# PostgreSQL drops the server's connections under N checkouts (300 by
# default): every backend of its database is terminated (as a failover, a
# restart or a proxy's idle timeout would) KILLS times (5) at random
# points, with the server left running. The executor's connections and the
# LISTEN connection come back by themselves; a transaction cut off in its
# COMMIT leaves its outcome unknown to the server, which must not guess. A
# client retries each checkout with its key until it gets its 202; the PSP
# declines a share of the payments (DECLINE_RATE, 0.1). At the end there is
# one saga per checkout, every one COMPLETED or FAILED, money, stock,
# orders and fulfilment jobs reconcile exactly, and the server stops
# cleanly. Starts its own server, on PostgreSQL only:
#   BACKBONE_DB   the database, postgres://... (its connections are the ones cut)
#   BACKBONE_BIN  the binary (default ./build/backbone)
#   KEEP=1        keep the work directory (a failed run keeps it anyway)
#   N=300 KILLS=5 DECLINE_RATE=0.1 scripts/scenarios/disconnect.sh
BACKBONE_URL=http://127.0.0.1:${PORT:-18400}
. "$(dirname "$0")/lib.sh"
N=${N:-300} KILLS=${KILLS:-5} DECLINE_RATE=${DECLINE_RATE:-0.1}
case "${BACKBONE_DB:-}" in
  postgres://* | postgresql://*) ;;
  *) say "BACKBONE_DB must name a PostgreSQL database (postgres://...)"; exit 2 ;;
esac
own_server disconnect
up
sku=DISCONNECT-$RUN
product "$sku" 100000
say "== $N checkouts of $sku (a client retrying each with its Idempotency-Key until it"
say "   gets its 202), every connection of the server to PostgreSQL cut $KILLS times on the way"
accept_all disconnect
cut() { # terminate every backend of the database but this one; how many
  psql "$DB" -tAqc "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
    WHERE datname = current_database() AND pid <> pg_backend_pid()"
}
for kills in $(seq "$KILLS"); do
  target=$(((kills - 1) * N / KILLS + RANDOM % (N / KILLS / 2 + 1) + 1))
  while [ "$(accepted)" -lt "$target" ]; do sleep 0.01; done
  say "  cut #$kills after $(accepted) accepted: $(cut) connections"
done
wait "$load"
reconcile
lost=$(grep -c '"event":"store.listener_lost"' "$work/server.log" || true)
check "the LISTEN connection was cut" yes "$([ "$lost" -ge 1 ] && echo yes || echo "no ($lost)")"
check "the LISTEN connection is back" 1 "$(psql "$DB" -tAqc "SELECT count(*) FROM pg_stat_activity
  WHERE datname = current_database() AND query LIKE 'LISTEN %'")"
say "== SIGTERM: the server stops cleanly"
kill -TERM "$pid"
code=0; wait "$pid" || code=$?; pid=
check "exit code after SIGTERM" 0 "$code"
done_
