"""The jobs API end to end: the seed worker API, scheduling, retries and dead
letters, unique keys, cancellation, batches, queues, schedules, the pull API,
HTTP push handlers, wake-ups and their polling fallback, and bad input."""
import concurrent.futures
import datetime
import hashlib
import hmac
import http.server
import json
import re
import threading
import time

import pytest
import requests

from conftest import (api_ms, await_condition, hang_up_in_the_database, post_and_hang_up, problem,
                      request_logged, stops_cleanly, wait_job)


def submit(server, body, status=201):
    r = server.post("/jobs", body)
    assert r.status_code == status, r.text
    return r.json()


def test_seed_worker_api_keeps_working(server):
    r = server.post("/jobs", {"schedule": "now", "payload": "{}", "max_duration_seconds": 60})
    assert r.status_code == 201, r.text
    job_id = r.json()["job_id"]
    assert isinstance(job_id, int)
    job = wait_job(server, job_id)
    assert job["job_id"] == job_id and job["payload"] == {} and job["attempt"] == 1
    assert job["max_duration_seconds"] == 60
    assert server.post(f"/jobs/{job_id}/run").json() == {"job_id": job_id, "state": "pending"}
    job = wait_job(server, job_id)
    assert job["attempt"] == 2
    assert [a["outcome"] for a in job["attempts"]] == ["completed", "completed"]


def test_a_job_runs_at_its_time_not_before(server):
    body = {"handler": "noop", "delay_ms": 400}
    job_id = submit(server, body)["job_id"]
    first = server.get(f"/jobs/{job_id}").json()
    assert first["state"] == "pending" and first["ready"] is False
    job = wait_job(server, job_id)
    assert job["started_at"] >= job["run_at"]  # RFC 3339 UTC strings sort as times
    assert job["run_at"] > job["created_at"]


def test_retries_back_off_then_the_job_is_dead_with_every_error(server):
    body = {"handler": "fail", "max_attempts": 3, "backoff": {"base_ms": 50, "factor": 2}}
    job_id = submit(server, body)["job_id"]
    job = wait_job(server, job_id, ("dead",))
    assert job["attempt"] == 3
    assert [a["outcome"] for a in job["attempts"]] == ["failed"] * 3
    assert [a["error"] for a in job["attempts"]] == [
        f"failed on purpose (attempt {n})" for n in (1, 2, 3)]
    assert job["last_error"] == "failed on purpose (attempt 3)"
    dlq = server.get("/dlq").json()["jobs"]
    assert [j["job_id"] for j in dlq] == [job_id]
    assert server.get(f"/dlq/{job_id}").json()["attempts"][2]["outcome"] == "failed"
    history = server.get(f"/jobs/{job_id}/history").json()
    assert len(history["attempts"]) == 3 and history["attempts"][0]["worker"]
    # Redrive: a fresh set of attempts, and dead again after them.
    assert server.post(f"/dlq/{job_id}/redrive").status_code == 200
    job = await_condition(lambda: (lambda j: j if j["attempt"] == 6 and j["state"] == "dead"
                                   else None)(server.get(f"/jobs/{job_id}").json()),
                          what="the redriven job to fail 3 more times")
    assert job["attempt_limit"] == 6
    assert server.request("DELETE", "/dlq").json() == {"purged": 1}
    problem(server.get(f"/jobs/{job_id}"), 404, "not_found")


def dead_by_hand(server, handler, error):
    """An external job claimed and failed for good with `error`; its id."""
    job_id = submit(server, {"handler": handler, "queue": "default"})["job_id"]
    got = server.post("/queues/default/claim", {"worker": "py", "max": 1}).json()["jobs"]
    assert [j["job_id"] for j in got] == [job_id]
    r = server.post(f"/jobs/{job_id}/fail",
                    {"token": got[0]["lease_token"], "error": error, "retry": False})
    assert r.json()["state"] == "dead", r.text
    return job_id


def test_dead_letters_group_by_error_with_a_hint_in_the_metrics(server):
    timeouts = [dead_by_hand(server, "external:mail", f"smtp.example.com:25 timed out after {ms} ms")
                for ms in (30000, 30001, 29950)]
    refused = dead_by_hand(server, "external:mail", "550 mailbox 8812345 unavailable")
    groups = server.get("/dlq/groups").json()["groups"]
    assert [(g["count"], g["error"]) for g in groups] == [
        (3, "smtp.example.com:25 timed out after <n> ms"),
        (1, "550 mailbox <n> unavailable")]
    top = groups[0]
    assert top["queue"] == "default" and top["handler"] == "external:mail"
    assert top["sample_job_id"] == timeouts[-1]
    assert top["sample_error"] == "smtp.example.com:25 timed out after 29950 ms"
    assert top["first_dead_at"] <= top["last_dead_at"]
    fp = top["fingerprint"]
    listed = server.get(f"/dlq?fingerprint={fp}").json()["jobs"]
    assert [j["job_id"] for j in listed] == timeouts
    assert {j["error_fingerprint"] for j in listed} == {fp}
    # The alert's hint: the largest groups as a gauge, by error.
    hint = (f'queue="default",handler="external:mail",fingerprint="{fp}",'
            'error="smtp.example.com:25 timed out after <n> ms"')
    assert server.metric("backbone_dead_jobs_by_error", hint) == 3
    # Fixed the cause: redrive that group only, and it leaves the gauge.
    assert server.post(f"/dlq/redrive?fingerprint={fp}").json() == {"redriven": 3, "skipped": 0}
    assert [g["count"] for g in server.get("/dlq/groups").json()["groups"]] == [1]
    assert server.metric("backbone_dead_jobs_by_error", hint) is None
    other = server.get("/dlq/groups?queue=default&limit=1").json()["groups"][0]["fingerprint"]
    assert server.request("DELETE", f"/dlq?fingerprint={other}").json() == {"purged": 1}
    problem(server.get(f"/jobs/{refused}"), 404, "not_found")
    assert server.get("/dlq/groups").json() == {"groups": []}
    for path in ("/dlq?fingerprint=XYZ", "/dlq/groups?limit=0"):
        problem(server.get(path), 400, "invalid_request",
                "fingerprint" if "fingerprint" in path else "limit")
    problem(server.post("/dlq/redrive?fingerprint=0123"), 400, "invalid_request", "fingerprint")


def dead_in(server, queue, error="gave up"):
    """A job of `queue` claimed and failed for good; its id."""
    job_id = submit(server, {"handler": "external", "queue": queue})["job_id"]
    [got] = server.post(f"/queues/{queue}/claim", {"worker": "py"}).json()["jobs"]
    r = server.post(f"/jobs/{job_id}/fail",
                    {"token": got["lease_token"], "error": error, "retry": False})
    assert r.json()["state"] == "dead", r.text
    return job_id


def test_a_typo_in_a_query_parameter_is_refused_and_changes_nothing(server):
    # A filter the server did not know was ignored: DELETE /dlq?job_id=8
    # purged every dead job, ?queues=ext those of every queue.
    assert server.put("/queues/ext", {}).status_code == 201
    dead = [dead_in(server, "default"), dead_in(server, "default"), dead_in(server, "ext")]
    pending = submit(server, {"handler": "external", "delay_ms": 3600000})["job_id"]
    for method, path, field in [
            ("DELETE", f"/dlq?job_id={dead[0]}", "job_id"),
            ("DELETE", "/dlq?queues=ext", "queues"),
            ("DELETE", "/dlq?queue=ext&Queue=ext", "Queue"),
            ("DELETE", "/dlq?queue=ext&queue=default", "queue"),  # which one?
            ("DELETE", "/dlq?limit=1", "limit"),
            ("POST", f"/dlq/redrive?job_id={dead[0]}", "job_id"),
            ("POST", "/dlq/redrive?fingerprnt=0123456789abcdef", "fingerprnt"),
            ("GET", "/dlq?queues=ext", "queues"),
            ("GET", "/dlq/groups?fingerprint=0123456789abcdef", "fingerprint"),
            ("GET", "/jobs?status=dead", "status"),
            ("POST", f"/jobs/{pending}/cancel?force=true", "force"),
            ("POST", f"/jobs/{pending}/run?at=now", "at"),
            ("DELETE", "/schedules/nightly?all=1", "all")]:
        doc = problem(server.request(method, path), 400, "invalid_request", field)
        assert f"'{field}'" in doc["detail"], doc
    assert "takes queue, fingerprint" in problem(server.request("DELETE", "/dlq?x=1"), 400)["detail"]
    assert [j["job_id"] for j in server.get("/dlq").json()["jobs"]] == dead
    assert server.get(f"/jobs/{pending}").json()["state"] == "pending"
    # The parameters each takes still work.
    assert server.request("DELETE", "/dlq?queue=ext").json() == {"purged": 1}
    assert server.post("/dlq/redrive?queue=default").json() == {"redriven": 2, "skipped": 0}


