#!/usr/bin/env bash
# How long one key's backlog holds another key back on a queue with a per-key
# limit (key_concurrency 1): BACKLOG jobs of key "big", one of them running,
# then one job of key "small"; claims of up to 10 over the pull API, one
# after another, until "small" is handed out. Each claim left short sets
# aside (parks) up to 1,000 of "big"'s ready jobs.
#
#   bench/jobs/keyed.sh        (BACKLOG=100000)
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
BACKLOG=${BACKLOG:-100000}
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
done
