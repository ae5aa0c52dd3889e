"""The inventory over HTTP: products and stock by Idempotency-Key,
all-or-none reservations, commit, release, expiry by TTL, adjustments, 200
buyers racing for the last 10 units, bad input, and the events."""
import concurrent.futures
import re

import pytest
import requests

from conftest import ENGINE, api_ms, at_once, await_condition, check_events, outbox_events, problem


def product(server, sku, stock=0, name=None):
    r = server.post("/inventory/products", {"sku": sku, "name": name or sku, "stock": stock})
    assert r.status_code == 201, r.text
    return r.json()


def stock(server, sku):
    return server.get(f"/inventory/products/{sku}/availability").json()


def reserve(server, order_id, items, status=201, **extra):
    r = server.post("/inventory/reservations", {"order_id": order_id, "items": items, **extra})
    assert r.status_code == status, r.text
    return r.json()


def test_a_product_reads_back_with_its_fields(server):
    created = product(server, "SKU-R", 7, "Green mug")
    got = server.get("/inventory/products/SKU-R")
    assert got.status_code == 200, got.text
    assert got.json() == created
    p = got.json()
    assert set(p) == {"sku", "name", "on_hand", "reserved", "available", "created_at",
                      "updated_at"}
    assert (p["sku"], p["name"], p["on_hand"], p["reserved"], p["available"]) == \
        ("SKU-R", "Green mug", 7, 0, 7)
    assert p["created_at"] == p["updated_at"]
    reserve(server, "o-r", [{"sku": "SKU-R", "qty": 3}])
    after = server.get("/inventory/products/SKU-R").json()
    assert (after["on_hand"], after["reserved"], after["available"]) == (7, 3, 4)
    assert after["created_at"] == p["created_at"]
    assert api_ms(after["updated_at"]) >= api_ms(p["updated_at"])


def test_products_and_stock_by_idempotency_key(server):
    p = product(server, "SKU-1", 5, "Blue mug")
    assert (p["on_hand"], p["reserved"], p["available"]) == (5, 0, 5)
    again = server.post("/inventory/products", {"sku": "SKU-1", "name": "Blue mug", "stock": 5})
    assert again.status_code == 200 and again.json()["on_hand"] == 5
    problem(server.post("/inventory/products", {"sku": "SKU-1", "name": "Red mug"}), 409,
            "conflict", "sku")
    # Another initial stock is another product too, not the old one's 200.
    for other in (6, 0):
        problem(server.post("/inventory/products", {"sku": "SKU-1", "name": "Blue mug",
                                                    "stock": other}), 409, "conflict", "stock")
    problem(server.post("/inventory/products", {"sku": "SKU-1", "name": "Blue mug"}), 409,
            "conflict", "stock")  # stock defaults to 0
    key = {"Idempotency-Key": "delivery-42"}
    first = server.post("/inventory/products/SKU-1/stock", {"qty": 10}, headers=key)
    assert first.status_code == 200 and first.json()["on_hand"] == 15
    replay = server.post("/inventory/products/SKU-1/stock", {"qty": 10}, headers=key)
    assert replay.json() == first.json()  # the first answer, not a second addition
    problem(server.post("/inventory/products/SKU-1/stock", {"qty": 11}, headers=key), 422,
            "idempotency_key_reused", "Idempotency-Key")
    problem(server.post("/inventory/products/SKU-1/stock", {"qty": 1}), 400, "invalid_request",
            "Idempotency-Key")
    problem(server.post("/inventory/products/NOPE/stock", {"qty": 1},
                        headers={"Idempotency-Key": "x"}), 404, "not_found", "sku")
    assert stock(server, "SKU-1") == {"sku": "SKU-1", "on_hand": 15, "reserved": 0,
                                      "available": 15}
    # The same creation, retried after a restock: its initial stock, not on_hand.
    retried = server.post("/inventory/products", {"sku": "SKU-1", "name": "Blue mug", "stock": 5})
    assert retried.status_code == 200 and retried.json()["on_hand"] == 15
    none = product(server, "SKU-0", 0, "Empty")
    assert none["on_hand"] == 0
    assert server.post("/inventory/products", {"sku": "SKU-0", "name": "Empty"}).status_code == 200
    problem(server.post("/inventory/products", {"sku": "SKU-0", "name": "Empty", "stock": 1}), 409,
            "conflict", "stock")
    problem(server.get("/inventory/products/NOPE"), 404, "not_found", "sku")
    # Each creation is announced once, with its stock, even none; a
    # replayed creation announces nothing.
    created = [(e["aggregate_id"], e["data"]["name"], e["data"]["on_hand"])
               for e in outbox_events(server, type="inventory.product.created.v1")]
    assert created == [("SKU-1", "Blue mug", 5), ("SKU-0", "Empty", 0)]


