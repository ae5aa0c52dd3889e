"""The `backbone jobs|queues|schedules|dlq` CLI against a live server: each
command's human output, --json, and exit codes (0 ok, 1 refused, 2 usage)."""
import json
import re

from conftest import cli, wait_job


def ok(*args, server):
    r = cli(*args, server=server)
    assert r.returncode == 0, (args, r.stderr)
    return r.stdout


def test_jobs_submit_get_list_history_cancel_retry(server):
    out = ok("jobs", "submit", "--handler", "noop", "--payload", '{"order": 7}', "--priority", "3",
             server=server)
    m = re.fullmatch(r"job (\d+) queued, runs at \S+Z\n", out)
    assert m, out
    job_id = int(m.group(1))
    wait_job(server, job_id)
    got = json.loads(ok("jobs", "get", str(job_id), "--json", server=server))
    assert got["payload"] == {"order": 7} and got["priority"] == 3
    assert got["state"] == "completed"
    listed = ok("jobs", "list", "--state", "completed", server=server)
    assert re.match(rf"{job_id}  completed  default\s+noop\s+attempt 1/5  run_at ", listed)
    history = ok("jobs", "history", str(job_id), server=server)
    assert re.fullmatch(r"attempt 1  completed\s+\S+\s+\S+Z  \d+ ms\n", history), history
    r = cli("jobs", "cancel", str(job_id), server=server)
    assert r.returncode == 1 and "cannot cancel" in r.stderr and "409" in r.stderr
    assert ok("jobs", "retry", str(job_id), server=server) == \
        f"job_id {job_id}, state pending\n"
    wait_job(server, job_id)
    later = int(re.match(r"job (\d+)", ok("jobs", "submit", "--handler", "noop", "--delay", "1h",
                                          server=server)).group(1))
    assert ok("jobs", "cancel", str(later), server=server) == \
        f"job_id {later}, state cancelled\n"
    r = cli("jobs", "get", "999999", server=server)
    assert r.returncode == 1 and "no job 999999" in r.stderr


def test_jobs_submit_batch_queues_a_file_of_jobs_in_one_transaction(server, tmp_path):
    server.put("/queues/held", {"paused": True})
    server.put("/queues/other", {"paused": True})
    # JSON lines from stdin; --queue fills in the jobs that name none.
    lines = ('{"handler": "noop", "payload": {"n": 1}}\n\n'
             '{"handler": "noop", "queue": "other", "unique_key": "u1"}\n')
    r = cli("jobs", "submit-batch", "-", "--queue", "held", server=server, stdin=lines)
    assert r.returncode == 0, r.stderr
    m = re.fullmatch(r"2 jobs queued in one transaction: ids (\d+), (\d+)\n", r.stdout)
    assert m, r.stdout
    first, second = (server.get(f"/jobs/{i}").json() for i in m.groups())
    assert (first["queue"], first["payload"]) == ("held", {"n": 1})
    assert (second["queue"], second["unique_key"]) == ("other", "u1")
    # A file holding a JSON array (or POST /jobs/batch's body); a unique key
    # already queued answers its job.
    batch = tmp_path / "batch.json"
    batch.write_text(json.dumps({"jobs": [{"handler": "noop", "queue": "other",
                                           "unique_key": "u1"}]}))
    out = json.loads(ok("jobs", "submit-batch", str(batch), "--json", server=server))
    assert out == {"jobs": [{"job_id": second["job_id"], "created": False}]}
    batch.write_text(json.dumps([{"handler": "noop", "queue": "held"}] * 25))
    assert ok("jobs", "submit-batch", str(batch), server=server) == \
        "25 jobs queued in one transaction (--json lists their ids)\n"
    assert len(server.get("/jobs?queue=held").json()["jobs"]) == 26
    # All or none: one bad job refuses the batch, naming it; nothing queued.
    batch.write_text(json.dumps([{"handler": "noop", "queue": "held"}, {"handler": "nope"}]))
    r = cli("jobs", "submit-batch", str(batch), server=server)
    assert r.returncode == 1 and "unknown handler 'nope'" in r.stderr and "400" in r.stderr
    assert len(server.get("/jobs?queue=held").json()["jobs"]) == 26
    # What is not a batch is a usage error, and nothing is sent.
    for stdin, why in (('{"handler": "noop"}\n{bad\n', "line 2: "), ("[]", "no jobs"),
                       ("7\n", "line 1: ")):
        r = cli("jobs", "submit-batch", "-", server=server, stdin=stdin)
        assert r.returncode == 2 and why in r.stderr, (stdin, r.stderr)
    r = cli("jobs", "submit-batch", str(tmp_path / "missing.json"), server=server)
    assert r.returncode == 2 and "cannot open" in r.stderr
    r = cli("jobs", "submit-batch", server=server)
    assert r.returncode == 2 and "needs a file" in r.stderr
    assert len(server.get("/jobs").json()["jobs"]) == 27


