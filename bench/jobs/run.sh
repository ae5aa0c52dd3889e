#!/usr/bin/env bash
# Job benchmark: Backbone on SQLite and PostgreSQL beside graphile-worker and
# pg-boss (PostgreSQL), BullMQ and Celery (Redis), all in one run on this
# machine. Prints JSON lines as it goes, then the README's Markdown table.
#
#   bench/jobs/run.sh          (N=20000 jobs per processing run, DEEP=1000000)
#
# Backbone: every submit answered 201 is committed to disk first (SQLite WAL
# synchronous=FULL; PostgreSQL synchronous_commit=on). The peers run their
# published defaults through ../shared/peers/ drivers; PostgreSQL is the same
# private server for all; Redis runs without persistence (BullMQ's and
# Celery's common setting; not durable).
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
N=${N:-20000}
DEEP=${DEEP:-1000000}
peers=${PEERS_DIR:-$root/../shared/peers}
. bench/lib.sh
jobbench=$root/build-release/bench/jobbench
jb() { "$jobbench" "$@" --url http://127.0.0.1:18190 | tee -a "$results"; }

for engine in sqlite postgres; do
  label=backbone-$engine
  backbone_up "$(fresh_db $engine jb1)" --workers 10
  jb submit --duration 5s --label "$label"
  jb submit --duration 5s --clients 64 --label "$label-c64"
  jb batch --jobs "$N" --label "$label"
  jb latency --samples 200 --label "$label"
  jb start --samples 200 --label "$label"
  jb process --jobs "$N" --label "$label-w10"
  jb flow --jobs "$N" --label "$label-w10"
  backbone_down "$label"
  backbone_up "$(fresh_db $engine jb2)" --workers 100
  jb process --jobs "$N" --label "$label-w100"
  jb flow --jobs "$N" --label "$label-w100"
  backbone_down "$label-w100"
  backbone_up "$(fresh_db $engine jb3)" --workers 10
  jb deep --jobs "$DEEP" --samples 500 --label "$label"
  backbone_down "$label-deep"
done

# --- peers, same machine, same run ----------------------------------------------------
node_root=${BENCH_NODE_ROOT:-$root/.work/node}
if [ -d "$peers/node" ] && command -v npm >/dev/null; then
  [ -d "$node_root/node_modules/graphile-worker" ] ||
    npm install --silent --prefix "$node_root" bullmq@6.7.0 graphile-worker@0.17.3 \
      pg-boss@10.4.2 ioredis pg >/dev/null 2>&1
  export NODE_PATH_ROOT=$node_root
  for conc in 10 100; do
    psql -q -d "$pg_url" -c "DROP DATABASE IF EXISTS gw" -c "CREATE DATABASE gw" >/dev/null 2>&1
    (cd "$peers/node" && PG_URL="postgres://postgres@127.0.0.1:$pg_port/gw" N=$N N_SINGLE=2000 \
      CONC=$conc node bench_graphile.js) | tee -a "$results"
    psql -q -d "$pg_url" -c "DROP DATABASE IF EXISTS pgboss" -c "CREATE DATABASE pgboss" \
      >/dev/null 2>&1
    (cd "$peers/node" && PG_URL="postgres://postgres@127.0.0.1:$pg_port/pgboss" N=$N \
      N_SINGLE=2000 CONC=$conc BATCH=100 node bench_pgboss.js) | tee -a "$results"
  done
  redis-server --bind 127.0.0.1 --port 63791 --save "" --appendonly no --dir "$work" \
    >"$work/redis.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do redis-cli -p 63791 ping >/dev/null 2>&1 && break; sleep 0.05; done
  for conc in 10 100; do
    redis-cli -p 63791 flushall >/dev/null
    (cd "$peers/node" && REDIS_PORT=63791 N=$N N_SINGLE=2000 CONC=$conc node bench_bullmq.js) |
      tee -a "$results"
    redis-cli -p 63791 flushall >/dev/null
    CELERY_BROKER=redis://127.0.0.1:63791/1 PEERS_WORK=$work N=$N N_SINGLE=2000 CONC=$conc \
      /usr/bin/python3 "$peers/celery/bench_celery.py" 2>/dev/null | tee -a "$results" || true
  done
else
  echo "bench: $peers/node or npm missing: peers skipped" >&2
fi

python3 "$root/bench/report.py" jobs "$results"
