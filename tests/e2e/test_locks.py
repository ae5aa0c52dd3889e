"""The lock API: grants, renewals, releases, takeovers, blocking acquires,
fenced writes, listings, metrics, and every kind of bad input."""
import queue
import threading

import pytest

from conftest import (await_condition, hang_up_in_the_database, post_and_hang_up, problem,
                      request_logged, stops_cleanly)


def acquire(s, name, owner, ttl_ms=30000, wait_ms=0):
    return s.post(f"/locks/{name}/acquire", {"owner": owner, "ttl_ms": ttl_ms, "wait_ms": wait_ms})


def test_acquire_renew_release_cycle(server):
    r = acquire(server, "orders", "w1", 30000)
    assert r.status_code == 200, r.text
    g = r.json()
    assert g["name"] == "orders" and g["owner"] == "w1" and g["outcome"] == "granted"
    assert g["token"] == 1 and g["epoch"] == 1
    assert 0 < g["expires_in_ms"] <= 30000 and g["expires_at"].endswith("Z")
    r = server.post("/locks/orders/renew", {"token": 1, "ttl_ms": 60000})
    assert r.status_code == 200 and r.json()["token"] == 1
    assert 30000 < r.json()["expires_in_ms"] <= 60000
    held = server.get("/locks/orders").json()
    assert held["owner"] == "w1" and held["state"] == "held"
    assert "token" not in held  # a token is its holder's capability
    r = server.post("/locks/orders/release", {"token": 1})
    assert r.status_code == 200 and r.json() == {"name": "orders", "token": 1, "released": True}
    assert server.post("/locks/orders/release", {"token": 1}).status_code == 200  # idempotent
    problem(server.get("/locks/orders"), 404, "not_found")
    g2 = acquire(server, "orders", "w2").json()
    assert g2["token"] == 2 and g2["epoch"] == 1 and g2["outcome"] == "granted"


def test_reacquire_by_the_same_owner_is_reentrant(server):
    g1 = acquire(server, "L", "w1", 1000).json()
    r = acquire(server, "L", "w1", 60000)
    assert r.status_code == 200
    g2 = r.json()
    assert g2["outcome"] == "reentered" and g2["token"] == g1["token"]
    assert g2["expires_in_ms"] > 1000


def test_held_lock_answers_409_naming_holder_and_expiry(server):
    g = acquire(server, "L", "w1").json()
    doc = problem(acquire(server, "L", "w2"), 409, "lock_held")
    assert doc["holder"] == "w1" and doc["expires_at"] == g["expires_at"]
    assert "token" not in doc


def test_takeover_after_expiry_bumps_epoch_and_token_and_fences_the_old_holder(server):
    old = acquire(server, "L", "w1", ttl_ms=200).json()
    # w2 waits server-side; it is granted when w1's lease runs out.
    r = acquire(server, "L", "w2", ttl_ms=30000, wait_ms=20000)
    assert r.status_code == 200, r.text
    new = r.json()
    assert new["outcome"] == "takeover"
    assert new["token"] == old["token"] + 1 and new["epoch"] == old["epoch"] + 1
    problem(server.post("/locks/L/renew", {"token": old["token"]}), 409, "stale_token", "token")
    problem(server.post("/locks/L/release", {"token": old["token"]}), 409, "stale_token")
    assert server.put("/fenced/res", {"token": new["token"], "value": "w2"}).status_code == 200
    problem(server.put("/fenced/res", {"token": old["token"], "value": "w1"}), 409, "stale_token")
    assert server.get("/fenced/res").json() == {"key": "res", "token": new["token"], "value": "w2"}


def test_renew_after_the_lease_ran_out_is_refused(server):
    g = acquire(server, "L", "w1", ttl_ms=100).json()
    await_condition(lambda: server.get("/locks/L").status_code == 404, what="lease to run out")
    problem(server.post("/locks/L/renew", {"token": g["token"]}), 409, "lock_expired", "token")
    problem(server.post("/locks/never/renew", {"token": 1}), 409, "lock_not_held")
    problem(server.post("/locks/never/release", {"token": 1}), 409, "lock_not_held")


def waiter_count(server):
    return server.metric("backbone_lock_waiters")


