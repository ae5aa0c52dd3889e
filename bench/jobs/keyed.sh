#!/usr/bin/env bash
# Queues with a per-key limit (key_concurrency 1), on SQLite and PostgreSQL:
#  - backlog: BACKLOG jobs of key "big", one of them running, then one job of
#    key "small"; claims of up to 10 over the pull API, one after another,
#    until "small" is handed out (each claim left short sets aside up to
#    1,000 of "big"'s ready jobs);
#  - throughput: N no-op jobs spread over 1,000 keys, then over 5, run by 10
#    embedded workers, from the queue's resume to its last completion.
#
#   bench/jobs/keyed.sh        (BACKLOG=100000 N=20000)
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
BACKLOG=${BACKLOG:-100000}
N=${N:-20000}
. bench/lib.sh

for engine in sqlite postgres; do
  backbone_up "$(fresh_db $engine keyed)" --workers 0
  /usr/bin/python3 - "$engine" "$BACKLOG" <<'PY'
import sys, time
import requests
engine, backlog = sys.argv[1], int(sys.argv[2])
url = "http://127.0.0.1:18190"
s = requests.Session()
s.put(f"{url}/queues/bulk", json={"key_concurrency": 1}).raise_for_status()
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
print(f"{engine:8} backlog {backlog}: 'small' handed out by claim {len(lat)}, after {total:.0f} ms;"
      f" claims p50 {lat[len(lat) // 2]:.1f} ms, p99 {lat[int(len(lat) * 0.99)]:.1f} ms;"
      f" parked {depth['parked']}")
PY
  backbone_down "backbone-$engine" >/dev/null
  for keys in 1000 5; do
    backbone_up "$(fresh_db $engine keyed$keys)" --workers 10
    /usr/bin/python3 - "$engine" "$N" "$keys" <<'PY'
import sys, time
import requests
engine, n, keys = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
url = "http://127.0.0.1:18190"
s = requests.Session()
s.put(f"{url}/queues/k", json={"key_concurrency": 1, "paused": True}).raise_for_status()
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
print(f"{engine:8} {n} no-op jobs over {keys} keys, 10 workers: {n / (time.monotonic() - start):,.0f}/s")
PY
    backbone_down "backbone-$engine-$keys" >/dev/null
  done
done