def test_one_dead_job_is_purged_by_its_id(server):
    dead = [dead_in(server, "default"), dead_in(server, "default")]
    pending = submit(server, {"handler": "external", "delay_ms": 3600000})["job_id"]
    r = server.request("DELETE", f"/dlq/{dead[0]}")
    assert r.status_code == 200 and r.json() == {"job_id": dead[0], "purged": 1}, r.text
    problem(server.get(f"/jobs/{dead[0]}"), 404, "not_found")
    assert [j["job_id"] for j in server.get("/dlq").json()["jobs"]] == [dead[1]]
    # Again: gone, and the detail says so; a job that is not dead stays.
    doc = problem(server.request("DELETE", f"/dlq/{dead[0]}"), 404, "not_found", "job_id")
    assert f"no job {dead[0]}" in doc["detail"], doc
    doc = problem(server.request("DELETE", f"/dlq/{pending}"), 404, "not_found", "job_id")
    assert "not in the dead-letter queue" in doc["detail"] and "pending" in doc["detail"], doc
    assert server.get(f"/jobs/{pending}").json()["state"] == "pending"
    problem(server.request("DELETE", "/dlq/abc"), 400, "invalid_request", "job_id")
    assert server.get(f"/dlq/{dead[1]}").json()["state"] == "dead"


def test_a_dead_job_whose_unique_key_is_held_again_is_skipped_by_a_redrive(server):
    job_id = dead_by_hand(server, "external", "gave up")
    first = submit(server, {"handler": "external", "unique_key": "order-9"})["job_id"]
    got = server.post("/queues/default/claim", {"worker": "py"}).json()["jobs"]
    r = server.post(f"/jobs/{first}/fail",
                    {"token": got[0]["lease_token"], "error": "gave up", "retry": False})
    assert r.json()["state"] == "dead", r.text
    live = submit(server, {"handler": "external", "unique_key": "order-9",
                           "delay_ms": 3600000})["job_id"]
    for path in (f"/jobs/{first}/retry", f"/dlq/{first}/redrive"):
        doc = problem(server.post(path), 409, "conflict", "unique_key")
        assert f"job {live} " in doc["detail"] and "order-9" in doc["detail"], doc
    # One held key does not hold the others back: the rest are redriven.
    assert server.post("/dlq/redrive").json() == {"redriven": 1, "skipped": 1}
    assert server.get(f"/jobs/{job_id}").json()["state"] == "pending"
    assert server.get(f"/jobs/{first}").json()["state"] == "dead"


def test_permanent_failure_skips_the_retries(server):
    job_id = submit(server, {"handler": "fail_permanently", "max_attempts": 5})["job_id"]
    job = wait_job(server, job_id, ("dead",))
    assert job["attempt"] == 1
    assert job["attempts"][0]["outcome"] == "failed_permanently"


def test_a_built_in_handler_past_its_max_duration_times_out_and_is_retried(server):
    # A 2-minute sleep under a 1 s max_duration: stopped at the deadline each
    # time, recorded as a timeout (not a plain failure), retried, then dead.
    job_id = submit(server, {"handler": "sleep", "payload": {"ms": 120000},
                             "max_duration_seconds": 1, "max_attempts": 2,
                             "backoff": {"base_ms": 10}})["job_id"]
    job = wait_job(server, job_id, ("dead",))
    assert job["attempt"] == 2 and job["max_duration_seconds"] == 1
    assert [(a["attempt"], a["outcome"], a["error"]) for a in job["attempts"]] == [
        (n, "timeout", "stopped before the sleep ended") for n in (1, 2)]
    assert job["last_error"] == "stopped before the sleep ended"
    assert [j["job_id"] for j in server.get("/dlq").json()["jobs"]] == [job_id]
    await_condition(lambda: server.metric("backbone_jobs_finished_total",
                                          'queue="default",outcome="timeout"') == 2,
                    what="both timeouts to be counted")


def test_unique_key_returns_the_first_job_while_it_is_pending(server):
    server.put("/queues/held", {"paused": True})
    a = submit(server, {"queue": "held", "handler": "noop", "unique_key": "order-7"})
    r = server.post("/jobs", {"queue": "held", "handler": "noop", "unique_key": "order-7"})
    assert r.status_code == 200
    assert r.json()["job_id"] == a["job_id"] and r.json()["duplicate"] is True
    other = submit(server, {"queue": "held", "handler": "noop", "unique_key": "order-8"})
    assert other["job_id"] != a["job_id"]


def test_a_duplicate_submit_answers_with_the_jobs_state_and_run_at(server):
    body = {"handler": "external", "unique_key": "order-5"}
    later = submit(server, {**body, "delay_ms": 3600000})
    r = server.post("/jobs", body)  # asks for now: the job found runs later
    assert r.status_code == 200, r.text
    assert r.json() == {"job_id": later["job_id"], "state": "pending",
                        "run_at": later["run_at"], "duplicate": True}
    assert server.post(f"/jobs/{later['job_id']}/run").status_code == 200
    got = server.post("/queues/default/claim", {"worker": "py"}).json()["jobs"]
    assert [j["job_id"] for j in got] == [later["job_id"]]
    job = server.get(f"/jobs/{later['job_id']}").json()
    r = server.post("/jobs", {**body, "delay_ms": 5000})
    assert r.status_code == 200, r.text
    assert r.json() == {"job_id": later["job_id"], "state": "running", "run_at": job["run_at"],
                        "duplicate": True}


def test_cancel_stops_a_pending_and_a_running_job(server):
    server.put("/queues/held", {"paused": True})
    pending = submit(server, {"queue": "held", "handler": "noop"})["job_id"]
    assert server.post(f"/jobs/{pending}/cancel").json()["state"] == "cancelled"
    problem(server.post(f"/jobs/{pending}/cancel"), 409, "conflict", "job_id")
    running = submit(server, {"handler": "sleep", "payload": {"ms": 120000}})["job_id"]
    wait_job(server, running, ("running",))
    assert server.post(f"/jobs/{running}/cancel").status_code == 200
    # The handler stops (long before its 2 minutes' sleep is over) and its
    # outcome, under a revoked lease, is refused: the job stays cancelled.
    await_condition(lambda: [line for line in server.lines()
                             if line.get("event") == "jobs.stale_outcome"
                             and line.get("job") == running], 60, "the cancelled run to stop")
    assert server.get(f"/jobs/{running}").json()["state"] == "cancelled"
    # So a retry does not run beside the cancelled run.
    assert server.post(f"/jobs/{running}/retry").json()["state"] == "pending"
    wait_job(server, running, ("running",))
    assert server.post(f"/jobs/{running}/cancel").status_code == 200  # and it stops again


def test_cancel_gives_up_a_push_in_flight(server, sink):
    url, received = sink
    job_id = submit(server, {"handler": "http", "target": {"url": url + "/hang"},
                             "max_duration_seconds": 300})["job_id"]
    await_condition(lambda: received, what="the push to arrive")
    assert server.post(f"/jobs/{job_id}/cancel").json()["state"] == "cancelled"
    # The request is given up in flight, not left open until the 5 minutes
    # of its max_duration are over.
    assert Sink.hung_up.wait(60), "the push was not given up"
    assert server.get(f"/jobs/{job_id}").json()["state"] == "cancelled"


def test_batch_submit_is_one_transaction(server):
    jobs = [{"handler": "noop", "payload": {"i": i}} for i in range(50)]
    r = server.post("/jobs/batch", {"jobs": jobs})
    assert r.status_code == 201, r.text
    ids = [j["job_id"] for j in r.json()["jobs"]]
    assert len(set(ids)) == 50 and all(j["created"] for j in r.json()["jobs"])
    for i in ids[::10]:
        wait_job(server, i)
    before = server.get("/jobs?limit=1000").json()["jobs"]
    bad = jobs[:3] + [{"handler": "noop", "queue": "nope"}]
    problem(server.post("/jobs/batch", {"jobs": bad}), 400, "invalid_request", "jobs[3].queue")
    bad = jobs[:3] + [{"handler": "noop", "priority": "high"}]
    problem(server.post("/jobs/batch", {"jobs": bad}), 400, "invalid_request", "jobs[3].priority")
    assert len(server.get("/jobs?limit=1000").json()["jobs"]) == len(before)  # nothing written


