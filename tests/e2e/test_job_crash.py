"""Jobs survive crashes and shutdowns: kill -9 in the middle of a job and of
10,000 jobs, graceful SIGTERM, and (PostgreSQL) several processes sharing one
database: cron fires once, each job is claimed by one worker at a time, rate
and per-key limits hold across them, and a dead process's work is taken over
after its lease runs out; a worker process serves health and metrics."""
import json
import os
import signal
import subprocess

import pytest
import requests

from conftest import BIN, ENGINE, Server, await_condition, wait_job


def submit(server, body):
    r = server.post("/jobs", body)
    assert r.status_code == 201, r.text
    return r.json()["job_id"]


def test_kill9_mid_job_the_job_finishes_later_exactly_once(make_server, database):
    server = make_server()
    # 1 s of work, a 3 s limit (room for a slow sanitized build): the lease is 4 s.
    job_id = submit(server, {"handler": "ledger", "payload": {"ms": 1000},
                             "max_duration_seconds": 3})
    wait_job(server, job_id, ("running",))
    server.kill9()
    server.start()
    job = wait_job(server, job_id, timeout_s=60)
    outcomes = [a["outcome"] for a in job["attempts"]]
    assert outcomes == ["lease_expired", "completed"], outcomes
    assert database.scalar(f"SELECT COUNT(*) FROM job_ledger WHERE job_id = {job_id}") == 1


def test_kill9_with_10000_jobs_queued_and_running_each_done_exactly_once(make_server, database):
    server = make_server(["--workers", "20"])
    total = 10000
    for start in range(0, total, 1000):
        jobs = [{"handler": "ledger", "max_duration_seconds": 2} for _ in range(1000)]
        r = server.post("/jobs/batch", {"jobs": jobs}, timeout=120)
        assert r.status_code == 201, r.text

    await_condition(lambda: database.scalar("SELECT COUNT(*) FROM job_ledger") >= 1000,
                    timeout_s=120, what="1,000 jobs done")
    server.kill9()
    server.start()
    await_condition(lambda: database.scalar(
        "SELECT COUNT(*) FROM jobs WHERE state = 'completed'") == total,
        timeout_s=600, what="all jobs done")
    assert database.scalar("SELECT COUNT(*) FROM jobs") == total
    assert database.scalar("SELECT COUNT(*) FROM jobs WHERE state <> 'completed'") == 0
    assert database.scalar("SELECT COUNT(*) FROM job_ledger") == total
    assert database.scalar(
        "SELECT COUNT(*) FROM jobs JOIN job_ledger ON job_ledger.job_id = jobs.id") == total


def test_sigterm_lets_short_jobs_finish_and_hands_long_ones_back(make_server):
    server = make_server(["--shutdown-timeout", "1500ms", "--workers", "4"])
    short = submit(server, {"handler": "sleep", "payload": {"ms": 300}})
    long_ = submit(server, {"handler": "sleep", "payload": {"ms": 60000},
                            "max_duration_seconds": 120})
    wait_job(server, short, ("running", "completed"))
    wait_job(server, long_, ("running",))
    server.stop()  # SIGTERM; checks exit code 0
    lines = [l for l in server.lines() if l.get("event") == "jobs.pool_stopped"]
    assert lines, "the pool stopped cleanly"
    server.args = ["--workers", "0"]  # look without running anything
    server.start()
    assert server.get(f"/jobs/{short}").json()["state"] == "completed"
    job = server.get(f"/jobs/{long_}").json()
    assert job["state"] == "pending" and job["ready"] is True
    assert job["attempts"][-1]["outcome"] == "interrupted"
    assert job["attempt_limit"] == job["max_attempts"] + 1  # the interrupted one is not counted


# ---- several processes on one PostgreSQL ---------------------------------------------------

pg_only = pytest.mark.skipif(ENGINE != "pg", reason="SQLite has one owning process")


