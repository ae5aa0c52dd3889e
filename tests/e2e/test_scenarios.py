"""The scripts in scripts/scenarios/, run as a person would, against a
server of this build: each exits 0 only when its reconciliation adds up."""
import os
import pathlib
import subprocess

import pytest

from conftest import BIN, ENGINE, SANITIZED

SCENARIOS = pathlib.Path(__file__).resolve().parents[2] / "scripts" / "scenarios"


# Settings a person may have given the server before running a scenario
# (none of them changes what the scenarios show).
OPERATOR_QUEUE = {"max_attempts": 6, "backoff": {"base_ms": 900, "factor": 3}}
OPERATOR_PSP = {"seed": 7, "decline_cards": ["tok_lost"]}


def settings(server):
    """The sagas queue's settings (without its depth) and the PSP's config."""
    queue = server.get("/queues/sagas").json()
    del queue["depth"]
    return queue, server.get("/psp/config").json()


# Settings left on the PSP mock by someone else, each of which would change
# what some scenario shows if it were taken as found: a hang on the voids
# (the compensation of psp-timeout.sh's first checkout), a hang and a
# failure pending, random failures, timeouts and declines, a latency, and
# the scenarios' card and amounts declined.
STRAY_PSP = {"hang_op": "void", "hang_next": 2, "fail_next": 1, "failure_rate": 0.3,
             "timeout_rate": 0.2, "decline_rate": 0.2, "latency_ms": 30,
             "decline_cards": ["tok_visa"], "decline_amounts": [100, 250, 700, 900]}


def run(script, server=None, ok=True, psp=None, **env):
    """Run a scenario; against `server` (whose PSP is given `psp` first, or
    the operator's settings), the settings it changes are the same
    afterwards as before, whether its checks passed (ok) or not."""
    e = dict(os.environ, **{k: str(v) for k, v in env.items()})
    if server:
        e["BACKBONE_URL"] = server.url
        assert server.put("/queues/sagas", OPERATOR_QUEUE).status_code == 200
        assert server.put("/psp/config", psp or OPERATOR_PSP).status_code == 200
        before = settings(server)
    out = subprocess.run([str(SCENARIOS / script)], capture_output=True, text=True, env=e,
                         timeout=300)
    if ok:
        assert out.returncode == 0, out.stdout + out.stderr
        assert "all checks passed" in out.stdout
    else:
        assert out.returncode != 0 and "FAIL" in out.stdout, out.stdout + out.stderr
    if server:
        assert settings(server) == before, out.stdout + out.stderr
    return out.stdout


@pytest.mark.parametrize("script,env", [("success.sh", {"N": 15}), ("decline.sh", {}),
                                        ("shortage.sh", {"BUYERS": 8, "STOCK": 3}),
                                        ("duplicate.sh", {})])
def test_scenario_against_a_live_server(server, script, env):
    run(script, server, **env)


def test_psp_timeout_scenario(make_server):
    run("psp-timeout.sh", make_server(["--psp-timeout", "100ms"]))


def test_reservation_expiry_scenario(make_server):
    server = make_server(["--checkout-reservation-ttl", "300ms", "--reservation-sweep", "20ms"])
    run("reservation-expiry.sh", server, LATENCY_MS=400)


# Every scenario run against a live server, with the server's options it
# needs and the environment the tests above give it.
LIVE = [("success.sh", [], {"N": 5}), ("decline.sh", [], {}),
        ("shortage.sh", [], {"BUYERS": 4, "STOCK": 2}), ("duplicate.sh", [], {}),
        ("psp-timeout.sh", ["--psp-timeout", "100ms"], {}),
        ("reservation-expiry.sh", ["--checkout-reservation-ttl", "300ms",
                                   "--reservation-sweep", "20ms"], {"LATENCY_MS": 400})]


@pytest.mark.parametrize("script,options,env", LIVE, ids=[s for s, _, _ in LIVE])
def test_a_scenario_is_not_misled_by_a_psp_setting_left_on_the_server(make_server, script,
                                                                      options, env):
    server = make_server(options)
    out = run(script, server, psp=STRAY_PSP, **env)
    # What it set for itself is undone: the stray settings are back.
    assert "put back /psp/config" in out
    config = server.get("/psp/config").json()
    assert {k: config[k] for k in STRAY_PSP} == STRAY_PSP


