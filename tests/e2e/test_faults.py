"""The store failing under load while the server keeps running (the fault
points of a test build, BACKBONE_FAULTS; docs/testing.md): commits that
fail, commits whose answer is lost though they committed, statements that
fail. Where kill -9 wipes a process's memory, here it lives on and must not
trust what it did not see committed. (The checkout sagas under faults are
scripts/scenarios/faults.sh, run by test_scenarios.py.)"""
import threading
import time

import pytest
import requests

from conftest import await_condition

FAULTS = "store.commit=1/15x60,store.commit_lost=1/30x30,store.statement=1/300x60"


def retried(call, what):
    """`call` until it is not answered 5xx (a client's retry of a failure it
    cannot tell from a lost answer); its response, and how many calls it took."""
    last = []

    def answered():
        r = call()
        last.append(r)
        return r.status_code < 500
    await_condition(answered, 60, what)
    return last[-1], len(last)


def injected(server, point):
    return server.metric("backbone_faults_injected_total", f'point="{point}"') or 0


def test_jobs_under_store_faults_each_run_to_done_exactly_once(make_server, database):
    server = make_server(["--workers", "8"], env={"BACKBONE_FAULTS": FAULTS,
                                                  "BACKBONE_FAULTS_SEED": "3"})
    total = 300
    # Submitted to a paused queue: a batch resent after a lost answer finds
    # its jobs by their unique_key (still pending), so it makes none twice.
    retried(lambda: server.post("/queues/default/pause"), "the queue paused")
    ids = set()
    for start in range(0, total, 20):
        jobs = [{"handler": "ledger", "max_duration_seconds": 2, "unique_key": f"j{start + i}"}
                for i in range(20)]
        r, _ = retried(lambda: server.post("/jobs/batch", {"jobs": jobs}), "a batch accepted")
        assert r.status_code in (200, 201), r.text
        ids.update(j["job_id"] for j in r.json()["jobs"])
    assert len(ids) == total
    retried(lambda: server.post("/queues/default/resume"), "the queue resumed")

    def completed():
        try:
            return database.scalar("SELECT COUNT(*) FROM jobs WHERE state = 'completed'") == total
        except Exception:  # noqa: BLE001 - SQLite busy while the server writes
            return False
    await_condition(completed, 300, "every job done")
    assert database.scalar("SELECT COUNT(*) FROM jobs") == total
    assert database.scalar("SELECT COUNT(*) FROM job_ledger") == total
    assert database.scalar(
        "SELECT COUNT(*) FROM jobs JOIN job_ledger ON job_ledger.job_id = jobs.id") == total
    for point in ("store.commit", "store.commit_lost", "store.statement"):
        assert injected(server, point) > 0, point


def test_a_fault_spec_that_makes_no_sense_stops_the_start(make_server):
    server = make_server(env={"BACKBONE_FAULTS": "store.commit=0"}, start=False)
    with pytest.raises(AssertionError, match="server exited 2"):
        server.start()
    server.log.close()  # it exited: nothing to stop
    assert "'0' is not N, N+ or 1/K" in server.output()


def test_locks_under_store_faults_still_exclude_and_fence(make_server, tmp_path):
    # Threads take one lock in turn, each retrying an answer it did not get
    # (a 503 may hide a grant or a release that committed: the owner's
    # retry re-enters its grant, a release repeats harmlessly), and, while
    # holding it, do a fenced write and a read-modify-write of a shared
    # counter that a second holder would corrupt.
    server = make_server(env={"BACKBONE_FAULTS": FAULTS, "BACKBONE_FAULTS_SEED": "5"})
    threads_n, rounds = 6, 15
    counter = {"n": 0}
    records, errors = [], []
    guard = threading.Lock()

    def run(tid):
        s = requests.Session()
        owner = f"t{tid}"

        def call(path, body):
            return retried(lambda: s.post(f"{server.url}{path}", json=body, timeout=180),
                           f"{owner} {path}")
        for i in range(rounds):
            r, _ = call("/locks/hot/acquire", {"owner": owner, "ttl_ms": 60000,
                                               "wait_ms": 120000})
            if r.status_code != 200:
                errors.append(f"acquire {r.status_code} {r.text}")
                return
            token = r.json()["token"]
            start = time.monotonic_ns()
            w, _ = retried(lambda: s.put(f"{server.url}/fenced/hot-resource",
                                         json={"token": token, "value": i}, timeout=60),
                           "a write")
            value = counter["n"]
            counter["n"] = value + 1
            end = time.monotonic_ns()
            rel, calls = call("/locks/hot/release", {"token": token})
            # A 409 only for a release retried after a lost answer: it had
            # released, and another owner holds the lock now.
            released = rel.status_code == 200 or (rel.status_code == 409 and calls > 1)
            with guard:
                records.append({"token": token, "start": start, "end": end,
                                "write": w.status_code, "released": released})

    threads = [threading.Thread(target=run, args=(t,)) for t in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:5]
    assert len(records) == threads_n * rounds
    assert all(r["write"] == 200 and r["released"] for r in records), records
    assert counter["n"] == threads_n * rounds
    records.sort(key=lambda r: r["start"])
    for prev, cur in zip(records, records[1:]):
        assert cur["start"] > prev["end"], (prev, cur)
        assert cur["token"] > prev["token"], (prev, cur)
    assert injected(server, "store.commit") + injected(server, "store.commit_lost") > 0