def test_reservations_take_all_or_nothing_and_answer_once_per_order(server):
    product(server, "A", 5)
    product(server, "B", 1)
    doc = problem(server.post("/inventory/reservations", {
        "order_id": "o-1", "items": [{"sku": "A", "qty": 2}, {"sku": "B", "qty": 3}]}), 409,
        "insufficient_stock", "items")
    assert doc["short"] == [{"sku": "B", "requested": 3, "available": 1}]
    assert stock(server, "A")["reserved"] == 0  # nothing taken
    r = reserve(server, "o-1", [{"sku": "B", "qty": 1}, {"sku": "A", "qty": 2}], ttl_ms=60000)
    assert r["state"] == "active" and r["items"] == [{"sku": "A", "qty": 2}, {"sku": "B", "qty": 1}]
    same = reserve(server, "o-1", [{"sku": "A", "qty": 2}, {"sku": "B", "qty": 1}], status=200)
    assert same == r
    problem(server.post("/inventory/reservations", {"order_id": "o-1",
                                                    "items": [{"sku": "A", "qty": 1}]}),
            422, "idempotency_key_reused", "items")
    assert stock(server, "A") == {"sku": "A", "on_hand": 5, "reserved": 2, "available": 3}
    assert server.get("/inventory/reservations/o-1").json() == r


def test_ten_concurrent_reservations_for_one_order_reserve_once(server):
    product(server, "A", 50)
    body = {"order_id": "o-race", "items": [{"sku": "A", "qty": 3}]}
    answers = at_once(server, "/inventory/reservations", body)
    assert sorted(status for status, _ in answers) == [200] * 9 + [201], answers
    first = answers[0][1]
    assert first["state"] == "active" and first["items"] == body["items"]
    assert all(doc == first for _, doc in answers), answers
    assert server.get("/inventory/reservations/o-race").json() == first
    assert stock(server, "A") == {"sku": "A", "on_hand": 50, "reserved": 3, "available": 47}
    assert [e["aggregate_id"] for e in outbox_events(server, type="inventory.reserved.v1")] == \
        ["o-race"]


def test_a_reservation_without_a_ttl_expires_after_10_minutes(server):
    product(server, "A", 5)
    r = reserve(server, "o-ttl", [{"sku": "A", "qty": 1}])
    assert r["created_at"] == r["updated_at"]
    assert api_ms(r["expires_at"]) - api_ms(r["created_at"]) == 600000, r
    stored = server.get("/inventory/reservations/o-ttl").json()
    assert stored == r
    # An explicit TTL counts from the same creation time.
    short = reserve(server, "o-ttl-1s", [{"sku": "A", "qty": 1}], ttl_ms=1000)
    assert api_ms(short["expires_at"]) - api_ms(short["created_at"]) == 1000, short


def test_commit_sells_release_gives_back_each_once(server):
    product(server, "A", 10)
    reserve(server, "sold", [{"sku": "A", "qty": 4}])
    reserve(server, "kept", [{"sku": "A", "qty": 3}])
    for _ in range(2):  # idempotent
        c = server.post("/inventory/reservations/sold/commit")
        assert c.status_code == 200 and c.json()["state"] == "committed", c.text
        d = server.request("DELETE", "/inventory/reservations/kept")
        assert d.status_code == 200 and d.json()["state"] == "released", d.text
    assert stock(server, "A") == {"sku": "A", "on_hand": 6, "reserved": 0, "available": 6}
    problem(server.request("DELETE", "/inventory/reservations/sold"), 409, "conflict",
            "order_id")
    problem(server.post("/inventory/reservations/kept/commit"), 409, "conflict", "order_id")
    problem(server.request("DELETE", "/inventory/reservations/never"), 404, "not_found",
            "order_id")