def test_a_scenario_whose_checks_fail_still_puts_the_settings_back(server):
    # The reservation outlives the slow payment (the default TTL is 10 min),
    # so the checkout completes and the checks fail; the PSP's latency is
    # still put back.
    out = run("reservation-expiry.sh", server, ok=False, LATENCY_MS=50)
    assert "put back /psp/config" in out


def test_a_scenario_refuses_a_paused_sagas_queue_and_leaves_it_paused(server):
    assert server.post("/queues/sagas/pause").status_code == 200
    e = dict(os.environ, BACKBONE_URL=server.url)
    out = subprocess.run([str(SCENARIOS / "success.sh")], capture_output=True, text=True, env=e,
                         timeout=300)
    assert out.returncode != 0
    assert "the sagas queue is paused" in out.stderr, out.stdout + out.stderr
    assert server.get("/queues/sagas").json()["paused"] is True
    # It stopped before doing anything: no product, no checkout, no event.
    assert server.get("/outbox").json()["events"] == []


# Lines of the reconciliation every scenario that starts its own server
# ends with: sagas against checkouts, orders, status events and fulfilment
# jobs against how their checkouts ended, the PSP's own record against the
# ledger.
RECONCILED = ("ok    orders of FAILED checkouts CANCELLED",
              "ok    AUTHORIZED payments of FAILED checkouts: 0",
              "ok    checkout status events, one per ended checkout",
              "ok    ended checkouts without exactly one status event saying how: 0",
              "ok    fulfilment jobs, one per COMPLETED checkout",
              "ok    orders with more than one fulfilment job: 0",
              "ok    COMPLETED checkouts without their order's fulfilment job: 0",
              "ok    fulfilment jobs of FAILED checkouts' orders: 0",
              "ok    money kept by the PSP (captures - refunds)",
              "ok    PSP authorizations the ledger does not know, or the reverse: 0",
              "ok    PSP captures = payments the ledger captured",
              "ok    authorizations the PSP still holds open (neither captured nor voided): 0")


def run_own_server(script, database, n, defaults, *lines, **env):
    """Run a scenario that starts its own server, with N=n checkouts (a
    person runs it with the `defaults` its text shows); its output, once
    every reconciliation line and `lines` are in it."""
    assert defaults in (SCENARIOS / script).read_text()
    out = run(script, N=n, BACKBONE_BIN=BIN, BACKBONE_DB=database.url,
              PORT=18400 + os.getpid() % 1000, **env)
    for line in (f"ok    checkouts accepted, one per key: {n}",
                 f"ok    sagas, one per checkout: {n}") + RECONCILED + lines:
        assert line in out, out
    return out


def test_crash_scenario(database):
    # The issue's size: 1,000 checkouts, 5 kills (about a minute). The
    # sanitized build, several times slower, checks the same on 60.
    n, kills = (60, 3) if SANITIZED else (1000, 5)
    out = run_own_server("crash.sh", database, n, "N=${N:-1000}", KILLS=kills)
    assert out.count("kill -9 #") == kills


def test_faults_scenario(database):
    # Failed commits, commits whose answer is lost and failed statements,
    # injected at random while the server keeps running.
    out = run_own_server("faults.sh", database, 100, "N=${N:-300}",
                         "ok    exit code after SIGTERM: 0")
    for point in ("store.commit", "store.commit_lost", "store.statement"):
        injected = int(out.split(f"faults injected at {point}: ")[1].split()[0])
        assert injected > 0, out


@pytest.mark.skipif(ENGINE != "pg", reason="SQLite has no connections to cut")
def test_disconnect_scenario(database):
    # Every connection of the server to PostgreSQL terminated 3 times.
    out = run_own_server("disconnect.sh", database, 60, "N=${N:-300} KILLS=${KILLS:-5}",
                         "ok    the LISTEN connection is back: 1",
                         "ok    exit code after SIGTERM: 0", KILLS=3)
    assert out.count("  cut #") == 3