def start_worker(database, tmp_path, name, args=()):
    """A `backbone worker` process on the shared database."""
    log = open(tmp_path / f"{name}.log", "wb")
    env = dict(os.environ)
    env.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0")
    proc = subprocess.Popen([BIN, "worker", "--db", database.url, *args], stdout=log,
                            stderr=subprocess.STDOUT, env=env)
    return proc, log


def stop_worker(proc, log):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    log.close()


@pg_only
def test_three_processes_share_the_work_and_fire_cron_once(make_server, database, tmp_path):
    server = make_server(["--workers", "5", "--scheduler-tick", "100ms"])
    workers = [start_worker(database, tmp_path, f"w{i}", ["--concurrency", "5",
                                                          "--scheduler-tick", "100ms"])
               for i in range(2)]
    try:
        r = server.post("/schedules", {"name": "tick", "every_ms": 1000, "handler": "ledger"})
        assert r.status_code == 201
        # And a cron schedule at every second (6 fields, seconds first).
        r = server.post("/schedules", {"name": "sec", "cron": "* * * * * *", "handler": "ledger"})
        assert r.status_code == 201
        jobs = [{"handler": "ledger", "payload": {"ms": 20}} for _ in range(300)]
        assert server.post("/jobs/batch", {"jobs": jobs}).status_code == 201
        await_condition(lambda: database.scalar(
            "SELECT COUNT(*) FROM jobs WHERE schedule = 'tick' AND state = 'completed'") >= 4,
            timeout_s=120, what="four fires")
        await_condition(lambda: database.scalar(
            "SELECT COUNT(*) FROM jobs WHERE schedule = 'sec' AND state = 'completed'") >= 4,
            timeout_s=120, what="four cron fires")
        await_condition(lambda: database.scalar(
            "SELECT COUNT(*) FROM jobs WHERE schedule IS NULL AND state = 'completed'") == 300,
            timeout_s=120, what="300 jobs")
    finally:
        for proc, log in workers:
            stop_worker(proc, log)
    for name in ("tick", "sec"):
        assert server.post(f"/schedules/{name}/pause").status_code == 200
    # Each fire time made one job, and every job was claimed once: attempt 1,
    # one ledger entry.
    for name in ("tick", "sec"):
        assert database.scalar(f"SELECT COUNT(*) FROM jobs WHERE schedule = '{name}'") == \
            database.scalar("SELECT COUNT(DISTINCT scheduled_for_ms) FROM jobs"
                            f" WHERE schedule = '{name}'")
    # The cron schedule fired on whole seconds only.
    assert database.scalar("SELECT COUNT(*) FROM jobs WHERE schedule = 'sec'"
                           " AND scheduled_for_ms % 1000 <> 0") == 0
    assert database.scalar("SELECT COUNT(*) FROM jobs WHERE state = 'completed' AND attempt <> 1") == 0
    assert database.scalar("SELECT COUNT(*) FROM job_attempts WHERE outcome <> 'completed'") == 0
    assert database.scalar(
        "SELECT COUNT(*) FROM jobs JOIN job_ledger ON job_ledger.job_id = jobs.id"
        " WHERE jobs.state = 'completed'") == database.scalar(
        "SELECT COUNT(*) FROM jobs WHERE state = 'completed'")
    # The work was shared.
    assert database.scalar("SELECT COUNT(DISTINCT leased_by) FROM jobs") >= 2


@pg_only
def test_a_batch_across_many_queues_wakes_a_worker_in_another_process(make_server, database,
                                                                      tmp_path):
    # One batch names more queues (20) than a submit announces one by one;
    # the worker serves only the last and polls once a minute, so only a
    # notification it takes for its queue runs that job within the wait.
    server = make_server(["--workers", "0"])
    queues = [f"q{i}" for i in range(20)]
    for q in queues:
        assert server.put(f"/queues/{q}", {}).status_code == 201
    worker = start_worker(database, tmp_path, "w", ["--queues", "q19", "--job-poll", "60s"])
    try:
        # The worker is up and idle once it ran a first job.
        wait_job(server, submit(server, {"queue": "q19", "handler": "noop"}), timeout_s=30)
        r = server.post("/jobs/batch", {"jobs": [{"queue": q, "handler": "noop"} for q in queues]})
        assert r.status_code == 201, r.text
        wait_job(server, r.json()["jobs"][-1]["job_id"], timeout_s=30)
    finally:
        stop_worker(*worker)