def test_blocking_acquire_is_woken_by_a_release(server):
    holder = acquire(server, "L", "w1", ttl_ms=120000).json()
    result = {}
    t = threading.Thread(
        target=lambda: result.update(r=acquire(_client(server), "L", "w2", 30000, 60000)))
    t.start()
    await_condition(lambda: waiter_count(server) == 1, what="the acquire to park")
    assert server.post("/locks/L/release", {"token": holder["token"]}).status_code == 200
    t.join(timeout=60)
    # Granted although the holder's 120 s lease and the 60 s wait were both
    # far from over: only the release could have woken it.
    r = result["r"]
    assert r.status_code == 200, r.text
    assert r.json()["owner"] == "w2" and r.json()["outcome"] == "granted"
    assert waiter_count(server) == 0


def _client(server):
    """A second connection to the same server (requests sessions are not
    thread-safe)."""
    import requests

    class C:
        def post(self, path, body):
            return requests.post(server.url + path, json=body, timeout=120)
    return C()


def test_blocking_acquire_gives_up_at_its_deadline(server):
    acquire(server, "L", "w1", ttl_ms=120000)
    doc = problem(acquire(server, "L", "w2", wait_ms=300), 409, "lock_held")
    assert doc["holder"] == "w1"
    assert "after waiting" in doc["detail"]


def test_many_waiters_each_get_the_lock_in_turn(server):
    first = acquire(server, "L", "w0", ttl_ms=120000).json()
    results = []
    lock = threading.Lock()

    def waiter(i):
        c = _client(server)
        r = acquire(c, "L", f"w{i}", ttl_ms=120000, wait_ms=120000)
        with lock:
            results.append(r)
        if r.status_code == 200:
            c.post("/locks/L/release", {"token": r.json()["token"]})

    threads = [threading.Thread(target=waiter, args=(i,)) for i in range(1, 6)]
    for t in threads:
        t.start()
    await_condition(lambda: waiter_count(server) == 5, what="five parked acquires")
    server.post("/locks/L/release", {"token": first["token"]})
    for t in threads:
        t.join(timeout=120)
    assert sorted(r.status_code for r in results) == [200] * 5
    assert sorted(r.json()["token"] for r in results) == [2, 3, 4, 5, 6]


def woken(server):
    return server.metric("backbone_lock_waiters_woken_total") or 0


def test_a_release_wakes_one_waiter_and_each_waiter_gets_the_lock(server):
    first = acquire(server, "L", "w0", ttl_ms=120000).json()
    granted = queue.Queue()

    def waiter(i):
        granted.put(acquire(_client(server), "L", f"w{i}", ttl_ms=120000, wait_ms=120000))

    threads = []
    for i in range(1, 6):  # parked one after another, so they wait in that order
        threads.append(threading.Thread(target=waiter, args=(i,)))
        threads[-1].start()
        await_condition(lambda: waiter_count(server) == i, what=f"acquire {i} to park")
    before = woken(server)
    token = first["token"]
    owners = []
    server.post("/locks/L/release", {"token": token})
    for _ in range(5):
        # Each release hands the lock to one waiter; the next release is
        # the new holder's, once it has the lock.
        r = granted.get(timeout=120)
        assert r.status_code == 200, r.text
        assert r.json()["token"] == token + 1
        token = r.json()["token"]
        owners.append(r.json()["owner"])
        assert server.post("/locks/L/release", {"token": token}).status_code == 200
    for t in threads:
        t.join(timeout=60)
    assert sorted(owners) == [f"w{i}" for i in range(1, 6)]
    assert granted.empty()
    # Six releases, each heard once by this server: each woke one waiter at
    # most (waking every waiter, the five releases with waiters would have
    # woken 5 + 4 + 3 + 2 + 1). Waiters that retried on their own (the
    # once-a-second backstop) are not counted: no release woke them.
    assert 1 <= woken(server) - before <= 6
    assert waiter_count(server) == 0