def test_a_batch_that_creates_nothing_answers_200(server):
    held = [{"handler": "external", "unique_key": f"order-{i}"} for i in range(2)]
    r = server.post("/jobs/batch", {"jobs": held})
    assert r.status_code == 201 and [j["created"] for j in r.json()["jobs"]] == [True, True]
    first = [j["job_id"] for j in r.json()["jobs"]]
    r = server.post("/jobs/batch", {"jobs": held})
    assert r.status_code == 200, r.text
    assert r.json()["jobs"] == [{"job_id": i, "created": False} for i in first]
    # One new among the held: created, 201.
    r = server.post("/jobs/batch", {"jobs": held + [{"handler": "external", "unique_key": "new"}]})
    assert r.status_code == 201 and [j["created"] for j in r.json()["jobs"]] == [False, False, True]
    assert len(server.get("/jobs").json()["jobs"]) == 3


def test_concurrent_submits_each_get_their_own_answer(server):
    """Single submits that wait together may share a transaction: each still
    gets its own job, and one naming an unknown queue fails alone."""
    assert server.put("/queues/held", {"paused": True}).status_code in (200, 201)

    def one(i):
        queue = "nope" if i % 8 == 7 else "held"
        return i, server.post("/jobs", {"queue": queue, "handler": "noop", "payload": {"i": i}})

    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(one, range(256)))
    ids = {}
    for i, r in answers:
        if i % 8 == 7:
            problem(r, 400, "invalid_request", "queue")
        else:
            assert r.status_code == 201, r.text
            ids[r.json()["job_id"]] = i
    assert len(ids) == 224  # distinct jobs, one per request
    for job_id, i in list(ids.items())[::16]:
        job = server.get(f"/jobs/{job_id}").json()
        assert job["queue"] == "held" and job["payload"] == {"i": i}, job
    depth = server.get("/queues/held").json()
    assert depth["depth"]["ready"] == 224, depth


def test_list_filters_and_pages(server):
    server.put("/queues/held", {"paused": True})
    ids = [submit(server, {"queue": "held", "handler": "noop"})["job_id"] for _ in range(5)]
    page = server.get("/jobs?queue=held&state=pending&limit=2").json()
    assert [j["job_id"] for j in page["jobs"]] == ids[:2]
    page = server.get(f"/jobs?queue=held&limit=10&after={page['next_after']}").json()
    assert [j["job_id"] for j in page["jobs"]] == ids[2:] and page["next_after"] is None
    problem(server.get("/jobs?state=done"), 400, "invalid_request", "state")
    problem(server.get("/jobs?limit=0"), 400, "invalid_request", "limit")


def test_a_rate_limit_paces_starts_and_never_exceeds_its_bucket(server):
    r = server.put("/queues/paced", {"rate_limit": {"max": 4, "per_ms": 400}})
    assert r.status_code == 201 and r.json()["rate_limit"] == {"max": 4, "per_ms": 400}
    r = server.post("/jobs/batch", {"jobs": [{"queue": "paced", "handler": "noop"}] * 20})
    ids = [j["job_id"] for j in r.json()["jobs"]]
    for job_id in ids:
        wait_job(server, job_id)
    # A bucket of 4 refilled at 4 per 400 ms: from any start to any later
    # one, at most 4 + (elapsed / 100 ms) starts. (Each start is stamped
    # with the time the claim took from the bucket.)
    starts = sorted(api_ms(server.get(f"/jobs/{i}").json()["started_at"]) for i in ids)
    for i, first in enumerate(starts):
        for j in range(i, len(starts)):
            assert j - i + 1 <= 4 + (starts[j] - first) / 100 + 1e-6, starts
    assert server.put("/queues/paced", {"rate_limit": None}).json()["rate_limit"] is None
    for body, field in [({"rate_limit": {"max": 0, "per_ms": 10}}, "rate_limit.max"),
                        ({"rate_limit": {"max": 5}}, "rate_limit.per_ms"),
                        ({"rate_limit": {"max": 5, "per_ms": 86400001}}, "rate_limit.per_ms"),
                        ({"rate_limit": {"max": 5, "per_ms": 10, "burst": 1}}, "rate_limit.burst"),
                        ({"rate_limit": "100/s"}, "rate_limit")]:
        problem(server.put("/queues/paced", body), 400, "invalid_request", field)


def test_a_per_key_limit_hands_out_each_keys_jobs_a_few_at_a_time(server):
    assert server.put("/queues/tenants", {"key_concurrency": 1}).json()["key_concurrency"] == 1
    jobs = [{"queue": "tenants", "handler": "external:sync", "concurrency_key": key}
            for key in ("acme", "acme", "bolt", "acme", "bolt")] + [
        {"queue": "tenants", "handler": "external:sync"}]
    r = server.post("/jobs/batch", {"jobs": jobs})
    assert r.status_code == 201, r.text
    ids = [j["job_id"] for j in r.json()["jobs"]]
    assert server.get(f"/jobs/{ids[0]}").json()["concurrency_key"] == "acme"

    def claim():
        got = server.post("/queues/tenants/claim", {"worker": "py", "max": 10}).json()["jobs"]
        return {j["job_id"]: j["lease_token"] for j in got}
    first = claim()
    assert sorted(first) == [ids[0], ids[2], ids[5]]  # one per key, and the keyless one
    assert claim() == {}
    r = server.post(f"/jobs/{ids[0]}/complete", {"token": first[ids[0]]})
    assert r.status_code == 200, r.text
    assert sorted(claim()) == [ids[1]]  # acme's next; bolt's waits for its first
    problem(server.post("/jobs", {"queue": "tenants", "concurrency_key": 7}), 400,
            "invalid_request", "concurrency_key")
    problem(server.post("/jobs", {"queue": "tenants", "concurrency_key": "k" * 201}), 400,
            "invalid_request", "concurrency_key")
    problem(server.put("/queues/tenants", {"key_concurrency": -1}), 400, "invalid_request",
            "key_concurrency")


def big_backlog(server, settings):
    """Queue "bulk" with `settings`: more of one tenant's jobs than a claim
    looks at (1,000), then another's. Their ids, and a claim of up to 10
    ({job_id: lease_token})."""
    server.put("/queues/bulk", settings)
    big = []
    for _ in range(3):
        r = server.post("/jobs/batch", {"jobs": [
            {"queue": "bulk", "handler": "external:sync", "concurrency_key": "big"}] * 400})
        assert r.status_code == 201, r.text
        big += [j["job_id"] for j in r.json()["jobs"]]
    small = submit(server, {"queue": "bulk", "handler": "external:sync",
                            "concurrency_key": "small"})["job_id"]

    def claim():
        got = server.post("/queues/bulk/claim", {"worker": "py", "max": 10}).json()["jobs"]
        return {j["job_id"]: j["lease_token"] for j in got}
    return big, small, claim


def test_a_full_keys_backlog_is_parked_and_holds_no_other_key_back(server):
    big, small, claim = big_backlog(server, {"key_concurrency": 1})
    first = claim()
    assert list(first) == [big[0]]
    assert list(claim()) == [small]  # reached past the parked backlog
    depth = server.get("/queues/bulk").json()["depth"]
    assert depth["parked"] == len(big) - 1 and depth["ready"] == 0 and depth["running"] == 2
    assert server.get(f"/jobs/{big[1]}").json()["parked"] is True
    r = server.post(f"/jobs/{big[0]}/complete", {"token": first[big[0]]})
    assert r.status_code == 200, r.text
    assert list(claim()) == [big[1]]  # the key's next, in order
    assert server.get(f"/jobs/{big[2]}").json()["parked"] is True
    # Lifting the limit makes the whole backlog ready.
    server.put("/queues/bulk", {"key_concurrency": 0})
    depth = server.get("/queues/bulk").json()["depth"]
    assert depth["parked"] == 0 and depth["ready"] == len(big) - 2