@pg_only
def test_a_slot_freed_in_one_process_wakes_a_worker_in_another(make_server, database, tmp_path):
    # Queue "one" runs one job at a time. Two workers poll once a minute; the
    # one running the first job is stopped (it finishes that job and claims
    # no more), so only the notification its completion sends can start the
    # second job on the other within the wait.
    server = make_server(["--workers", "0"])
    assert server.put("/queues/one", {"concurrency": 1}).status_code == 201
    args = ["--queues", "one", "--job-poll", "60s", "--shutdown-timeout", "30s"]
    workers = [start_worker(database, tmp_path, f"w{i}", args) for i in range(2)]
    try:
        first = submit(server, {"queue": "one", "handler": "sleep", "payload": {"ms": 1500}})

        def running_on():
            job = server.get(f"/jobs/{first}").json()
            return job["lease"]["worker"] if job["state"] == "running" else None

        holder = await_condition(running_on, what="the first job to run")
        second = submit(server, {"queue": "one", "handler": "noop"})
        assert server.get(f"/jobs/{second}").json()["state"] == "pending"  # the queue is full
        [busy] = [w for w in workers if holder.endswith(f":{w[0].pid}")]
        stop_worker(*busy)
        assert server.get(f"/jobs/{first}").json()["state"] == "completed"
        [idle] = [w for w in workers if w is not busy]
        job = wait_job(server, second, timeout_s=30)
        assert job["attempts"][0]["worker"].endswith(f":{idle[0].pid}")
    finally:
        for w in workers:
            stop_worker(*w)


@pg_only
def test_a_killed_workers_jobs_go_to_the_others_after_its_lease(make_server, database, tmp_path):
    server = make_server(["--workers", "0"])
    server.put("/queues/slow", {})
    a = start_worker(database, tmp_path, "a", ["--concurrency", "1", "--queues", "slow",
                                               "--scheduler-tick", "100ms"])
    b = start_worker(database, tmp_path, "b", ["--concurrency", "1", "--queues", "slow",
                                               "--scheduler-tick", "100ms"])
    try:
        ids = [submit(server, {"queue": "slow", "handler": "ledger", "payload": {"ms": 3000},
                               "max_duration_seconds": 4}) for _ in range(2)]

        def both_running():
            jobs = [server.get(f"/jobs/{i}").json() for i in ids]
            if all(j["state"] == "running" for j in jobs):
                return [j["lease"]["worker"] for j in jobs]
            return None

        running_on = await_condition(both_running, what="each worker running one job")
        assert len(set(running_on)) == 2
        victim = ids[running_on.index(next(w for w in running_on
                                           if w.endswith(f":{a[0].pid}")))]
        a[0].send_signal(signal.SIGKILL)
        a[0].wait(timeout=30)
        job = wait_job(server, victim, timeout_s=60)
        assert [x["outcome"] for x in job["attempts"]] == ["lease_expired", "completed"]
        assert job["attempts"][0]["worker"].endswith(f":{a[0].pid}")
        assert job["attempts"][1]["worker"].endswith(f":{b[0].pid}")
        wait_job(server, [i for i in ids if i != victim][0])
        assert database.scalar("SELECT COUNT(*) FROM job_ledger") == 2
    finally:
        a[1].close()
        stop_worker(*b)