def test_reservations_expire_by_themselves(make_server):
    server = make_server(["--reservation-sweep", "100ms"])
    product(server, "A", 3)
    reserve(server, "slow", [{"sku": "A", "qty": 3}], ttl_ms=300)
    assert stock(server, "A")["available"] == 0
    await_condition(lambda: server.get("/inventory/reservations/slow").json()["state"]
                    == "expired", what="the reservation to expire")
    assert stock(server, "A")["available"] == 3
    problem(server.post("/inventory/reservations/slow/commit"), 409, "reservation_expired",
            "order_id")
    released = outbox_events(server, type="inventory.released.v1")
    assert [e["data"]["reason"] for e in released] == ["expired"]


def test_adjustments_apply_once_and_never_below_reserved(server):
    product(server, "A", 5)
    reserve(server, "o", [{"sku": "A", "qty": 4}])
    body = {"key": "count-7", "sku": "A", "delta": -2, "reason": "stock count"}
    problem(server.post("/inventory/adjust", body), 409, "insufficient_stock", "delta")
    body["delta"] = -1
    first = server.post("/inventory/adjust", body)
    assert first.status_code == 200 and first.json()["on_hand"] == 4
    assert server.post("/inventory/adjust", body).json() == first.json()
    # This endpoint's key is the body's "key", not a header.
    problem(server.post("/inventory/adjust", {**body, "delta": -1, "reason": "other"}), 422,
            "idempotency_key_reused", "key")
    ret = server.post("/inventory/adjust", {"key": "rma-1", "sku": "A", "delta": 2,
                                            "reason": "customer return"})
    assert ret.json()["available"] == 2


@pytest.mark.parametrize("path,body,headers,on_hand,delta", [
    ("/inventory/products/A/stock", {"qty": 10}, {"Idempotency-Key": "race"}, 15, 10),
    ("/inventory/adjust", {"key": "race", "sku": "A", "delta": -2, "reason": "stock count"},
     None, 3, -2),
], ids=["restock", "adjust"])
def test_ten_concurrent_stock_changes_with_one_key_apply_once(server, path, body, headers,
                                                              on_hand, delta):
    product(server, "A", 5)
    answers = at_once(server, path, body, headers=headers)
    assert [status for status, _ in answers] == [200] * 10, answers
    first = answers[0][1]
    assert first["on_hand"] == on_hand
    assert all(doc == first for _, doc in answers), answers
    assert stock(server, "A") == {"sku": "A", "on_hand": on_hand, "reserved": 0,
                                  "available": on_hand}
    applied = [(e["data"]["delta"], e["data"]["on_hand"])
               for e in outbox_events(server, type="inventory.adjusted.v1")
               if e["data"].get("key") == "race"]
    assert applied == [(delta, on_hand)]


def test_adjusting_an_unknown_sku_is_not_found_and_writes_nothing(server):
    product(server, "A", 5)
    before = outbox_events(server)
    body = {"key": "ghost-1", "sku": "GHOST", "delta": 2, "reason": "customer return"}
    problem(server.post("/inventory/adjust", body), 404, "not_found", "sku")
    after = outbox_events(server)
    assert after == before
    assert not [e for e in after if e["aggregate_id"] == "GHOST"]  # no inventory.adjusted.v1
    problem(server.get("/inventory/products/GHOST"), 404, "not_found", "sku")
    # Nor was the key kept: once the product exists, the same request applies.
    product(server, "GHOST", 1)
    done = server.post("/inventory/adjust", body)
    assert done.status_code == 200 and done.json()["on_hand"] == 3, done.text
    assert [e["data"]["key"] for e in outbox_events(server, type="inventory.adjusted.v1")
            if e["aggregate_id"] == "GHOST" and e["data"].get("key")] == ["ghost-1"]