def test_unique_keys_and_targets(server):
    first = ok("jobs", "submit", "--handler", "noop", "--delay", "1h", "--unique-key", "k1",
               server=server)
    again = ok("jobs", "submit", "--handler", "noop", "--delay", "1h", "--unique-key", "k1",
               server=server)
    assert re.match(r"job \d+", first).group(0) == re.match(r"job \d+", again).group(0)
    assert "already queued under that key" in again
    r = cli("jobs", "submit", "--handler", "http", "--target", '{"url": "ftp://x"}',
            server=server)
    assert r.returncode == 1 and "target.url" in r.stderr and "400" in r.stderr
    assert re.match(r"job \d+ queued", ok("jobs", "submit", "--handler", "http", "--target-url",
                                          "http://127.0.0.1:9/x", "--delay", "1h",
                                          server=server))


def test_jobs_submit_with_a_backoff_and_tags(server):
    def submitted(*flags):
        out = ok("jobs", "submit", "--handler", "noop", "--delay", "1h", *flags, server=server)
        job_id = re.match(r"job (\d+) queued", out).group(1)
        return json.loads(ok("jobs", "get", job_id, "--json", server=server))

    job = submitted("--backoff", "2s", "--tags", "billing,eu")
    assert job["tags"] == ["billing", "eu"]
    # A duration is the first retry's delay; the rest keep the API's defaults.
    assert job["backoff"] == {"base_ms": 2000, "factor": 4, "cap_ms": 3600000, "jitter_pct": 10}
    job = submitted("--backoff", '{"base_ms": 500, "factor": 2, "cap_ms": 60000, "jitter_pct": 0}')
    assert job["backoff"] == {"base_ms": 500, "factor": 2, "cap_ms": 60000, "jitter_pct": 0}
    assert job["tags"] == []
    # The server checks them, and says what is wrong.
    r = cli("jobs", "submit", "--handler", "noop", "--backoff", '{"base_ms": 0}', server=server)
    assert r.returncode == 1 and "base_ms must be" in r.stderr and "400" in r.stderr
    r = cli("jobs", "submit", "--handler", "noop", "--tags", "a,,b", server=server)
    assert r.returncode == 1 and "tags[1]" in r.stderr and "400" in r.stderr
    # Schedules take them too, for every job they fire.
    ok("schedules", "create", "tagged", "--every", "1h", "--handler", "noop", "--tags", "cron",
       "--backoff", "5s", server=server)
    spec = json.loads(ok("schedules", "show", "tagged", "--json", server=server))
    assert spec["job"]["tags"] == ["cron"] and spec["job"]["backoff"]["base_ms"] == 5000, spec


def test_queues(server):
    assert ok("queues", "put", "mail", "--concurrency", "2", server=server).startswith(
        "mail                 active  ready 0 scheduled 0 running 0 dead 0 concurrency 2")
    assert ok("queues", "pause", "mail", server=server) == "name mail, paused true\n"
    assert "mail                 paused" in ok("queues", "list", server=server)
    assert ok("queues", "show", "mail", server=server).startswith("mail                 paused")
    assert ok("queues", "resume", "mail", server=server) == "name mail, paused false\n"
    q = json.loads(ok("queues", "show", "mail", "--json", server=server))
    assert q["concurrency"] == 2 and q["paused"] is False
    assert ok("queues", "put", "mail", "--rate", "100/1m", server=server).endswith(
        "concurrency 2 rate 100/60000ms\n")
    assert json.loads(ok("queues", "show", "mail", "--json", server=server))["rate_limit"] == {
        "max": 100, "per_ms": 60000}
    assert ok("queues", "put", "mail", "--rate", "off", server=server).endswith("concurrency 2\n")
    assert ok("queues", "put", "mail", "--key-concurrency", "1", server=server).endswith(
        "concurrency 2 per key 1 (parked 0)\n")
    assert ok("queues", "put", "mail", "--key-rate", "10/1m", server=server).endswith(
        "concurrency 2 per key 1 (parked 0) per key rate 10/60000ms\n")
    assert json.loads(ok("queues", "show", "mail", "--json", server=server))[
        "key_rate_limit"] == {"max": 10, "per_ms": 60000}
    assert ok("queues", "put", "mail", "--key-rate", "off", server=server).endswith(
        "concurrency 2 per key 1 (parked 0)\n")
    job = re.match(r"job (\d+)", ok("jobs", "submit", "--queue", "mail", "--handler", "noop",
                                    "--concurrency-key", "acme", server=server)).group(1)
    assert json.loads(ok("jobs", "get", job, "--json", server=server))["concurrency_key"] == "acme"
    # A pull-API job of a full key, passed over by a claim, shows as parked.
    ok("queues", "put", "held", "--key-concurrency", "1", server=server)
    held = [re.match(r"job (\d+)", ok("jobs", "submit", "--queue", "held", "--handler", "external:x",
                                      "--concurrency-key", "acme", server=server)).group(1)
            for _ in range(2)]
    claimed = server.post("/queues/held/claim", {"worker": "py", "max": 10}).json()["jobs"]
    assert [str(j["job_id"]) for j in claimed] == held[:1]
    assert re.search(rf"^{held[1]}  pending .* parked: key acme$",
                     ok("jobs", "list", "--queue", "held", server=server), re.M)
    assert ok("queues", "show", "held", server=server).endswith("per key 1 (parked 1)\n")
    r = cli("queues", "show", "nope", server=server)
    assert r.returncode == 1 and "404" in r.stderr


