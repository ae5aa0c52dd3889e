# Shared by bench/*/run.sh (sourced from the repository's root): a work
# directory and a private PostgreSQL cleaned up on exit, the release build,
# fresh databases, and a Backbone server with its peak RSS.
#   needs: set -euo pipefail; root=$(pwd) before sourcing
work=$(mktemp -d /tmp/backbone-bench.XXXXXX)
pgdir=$(mktemp -d /tmp/backbone-bench-pg.XXXXXX) # its own: the postgres user must reach it
results=$work/results.jsonl
pids=()

bench_cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  scripts/pg-test.sh stop "$pgdir"
  rm -rf "$work"
}
trap bench_cleanup EXIT

scripts/deps.sh bench >/dev/null
cmake --preset release >/dev/null
cmake --build build-release -j"$(nproc)" >/dev/null
bin=$root/build-release/backbone
pg_url=$(scripts/pg-test.sh start "$pgdir")
pg_port=$(cat "$pgdir/port")

wait_http() {
  for _ in $(seq 400); do curl -sf "$1" >/dev/null 2>&1 && return 0; sleep 0.05; done
  echo "bench: $1 did not come up" >&2; exit 1
}

fresh_db() { # engine name [socket] -> URL of an empty database
  if [ "$1" = sqlite ]; then
    rm -f "$work/$2.db"*
    echo "sqlite:$work/$2.db"
  else
    psql -q -d "$pg_url" -c "DROP DATABASE IF EXISTS $2" -c "CREATE DATABASE $2" >/dev/null 2>&1
    if [ "${3:-}" = socket ]; then # the server's Unix socket, as a co-located one is reached
      echo "postgres://postgres@/$2?host=$pgdir&port=$pg_port"
    else
      echo "postgres://postgres@127.0.0.1:$pg_port/$2"
    fi
  fi
}

backbone_up() { # url [serve options...] -> sets srv_pid; listens on 18190
  local url=$1
  shift
  "$bin" serve --db "$url" --port 18190 --log-level warn "$@" &
  srv_pid=$!
  pids+=($srv_pid)
  wait_http http://127.0.0.1:18190/readyz
}

backbone_down() { # label: print its peak RSS, stop it
  echo "{\"rss\":\"$1\",\"peak_rss_kb\":$(awk '/VmHWM/ {print $2}' /proc/$srv_pid/status)}" |
    tee -a "$results"
  kill "$srv_pid"
  wait "$srv_pid" || true
}