@pg_only
def test_a_worker_serves_health_and_metrics_and_nothing_else(make_server, database, tmp_path):
    server = make_server(["--workers", "0"])
    for queue in ("mq", "elsewhere"):
        assert server.put(f"/queues/{queue}", {}).status_code == 201
    proc, log = start_worker(database, tmp_path, "m", ["--queues", "mq", "--port", "0"])
    try:
        def port():
            for raw in (tmp_path / "m.log").read_text().splitlines():
                if '"server.listening"' in raw:
                    return json.loads(raw)["port"]
            assert proc.poll() is None, (tmp_path / "m.log").read_text()
            return None
        url = f"http://127.0.0.1:{await_condition(port, what='the worker to listen')}"
        other = submit(server, {"queue": "elsewhere", "handler": "noop"})
        mine = submit(server, {"queue": "mq", "handler": "noop"})
        wait_job(server, mine)
        assert requests.get(url + "/healthz").status_code == 200
        assert requests.get(url + "/readyz").status_code == 200
        metrics = requests.get(url + "/metrics").text
        assert 'backbone_jobs_finished_total{queue="mq",outcome="completed"} 1' in metrics
        assert requests.post(url + "/jobs", json={"handler": "noop"}).status_code == 404
        # It takes jobs from its own queues only.
        assert server.get(f"/jobs/{other}").json()["state"] == "pending"
    finally:
        stop_worker(proc, log)


@pg_only
def test_rate_and_per_key_limits_hold_across_processes(make_server, database, tmp_path):
    server = make_server(["--workers", "4"])
    r = server.put("/queues/metered", {"key_concurrency": 1,
                                       "rate_limit": {"max": 5, "per_ms": 500},
                                       "key_rate_limit": {"max": 2, "per_ms": 600}})
    assert r.status_code == 201, r.text
    workers = [start_worker(database, tmp_path, f"m{i}", ["--concurrency", "4"])
               for i in range(2)]
    try:
        jobs = [{"queue": "metered", "handler": "ledger", "payload": {"ms": 100},
                 "concurrency_key": f"tenant-{i % 3}"} for i in range(30)]
        assert server.post("/jobs/batch", {"jobs": jobs}).status_code == 201
        await_condition(lambda: database.scalar(
            "SELECT COUNT(*) FROM jobs WHERE queue = 'metered' AND state = 'completed'") == 30,
            timeout_s=120, what="30 metered jobs")
    finally:
        for proc, log in workers:
            stop_worker(proc, log)
    rows = [row.split("|") for row in database.scalar(
        "SELECT string_agg(concurrency_key || '|' || started_at_ms || '|' || finished_at_ms,"
        " ',' ORDER BY started_at_ms) FROM jobs WHERE queue = 'metered'").split(",")]
    runs = [(key, int(start), int(end)) for key, start, end in rows]
    # Never two of one tenant at once. (A claim stamps its start before it
    # waits for the queue's lock, so stamps may cross by a few ms; an overlap
    # would be about a whole 100 ms job.)
    for tenant in {key for key, _, _ in runs}:
        mine = [(s, f) for key, s, f in runs if key == tenant]
        for (_, f1), (s2, _) in zip(mine, mine[1:]):
            assert s2 >= f1 - 50, mine
    # Never faster than a tenant's bucket: 2 at once, then one per 300 ms.
    for tenant in {key for key, _, _ in runs}:
        mine = [s for key, s, _ in runs if key == tenant]
        for i, first in enumerate(mine):
            for j in range(i, len(mine)):
                assert j - i + 1 <= 2 + (mine[j] - first + 50) / 300, mine
    # Never faster than the queue's bucket: 5 at once, then one per 100 ms.
    starts = [s for _, s, _ in runs]
    for i, first in enumerate(starts):
        for j in range(i, len(starts)):
            assert j - i + 1 <= 5 + (starts[j] - first + 50) / 100, starts
    # Attempt 1 each, recorded once, and the work was shared.
    assert database.scalar("SELECT COUNT(*) FROM jobs WHERE queue = 'metered' AND attempt <> 1") == 0
    assert database.scalar("SELECT COUNT(*) FROM job_ledger") == 30
    assert database.scalar(
        "SELECT COUNT(DISTINCT leased_by) FROM jobs WHERE queue = 'metered'") >= 2
