#!/usr/bin/env bash
# Lock benchmark: acquire+release pairs/s and p50/p99 per pair over HTTP with
# 1, 8 and 64 clients, on Backbone (SQLite and PostgreSQL), etcd 3.4 and Redis,
# all in one run on this machine, plus each server's peak RSS; then, on
# Backbone, QUEUED (32) clients blocking on one lock (hand-overs/s). Prints JSON
# lines as it goes, then a Markdown table (the README's).
#
#   bench/locks/run.sh            (or `make bench`; DUR=10 seconds per point)
#
# Durability: Backbone answers a grant after its commit is on disk (SQLite WAL
# with synchronous=FULL; PostgreSQL synchronous_commit=on); etcd fsyncs its WAL
# before answering. Redis runs without persistence: the non-durable reference.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
DUR=${DUR:-10}
CLIENTS=${CLIENTS:-"1 8 64"}
QUEUED=${QUEUED:-32}
peers=${PEERS_DIR:-$root/../shared/peers}
. bench/lib.sh
lockbench=$root/build-release/bench/lockbench

point() { # target label url clients
  "$lockbench" --target "$1" --label "$2" --url "$3" --clients "$4" --duration "${DUR}s" |
    tee -a "$results"
}

rss_line() { # label pid
  echo "{\"rss\":\"$1\",\"peak_rss_kb\":$(awk '/VmHWM/ {print $2}' "/proc/$2/status")}" |
    tee -a "$results"
}

for engine in sqlite postgres; do
  backbone_up "$(fresh_db $engine lb)"
  for c in $CLIENTS; do point backbone "backbone-$engine" http://127.0.0.1:18190 "$c"; done
  # One lock, QUEUED clients blocking on it (wait_ms 10 s): how fast a
  # release hands it to the next waiter.
  "$lockbench" --label "backbone-$engine" --url http://127.0.0.1:18190 --clients "$QUEUED" \
    --keys 1 --wait 10s --duration "${DUR}s" | tee -a "$results"
  backbone_down "backbone-$engine"
done

# --- etcd 3.4, single node, its v3 JSON gateway ------------------------------------
etcd --name bench --data-dir "$work/etcd" --listen-client-urls http://127.0.0.1:23790 \
  --advertise-client-urls http://127.0.0.1:23790 --listen-peer-urls http://127.0.0.1:23800 \
  --initial-advertise-peer-urls http://127.0.0.1:23800 \
  --initial-cluster bench=http://127.0.0.1:23800 --log-level warn >"$work/etcd.log" 2>&1 &
pids+=($!)
wait_http http://127.0.0.1:23790/health
for c in $CLIENTS; do point etcd etcd http://127.0.0.1:23790 "$c"; done
rss_line etcd "${pids[-1]}"
kill "${pids[-1]}"; wait "${pids[-1]}" || true

# --- Redis: SET NX PX + Lua compare-and-delete (peers' ioredis driver) ---------------
redis-server --bind 127.0.0.1 --port 63790 --save "" --appendonly no --dir "$work" \
  --daemonize no >"$work/redis.log" 2>&1 &
pids+=($!)
redis_pid=$!
for _ in $(seq 100); do redis-cli -p 63790 ping >/dev/null 2>&1 && break; sleep 0.05; done
node_root=${BENCH_NODE_ROOT:-$root/.work/node}
if [ -f "$peers/node/bench_locks.js" ] && command -v npm >/dev/null; then
  [ -d "$node_root/node_modules/ioredis" ] ||
    npm install --silent --prefix "$node_root" ioredis@5 >/dev/null 2>&1
  for c in $CLIENTS; do
    out=$(cd "$peers/node" && NODE_PATH_ROOT=$node_root REDIS_PORT=63790 CLIENTS=$c DUR=$DUR \
      node bench_locks.js redis)
    echo "$out" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(json.dumps({"target":"redis","label":"redis","clients":d["CLIENTS"],"pairs_per_s":d["pairs_per_s"],"p50_ms":None,"p99_ms":None,"busy":d["busy"]}))' |
      tee -a "$results"
  done
else
  echo "bench: $peers/node/bench_locks.js or npm missing: Redis (ioredis) skipped" >&2
fi
for c in $CLIENTS; do
  a=$(redis-benchmark -p 63790 -c "$c" -n 100000 -r 1000 -q SET lock:__rand_int__ tok NX PX 30000 | grep -oE '[0-9.]+ requests' | cut -d' ' -f1)
  b=$(redis-benchmark -p 63790 -c "$c" -n 100000 -r 1000 -q EVAL "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end" 1 lock:__rand_int__ tok | grep -oE '[0-9.]+ requests' | cut -d' ' -f1)
  python3 -c "a,b=$a,$b; import json; print(json.dumps({'target':'redis-benchmark','label':'redis (C client)','clients':$c,'pairs_per_s':round(1/(1/a+1/b)),'p50_ms':None,'p99_ms':None}))" | tee -a "$results"
done
rss_line redis "$redis_pid"

python3 "$root/bench/report.py" locks "$results"