def test_a_per_key_rate_limit_parks_a_keys_jobs_past_its_bucket(server):
    r = server.put("/queues/api", {"key_rate_limit": {"max": 2, "per_ms": 60000}})
    assert r.status_code == 201 and r.json()["key_rate_limit"] == {"max": 2, "per_ms": 60000}
    jobs = [{"queue": "api", "handler": "external:call", "concurrency_key": key}
            for key in ("acme", "acme", "acme", "bolt", "acme")] + [
        {"queue": "api", "handler": "external:call"}]
    ids = [j["job_id"] for j in server.post("/jobs/batch", {"jobs": jobs}).json()["jobs"]]

    def claim():
        got = server.post("/queues/api/claim", {"worker": "py", "max": 10}).json()["jobs"]
        return sorted(j["job_id"] for j in got)
    # Two starts in each key's bucket; the keyless job is not limited.
    assert claim() == [ids[0], ids[1], ids[3], ids[5]]
    # acme's others wait aside for its next start (one every 30 s), their
    # run_at as it was.
    for job_id in (ids[2], ids[4]):
        job = server.get(f"/jobs/{job_id}").json()
        assert (job["state"], job["parked"]) == ("pending", True), job
        assert api_ms(job["run_at"]) <= api_ms(job["created_at"]) + 1, job
    assert claim() == []
    depth = server.get("/queues/api").json()["depth"]
    assert (depth["parked"], depth["ready"]) == (2, 0), depth
    assert server.metric("backbone_job_key_rate_parked_total", 'queue="api"') == 2
    # Another key is not held back by acme's.
    other = submit(server, {"queue": "api", "handler": "external:call",
                            "concurrency_key": "corp"})["job_id"]
    assert claim() == [other]
    # Lifting the limit makes the parked jobs ready at once.
    assert server.put("/queues/api", {"key_rate_limit": None}).json()["key_rate_limit"] is None
    assert claim() == [ids[2], ids[4]]
    for body, field in [({"key_rate_limit": {"max": 0, "per_ms": 10}}, "key_rate_limit.max"),
                        ({"key_rate_limit": {"max": 5}}, "key_rate_limit.per_ms"),
                        ({"key_rate_limit": {"max": 5, "per_ms": 0}}, "key_rate_limit.per_ms"),
                        ({"key_rate_limit": {"max": 5, "per_ms": 10, "x": 1}}, "key_rate_limit.x"),
                        ({"key_rate_limit": "5/s"}, "key_rate_limit")]:
        problem(server.put("/queues/api", body), 400, "invalid_request", field)


def test_a_rate_limited_keys_backlog_is_parked_and_woken_a_start_at_a_time(server):
    big, small, claim = big_backlog(server, {"key_rate_limit": {"max": 1, "per_ms": 1000}})
    assert list(claim()) == [big[0]]
    assert list(claim()) == [small]  # reached past the parked backlog
    depth = server.get("/queues/bulk").json()["depth"]
    assert depth["parked"] == len(big) - 1 and depth["ready"] == 0, depth
    # Each of big's next starts wakes its next job, in order, and only it.
    for nth in (1, 2):
        got = await_condition(claim, what=f"big's start {nth + 1}")
        assert list(got) == [big[nth]]
        depth = server.get("/queues/bulk").json()["depth"]
        assert depth["parked"] == len(big) - 1 - nth and depth["ready"] == 0, depth


def test_a_per_key_rate_paces_each_keys_starts_beside_its_concurrency_limit(server):
    # Embedded workers, two keys, a bucket of 2 refilled at 2 per 400 ms and
    # at most one job of a key running at once: from any start of a key to
    # any later one, at most 2 + (elapsed / 200 ms) starts; never two of a
    # key running together.
    server.put("/queues/paced", {"key_rate_limit": {"max": 2, "per_ms": 400},
                                 "key_concurrency": 1})
    jobs = [{"queue": "paced", "handler": "sleep", "payload": {"ms": 100},
             "concurrency_key": key} for key in ("a", "b") * 5]
    ids = [j["job_id"] for j in server.post("/jobs/batch", {"jobs": jobs}).json()["jobs"]]
    for job_id in ids:
        wait_job(server, job_id)
    for key in ("a", "b"):
        runs = sorted((api_ms(j["started_at"]), api_ms(j["attempts"][-1]["finished_at"]))
                      for j in (server.get(f"/jobs/{i}").json() for i in ids)
                      if j["concurrency_key"] == key)
        starts = [start for start, _ in runs]
        for i, first in enumerate(starts):
            for j in range(i, len(starts)):
                assert j - i + 1 <= 2 + (starts[j] - first) / 200 + 1e-6, (key, starts)
        # One at a time. A claim stamps its start when its transaction
        # begins, before it counts the key's running jobs under the queue's
        # lock, so a start may precede the previous end by a few ms; an
        # overlap would be about a whole 100 ms job.
        for (_, end), (start, _) in zip(runs, runs[1:]):
            assert start >= end - 50, (key, runs)


def test_queues_pause_resume_and_limit_concurrency(server):
    r = server.put("/queues/emails", {"concurrency": 1, "max_attempts": 2})
    assert r.status_code == 201
    q = r.json()
    assert q["name"] == "emails" and q["concurrency"] == 1 and q["max_attempts"] == 2
    assert server.put("/queues/emails", {"paused": True}).json()["concurrency"] == 1
    ids = [submit(server, {"queue": "emails", "handler": "sleep", "payload": {"ms": 200}})["job_id"]
           for _ in range(3)]
    depth = server.get("/queues/emails").json()["depth"]
    assert depth["ready"] == 3 and depth["running"] == 0
    assert server.post("/queues/emails/resume").json() == {"name": "emails", "paused": False}
    # One at a time: never two running.
    def all_done():
        d = server.get("/queues/emails").json()["depth"]
        assert d["running"] <= 1, d
        return d["ready"] == d["running"] == 0 and all(
            server.get(f"/jobs/{i}").json()["state"] == "completed" for i in ids)
    await_condition(all_done, what="three jobs, one at a time")
    # The recorded times agree: each 200 ms job started after the previous
    # ended. (A claim stamps its start when its transaction begins, before it
    # counts running jobs under the queue's lock, so stamps may cross by a few
    # ms; an overlap would be about a whole job.)
    runs = sorted((api_ms(j["started_at"]), api_ms(j["finished_at"]))
                  for j in (server.get(f"/jobs/{i}").json() for i in ids))
    for (s1, f1), (s2, _) in zip(runs, runs[1:]):
        assert s2 >= f1 - 50, runs
    names = [q["name"] for q in server.get("/queues").json()["queues"]]
    assert names == ["default", "emails", "sagas"]  # the saga engine's steps run on "sagas"
    problem(server.post("/queues/nope/pause"), 404, "not_found", "queue")


def test_schedules_fire_on_their_interval_and_can_be_paused(server):
    r = server.post("/schedules", {"name": "tick", "every_ms": 1000, "handler": "noop",
                                   "payload": {"k": 1}})
    assert r.status_code == 201, r.text
    await_condition(lambda: len(server.get("/jobs?limit=100").json()["jobs"]) >= 2,
                    what="two fires")
    sch = server.get("/schedules/tick").json()
    assert sch["every_ms"] == 1000 and len(sch["upcoming"]) == 5
    fired = [j for j in server.get("/jobs?limit=100").json()["jobs"] if j["schedule"] == "tick"]
    assert all(j["payload"] == {"k": 1} for j in fired)
    assert server.post("/schedules/tick/pause").json()["paused"] is True
    assert server.request("DELETE", "/schedules/tick").json()["deleted"] is True
    problem(server.get("/schedules/tick"), 404, "not_found")
    # Each fire is counted as a submission to its job's queue.
    fired = [j for j in server.get("/jobs?limit=100").json()["jobs"] if j["schedule"] == "tick"]
    await_condition(lambda: server.metric("backbone_jobs_submitted_total", 'queue="default"')
                    == len(fired), what="every fire counted")
    r = server.post("/jobs", {"handler": "noop", "cron": "0 9 * * MON-FRI",
                              "timezone": "Europe/Paris", "name": "standup"})
    assert r.status_code == 201 and r.json()["schedule"] == "standup"
    listed = server.get("/schedules").json()["schedules"]
    assert [s["name"] for s in listed] == ["standup"]
    assert listed[0]["timezone"] == "Europe/Paris"



def test_replacing_a_schedule_answers_200_and_keeps_it_paused(server):
    body = {"name": "nightly", "cron": "0 2 * * *", "handler": "noop"}
    r = server.post("/schedules", body)
    assert r.status_code == 201 and r.json()["created"] is True, r.text
    assert r.json()["paused"] is False
    assert server.post("/schedules/nightly/pause").json()["paused"] is True
    # A replace changes what it does, not whether an operator paused it.
    r = server.post("/schedules", dict(body, cron="0 3 * * *", payload={"v": 2}))
    assert r.status_code == 200, r.text
    assert (r.json()["created"], r.json()["paused"]) == (False, True)
    sch = server.get("/schedules/nightly").json()
    assert sch["paused"] is True and sch["cron"] == "0 3 * * *"
    assert sch["job"]["payload"] == {"v": 2}
    assert server.post("/schedules/nightly/resume").json()["paused"] is False
    # The same through POST /jobs, and a resumed one stays resumed.
    r = server.post("/jobs", dict(body, cron="0 4 * * *"))
    assert r.status_code == 200 and r.json()["paused"] is False, r.text
    assert [s["name"] for s in server.get("/schedules").json()["schedules"]] == ["nightly"]
    r = server.post("/jobs", {"name": "other", "every_ms": 60000, "handler": "noop"})
    assert r.status_code == 201 and r.json()["created"] is True, r.text