def test_queues_put_takes_every_setting_the_api_takes(server):
    def show(name):
        return json.loads(ok("queues", "show", name, "--json", server=server))

    ok("queues", "put", "bills", "--backoff", "2s", "--max-duration", "45s", "--max-attempts", "3",
       "--paused", "true", server=server)
    q = show("bills")
    assert q["backoff"] == {"base_ms": 2000, "factor": 4, "cap_ms": 3600000, "jitter_pct": 10}
    assert q["lease_ms"] == 45000 and q["max_attempts"] == 3 and q["paused"] is True
    ok("queues", "put", "bills", "--paused", "false", "--backoff",
       '{"base_ms": 500, "factor": 2, "cap_ms": 60000, "jitter_pct": 0}', server=server)
    q = show("bills")
    assert q["backoff"] == {"base_ms": 500, "factor": 2, "cap_ms": 60000, "jitter_pct": 0}
    assert q["paused"] is False and q["lease_ms"] == 45000  # the others keep their value
    # Bad values are refused before anything is sent (2), or by the server (1).
    for args, needle in [
        (["--paused", "yes"], "--paused must be true or false"),
        (["--paused", "TRUE"], "--paused must be true or false"),
        (["--backoff", "soon"], "--backoff"),
        (["--backoff", "{nope"], "--backoff"),
        (["--max-duration", "50ms"], "at least 100ms"),
    ]:
        r = cli("queues", "put", "bills", *args, server=server)
        assert r.returncode == 2 and needle in r.stderr, (args, r.stderr)
    r = cli("queues", "put", "bills", "--backoff", '{"base_ms": 0}', server=server)
    assert r.returncode == 1 and "base_ms must be" in r.stderr and "400" in r.stderr, r.stderr
    assert show("bills") == q


def test_schedules(server):
    out = ok("schedules", "create", "nightly", "--cron", "0 3 * * *", "--tz", "Europe/Paris",
             "--handler", "noop", server=server)
    assert re.fullmatch(r"schedule nightly, next fire \S+T0[12]:00:00.000Z\n", out), out
    assert re.match(r"nightly\s+0 3 \* \* \*\s+Europe/Paris next ",
                    ok("schedules", "list", server=server))
    shown = json.loads(ok("schedules", "show", "nightly", "--json", server=server))
    assert len(shown["upcoming"]) == 5
    assert ok("schedules", "pause", "nightly", server=server) == "name nightly, paused true\n"
    assert "(paused)" in ok("schedules", "list", server=server)
    out = ok("schedules", "create", "nightly", "--cron", "0 4 * * *", "--handler", "noop",
             server=server)
    assert re.fullmatch(r"schedule nightly replaced, next fire \S+T04:00:00.000Z "
                        r"\(paused: resume to fire\)\n", out), out
    assert ok("schedules", "resume", "nightly", server=server) == "name nightly, paused false\n"
    assert ok("schedules", "delete", "nightly", server=server) == "name nightly, deleted true\n"
    assert ok("schedules", "list", server=server) == "no schedules\n"
    r = cli("schedules", "create", "bad", "--cron", "61 * * * *", "--handler", "noop",
            server=server)
    assert r.returncode == 1 and "cron" in r.stderr


