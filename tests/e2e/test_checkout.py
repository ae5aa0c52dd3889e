"""The edge checkout over HTTP: 202 at once with its outbox event, one
checkout per Idempotency-Key (replays, another body, ten concurrent
requests), bad input, and kill -9 during a burst losing or doubling
nothing."""
import concurrent.futures
import json

import pytest
import requests

from conftest import ENGINE, check_events, outbox_events, problem

BODY = {"customer_id": "cust-1", "currency": "EUR", "payment": {"card": "tok_visa"},
        "items": [{"sku": "A", "qty": 2, "unit_price": 1250}, {"sku": "B", "qty": 1,
                                                               "unit_price": 500}]}


def sell_a_and_b(server):
    """The basket's products (without stock: the saga's end is not the
    point here), so that the edge accepts it."""
    for sku in ("A", "B"):
        r = server.post("/inventory/products", {"sku": sku, "name": sku})
        assert r.status_code in (200, 201), r.text


@pytest.fixture
def server(make_server):
    s = make_server()
    sell_a_and_b(s)
    return s


def checkout(server, key, body=BODY, status=202):
    r = server.post("/checkout", body, headers={"Idempotency-Key": key})
    assert r.status_code == status, r.text
    return r.json()


def test_a_checkout_is_accepted_at_once_with_its_event(server):
    c = checkout(server, "k-1")
    assert c["status"] == "PENDING" and c["total_amount"] == 3000 and c["order_id"] is None
    # Read back as accepted, but for what its saga (already running) moves on.
    moves = {"status", "order_id", "reason", "updated_at", "fulfilment_recorded_at"}
    got = server.get(f"/checkout/{c['checkout_id']}").json()
    assert "fulfilment_recorded_at" in got
    assert {k: v for k, v in got.items() if k not in moves} == \
        {k: v for k, v in c.items() if k not in moves}

    events = [e for e in check_events(server, ["checkout.requested.v1"])
              if e["type"] == "checkout.requested.v1"]  # (the saga's follow)
    assert [e["aggregate_id"] for e in events] == [c["checkout_id"]]
    assert events[0]["data"]["items"] == BODY["items"]
    problem(server.get("/checkout/nope"), 404, "not_found", "checkout_id")


def test_one_checkout_per_key(server):
    first = checkout(server, "k-1")
    reordered = {k: BODY[k] for k in reversed(list(BODY))}
    # The same checkout, as it stands now: its saga may have moved it on.
    moves = {"status", "order_id", "reason", "updated_at"}
    again = checkout(server, "k-1", reordered)
    assert {k: v for k, v in again.items() if k not in moves} == \
        {k: v for k, v in first.items() if k not in moves}
    other = {**BODY, "items": [{"sku": "A", "qty": 3, "unit_price": 1250}]}
    problem(server.post("/checkout", other, headers={"Idempotency-Key": "k-1"}), 422,
            "idempotency_key_reused", "Idempotency-Key")
    assert checkout(server, "k-2")["checkout_id"] != first["checkout_id"]
    assert len(outbox_events(server, type="checkout.requested.v1")) == 2


def test_the_same_body_serialised_otherwise_is_the_same_checkout(server):
    # The fingerprint is the parsed body's canonical form (keys sorted,
    # compact), not its bytes: nested keys in another order and other
    # whitespace are the same request; the order of items is not.
    headers = {"Idempotency-Key": "k-raw", "Content-Type": "application/json"}
    first = server.post("/checkout", raw=json.dumps(BODY), headers=headers)
    assert first.status_code == 202, first.text
    reordered = {k: BODY[k] for k in reversed(list(BODY))}
    reordered["items"] = [{k: it[k] for k in reversed(list(it))} for it in BODY["items"]]
    for raw in (json.dumps(reordered, indent=4), json.dumps(BODY, separators=(",", ":")),
                "\n\t " + json.dumps(reordered, separators=(" , ", " :  ")) + "\n"):
        again = server.post("/checkout", raw=raw, headers=headers)
        assert again.status_code == 202, again.text
        assert again.json()["checkout_id"] == first.json()["checkout_id"]
    swapped = {**BODY, "items": list(reversed(BODY["items"]))}
    problem(server.post("/checkout", raw=json.dumps(swapped), headers=headers), 422,
            "idempotency_key_reused", "Idempotency-Key")
    assert len(outbox_events(server, type="checkout.requested.v1")) == 1


