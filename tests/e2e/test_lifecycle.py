"""Start, stop and restart: graceful shutdown answers everyone, state
survives restarts."""
import signal
import threading

import pytest
import requests

from conftest import await_condition, problem


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_answers_parked_waiters_and_exits_cleanly(server, sig):
    server.post("/locks/L/acquire", {"owner": "w1", "ttl_ms": 120000})
    result = {}

    def wait():
        result["r"] = requests.post(f"{server.url}/locks/L/acquire",
                                    json={"owner": "w2", "wait_ms": 120000}, timeout=120)

    t = threading.Thread(target=wait)
    t.start()
    await_condition(lambda: server.metric("backbone_lock_waiters") == 1, what="a parked acquire")
    server.proc.send_signal(sig)
    t.join(timeout=60)
    problem(result["r"], 503, "unavailable")
    server.stop()  # checks exit code 0 and no sanitizer report
    assert any(l.get("event") == "server.stopped" for l in server.lines())


def test_state_survives_a_clean_restart(server):
    g = server.post("/locks/L/acquire", {"owner": "w1", "ttl_ms": 120000}).json()
    server.put("/fenced/k", {"token": g["token"], "value": [1, 2]})
    server.stop()
    server.start()
    r = server.post("/locks/L/renew", {"token": g["token"], "ttl_ms": 120000})
    assert r.status_code == 200 and r.json()["owner"] == "w1"
    assert server.get("/fenced/k").json()["value"] == [1, 2]
    problem(server.post("/locks/L/acquire", {"owner": "w2"}), 409, "lock_held")
