"""GET /outbox over HTTP, on both engines: pages in seq order that follow
next_after to the end, filters by type and aggregate, and bad query
arguments refused by name."""
import pytest

from conftest import outbox_events, problem


def make_events(server):
    """Eight events: three products' creation and initial stock, one order,
    one adjust."""
    for sku in ("A", "B", "C"):
        r = server.post("/inventory/products", {"sku": sku, "name": sku, "stock": 5})
        assert r.status_code == 201, r.text
    order = {"checkout_id": "co-1", "customer_id": "c-1", "currency": "EUR",
             "items": [{"sku": "B", "qty": 1, "unit_price": 300}]}
    assert server.post("/orders", order).status_code == 201
    r = server.post("/inventory/adjust", {"sku": "B", "delta": 2, "reason": "return",
                                          "key": "adj-1"})
    assert r.status_code == 200, r.text


def test_pages_follow_next_after_to_the_end(server):
    make_events(server)
    every = outbox_events(server)
    assert [e["type"] for e in every] == [
        "inventory.product.created.v1", "inventory.adjusted.v1"] * 3 + [
        "order.created.v1", "inventory.adjusted.v1"]
    seen, after = [], 0
    while True:
        page = server.get(f"/outbox?after={after}&limit=2").json()
        assert len(page["events"]) <= 2
        seen += page["events"]
        if page["next_after"] is None:
            break
        assert page["next_after"] == page["events"][-1]["seq"]
        after = page["next_after"]
    assert seen == every
    # Past the end: nothing, and no next page.
    page = server.get(f"/outbox?after={every[-1]['seq']}").json()
    assert page["events"] == [] and page["next_after"] is None


def test_filters_by_type_and_aggregate(server):
    make_events(server)
    assert [e["aggregate_id"] for e in outbox_events(server, type="inventory.adjusted.v1")] == \
        ["A", "B", "C", "B"]
    assert [e["type"] for e in outbox_events(server, aggregate_id="B")] == \
        ["inventory.product.created.v1", "inventory.adjusted.v1", "inventory.adjusted.v1"]
    both = outbox_events(server, type="inventory.adjusted.v1", aggregate_id="C")
    assert [(e["type"], e["aggregate_id"]) for e in both] == [("inventory.adjusted.v1", "C")]
    assert outbox_events(server, type="payment.refunded.v1") == []


BAD = [
    ("limit=0", "limit"),
    ("limit=1001", "limit"),
    ("limit=ten", "limit"),
    ("after=-1", "after"),
    ("after=1.5", "after"),
    ("type=", "type"),
    ("type=" + "t" * 201, "type"),
    ("aggregate_id=a%01b", "aggregate_id"),
    # Not UTF-8: PostgreSQL refused it as a parameter, a 500.
    ("type=%B9%A9e", "type"),
    ("aggregate_id=%C3%28", "aggregate_id"),
]


@pytest.mark.parametrize("query,field", BAD, ids=[q[:20] for q, _ in BAD])
def test_bad_query_arguments_are_refused_by_name(server, query, field):
    problem(server.get(f"/outbox?{query}"), 400, "invalid_request", field)