def test_ten_concurrent_requests_with_one_key_make_one_checkout(server):
    def go(_):
        with requests.Session() as s:
            r = s.post(f"{server.url}/checkout", json=BODY, headers={"Idempotency-Key": "same"},
                       timeout=60)
            return r.status_code, r.json()["checkout_id"]

    with concurrent.futures.ThreadPoolExecutor(max_workers=10) as pool:
        answers = list(pool.map(go, range(10)))
    assert {status for status, _ in answers} == {202}
    assert len({cid for _, cid in answers}) == 1
    assert len(outbox_events(server, type="checkout.requested.v1")) == 1


BAD = [
    ({**BODY, "items": [{"sku": "A", "qty": -1, "unit_price": 1}]}, "items[0].qty"),
    ({**BODY, "items": [{"sku": "A", "qty": 1, "unit_price": 0.5}]}, "items[0].unit_price"),
    ({**BODY, "items": [{"sku": "no sku", "qty": 1, "unit_price": 1}]}, "items[0].sku"),
    # Every sku names a product sold here (checked in the transaction that
    # would write the checkout).
    ({**BODY, "items": [{"sku": "A", "qty": 1, "unit_price": 1},
                        {"sku": "NOSUCH", "qty": 1, "unit_price": 1}]}, "items[1].sku"),
    ({**BODY, "payment": {}}, "payment.card"),
    ({**BODY, "payment": {"method": "card"}}, "payment.card"),
    ({**BODY, "items": [{"sku": "A", "qty": 1, "unit_price": 1}] * 10000}, "items"),
    ({**BODY, "items": []}, "items"),
    ({**BODY, "currency": "EURO"}, "currency"),
    ({**BODY, "currency": "ABC"}, "currency"),
    ({**BODY, "payment": "card"}, "payment"),
    ({**BODY, "payment": {"method": "cash"}}, "payment.method"),
    ({**BODY, "payment": {"card": "x", "cvv": "123"}}, "payment.cvv"),
    ({**BODY, "coupon": "FREE"}, "coupon"),
    ({k: v for k, v in BODY.items() if k != "customer_id"}, "customer_id"),
    ({**BODY, "items": [{"sku": "A", "qty": 1000000, "unit_price": 10**15}]}, "items"),
    # Free items are fine, a basket of nothing but free items is not: a
    # payment is of 1 unit or more.
    ({**BODY, "items": [{"sku": "A", "qty": 2, "unit_price": 0},
                        {"sku": "B", "qty": 1, "unit_price": 0}]}, "items"),
]


@pytest.mark.parametrize("body,field", BAD)
def test_bad_checkouts_get_a_precise_problem_and_write_nothing(server, body, field):
    before = outbox_events(server)  # the products'
    problem(server.post("/checkout", body, headers={"Idempotency-Key": "k"}), 400,
            "invalid_request", field)
    assert outbox_events(server) == before


def test_malformed_and_keyless_requests(server):
    before = outbox_events(server)  # the products'
    problem(server.request("POST", "/checkout", raw=b'{"customer_id": ',
                           headers={"Idempotency-Key": "k"}), 400, "malformed_json")
    problem(server.post("/checkout", BODY), 400, "invalid_request", "Idempotency-Key")
    problem(server.post("/checkout", BODY, headers={"Idempotency-Key": "has space"}), 400,
            "invalid_request", "Idempotency-Key")
    assert outbox_events(server) == before


def test_kill9_during_a_burst_loses_no_accepted_checkout_and_doubles_none(make_server):
    server = make_server(["--http-threads", "4"])
    sell_a_and_b(server)
    keys = [f"burst-{i}" for i in range(400)]
    accepted = {}

    def go(key):
        try:
            r = requests.post(f"{server.url}/checkout", json=BODY,
                              headers={"Idempotency-Key": key}, timeout=30)
        except requests.RequestException:
            return key, None
        return key, r.json()["checkout_id"] if r.status_code == 202 else None

    with concurrent.futures.ThreadPoolExecutor(max_workers=32) as pool:
        futures = [pool.submit(go, k) for k in keys]
        # Kill once part of the burst has been answered.
        done = 0
        for f in concurrent.futures.as_completed(futures):
            done += 1
            key, cid = f.result()
            if cid:
                accepted[key] = cid
            if done == 100:
                server.kill9()
    assert 100 <= len(accepted) < len(keys), len(accepted)
    server.start()
    # Every checkout answered 202 is there, once; sending every key again
    # makes the missing ones and repeats none.
    for key, cid in accepted.items():
        assert server.get(f"/checkout/{cid}").json()["checkout_id"] == cid
    for key in keys:
        again = checkout(server, key)
        if key in accepted:
            assert again["checkout_id"] == accepted[key]
    events = outbox_events(server, type="checkout.requested.v1")
    assert len(events) == len(keys)
    assert len({e["aggregate_id"] for e in events}) == len(keys)