def test_a_woken_waiter_that_hung_up_hands_the_lock_to_the_next(server):
    held = acquire(server, "L", "a", ttl_ms=120000).json()
    # The first in line hangs up; the second waits on.
    post_and_hang_up(server, "/locks/L/acquire", {"owner": "gone", "wait_ms": 60000},
                     "backbone_lock_waiters")
    result = {}
    t = threading.Thread(
        target=lambda: result.update(r=acquire(_client(server), "L", "next", 120000, 60000)))
    t.start()
    await_condition(lambda: waiter_count(server) == 2, what="the second acquire to park")
    assert server.post("/locks/L/release", {"token": held["token"]}).status_code == 200
    t.join(timeout=90)
    r = result["r"]
    assert r.status_code == 200, r.text
    assert r.json()["owner"] == "next" and r.json()["token"] == held["token"] + 1
    # The first in line was woken by the release, found its client gone and
    # left without the lock (503), handing the release on.
    def gave_up():
        return [line for line in server.lines() if line.get("event") == "http.request"
                and line.get("path") == "/locks/L/acquire" and line.get("status") == 503]
    await_condition(gave_up, what="the request that hung up to be logged")
    assert len(gave_up()) == 1, gave_up()
    assert waiter_count(server) == 0


def test_a_grant_whose_client_hung_up_meanwhile_is_released_at_once(server, database):
    # The client hangs up while its acquire waits for the database; the
    # grant that then commits would stay taken, unheard of, for its whole
    # lease: it is released at once instead.
    hang_up_in_the_database(server, database, "locks", "/locks/gone/acquire",
                            {"owner": "gone", "ttl_ms": 600000})
    line = await_condition(lambda: request_logged(server, "/locks/gone/acquire"),
                           what="the acquire to end")
    assert line["status"] == 503, line
    assert server.metric("backbone_lock_grants_abandoned_total") == 1
    assert server.get("/locks/gone").status_code == 404
    g = acquire(server, "gone", "next").json()
    assert (g["owner"], g["token"]) == ("next", 2)  # the abandoned grant had token 1
    server.post("/locks/gone/release", {"token": 2})
    # A re-entry whose client hung up leaves alone what its owner held.
    kept = acquire(server, "kept", "w").json()
    hang_up_in_the_database(server, database, "locks", "/locks/kept/acquire", {"owner": "w"})
    await_condition(lambda: len([line for line in server.lines()
                                 if line.get("event") == "http.request"
                                 and line.get("path") == "/locks/kept/acquire"]) == 2,
                    what="the re-entry to end")
    held = server.get("/locks/kept").json()
    assert (held["owner"], held["epoch"]) == ("w", kept["epoch"])
    assert server.metric("backbone_lock_grants_abandoned_total") == 1
    assert server.post("/locks/kept/release", {"token": kept["token"]}).status_code == 200
    stops_cleanly(server)


def test_list_pages_through_held_locks(server):
    for name in ["c", "a", "e", "b", "d"]:
        acquire(server, name, "w")
    g = acquire(server, "gone", "w").json()
    server.post("/locks/gone/release", {"token": g["token"]})
    page = server.get("/locks?limit=2").json()
    assert [l["name"] for l in page["locks"]] == ["a", "b"] and page["next_after"] == "b"
    page = server.get("/locks?limit=2&after=b").json()
    assert [l["name"] for l in page["locks"]] == ["c", "d"]
    page = server.get("/locks?limit=2&after=d").json()
    assert [l["name"] for l in page["locks"]] == ["e"] and page["next_after"] is None
    assert all("token" not in l for l in page["locks"])
    problem(server.get("/locks?limit=0"), 400, "invalid_request", "limit")
    problem(server.get("/locks?limit=abc"), 400, "invalid_request", "limit")
    problem(server.get("/locks?after=a%20b"), 400, "invalid_request", "after")


def test_fenced_writes_keep_the_highest_token(server):
    assert server.put("/fenced/acct", {"token": 5, "value": {"balance": 10}}).status_code == 200
    assert server.put("/fenced/acct", {"token": 5, "value": {"balance": 11}}).status_code == 200
    doc = problem(server.put("/fenced/acct", {"token": 4, "value": {"balance": 0}}), 409,
                  "stale_token", "token")
    assert "5" in doc["detail"]
    assert server.put("/fenced/acct", {"token": 6, "value": None}).status_code == 200
    assert server.get("/fenced/acct").json() == {"key": "acct", "token": 6, "value": None}
    problem(server.get("/fenced/none"), 404, "not_found")
    problem(server.put("/fenced/acct", {"token": 7}), 400, "invalid_request", "value")