# Reads that find what they look for (their units succeed, then commit).
READS = ["/readyz", "/outbox", "/locks", "/jobs", "/queues", "/queues/sagas", "/schedules", "/dlq",
         "/sagas", "/psp/charges"]


def test_reads_whose_commit_fails_answer_503_and_keep_nothing(make_server):
    # Every commit fails from the start, reads' too: each read is answered
    # 503, and what it had read for its answer is freed (the server's
    # clean stop checks that, under the sanitizers, no allocation is left).
    server = make_server(env={"BACKBONE_FAULTS": "store.commit=1+"})
    for path in READS:
        r = server.get(path)
        assert r.status_code == 503, (path, r.status_code, r.text)
        assert r.headers["Content-Type"] == "application/problem+json", path
        assert r.json()["status"] == 503, path
    assert injected(server, "store.commit") >= len(READS)


def test_dropped_notifications_are_made_up_by_polling(make_server):
    # Every notification is lost on its way to the listeners (on PostgreSQL
    # after LISTEN/NOTIFY carried it): the polls behind every wake-up find
    # what they announced -- an embedded worker's job, a saga's start, a
    # parked lock waiter's release, a long-poll claim's job.
    server = make_server(["--job-poll", "200ms", "--saga-poll", "200ms"],
                         env={"BACKBONE_FAULTS": "store.notification=1+"})
    job = server.post("/jobs", {"handler": "noop"}).json()["job_id"]
    await_condition(lambda: server.get(f"/jobs/{job}").json()["state"] == "completed",
                    what="the job run by a worker that heard nothing")

    assert server.post("/inventory/products",
                       {"sku": "N-1", "name": "n", "stock": 1}).status_code == 201
    r = server.post("/checkout", {"customer_id": "c", "currency": "EUR",
                                  "items": [{"sku": "N-1", "qty": 1, "unit_price": 100}],
                                  "payment": {"method": "card", "card": "tok_visa"}},
                    headers={"Idempotency-Key": "n-1"})
    assert r.status_code == 202, r.text
    checkout = r.json()["checkout_id"]
    await_condition(lambda: server.get(f"/checkout/{checkout}").json()["status"] == "COMPLETED",
                    what="the checkout's saga started by the poll")

    token = server.post("/locks/n/acquire", {"owner": "a", "ttl_ms": 60000}).json()["token"]
    got = {}
    waiter = threading.Thread(target=lambda: got.update(r=requests.post(
        f"{server.url}/locks/n/acquire", json={"owner": "b", "ttl_ms": 60000, "wait_ms": 30000},
        timeout=60)))
    waiter.start()
    await_condition(lambda: server.metric("backbone_lock_waiters") == 1, what="b to wait")
    assert server.post("/locks/n/release", {"token": token}).status_code == 200
    waiter.join()
    assert got["r"].status_code == 200 and got["r"].json()["owner"] == "b", got["r"].text

    got = {}
    claimer = threading.Thread(target=lambda: got.update(r=requests.post(
        f"{server.url}/queues/default/claim", json={"worker": "w", "wait_ms": 30000}, timeout=60)))
    claimer.start()
    await_condition(lambda: server.metric("backbone_job_claim_waiters") == 1,
                    what="the claim to wait")
    pulled = server.post("/jobs", {"handler": "external:x"}).json()["job_id"]
    claimer.join()
    assert [j["job_id"] for j in got["r"].json()["jobs"]] == [pulled], got["r"].text
    assert injected(server, "store.notification") > 0