def test_dead_letters(server):
    ids = [int(re.match(r"job (\d+)", ok("jobs", "submit", "--handler", "fail_permanently",
                                         server=server)).group(1)) for _ in range(3)]
    for job_id in ids:
        wait_job(server, job_id, ("dead",))
    listed = ok("dlq", "list", server=server).splitlines()
    assert [int(line.split()[0]) for line in listed] == ids
    assert all("error: failed on purpose, permanently" in line for line in listed)
    assert json.loads(ok("dlq", "show", str(ids[0]), "--json", server=server))["state"] == "dead"
    assert ok("dlq", "redrive", str(ids[0]), server=server) == \
        f"job_id {ids[0]}, state pending\n"
    wait_job(server, ids[0], ("dead",))
    assert ok("dlq", "redrive-all", server=server) == "redriven 3, skipped 0\n"
    for job_id in ids:
        wait_job(server, job_id, ("dead",))
    groups = ok("dlq", "groups", server=server).splitlines()
    assert re.match(r"[0-9a-f]{16}\s+3 dead\s+default\s+fail_permanently\s+last \S+Z$",
                    groups[0]), groups
    assert groups[1].strip() == "failed on purpose, permanently"
    fp = groups[0].split()[0]
    assert len(ok("dlq", "list", "--fingerprint", fp, server=server).splitlines()) == 3
    # One job by its id; a second purge of it is refused, and names why.
    assert ok("dlq", "purge", str(ids[1]), server=server) == f"job_id {ids[1]}, purged 1\n"
    r = cli("dlq", "purge", str(ids[1]), server=server)
    assert r.returncode == 1 and f"no job {ids[1]}" in r.stderr, r.stderr
    assert [int(line.split()[0]) for line in ok("dlq", "list", server=server).splitlines()] == \
        [ids[0], ids[2]]
    # Every dead job at once only when asked for by name.
    r = cli("dlq", "purge", server=server)
    assert r.returncode == 2 and "--all" in r.stderr, r.stderr
    assert len(ok("dlq", "list", server=server).splitlines()) == 2
    assert ok("dlq", "purge", "--fingerprint", fp, server=server) == "purged 2\n"
    assert ok("dlq", "purge", "--all", server=server) == "purged 0\n"
    assert ok("dlq", "list", server=server) == "no jobs\n"
    assert ok("dlq", "groups", server=server) == "no dead jobs\n"


def test_jobs_usage_errors_exit_2():
    for args, needle in [
        (["jobs", "submit"], "submit needs --handler"),
        (["jobs", "submit", "--handler", "noop", "--payload", "{nope"], "--payload must be JSON"),
        (["jobs", "submit", "--handler", "exec", "--target", "[1"], "--target must be a JSON"),
        (["jobs", "submit", "--handler", "http", "--target", "{}", "--target-url", "http://x"],
         "exclude each other"),
        (["jobs", "submit", "--handler", "noop", "--delay", "soon"], "--delay"),
        (["jobs", "submit", "--handler", "noop", "--backoff", "soon"], "--backoff"),
        (["jobs", "submit", "--handler", "noop", "--backoff", "{nope"], "--backoff"),
        (["jobs", "get"], "expected a job id"),
        (["jobs", "frob", "1"], "unknown jobs command"),
        (["queues", "show"], "expected a queue name"),
        (["queues", "put", "q", "--rate", "100"], "--rate must be N/INTERVAL"),
        (["queues", "put", "q", "--rate", "0/1s"], "--rate must be N/INTERVAL"),
        (["queues", "put", "q", "--rate", "5/soon"], "--rate must be N/INTERVAL"),
        (["queues", "put", "q", "--key-rate", "5"], "--key-rate must be N/INTERVAL"),
        (["schedules", "create", "x"], "needs --handler"),
        (["dlq", "frob", "1"], "unknown dlq command"),
        # An id after a bulk command was dropped: it then acted on every dead job.
        (["dlq", "redrive-all", "7"], "redrive-all takes no id"),
        (["dlq", "list", "7"], "list takes no id"),
        (["dlq", "purge", "7", "--queue", "q"], "purge ID takes no --queue"),
        (["dlq", "purge", "7", "--all"], "purge ID takes no --queue, --fingerprint or --all"),
        (["dlq", "purge"], "or say --all"),
    ]:
        r = cli(*args)
        assert r.returncode == 2, (args, r.stderr)
        assert needle in r.stderr, (args, r.stderr)