def test_a_schedule_keeps_a_payload_and_tags_with_a_nul_character(server):
    # "\u0000" in a string: the schedule kept {} and no tags, so every
    # fire ran with an empty payload.
    payload, tags = {"k": "a\x00b"}, ["t\x00"]
    r = server.post("/schedules", {"name": "nul", "every_ms": 1000, "handler": "noop",
                                   "payload": payload, "tags": tags})
    assert r.status_code == 201, r.text
    assert server.get("/schedules/nul").json()["job"]["payload"] == payload
    fired = await_condition(
        lambda: [j for j in server.get("/jobs?limit=100").json()["jobs"]
                 if j["schedule"] == "nul"], what="a fire")
    assert fired[0]["payload"] == payload and fired[0]["tags"] == tags

def test_pull_api_claims_heartbeats_and_completes_with_fenced_tokens(server):
    # A long-poll claim waits, and is answered when a job arrives.
    result = {}
    t = threading.Thread(target=lambda: result.update(r=requests.post(
        f"{server.url}/queues/default/claim",
        json={"worker": "py-1", "max": 5, "lease_ms": 30000, "wait_ms": 30000}, timeout=60)))
    t.start()
    await_condition(lambda: server.metric("backbone_job_claim_waiters") == 1,
                    what="a parked claim")
    job_id = submit(server, {"handler": "external:email", "payload": {"to": "a@b"}})["job_id"]
    t.join(timeout=60)
    claimed = result["r"].json()["jobs"]
    assert [j["job_id"] for j in claimed] == [job_id]
    lease = claimed[0]
    assert lease["payload"] == {"to": "a@b"} and lease["lease_token"] == 1
    assert lease["handler"] == "external:email" and lease["attempt"] == 1
    hb = server.post(f"/jobs/{job_id}/heartbeat", {"token": 1, "lease_ms": 60000})
    assert hb.status_code == 200 and hb.json()["lease_expires_at"]
    problem(server.post(f"/jobs/{job_id}/complete", {"token": 2}), 409, "stale_token", "token")
    assert server.post(f"/jobs/{job_id}/complete", {"token": 1}).json()["state"] == "completed"
    problem(server.post(f"/jobs/{job_id}/complete", {"token": 2}), 409, "stale_token")
    # Nothing to claim: an empty answer after the wait.
    r = server.post("/queues/default/claim", {"worker": "py-1", "wait_ms": 100})
    assert r.json() == {"jobs": []}
    # Embedded workers never take external jobs, and pull workers never take theirs.
    other = submit(server, {"handler": "external:sms"})["job_id"]
    got = server.post("/queues/default/claim", {"worker": "py-2", "max": 10}).json()["jobs"]
    assert [j["job_id"] for j in got] == [other]
    r = server.post(f"/jobs/{other}/fail", {"token": 1, "error": "bad number", "retry": False})
    assert r.json()["state"] == "dead"
    assert server.get(f"/jobs/{other}").json()["attempts"][0]["error"] == "bad number"
    # A failure that may be retried waits out its backoff, pending.
    again = submit(server, {"handler": "external:sms"})["job_id"]
    got = server.post("/queues/default/claim", {"worker": "py-2"}).json()["jobs"]
    assert [j["job_id"] for j in got] == [again]
    r = server.post(f"/jobs/{again}/fail", {"token": 1, "error": "try later"})
    assert r.status_code == 200 and r.json()["state"] == "pending", r.text
    job = server.get(f"/jobs/{again}").json()
    assert job["attempts"][0]["outcome"] == "failed" and not job["ready"]
    assert server.metric("backbone_job_stale_reports_total", 'report="complete"') == 2


def claim_it(server, job_id, **kw):
    """Claim the only ready external job of the default queue; its lease token."""
    [got] = server.post("/queues/default/claim", dict({"worker": "py"}, **kw)).json()["jobs"]
    assert got["job_id"] == job_id
    return got["lease_token"]


def test_a_report_sent_again_gets_the_first_answer_and_is_recorded_once(server):
    """A pull worker whose answer was lost sends its report again: the same
    answer, nothing recorded or counted twice."""
    done = submit(server, {"handler": "external"})["job_id"]
    token = claim_it(server, done)
    first = server.post(f"/jobs/{done}/complete", {"token": token})
    assert first.status_code == 200, first.text
    again = server.post(f"/jobs/{done}/complete", {"token": token})
    assert (again.status_code, again.json()) == (200, first.json()) == \
        (200, {"job_id": done, "state": "completed"})
    retried = submit(server, {"handler": "external"})["job_id"]
    token = claim_it(server, retried)
    report = {"token": token, "error": "try later"}
    first = server.post(f"/jobs/{retried}/fail", report)
    assert first.json() == {"job_id": retried, "state": "pending"}, first.text
    again = server.post(f"/jobs/{retried}/fail", report)
    assert (again.status_code, again.json()) == (200, first.json())
    dead = submit(server, {"handler": "external"})["job_id"]
    token = claim_it(server, dead)
    report = {"token": token, "error": "bad input", "retry": False}
    assert server.post(f"/jobs/{dead}/fail", report).json()["state"] == "dead"
    again = server.post(f"/jobs/{dead}/fail", report)
    assert (again.status_code, again.json()) == (200, {"job_id": dead, "state": "dead"})
    assert len(server.get(f"/jobs/{retried}").json()["attempts"]) == 1
    assert len(server.get(f"/jobs/{dead}").json()["attempts"]) == 1
    m = server.metric
    assert m("backbone_jobs_finished_total", 'queue="default",outcome="completed"') == 1
    assert m("backbone_jobs_finished_total", 'queue="default",outcome="failed"') == 1
    assert m("backbone_jobs_finished_total", 'queue="default",outcome="failed_permanently"') == 1
    assert m("backbone_job_stale_reports_total", 'report="complete"') is None

    # Another report under the same token is refused, and says what happened.
    def refused(job_id, verb, body, words):
        doc = problem(server.post(f"/jobs/{job_id}/{verb}", body), 409, "stale_token", "token")
        assert words in doc["detail"], doc
    refused(done, "fail", {"token": 1, "error": "x"}, "this lease already completed the job")
    refused(done, "complete", {"token": 7}, "no claim of the job was ever given that token")
    refused(retried, "complete", {"token": 1}, "already reported the attempt failed")
    refused(retried, "fail", {"token": 1, "error": "other"}, "with another error")
    refused(dead, "fail", {"token": 1, "error": "bad input"}, "already reported the attempt "
            "failed_permanently")  # the same error, another outcome (retry true)
    # Redriven since: the job is not as the report left it.
    assert server.post(f"/dlq/{dead}/redrive").status_code == 200
    refused(dead, "fail", report, "has been changed since (it is pending)")
    # Rescued after its lease ran out, then claimed again.
    for job_id in (retried, dead):  # out of the next claims' way
        assert server.post(f"/jobs/{job_id}/cancel").status_code == 200
    lost = submit(server, {"handler": "external"})["job_id"]
    token = claim_it(server, lost, lease_ms=100)
    await_condition(lambda: server.get(f"/jobs/{lost}").json()["state"] == "pending",
                    what="the lease to be rescued")
    assert server.metric("backbone_job_lease_rescues_total",
                         'queue="default",kind="external"') == 1
    problem(server.post(f"/jobs/{lost}/heartbeat", {"token": token, "lease_ms": 30000}), 409,
            "stale_token", "token")
    refused(lost, "complete", {"token": token}, "its lease ran out and the job was rescued")
    claim_it(server, lost)
    refused(lost, "complete", {"token": token}, "ran out, the job was rescued and has been "
            "claimed again")
    # Cancelled while the lease held it.
    assert server.post(f"/jobs/{lost}/cancel").status_code == 200
    refused(lost, "complete", {"token": token + 1}, "cancelled while this lease held it")
    refused(12345, "complete", {"token": 1}, "no such job")


def test_a_long_multibyte_worker_name_is_rescued_and_failed_whole(server):
    # 200 bytes (the most a claim takes), a three-byte character across
    # byte 127: a cut there once made PostgreSQL refuse every rescue batch.
    worker = "\u20ac" * 66 + "ab"
    assert len(worker.encode()) == 200
    job_id = submit(server, {"handler": "external"})["job_id"]
    got = server.post("/queues/default/claim", {"worker": worker, "lease_ms": 100}).json()["jobs"]
    assert [j["job_id"] for j in got] == [job_id]
    job = await_condition(lambda: (lambda j: j if j["state"] == "pending" else None)(
        server.get(f"/jobs/{job_id}").json()), what="the lease to be rescued")
    assert [(a["outcome"], a["worker"]) for a in job["attempts"]] == [("lease_expired", worker)]
    got = server.post("/queues/default/claim", {"worker": worker}).json()["jobs"]
    assert [j["job_id"] for j in got] == [job_id]
    error = "\u00e9" * 1000  # 2,000 bytes: the most a failure keeps
    r = server.post(f"/jobs/{job_id}/fail",
                    {"token": got[0]["lease_token"], "error": error, "retry": False})
    assert r.status_code == 200 and r.json()["state"] == "dead", r.text
    attempts = server.get(f"/jobs/{job_id}/history").json()["attempts"]
    assert [(a["outcome"], a["worker"]) for a in attempts] == [
        ("lease_expired", worker), ("failed_permanently", worker)]
    assert attempts[1]["error"] == error


