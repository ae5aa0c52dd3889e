"""The store failing under load while the server keeps running (the fault
points of a test build, BACKBONE_FAULTS; docs/testing.md): commits that
fail, commits whose answer is lost though they committed, statements that
fail. Where kill -9 wipes a process's memory, here it lives on and must not
trust what it did not see committed. (The checkout sagas under faults are
scripts/scenarios/faults.sh, run by test_scenarios.py.)"""
import pytest

from conftest import await_condition

FAULTS = "store.commit=1/15x60,store.commit_lost=1/30x30,store.statement=1/300x60"


def retried(call, what):
    """`call` until it is not answered 5xx (a client's retry of a failure it
    cannot tell from a lost answer); its response."""
    last = []

    def answered():
        r = call()
        last[:] = [r]
        return r if r.status_code < 500 else None
    await_condition(answered, 60, what)
    return last[0]


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
        r = retried(lambda: server.post("/jobs/batch", {"jobs": jobs}), "a batch accepted")
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
