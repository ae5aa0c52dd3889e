#!/usr/bin/env bash
# Queues with per-key limits, on SQLite and PostgreSQL:
#  - backlog: BACKLOG jobs of key "big" that cannot start (key_concurrency 1
#    with one of them running, or key_rate_limit 1 a minute with its start
#    taken), then one job of key "small"; claims of up to 10 over the pull
#    API, one after another, until "small" is handed out (each claim sets
#    aside up to 1,000 of "big"'s ready jobs);
#  - throughput: N no-op jobs spread over 1,000 keys, then over 5, run by 10
#    embedded workers, from the queue's resume to its last completion, under
#    key_concurrency 1; and over 1,000 keys under a key_rate_limit that
#    holds nothing back (1,000 a second per key), beside no per-key limit:
#    what the bookkeeping costs.
#
#   bench/jobs/keyed.sh        (BACKLOG=100000 N=20000)
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
BACKLOG=${BACKLOG:-100000}
N=${N:-20000}
. bench/lib.sh

backlog() { # engine label settings-json
  /usr/bin/python3 - "$1" "$BACKLOG" "$2" "$3" <<'PY'
import json, sys, time
import requests
engine, backlog, label, settings = sys.argv[1], int(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4])
url = "http://127.0.0.1:18190"
s = requests.Session()
s.put(f"{url}/queues/bulk", json=settings).raise_for_status()
job = {"queue": "bulk", "handler": "external:bench", "concurrency_key": "big"}
for left in range(backlog, 0, -1000):
    s.post(f"{url}/jobs/batch", json={"jobs": [job] * min(1000, left)}).raise_for_status()
small = s.post(f"{url}/jobs", json=dict(job, concurrency_key="small")).json()["job_id"]
lat, start = [], time.monotonic()
while True:
    t = time.monotonic()
    got = s.post(f"{url}/queues/bulk/claim", json={"worker": "bench", "max": 10}).json()["jobs"]
    lat.append((time.monotonic() - t) * 1000)
    if any(j["job_id"] == small for j in got):
        break
total = (time.monotonic() - start) * 1000
lat.sort()
depth = s.get(f"{url}/queues/bulk").json()["depth"]
print(f"{engine:8} {label:15} backlog {backlog}: 'small' handed out by claim {len(lat)},"
      f" after {total:.0f} ms; claims p50 {lat[len(lat) // 2]:.1f} ms,"
      f" p99 {lat[int(len(lat) * 0.99)]:.1f} ms; parked {depth['parked']}")
PY
}

throughput() { # engine keys label settings-json
  /usr/bin/python3 - "$1" "$N" "$2" "$3" "$4" <<'PY'
import json, sys, time
import requests
engine, n, keys, label, settings = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], json.loads(sys.argv[5])
url = "http://127.0.0.1:18190"
s = requests.Session()
s.put(f"{url}/queues/k", json=dict(settings, paused=True)).raise_for_status()
for b in range(0, n, 1000):
    jobs = [{"queue": "k", "handler": "noop", "concurrency_key": f"t{(b + i) % keys}"}
            for i in range(min(1000, n - b))]
    s.post(f"{url}/jobs/batch", json={"jobs": jobs}).raise_for_status()
start = time.monotonic()
s.post(f"{url}/queues/k/resume").raise_for_status()
while True:
    d = s.get(f"{url}/queues/k").json()["depth"]
    if d["ready"] + d["parked"] + d["running"] + d["scheduled"] == 0:
        break
    time.sleep(0.02)
print(f"{engine:8} {label:15} {n} no-op jobs over {keys} keys, 10 workers:"
      f" {n / (time.monotonic() - start):,.0f}/s")
PY
}

for engine in sqlite postgres; do
  backbone_up "$(fresh_db $engine keyed)" --workers 0
  backlog "$engine" key_concurrency '{"key_concurrency": 1}'
  backbone_down "backbone-$engine" >/dev/null
  backbone_up "$(fresh_db $engine keyrate)" --workers 0
  backlog "$engine" key_rate_limit '{"key_rate_limit": {"max": 1, "per_ms": 60000}}'
  backbone_down "backbone-$engine" >/dev/null
  for run in "1000 key_concurrency {\"key_concurrency\":1}" "5 key_concurrency {\"key_concurrency\":1}" \
    "1000 key_rate_limit {\"key_rate_limit\":{\"max\":1000,\"per_ms\":1000}}" "1000 none {}"; do
    read -r keys label settings <<<"$run"
    backbone_up "$(fresh_db $engine "keyed$keys$label")" --workers 10
    throughput "$engine" "$keys" "$label" "$settings"
    backbone_down "backbone-$engine-$keys" >/dev/null
  done
done