def test_idempotency_keys_are_forgotten_after_their_retention(make_server):
    server = make_server(["--idempotency-retention", "1s", "--reservation-sweep", "20ms"])
    product(server, "A")
    restock = lambda: server.post("/inventory/products/A/stock", {"qty": 5},  # noqa: E731
                                  headers={"Idempotency-Key": "restock-1"}).json()["on_hand"]
    assert restock() == 5
    # Replays answer 5 until the key is forgotten; then the key is new again.
    await_condition(lambda: restock() == 10, what="the key to be forgotten")
    assert stock(server, "A")["on_hand"] == 10


def test_200_buyers_racing_for_the_last_10_units_get_exactly_10(server):
    product(server, "HOT", 10)

    def buy(i):
        with requests.Session() as s:
            r = s.post(f"{server.url}/inventory/reservations",
                       json={"order_id": f"buyer-{i}", "items": [{"sku": "HOT", "qty": 1}]},
                       timeout=120)
            return r.status_code

    with concurrent.futures.ThreadPoolExecutor(max_workers=200) as pool:
        codes = list(pool.map(buy, range(200)))
    assert codes.count(201) == 10, codes
    assert codes.count(409) == 190, codes
    assert stock(server, "HOT") == {"sku": "HOT", "on_hand": 10, "reserved": 10, "available": 0}
    assert len(outbox_events(server, type="inventory.reserved.v1")) == 10


BAD = [
    # (method, path, body, headers, status, type, field)
    ("POST", "/inventory/products", {"sku": "a b", "name": "x"}, {}, 400, "invalid_request", "sku"),
    ("POST", "/inventory/products", {"sku": "A", "name": "x", "stock": -1}, {}, 400,
     "invalid_request", "stock"),
    ("POST", "/inventory/products", {"sku": "A", "name": "x", "price": 1}, {}, 400,
     "invalid_request", "price"),
    ("POST", "/inventory/products", {"sku": "A"}, {}, 400, "invalid_request", "name"),
    ("POST", "/inventory/products/P/stock", {"qty": 0}, {"Idempotency-Key": "k"}, 400,
     "invalid_request", "qty"),
    ("POST", "/inventory/products/P/stock", {"qty": "5"}, {"Idempotency-Key": "k"}, 400,
     "invalid_request", "qty"),
    ("POST", "/inventory/reservations", {"order_id": "o", "items": [{"sku": "P", "qty": -1}]},
     {}, 400, "invalid_request", "items[0].qty"),
    ("POST", "/inventory/reservations", {"order_id": "o", "items": [{"sku": "NOPE", "qty": 1}]},
     {}, 404, "not_found", "items[0].sku"),
    ("POST", "/inventory/reservations",
     {"order_id": "o", "items": [{"sku": "P", "qty": 1}] * 10000}, {}, 400, "invalid_request",
     "items"),
    ("POST", "/inventory/reservations",
     {"order_id": "o", "items": [{"sku": "P", "qty": 1}, {"sku": "P", "qty": 2}]}, {}, 400,
     "invalid_request", "items[1].sku"),
    ("POST", "/inventory/reservations", {"order_id": "o", "items": []}, {}, 400,
     "invalid_request", "items"),
    ("POST", "/inventory/reservations", {"order_id": "o", "items": [{"sku": "P", "qty": 1}],
                                         "ttl_ms": 10**12}, {}, 400, "invalid_request", "ttl_ms"),
    ("POST", "/inventory/reservations", {"items": [{"sku": "P", "qty": 1}]}, {}, 400,
     "invalid_request", "order_id"),
    ("POST", "/inventory/adjust", {"key": "k", "sku": "P", "delta": 0, "reason": "r"}, {}, 400,
     "invalid_request", "delta"),
    ("POST", "/inventory/adjust", {"key": "k", "sku": "P", "delta": 1, "reason": "a\nb"}, {},
     400, "invalid_request", "reason"),
    # Within delta's bounds, but more than a product may hold once added.
    ("POST", "/inventory/adjust", {"key": "k", "sku": "P", "delta": 10**12, "reason": "r"}, {},
     400, "invalid_request", "delta"),
]


