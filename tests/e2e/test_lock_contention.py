"""Locks under fire: many processes and threads on one lock (through two
servers on PostgreSQL), a holder frozen with SIGSTOP past its lease, and
kill -9 of the server in the middle of contention."""
import json
import multiprocessing
import os
import queue
import signal
import subprocess
import sys
import threading
import time

import requests

from conftest import ENGINE, await_condition, problem

PROCESSES = 3
THREADS = 4
CONTENTION_S = 3  # every thread goes on taking the lock for this long...
MIN_ROUNDS = 5    # ...and at least this many times


def contender(url, proc_idx, counter_path, deadline, out):
    """One process: THREADS threads, each taking the lock again and again
    until `deadline` (time.monotonic(), one clock for every process here)
    and, while holding it, doing a fenced write and a read-modify-write of a
    shared file that a second holder would corrupt."""
    results = []
    guard = threading.Lock()

    def run(tid):
        s = requests.Session()
        owner = f"p{proc_idx}t{tid}"
        mine = []
        i = 0
        while i < MIN_ROUNDS or time.monotonic() < deadline:
            i += 1
            r = s.post(f"{url}/locks/hot/acquire",
                       json={"owner": owner, "ttl_ms": 60000, "wait_ms": 120000}, timeout=180)
            if r.status_code != 200:
                mine.append({"error": f"acquire {r.status_code} {r.text}"})
                break
            token = r.json()["token"]
            start = time.monotonic_ns()
            w = s.put(f"{url}/fenced/hot-resource",
                      json={"token": token, "value": {"owner": owner, "i": i}}, timeout=60)
            with open(counter_path, "r+") as f:
                value = int(f.read() or "0")
                f.seek(0)
                f.write(str(value + 1))
                f.truncate()
            end = time.monotonic_ns()
            rel = s.post(f"{url}/locks/hot/release", json={"token": token}, timeout=60)
            mine.append({"token": token, "start": start, "end": end, "write": w.status_code,
                         "release": rel.status_code})
        with guard:
            results.extend(mine)

    threads = [threading.Thread(target=run, args=(t,)) for t in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.put(results)


def test_processes_and_threads_never_hold_the_lock_together(make_server, tmp_path):
    # On PostgreSQL the contenders go through two servers on one database: a
    # release in one wakes waiters parked in the other.
    servers = [make_server()] + ([make_server()] if ENGINE == "pg" else [])
    server = servers[0]
    counter = tmp_path / "counter"
    counter.write_text("0")
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    deadline = time.monotonic() + CONTENTION_S
    procs = [ctx.Process(target=contender,
                         args=(servers[i % len(servers)].url, i, str(counter), deadline, out))
             for i in range(PROCESSES)]
    for p in procs:
        p.start()
    records = []
    for _ in procs:
        records.extend(out.get(timeout=600))
    for p in procs:
        p.join(timeout=60)
    errors = [r["error"] for r in records if "error" in r]
    assert not errors, errors[:5]
    total = len(records)
    assert total >= PROCESSES * THREADS * MIN_ROUNDS
    assert all(r["write"] == 200 and r["release"] == 200 for r in records)
    # No lost update in the shared file...
    assert int(counter.read_text()) == total
    # ...no two critical sections overlap in time, and tokens grow with time.
    records.sort(key=lambda r: r["start"])
    for prev, cur in zip(records, records[1:]):
        assert cur["start"] > prev["end"], (prev, cur)
        assert cur["token"] > prev["token"], (prev, cur)
    assert [r["token"] for r in records] == list(range(1, total + 1))
    assert server.get("/fenced/hot-resource").json()["token"] == total


class Lines:
    """Collects a child's stdout JSON lines on a thread."""

    def __init__(self, proc):
        self.items = []
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self.thread.start()

    def _read(self, proc):
        for raw in proc.stdout:
            with self.lock:
                self.items.append(json.loads(raw))

    def snapshot(self):
        with self.lock:
            return list(self.items)


def test_paused_holder_is_fenced_out(server):
    holder = subprocess.Popen(
        [sys.executable, os.path.join(os.path.dirname(__file__), "holder.py"), server.url, "job",
         "ledger", "400"], stdout=subprocess.PIPE, text=True)
    lines = Lines(holder)
    try:
        await_condition(lambda: any(l["event"] == "write" and l["status"] == 200
                                    for l in lines.snapshot()), what="the holder to write")
        old_token = lines.snapshot()[0]["token"]
        holder.send_signal(signal.SIGSTOP)
        # The holder is frozen: no renewals. The server grants w2 when the
        # holder's lease has run out (the test waits on the server, not a clock).
        r = server.post("/locks/job/acquire", {"owner": "w2", "ttl_ms": 60000, "wait_ms": 30000})
        assert r.status_code == 200, r.text
        new = r.json()
        assert new["outcome"] == "takeover" and new["token"] > old_token
        w = server.put("/fenced/ledger", {"token": new["token"], "value": {"by": "w2"}})
        assert w.status_code == 200
        holder.send_signal(signal.SIGCONT)
        assert holder.wait(timeout=60) == 0
    finally:
        if holder.poll() is None:
            holder.send_signal(signal.SIGCONT)
            holder.kill()
    lines.thread.join(timeout=10)
    events = lines.snapshot()
    last = events[-1]
    assert last == {"event": "write", "status": 409, "type": "urn:backbone:problem:stale_token"}
    assert server.get("/fenced/ledger").json() == {"key": "ledger", "token": new["token"],
                                                   "value": {"by": "w2"}}
    problem(server.post("/locks/job/renew", {"token": old_token}), 409, "stale_token")


NAMES = ["k0", "k1", "k2", "k3"]


def test_kill9_mid_contention_never_reuses_a_token(make_server):
    server = make_server()
    seen = {n: 0 for n in NAMES}          # highest token handed to any client
    acked = {n: 0 for n in NAMES}         # highest fenced write acknowledged
    holder = {n: {} for n in NAMES}       # token -> the client it was handed to
    grants = [0]
    guard = threading.Lock()
    stop = threading.Event()

    def client(idx):
        s = requests.Session()
        i = 0
        while not stop.is_set():
            name = NAMES[(idx + i) % len(NAMES)]
            i += 1
            try:
                r = s.post(f"{server.url}/locks/{name}/acquire",
                           json={"owner": f"c{idx}", "ttl_ms": 2000, "wait_ms": 2000}, timeout=30)
                if r.status_code != 200:
                    continue
                token = r.json()["token"]
                with guard:
                    seen[name] = max(seen[name], token)
                    holder[name][token] = idx
                    grants[0] += 1
                w = s.put(f"{server.url}/fenced/res-{name}", json={"token": token, "value": idx},
                          timeout=30)
                if w.status_code == 200:
                    with guard:
                        acked[name] = max(acked[name], token)
                s.post(f"{server.url}/locks/{name}/release", json={"token": token}, timeout=30)
            except requests.RequestException:
                return  # the server is gone

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    await_condition(lambda: grants[0] >= 300, timeout_s=120, what="300 grants")
    server.kill9()
    stop.set()
    for t in threads:
        t.join(timeout=60)

    server.start()
    assert server.get("/readyz").status_code == 200
    # Whoever holds a lock after the restart is one of the clients (a grant
    # it got, or one that committed while its answer was lost with the
    # server); the list never shows tokens.
    held = server.get("/locks").json()["locks"]
    assert {(lock["name"] in NAMES, lock["owner"]) for lock in held} <= \
        {(True, f"c{i}") for i in range(len(threads))}, held
    for name in NAMES:
        # A dead client may still hold it for up to its 2 s lease.
        r = server.post(f"/locks/{name}/acquire",
                        {"owner": "after-crash", "ttl_ms": 60000, "wait_ms": 30000})
        assert r.status_code == 200, r.text
        assert r.json()["token"] > seen[name], (name, r.json(), seen[name])
        f = server.get(f"/fenced/res-{name}")
        if acked[name]:
            # The last write that got in was made with a token a client was
            # handed, by that client (acknowledged or not), and none that
            # was acknowledged was lost.
            fenced = f.json()
            assert fenced["token"] >= acked[name]
            assert fenced["value"] == holder[name][fenced["token"]], (fenced, name)