def test_a_fenced_value_with_a_nul_character_reads_back_as_written(server):
    # It was accepted ("\u0000" in JSON), then read back as null.
    for key, value in (("s", "a\x00b"), ("o", {"x": ["\x00"]})):
        assert server.put(f"/fenced/{key}", {"token": 1, "value": value}).status_code == 200
        assert server.get(f"/fenced/{key}").json()["value"] == value


def test_fenced_numbers_read_back_as_the_same_numbers_in_their_shortest_form(server):
    body = (b'{"token":1,"value":{"a":0.1,"b":1.50,"c":3.0,"d":1e-7,"e":-0.0,'
            b'"f":0.30000000000000004,"g":9007199254740993,"h":-9223372036854775808}}')
    r = server.put("/fenced/n", raw=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    # Decimals are doubles, written back in the fewest digits that read as
    # the same double (not 0.10000000000000001); integers are exact 64-bit.
    assert server.get("/fenced/n").text == (
        '{"key":"n","token":1,"value":{"a":0.1,"b":1.5,"c":3.0,"d":1e-7,"e":-0.0,'
        '"f":0.30000000000000004,"g":9007199254740993,"h":-9223372036854775808}}')
    problem(server.put("/fenced/n", raw=b'{"token":2,"value":[18446744073709551616]}',
                       headers={"Content-Type": "application/json"}), 400, "invalid_request",
            "value[0]")


def test_lock_metrics_follow_events(server):
    g = acquire(server, "L", "w1", ttl_ms=100).json()
    acquire(server, "L", "w2")                                  # contention
    acquire(server, "L", "w2", wait_ms=10000)                   # contention, then takeover
    server.post("/locks/L/renew", {"token": g["token"]})        # stale renew
    server.post("/locks/L/release", {"token": g["token"]})      # stale release
    server.put("/fenced/k", {"token": 9, "value": 1})
    server.put("/fenced/k", {"token": 8, "value": 1})           # refused write
    m = server.metric
    assert m("backbone_lock_acquisitions_total", 'outcome="granted"') == 1
    assert m("backbone_lock_acquisitions_total", 'outcome="takeover"') == 1
    assert m("backbone_lock_takeovers_total") == 1
    assert m("backbone_lock_contentions_total") == 2             # once per request
    assert m("backbone_lock_renew_failures_total", 'reason="stale_token"') == 1
    assert m("backbone_lock_release_failures_total", 'reason="stale_token"') == 1
    assert m("backbone_fenced_writes_refused_total") == 1
    assert m("backbone_locks_held") == 1


BAD_INPUT = [
    # (method, path, body or raw bytes, status, type, field)
    ("POST", "/locks/a/acquire", b'{"owner":', 400, "malformed_json", None),
    ("POST", "/locks/a/acquire", b'["owner"]', 400, "invalid_request", None),
    ("POST", "/locks/a/acquire", b"", 400, "invalid_request", None),
    ("POST", "/locks/a/acquire", b'{"owner":"x","owner":"y"}', 400, "malformed_json", None),
    ("POST", "/locks/a/acquire", b'{"owner":"\xff"}', 400, "malformed_json", None),
    ("POST", "/locks/a/acquire", {}, 400, "invalid_request", "owner"),
    ("POST", "/locks/a/acquire", {"owner": 7}, 400, "invalid_request", "owner"),
    ("POST", "/locks/a/acquire", {"owner": ""}, 400, "invalid_request", "owner"),
    ("POST", "/locks/a/acquire", {"owner": "x" * 201}, 400, "invalid_request", "owner"),
    ("POST", "/locks/a/acquire", {"owner": "a\nb"}, 400, "invalid_request", "owner"),
    ("POST", "/locks/a/acquire", {"owner": "w", "ttl_ms": -1}, 400, "invalid_request", "ttl_ms"),
    ("POST", "/locks/a/acquire", {"owner": "w", "ttl_ms": 0}, 400, "invalid_request", "ttl_ms"),
    ("POST", "/locks/a/acquire", {"owner": "w", "ttl_ms": 10**15}, 400, "invalid_request", "ttl_ms"),
    ("POST", "/locks/a/acquire", {"owner": "w", "ttl_ms": 2**70}, 400, "invalid_request", "ttl_ms"),
    ("POST", "/locks/a/acquire", {"owner": "w", "ttl_ms": "30"}, 400, "invalid_request", "ttl_ms"),
    ("POST", "/locks/a/acquire", {"owner": "w", "ttl_ms": 1.5}, 400, "invalid_request", "ttl_ms"),
    ("POST", "/locks/a/acquire", {"owner": "w", "ttl_ms": None}, 400, "invalid_request", "ttl_ms"),
    ("POST", "/locks/a/acquire", {"owner": "w", "wait_ms": -5}, 400, "invalid_request", "wait_ms"),
    ("POST", "/locks/a/acquire", {"owner": "w", "wait_ms": 10**9}, 400, "invalid_request", "wait_ms"),
    ("POST", "/locks/a/acquire", {"owner": "w", "tll_ms": 5}, 400, "invalid_request", "tll_ms"),
    ("POST", "/locks/" + "n" * 10240 + "/acquire", {"owner": "w"}, 400, "invalid_request", "name"),
    ("POST", "/locks/a%20b/acquire", {"owner": "w"}, 400, "invalid_request", "name"),
    ("POST", "/locks/a/renew", {}, 400, "invalid_request", "token"),
    ("POST", "/locks/a/renew", {"token": 0}, 400, "invalid_request", "token"),
    ("POST", "/locks/a/renew", {"token": "1"}, 400, "invalid_request", "token"),
    ("POST", "/locks/a/renew", {"token": 1, "ttl_ms": 5}, 400, "invalid_request", "ttl_ms"),
    ("POST", "/locks/a/release", {"token": -1}, 400, "invalid_request", "token"),
    ("POST", "/locks/a/release", {"token": 1, "extra": True}, 400, "invalid_request", "extra"),
    ("PUT", "/fenced/k", {"value": 1}, 400, "invalid_request", "token"),
    ("PUT", "/fenced/" + "k" * 300, {"token": 1, "value": 1}, 400, "invalid_request", "key"),
    ("GET", "/locks/" + "n" * 300, None, 400, "invalid_request", "name"),
    # The payment steps' locks and fences are Backbone's own.
    ("POST", "/locks/payment:o1/acquire", {"owner": "w"}, 400, "invalid_request", "name"),
    ("POST", "/locks/payment:o1/renew", {"token": 1}, 400, "invalid_request", "name"),
    ("POST", "/locks/payment:o1/release", {"token": 1}, 400, "invalid_request", "name"),
    ("PUT", "/fenced/payment:o1", {"token": 2**62, "value": 1}, 400, "invalid_request", "key"),
    ("PUT", "/fenced/job:1", {"token": 2**62, "value": 1}, 400, "invalid_request", "key"),
    ("POST", "/locks/job:1/acquire", {"owner": "w"}, 400, "invalid_request", "name"),
    ("PATCH", "/locks/a/acquire", {"owner": "w"}, 405, "method_not_allowed", None),
    ("POST", "/locks/a/steal", {"owner": "w"}, 404, "not_found", None),
]


@pytest.mark.parametrize("method,path,body,status,kind,field", BAD_INPUT,
                         ids=[f"{i}-{c[1][:24]}-{c[3]}" for i, c in enumerate(BAD_INPUT)])
def test_bad_input_gets_a_precise_problem_and_writes_nothing(server, method, path, body, status,
                                                             kind, field):
    if isinstance(body, bytes):
        r = server.request(method, path, raw=body, headers={"Content-Type": "application/json"})
    else:
        r = server.request(method, path, body)
    problem(r, status, kind, field)
    assert server.get("/healthz").status_code == 200
    assert server.get("/locks").json()["locks"] == []
    assert server.get("/fenced/k").status_code == 404


def test_a_waiter_that_hung_up_is_not_granted_the_lock(server):
    held = server.post("/locks/hup/acquire", {"owner": "a", "ttl_ms": 30000}).json()
    post_and_hang_up(server, "/locks/hup/acquire", {"owner": "gone", "wait_ms": 60000},
                     "backbone_lock_waiters")
    assert server.post("/locks/hup/release", {"token": held["token"]}).status_code == 200
    # Woken by the release, the waiter finds its client gone and gives up.
    line = await_condition(lambda: (request_logged(server, "/locks/hup/acquire") or {})
                           .get("status") != 200 and request_logged(server, "/locks/hup/acquire"),
                           what="the waiter to give up")
    assert line["status"] == 503, line
    assert server.get("/locks/hup").status_code == 404  # free, not held by "gone"
    stops_cleanly(server)  # the request that gave up is not left counted as parked