@pytest.mark.parametrize("method,path,body,headers,status,kind,field", BAD)
def test_bad_input_gets_a_precise_problem_and_writes_nothing(server, method, path, body, headers,
                                                             status, kind, field):
    product(server, "P", 5)
    before = outbox_events(server)
    problem(server.request(method, path, body, headers=headers), status, kind, field)
    assert outbox_events(server) == before
    assert stock(server, "P") == {"sku": "P", "on_hand": 5, "reserved": 0, "available": 5}


def test_malformed_json_is_refused(server):
    problem(server.request("POST", "/inventory/reservations", raw=b'{"order_id": "o", "items": ['),
            400, "malformed_json")


def test_every_change_writes_an_event_that_matches_its_schema(make_server):
    server = make_server(["--reservation-sweep", "100ms"])
    product(server, "A", 10)
    server.post("/inventory/products/A/stock", {"qty": 5}, headers={"Idempotency-Key": "d1"})
    reserve(server, "o-1", [{"sku": "A", "qty": 2}])
    trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    r = server.post("/inventory/reservations", {"order_id": "o-2",
                                                "items": [{"sku": "A", "qty": 1}]},
                    headers={"traceparent": trace})
    assert r.status_code == 201
    reserve(server, "o-3", [{"sku": "A", "qty": 1}], ttl_ms=100)
    server.post("/inventory/reservations/o-1/commit")
    server.request("DELETE", "/inventory/reservations/o-2")
    server.post("/inventory/adjust", {"key": "r", "sku": "A", "delta": 1, "reason": "return"})
    await_condition(lambda: server.get("/inventory/reservations/o-3").json()["state"]
                    == "expired", what="o-3 to expire")
    events = check_events(server, ["inventory.product.created.v1", "inventory.adjusted.v1",
                                   "inventory.reserved.v1", "inventory.committed.v1",
                                   "inventory.released.v1"])
    assert [(e["type"], e["data"].get("on_hand")) for e in events if e["aggregate_id"] == "A"][:2] \
        == [("inventory.product.created.v1", 10), ("inventory.adjusted.v1", 10)]
    assert [e["type"] for e in events if e["aggregate_id"] == "o-1"] == [
        "inventory.reserved.v1", "inventory.committed.v1"]
    # The request's trace goes with its event; a request without one starts
    # a trace of its own, and so does the sweep that expires o-3.
    assert [e["traceparent"] for e in events if e["aggregate_id"] == "o-2"][0] == trace
    assert all(re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}", e["traceparent"])
               for e in events), events
    o3 = [(e["type"], e["traceparent"][3:35]) for e in events if e["aggregate_id"] == "o-3"]
    assert [t for t, _ in o3] == ["inventory.reserved.v1", "inventory.released.v1"]
    assert len({trace_id for _, trace_id in o3} | {trace[3:35]}) == 3, o3


def test_events_past_the_outbox_retention_are_pruned(make_server):
    server = make_server(["--outbox-retention", "4s"])  # room to read them first
    for i in range(3):
        reserve(server, f"r-{i}", [{"sku": "A", "qty": 1}], status=404)  # no event
        product(server, f"P-{i}", 5)  # created and adjusted: two events each
    events = outbox_events(server)  # on PostgreSQL, gives them their seqs
    assert len(events) == 6
    # PostgreSQL keeps the event with the highest seq: the next seqs count on
    # from it.
    kept = 0 if ENGINE == "sqlite" else 1
    await_condition(lambda: server.metric("backbone_outbox_events_pruned_total") == 6 - kept,
                    what="old events to be pruned")
    assert [e["seq"] for e in outbox_events(server)] == [e["seq"] for e in events[6 - kept:]]
    product(server, "P-new", 5)
    fresh = server.get(f"/outbox?after={events[-1]['seq']}").json()["events"]
    assert [e["aggregate_id"] for e in fresh] == ["P-new", "P-new"]
