"""A lock holder for test_paused_holder_is_fenced_out: acquires a lock, then
keeps writing to a fenced resource and renewing, printing one JSON line per
step, until a write is refused. Usage: holder.py URL NAME KEY TTL_MS"""
import json
import sys

import requests

url, name, key, ttl = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
s = requests.Session()


def say(**kw):
    print(json.dumps(kw), flush=True)


r = s.post(f"{url}/locks/{name}/acquire", json={"owner": "paused", "ttl_ms": ttl}, timeout=60)
if r.status_code != 200:
    say(event="acquire", status=r.status_code, body=r.text)
    sys.exit(1)
token = r.json()["token"]
say(event="acquired", token=token)
n = 0
while True:
    n += 1
    w = s.put(f"{url}/fenced/{key}", json={"token": token, "value": {"by": "paused", "n": n}},
              timeout=60)
    say(event="write", status=w.status_code, type=w.json().get("type"))
    if w.status_code != 200:
        break
    rn = s.post(f"{url}/locks/{name}/renew", json={"token": token, "ttl_ms": ttl}, timeout=60)
    say(event="renew", status=rn.status_code, type=rn.json().get("type"))
