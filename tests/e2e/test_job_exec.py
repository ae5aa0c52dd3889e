"""The exec handler end to end: a real command gets the payload on stdin and
the job in its environment (and none of the server's), its exit code decides
the outcome, it is killed at the timeout with everything it started, and only
commands from the directories --exec-allow names may run."""
import json
import os
import pathlib
import subprocess

import pytest

from conftest import BIN, await_condition, problem, wait_job


def script(directory, name, body):
    path = pathlib.Path(directory) / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


@pytest.fixture
def bindir(tmp_path):
    d = tmp_path / "bin"
    d.mkdir()
    return d


@pytest.fixture
def exec_server(make_server, bindir):
    return make_server(["--exec-allow", str(bindir)],
                       env={"BACKBONE_WEBHOOK_SECRET": "do-not-leak"})


def submit(server, body, status=201):
    r = server.post("/jobs", body)
    assert r.status_code == status, r.text
    return r.json()


def test_the_command_gets_the_payload_on_stdin_and_the_job_in_its_environment(
        exec_server, bindir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    cmd = script(bindir, "record", 'cat > "$OUT/$BACKBONE_JOB_ID.stdin"\n'
                                   'env > "$OUT/$BACKBONE_JOB_ID.env"\n'
                                   'printf "%s\\n" "$@" > "$OUT/$BACKBONE_JOB_ID.argv"\n')
    # 200 KiB: more than a pipe holds, so stdin is fed in turns.
    big = {"blob": "x" * (200 << 10)}
    small = {"order": 42, "note": "caf\u00e9"}
    assert exec_server.put("/queues/exec", {}).status_code == 201
    ids = []
    trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    for payload, headers in ((small, {"traceparent": trace}), (big, {})):
        r = exec_server.post("/jobs", {
            "queue": "exec", "handler": "exec", "payload": payload,
            "target": {"argv": [cmd, "one", "two words"], "env": {"OUT": str(out)}},
            "max_attempts": 1}, headers=headers)
        assert r.status_code == 201, r.text
        ids.append(r.json()["job_id"])

    for job_id, payload in zip(ids, (small, big)):
        wait_job(exec_server, job_id)
        assert json.loads((out / f"{job_id}.stdin").read_text()) == payload
    env = dict(line.split("=", 1) for line in (out / f"{ids[0]}.env").read_text().splitlines()
               if "=" in line)
    assert env["BACKBONE_JOB_ID"] == str(ids[0])
    assert env["BACKBONE_JOB_ATTEMPT"] == "1" and env["BACKBONE_JOB_MAX_ATTEMPTS"] == "1"
    assert env["BACKBONE_JOB_QUEUE"] == "exec"
    assert 0 < int(env["BACKBONE_JOB_TIMEOUT_MS"])
    assert env["OUT"] == str(out)
    assert env["TRACEPARENT"] == trace  # the submitter's trace context, carried on
    # The other request came without one: it started a trace of its own.
    other = dict(line.split("=", 1) for line in (out / f"{ids[1]}.env").read_text().splitlines()
                 if "=" in line)
    assert other["TRACEPARENT"].startswith("00-") and other["TRACEPARENT"][3:35] != trace[3:35]
    assert "do-not-leak" not in (out / f"{ids[0]}.env").read_text()
    assert (out / f"{ids[0]}.argv").read_text() == "one\ntwo words\n"


def test_exit_codes_decide_retry_or_permanent_failure_with_the_output(exec_server, bindir):
    flaky = script(bindir, "flaky", 'echo "attempt $BACKBONE_JOB_ATTEMPT went wrong" >&2\n'
                                    'printf "\\377\\376 not utf-8\\n"\n'
                                    'exit 3\n')
    job_id = submit(exec_server, {"handler": "exec", "target": {"argv": [flaky]},
                                  "max_attempts": 2, "backoff": {"base_ms": 10}})["job_id"]
    job = wait_job(exec_server, job_id, ("dead",))
    assert [a["outcome"] for a in job["attempts"]] == ["failed", "failed"]
    first = job["attempts"][0]["error"]
    assert first.startswith(f"exec {flaky}: exit 3: attempt 1 went wrong")
    assert first.endswith("?? not utf-8"), first  # stored and shown as valid UTF-8
    bad_input = script(bindir, "refuse", 'echo "cannot parse" >&2\nexit 65\n')
    job_id = submit(exec_server, {"handler": "exec", "max_attempts": 5, "target": {
        "argv": [bad_input], "permanent_exit_codes": [65]}})["job_id"]
    job = wait_job(exec_server, job_id, ("dead",))
    assert job["attempt"] == 1
    assert job["attempts"][0]["outcome"] == "failed_permanently"
    assert job["attempts"][0]["error"] == f"exec {bad_input}: exit 65: cannot parse"


def alive(pid):
    """Running (not gone, not a zombie awaiting its reaper)."""
    try:
        status = pathlib.Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


def test_the_command_and_its_children_are_killed_at_the_timeout(exec_server, bindir, tmp_path):
    pids = tmp_path / "pids"
    # A child in the background and a shell that ignores SIGTERM: SIGKILL
    # must follow, for the whole process group.
    hang = script(bindir, "hang", f'trap "" TERM\nsleep 300 &\necho $$ $! > {pids}\nwait\n'
                                  'wait\n')
    job_id = submit(exec_server, {"handler": "exec", "target": {"argv": [hang]},
                                  "max_duration_seconds": 1, "max_attempts": 1})["job_id"]
    job = wait_job(exec_server, job_id, ("dead",))
    assert job["attempts"][0]["outcome"] == "timeout"
    assert "stopped (timed out)" in job["attempts"][0]["error"]
    shell, child = (int(p) for p in pids.read_text().split())
    await_condition(lambda: not alive(shell) and not alive(child),
                    what="the command and its child to be gone")


def test_only_commands_in_the_allowed_directories_run(exec_server, bindir, tmp_path):
    outside = script(tmp_path, "outside", "exit 0\n")
    cases = [
        ({"argv": [outside]}, "target.argv"),
        ({"argv": ["/bin/sh", "-c", "id"]}, "target.argv"),
        ({"argv": [f"{bindir}/../outside"]}, "target.argv"),
        ({"argv": ["relative/cmd"]}, "target.argv"),
        ({"argv": []}, "target.argv"),
        ({"argv": [f"{bindir}/x", 7]}, "target.argv"),
        ({"argv": [f"{bindir}/x"], "env": {"PATH": "/tmp"}}, "target.env"),
        ({"argv": [f"{bindir}/x"], "env": {"BACKBONE_JOB_ID": "1"}}, "target.env"),
        ({"argv": [f"{bindir}/x"], "env": {"A": 1}}, "target.env"),
        ({"argv": [f"{bindir}/x"], "permanent_exit_codes": [0]}, "target.permanent_exit_codes"),
        ({"argv": [f"{bindir}/x"], "shell": True}, "target"),
        (None, "target"),
    ]
    before = exec_server.get("/jobs").json()["jobs"]
    for target, field in cases:
        body = {"handler": "exec"}
        if target is not None:
            body["target"] = target
        problem(exec_server.post("/jobs", body), 400, "invalid_request", field)
    assert exec_server.get("/jobs").json()["jobs"] == before
    # A link inside the directory that leads out of it is caught at run time.
    os.symlink(outside, bindir / "sneaky")
    job_id = submit(exec_server, {"handler": "exec",
                                  "target": {"argv": [str(bindir / "sneaky")]}})["job_id"]
    job = wait_job(exec_server, job_id, ("dead",))
    assert job["attempt"] == 1
    assert "resolves outside the directories --exec-allow names" in job["last_error"]


def test_exec_is_off_unless_directories_are_allowed(make_server, database, tmp_path):
    server = make_server()
    doc = problem(server.post("/jobs", {"handler": "exec", "target": {"argv": ["/bin/true"]}}),
                  400, "invalid_request", "handler")
    assert "--exec-allow" in doc["detail"]
    bad = subprocess.run([BIN, "serve", "--db", database.url, "--port", "0",
                          "--exec-allow", str(tmp_path / "missing")],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2
    assert "--exec-allow" in bad.stderr and "missing" in bad.stderr