class Sink(http.server.BaseHTTPRequestHandler):
    """Receives webhook pushes; answers with the status the path asks for,
    or, for /hang, never, noting when the pusher gives the request up."""
    received = []
    hung_up = threading.Event()

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Sink.received.append((self.path, dict(self.headers), body))
        if self.path == "/hang":
            self.connection.settimeout(120)
            if self.rfile.read(1) == b"":  # the pusher closed the connection
                Sink.hung_up.set()
            return
        status = int(self.path.strip("/") or 200)
        self.send_response(status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


@pytest.fixture
def sink():
    Sink.received = []
    Sink.hung_up = threading.Event()
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", Sink.received
    srv.shutdown()


TRACE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_a_jobs_runs_carry_its_submitters_traceparent(server, sink):
    url, received = sink
    pushed = server.post("/jobs", {"handler": "http", "target": {"url": url + "/200"}},
                         headers={"traceparent": TRACE}).json()["job_id"]
    assert wait_job(server, pushed)["traceparent"] == TRACE
    assert [h.get("traceparent") for _, h, _ in received] == [TRACE]
    # The pull API hands it to workers in other languages, batch or single.
    r = server.post("/jobs/batch", {"jobs": [{"handler": "external:a"}] * 3},
                    headers={"traceparent": TRACE})
    assert r.status_code == 201, r.text
    plain = submit(server, {"handler": "external:a"})["job_id"]
    got = server.post("/queues/default/claim", {"worker": "py", "max": 10}).json()["jobs"]
    assert [(j["job_id"] == plain, j["traceparent"] == TRACE) for j in got] == [
        (False, True)] * 3 + [(True, False)]
    # A request without a trace starts one, and its job carries that on.
    assert is_new_trace(server.get(f"/jobs/{plain}").json()["traceparent"])
    # A malformed one, another version, or the spec's invalid all-zero ids
    # are not carried on: the request starts a trace of its own instead.
    for bad_tp in ("00-nope", "ff" + TRACE[2:], "01" + TRACE[2:], TRACE.upper(),
                   "00-" + "0" * 32 + TRACE[35:], TRACE[:36] + "0" * 16 + TRACE[52:]):
        bad = server.post("/jobs", {"handler": "external:a"},
                          headers={"traceparent": bad_tp}).json()["job_id"]
        assert is_new_trace(server.get(f"/jobs/{bad}").json()["traceparent"]), bad_tp


def is_new_trace(tp):
    """A W3C traceparent that Backbone started: version 00, sampled, not TRACE's."""
    return (re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-01", tp or "") is not None
            and tp[3:35] != TRACE[3:35])


def test_http_push_signs_retries_5xx_and_gives_up_on_4xx(make_server, sink):
    url, received = sink
    server = make_server(["--webhook-secret", "hush"])
    before = int(time.time())
    ok = submit(server, {"handler": "http", "target": {"url": url + "/200"},
                         "payload": {"order": 42}})["job_id"]
    wait_job(server, ok)
    path, headers, body = received[0]
    assert json.loads(body) == {"order": 42}
    assert headers["X-Backbone-Job-Id"] == str(ok) and headers["X-Backbone-Attempt"] == "1"
    # Signed with the time it was sent and the job's id, so that a receiver
    # can refuse a replay and trust the id it deduplicates by.
    stamp = headers["X-Backbone-Timestamp"]
    assert before - 1 <= int(stamp) <= time.time() + 1
    signed = f"{stamp}.{ok}.".encode() + body
    want = "sha256=" + hmac.new(b"hush", signed, hashlib.sha256).hexdigest()
    assert headers["X-Backbone-Signature"] == want
    flaky = submit(server, {"handler": "http", "target": {"url": url + "/503"},
                            "max_attempts": 2, "backoff": {"base_ms": 10}})["job_id"]
    job = wait_job(server, flaky, ("dead",))
    assert job["attempt"] == 2 and "answered 503" in job["last_error"]
    refused = submit(server, {"handler": "http", "target": {"url": url + "/422"},
                              "max_attempts": 5})["job_id"]
    job = wait_job(server, refused, ("dead",))
    assert job["attempt"] == 1 and job["attempts"][0]["outcome"] == "failed_permanently"
    # A redirect is not followed, nor tried again: the job is to name the final URL.
    moved = submit(server, {"handler": "http", "target": {"url": url + "/301"},
                            "max_attempts": 5})["job_id"]
    job = wait_job(server, moved, ("dead",))
    assert job["attempt"] == 1 and "redirects are not followed" in job["last_error"]


def test_a_push_that_hangs_past_max_duration_times_out_and_is_retried_until_dead(server, sink):
    url, received = sink
    job_id = submit(server, {"handler": "http", "target": {"url": url + "/hang"},
                             "max_duration_seconds": 1, "max_attempts": 2,
                             "backoff": {"base_ms": 10}})["job_id"]
    job = wait_job(server, job_id, ("dead",))
    assert job["attempt"] == 2
    assert [(a["attempt"], a["outcome"]) for a in job["attempts"]] == [(1, "timeout"),
                                                                      (2, "timeout")]
    # Given up at the deadline: by libcurl's timeout, or by the stop check
    # (the worker's deadline) if that fires first.
    given_up = re.compile(rf"POST {re.escape(url)}/hang: "
                          r"(request timed out|stopped before the answer came)")
    for a in job["attempts"]:
        assert given_up.match(a["error"]), a
    assert job["last_error"] == job["attempts"][1]["error"]
    # Both attempts reached the endpoint, and the pusher hung up on it.
    pushes = await_condition(lambda: len(received) == 2 and received, what="both pushes")
    assert [(path, h["X-Backbone-Job-Id"], h["X-Backbone-Attempt"])
            for path, h, _ in pushes] == [("/hang", str(job_id), "1"), ("/hang", str(job_id), "2")]
    assert Sink.hung_up.wait(60), "the push was not given up"
    assert [j["job_id"] for j in server.get("/dlq").json()["jobs"]] == [job_id]


def test_http_push_retries_408_and_429_and_other_4xx_only_when_told(server, sink):
    url, received = sink

    def push(status, **target):
        return submit(server, {"handler": "http",
                               "target": {"url": f"{url}/{status}", **target},
                               "max_attempts": 3, "backoff": {"base_ms": 10}})["job_id"]

    timeout, too_many, missing = push(408), push(429), push(404)
    missing_retried = push(404, retry_4xx=True)
    for job_id, status in ((timeout, 408), (too_many, 429), (missing_retried, 404)):
        job = wait_job(server, job_id, ("dead",))
        assert job["attempt"] == 3, (status, job)
        assert [a["outcome"] for a in job["attempts"]] == ["failed"] * 3, (status, job)
        assert all(f"answered {status}" in a["error"] for a in job["attempts"]), job
    job = wait_job(server, missing, ("dead",))
    assert job["attempt"] == 1
    assert [a["outcome"] for a in job["attempts"]] == ["failed_permanently"]
    assert "answered 404" in job["last_error"]
    # The endpoint saw each attempt once: three of each retried job, one of the 404.
    sent = {}
    for path, headers, _ in received:
        sent.setdefault(int(headers["X-Backbone-Job-Id"]), []).append(
            (path, headers["X-Backbone-Attempt"]))
    assert sent == {timeout: [("/408", "1"), ("/408", "2"), ("/408", "3")],
                    too_many: [("/429", "1"), ("/429", "2"), ("/429", "3")],
                    missing: [("/404", "1")],
                    missing_retried: [("/404", "1"), ("/404", "2"), ("/404", "3")]}


def test_idle_workers_are_woken_without_polling(make_server):
    # Polling every minute: only a wake-up can run the job within the wait.
    server = make_server(["--job-poll", "60s"])
    server.get("/healthz")
    job_id = submit(server, {"handler": "noop"})["job_id"]
    wait_job(server, job_id, timeout_s=20)


def test_a_job_queued_behind_a_pull_workers_slot_starts_when_it_frees(make_server):
    # Queue "one" runs one job at a time; the embedded workers poll once a
    # minute. A pull worker holds the slot; the job queued behind it can
    # start within the wait only through a wake-up: the one the pull
    # worker's completion sends (a slot of a limited queue came free), or
    # the pool's second look once its copy of which queues are limited runs
    # out (one second; "one" was limited a moment before its first claim).
    server = make_server(["--job-poll", "60s"])
    assert server.put("/queues/one", {"concurrency": 1}).status_code == 201
    held = submit(server, {"queue": "one", "handler": "external"})["job_id"]
    r = server.post("/queues/one/claim", {"worker": "py-1", "max": 1, "wait_ms": 10000})
    [lease] = r.json()["jobs"]
    assert lease["job_id"] == held
    behind = submit(server, {"queue": "one", "handler": "noop"})["job_id"]
    assert server.get(f"/jobs/{behind}").json()["state"] == "pending"  # the queue is full
    done = server.post(f"/jobs/{held}/complete", {"token": lease["lease_token"]})
    assert done.status_code == 200, done.text
    wait_job(server, behind, timeout_s=30)


def test_polling_finds_jobs_when_wakeups_are_lost(make_server):
    # Wake-ups dropped: the poll (200 ms) still finds the job.
    server = make_server(["--job-wakeups", "false", "--job-poll", "200ms"])
    job_id = submit(server, {"handler": "noop"})["job_id"]
    wait_job(server, job_id, timeout_s=20)


def test_finished_jobs_are_pruned_after_the_retention_and_dead_ones_kept(make_server):
    server = make_server(["--job-retention", "1s", "--scheduler-tick", "100ms"])
    done = [submit(server, {"handler": "noop"})["job_id"] for _ in range(3)]
    dead = submit(server, {"handler": "fail_permanently"})["job_id"]
    for job_id in done:
        wait_job(server, job_id)
    wait_job(server, dead, ("dead",))
    await_condition(lambda: all(server.get(f"/jobs/{i}").status_code == 404 for i in done),
                    what="the completed jobs to be pruned")
    assert server.get(f"/jobs/{done[0]}/history").status_code == 404
    assert server.get(f"/jobs/{dead}").json()["state"] == "dead"
    assert server.metric("backbone_jobs_pruned_total") == 3


def test_job_metrics(server):
    job_id = submit(server, {"handler": "fail", "max_attempts": 1})["job_id"]
    wait_job(server, job_id, ("dead",))
    ok = submit(server, {"handler": "noop"})["job_id"]
    wait_job(server, ok)
    m = server.metric
    assert m("backbone_jobs_submitted_total", 'queue="default"') == 2
    assert m("backbone_jobs_started_total", 'queue="default"') == 2
    assert m("backbone_jobs_finished_total", 'queue="default",outcome="completed"') == 1
    assert m("backbone_jobs_finished_total", 'queue="default",outcome="failed"') == 1
    assert m("backbone_jobs", 'queue="default",state="dead"') == 1
    assert m("backbone_job_duration_seconds_count", 'queue="default"') == 2
    assert m("backbone_job_queue_latency_seconds_count", 'queue="default"') == 2
    # An embedded worker's job due long before it was submitted.
    late = submit(server, {"handler": "noop", "run_at": "2020-01-01T00:00:00Z"})["job_id"]
    wait_job(server, late)
    assert m("backbone_job_queue_latency_seconds_count", 'queue="default"') == 3
    assert m("backbone_job_queue_latency_seconds_sum", 'queue="default"') < 3 * 3600
    # Pull-API jobs count the same: started at their claim (their queue
    # latency from when they became ready), finished at their report, by
    # outcome.
    assert server.put("/queues/pull", {}).status_code == 201
    due_long_ago = "2020-01-01T00:00:00Z"
    ids = []
    for report in [None, {"error": "try later"}, {"error": "bad input", "retry": False}]:
        job_id = submit(server, {"queue": "pull", "handler": "external:x", "max_attempts": 2,
                                 "run_at": due_long_ago})["job_id"]
        got = server.post("/queues/pull/claim", {"worker": "py"}).json()["jobs"]
        assert [j["job_id"] for j in got] == [job_id]
        ids.append(job_id)
        token = got[0]["lease_token"]
        if report is None:
            r = server.post(f"/jobs/{job_id}/complete", {"token": token})
        else:
            r = server.post(f"/jobs/{job_id}/fail", dict(report, token=token))
        assert r.status_code == 200, r.text
    assert [server.get(f"/jobs/{i}").json()["state"] for i in ids] == [
        "completed", "pending", "dead"]
    # A report refused as stale counts as that, not as a finished attempt;
    # and a report sent again (its answer lost) as neither.
    problem(server.post(f"/jobs/{ids[0]}/complete", {"token": 2}), 409, "stale_token")
    assert server.post(f"/jobs/{ids[0]}/complete", {"token": 1}).status_code == 200
    assert m("backbone_job_stale_reports_total", 'report="complete"') == 1
    assert m("backbone_jobs_started_total", 'queue="pull"') == 3
    for outcome in ("completed", "failed", "failed_permanently"):
        assert m("backbone_jobs_finished_total", f'queue="pull",outcome="{outcome}"') == 1
    assert m("backbone_job_duration_seconds_count", 'queue="pull"') == 3
    assert m("backbone_job_queue_latency_seconds_count", 'queue="pull"') == 3
    # Due since 2020, but ready only once submitted: each was claimed right
    # after its submit, not after years of waiting (218 million seconds
    # each, as latency once counted from run_at).
    assert m("backbone_job_queue_latency_seconds_sum", 'queue="pull"') < 3 * 3600


BAD_JOBS = [
    # (body, status, type, field)
    ({"handler": "noop", "cron": "61 * * * *"}, 400, "invalid_request", "cron"),
    ({"handler": "noop", "cron": "* * *"}, 400, "invalid_request", "cron"),
    ({"handler": "noop", "cron": "* * * * *", "timezone": "Mars/Olympus"}, 400,
     "invalid_request", "timezone"),
    ({"handler": "noop", "delay_ms": -1}, 400, "invalid_request", "delay_ms"),
    ({"handler": "noop", "run_at": "tomorrow"}, 400, "invalid_request", "run_at"),
    ({"handler": "noop", "run_at": "2026-01-01T00:00:00Z", "delay_ms": 5}, 400,
     "invalid_request", "schedule"),
    ({"handler": "noop", "schedule": "later"}, 400, "invalid_request", "schedule"),
    # "now" and another time: one would be dropped (it was run_at's 2030).
    ({"handler": "noop", "schedule": "now", "run_at": "2030-01-01T00:00:00Z"}, 400,
     "invalid_request", "run_at"),
    ({"handler": "noop", "schedule": "now", "delay_ms": 5}, 400, "invalid_request", "delay_ms"),
    ({"handler": "noop", "schedule": "now", "cron": "* * * * *"}, 400, "invalid_request", "cron"),
    ({"handler": "noop", "schedule": "now", "every_ms": 60000, "name": "n"}, 400,
     "invalid_request", "every_ms"),
    # As far off as delay_ms may put it, at most (366 days).
    ({"handler": "noop", "run_at": "9999-12-31T00:00:00Z"}, 400, "invalid_request", "run_at"),
    ({"handler": "noop", "delay_ms": 366 * 86400000 + 1}, 400, "invalid_request", "delay_ms"),
    ({"handler": "noop", "payload": "{not json"}, 400, "invalid_request", "payload"),
    ({"handler": "noop", "payload": {"blob": "x" * 300000}}, 413, "payload_too_large", "payload"),
    ({"handler": "nope"}, 400, "invalid_request", "handler"),
    ({"handler": "noop", "queue": "ghost"}, 400, "invalid_request", "queue"),
    ({"handler": "noop", "queue": "ghost", "cron": "* * * * *"}, 400, "invalid_request", "queue"),
    ({"handler": "noop", "queue": "ghost", "every_ms": 60000}, 400, "invalid_request", "queue"),
    ({"handler": "noop", "queue": "a b"}, 400, "invalid_request", "queue"),
    ({"handler": "noop", "priority": 5000}, 400, "invalid_request", "priority"),
    ({"handler": "noop", "max_attempts": 0}, 400, "invalid_request", "max_attempts"),
    ({"handler": "noop", "max_duration_seconds": -1}, 400, "invalid_request",
     "max_duration_seconds"),
    ({"handler": "noop", "backoff": {"factor": 0.5}}, 400, "invalid_request", "backoff.factor"),
    ({"handler": "noop", "backoff": {"base": 1}}, 400, "invalid_request", "backoff.base"),
    ({"handler": "noop", "tags": "x"}, 400, "invalid_request", "tags"),
    ({"handler": "noop", "every_ms": 10}, 400, "invalid_request", "every_ms"),
    ({"handler": "http"}, 400, "invalid_request", "target"),
    ({"handler": "http", "target": {"url": "ftp://x"}}, 400, "invalid_request", "target.url"),
    ({"handler": "noop", "colour": "red"}, 400, "invalid_request", "colour"),
    ({"handler": "noop", "name": "n"}, 400, "invalid_request", "name"),
]


@pytest.mark.parametrize("body,status,kind,field", BAD_JOBS,
                         ids=[f"{i}-{c[3]}" for i, c in enumerate(BAD_JOBS)])
def test_bad_jobs_get_a_precise_problem_and_write_nothing(server, body, status, kind, field):
    problem(server.post("/jobs", body), status, kind, field)
    assert server.get("/jobs").json()["jobs"] == []
    assert server.get("/schedules").json()["schedules"] == []


@pytest.mark.parametrize("path", ["/jobs", "/jobs/batch", "/schedules"])
def test_a_malformed_body_is_refused_and_writes_nothing(server, path):
    for raw in (b'{"handler": "noop"', b'{"handler": "noop"} x', b'[1, 2]', b'\xff{}'):
        r = server.post(path, raw=raw, headers={"Content-Type": "application/json"})
        assert r.status_code == 400, (raw, r.text)
        assert r.headers["Content-Type"].startswith("application/problem+json")
    assert server.get("/jobs").json()["jobs"] == []
    assert server.get("/schedules").json()["schedules"] == []


def test_run_at_reaches_as_far_as_delay_ms_and_no_further(server):
    now = datetime.datetime.now(datetime.timezone.utc)
    def at(days):
        return (now + datetime.timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert submit(server, {"handler": "noop", "run_at": at(365)})["run_at"].startswith(at(365)[:10])
    doc = problem(server.post("/jobs", {"handler": "noop", "run_at": at(367)}), 400,
                  "invalid_request", "run_at")
    assert "366 days" in doc["detail"], doc
    problem(server.post("/jobs/batch", {"jobs": [{"handler": "noop"},
                                                 {"handler": "noop", "run_at": at(400)}]}),
            400, "invalid_request", "jobs[1].run_at")
    # A time in the past is due now, as it was.
    assert submit(server, {"handler": "noop", "run_at": "2020-01-01T00:00:00Z"})["job_id"]
    assert len(server.get("/jobs").json()["jobs"]) == 2


def test_a_job_id_in_a_path_is_digits_that_fit(server):
    job_id = submit(server, {"handler": "external:t"})["job_id"]  # no worker here runs it
    assert server.get(f"/jobs/{job_id}").status_code == 200
    assert server.get(f"/dlq/{job_id}").status_code == 404  # pending: not dead
    # " 1" and "+1" were job 1, and an id past 2^63-1 was 2^63-1 ("no job
    # 9223372036854775807").
    for bad in (f"%20{job_id}", f"+{job_id}", "18446744073709551617", "-1", "0"):
        problem(server.get(f"/jobs/{bad}"), 400, "invalid_request", "job_id")
        problem(server.post(f"/jobs/{bad}/cancel"), 400, "invalid_request", "job_id")
        problem(server.get(f"/dlq/{bad}"), 400, "invalid_request", "job_id")
    assert server.get(f"/jobs/{job_id}").json()["state"] == "pending"

def test_bad_requests_elsewhere(server):
    problem(server.get("/jobs/abc"), 400, "invalid_request", "job_id")
    problem(server.get("/jobs/999"), 404, "not_found", "job_id")
    problem(server.post("/queues/default/claim", {}), 400, "invalid_request", "worker")
    problem(server.post("/queues/default/claim", {"worker": "w", "max": 1000}), 400,
            "invalid_request", "max")
    problem(server.post("/queues/ghost/claim", {"worker": "w"}), 404, "not_found", "queue")
    problem(server.post("/jobs/1/complete", {}), 400, "invalid_request", "token")
    problem(server.post("/jobs/1/fail", {"token": 1}), 400, "invalid_request", "error")
    problem(server.post("/jobs/batch", {"jobs": []}), 400, "invalid_request", "jobs")
    problem(server.post("/jobs/batch", {"jobs": [{"handler": "noop"}] * 1001}), 400,
            "invalid_request", "jobs")
    problem(server.put("/queues/q1", {"concurrency": -1}), 400, "invalid_request", "concurrency")
    problem(server.post("/schedules", {"handler": "noop"}), 400, "invalid_request", "cron")
    problem(server.post("/schedules", {"handler": "noop", "every_ms": 5000}), 400,
            "invalid_request", "name")


def test_the_payload_limit_is_configurable_and_checked_in_batches(make_server):
    server = make_server(["--payload-limit", "1KiB"])
    assert server.post("/jobs", {"handler": "noop", "payload": {"x": "y" * 900}}).status_code == 201
    problem(server.post("/jobs", {"handler": "noop", "payload": {"x": "y" * 1100}}), 413,
            "payload_too_large", "payload")
    jobs = [{"handler": "noop"}, {"handler": "noop", "payload": {"x": "y" * 1100}}]
    problem(server.post("/jobs/batch", {"jobs": jobs}), 413, "payload_too_large",
            "jobs[1].payload")
    # Nothing half-written: the first job is still the only one.
    assert [j["job_id"] for j in server.get("/jobs").json()["jobs"]] == [1]


def test_a_long_poll_whose_client_hung_up_claims_nothing(server):
    post_and_hang_up(server, "/queues/default/claim", {"worker": "gone", "wait_ms": 60000},
                     "backbone_job_claim_waiters")
    job_id = submit(server, {"handler": "external"})["job_id"]
    # Woken by the job, the long poll finds its client gone and claims nothing.
    line = await_condition(lambda: request_logged(server, "/queues/default/claim"),
                           what="the long poll to end")
    assert line["status"] == 200
    assert server.get(f"/jobs/{job_id}").json()["state"] == "pending"
    [claimed] = server.post("/queues/default/claim", {"worker": "here"}).json()["jobs"]
    assert claimed["job_id"] == job_id
    stops_cleanly(server)  # the long poll that gave up is not left counted as parked


def test_jobs_claimed_while_their_worker_hung_up_go_back_at_once(server, database):
    # The worker hangs up while its claim waits for the database; the jobs
    # the claim then takes would wait out a 10-minute lease unseen: they go
    # back at once, as an interrupted attempt (which does not count).
    job_id = submit(server, {"handler": "external", "max_attempts": 1})["job_id"]
    hang_up_in_the_database(server, database, "jobs", "/queues/default/claim",
                            {"worker": "gone", "lease_ms": 600000})
    line = await_condition(lambda: request_logged(server, "/queues/default/claim"),
                           what="the claim to end")
    assert line["status"] == 503, line
    job = server.get(f"/jobs/{job_id}").json()
    assert job["state"] == "pending", job
    assert [(a["worker"], a["outcome"]) for a in job["attempts"]] == [("gone", "interrupted")]
    [claimed] = server.post("/queues/default/claim", {"worker": "here"}).json()["jobs"]
    assert claimed["job_id"] == job_id
    r = server.post(f"/jobs/{job_id}/complete", {"token": claimed["lease_token"]})
    assert r.status_code == 200 and r.json()["state"] == "completed", r.text
    stops_cleanly(server)


def test_defaults_retry_after_1_4_16_64_seconds_and_give_up_after_5_attempts(server):
    # A job submitted with no retry options: the defaults, end to end. Each
    # failure is reported by a pull-API worker; the retry's run_at, which the
    # server computes from the failure's time, is 1, 4, 16 and 64 s later
    # (10% jitter); the fifth failure makes it dead.
    job_id = submit(server, {"handler": "external"})["job_id"]
    job = server.get(f"/jobs/{job_id}").json()
    assert (job["max_attempts"], job["backoff"]) == \
        (5, {"base_ms": 1000, "factor": 4.0, "cap_ms": 3600000, "jitter_pct": 10})
    for attempt, delay_s in enumerate((1, 4, 16, 64, None), start=1):
        [claimed] = server.post("/queues/default/claim", {"worker": "w"}).json()["jobs"]
        assert (claimed["job_id"], claimed["attempt"]) == (job_id, attempt)
        r = server.post(f"/jobs/{job_id}/fail", {"token": claimed["lease_token"],
                                                 "error": f"failure {attempt}"})
        assert r.status_code == 200, r.text
        job = server.get(f"/jobs/{job_id}").json()
        if delay_s is None:
            break
        waited = (api_ms(job["run_at"]) - api_ms(job["attempts"][-1]["finished_at"])) / 1000
        assert job["state"] == "pending" and 0.9 * delay_s <= waited <= 1.1 * delay_s, job
        assert server.post(f"/jobs/{job_id}/run").status_code == 200  # now, not in delay_s
    assert job["state"] == "dead"
    assert [a["error"] for a in job["attempts"]] == [f"failure {i}" for i in range(1, 6)]
