"""Orders over HTTP: one per checkout, the status table and its timeline,
bad input, and the events."""
import pytest

from conftest import at_once, check_events, outbox_events, problem

BODY = {"checkout_id": "chk-1", "customer_id": "cust-9", "currency": "EUR",
        "items": [{"sku": "A", "qty": 2, "unit_price": 1250}, {"sku": "B", "qty": 1,
                                                               "unit_price": 500}]}


def create(server, body=BODY, status=201):
    r = server.post("/orders", body)
    assert r.status_code == status, r.text
    return r.json()


def test_one_order_per_checkout(server):
    order = create(server)
    assert order["status"] == "PENDING" and order["total_amount"] == 3000
    assert order["items"] == BODY["items"]
    assert [t["status"] for t in order["timeline"]] == ["PENDING"]
    assert create(server, status=200) == order
    problem(server.post("/orders", {**BODY, "currency": "USD"}), 422, "idempotency_key_reused",
            "checkout_id")
    assert server.get(f"/orders/{order['order_id']}").json() == order
    assert server.get("/orders?checkout_id=chk-1").json() == {"orders": [order]}
    assert server.get("/orders?checkout_id=chk-2").json() == {"orders": []}
    problem(server.get("/orders/nope"), 404, "not_found", "order_id")


def test_ten_concurrent_creations_for_one_checkout_make_one_order(server):
    answers = at_once(server, "/orders", BODY)
    assert sorted(status for status, _ in answers) == [200] * 9 + [201], answers
    order = answers[0][1]
    assert all(doc == order for _, doc in answers), answers  # one order id, one answer
    assert server.get("/orders?checkout_id=chk-1").json() == {"orders": [order]}
    assert server.get(f"/orders/{order['order_id']}").json() == order
    assert [e["aggregate_id"] for e in outbox_events(server, type="order.created.v1")] == [
        order["order_id"]]


def test_confirm_and_cancel_follow_the_status_table(server):
    a = create(server)["order_id"]
    b = create(server, {**BODY, "checkout_id": "chk-2"})["order_id"]
    for _ in range(2):  # idempotent
        r = server.put(f"/orders/{a}/confirm")
        assert r.status_code == 200 and r.json()["status"] == "CONFIRMED", r.text
        r = server.put(f"/orders/{b}/cancel", {"reason": "payment declined"})
        assert r.status_code == 200 and r.json()["status"] == "CANCELLED", r.text
    timeline = server.get(f"/orders/{b}").json()["timeline"]
    assert [(t["status"], t["reason"]) for t in timeline] == [
        ("PENDING", "created"), ("CANCELLED", "payment declined")]
    problem(server.put(f"/orders/{a}/cancel"), 409, "conflict", "order_id")
    problem(server.put(f"/orders/{b}/confirm"), 409, "conflict", "order_id")
    events = check_events(server, ["order.created.v1", "order.status.changed.v1"])
    changes = [e["data"] for e in events if e["type"] == "order.status.changed.v1"]
    assert changes == [{"order_id": a, "from": "PENDING", "to": "CONFIRMED", "reason": "confirmed"},
                       {"order_id": b, "from": "PENDING", "to": "CANCELLED",
                        "reason": "payment declined"}]


BAD = [
    ({**BODY, "currency": "EURO"}, "currency"),
    ({**BODY, "currency": "XYZ"}, "currency"),
    ({**BODY, "items": []}, "items"),
    ({**BODY, "items": [{"sku": "A", "qty": 0, "unit_price": 1}]}, "items[0].qty"),
    ({**BODY, "items": [{"sku": "A", "qty": 1, "unit_price": -5}]}, "items[0].unit_price"),
    ({**BODY, "items": [{"sku": "A", "qty": 1, "unit_price": 1.5}]}, "items[0].unit_price"),
    ({**BODY, "items": [{"sku": "A", "qty": 1}]}, "items[0].unit_price"),
    ({**BODY, "items": [{"sku": "A", "qty": 1, "unit_price": 1}] * 101}, "items"),
    ({**BODY, "customer_id": ""}, "customer_id"),
    ({**BODY, "note": "hi"}, "note"),
    ({k: v for k, v in BODY.items() if k != "checkout_id"}, "checkout_id"),
]


@pytest.mark.parametrize("body,field", BAD)
def test_bad_orders_get_a_precise_problem_and_write_nothing(server, body, field):
    problem(server.post("/orders", body), 400, "invalid_request", field)
    assert outbox_events(server) == []
    assert server.get("/orders?checkout_id=chk-1").json() == {"orders": []}


def test_malformed_json_writes_nothing(server):
    for raw in (b'{"checkout_id":', b'[1]', b'{"checkout_id":"a","checkout_id":"b"}'):
        r = server.request("POST", "/orders", raw=raw, headers={"Content-Type": "application/json"})
        assert r.status_code == 400 and r.headers["Content-Type"].startswith(
            "application/problem+json"), r.text
    assert outbox_events(server) == []


def test_bad_moves(server):
    problem(server.put("/orders/x/confirm", {"reason": 5}), 400, "invalid_request", "reason")
    problem(server.put("/orders/x/cancel", {"why": "no"}), 400, "invalid_request", "why")
    problem(server.get("/orders"), 400, "invalid_request", "checkout_id")
