"""--roles: a process serves only the services it is given; on PostgreSQL the
services run as separate processes on one database and share its outbox."""
import pytest

from conftest import ENGINE, cli, outbox_events, problem

PRODUCT = {"sku": "TEA-1", "name": "Tea", "stock": 5}
ORDER = {"checkout_id": "co-1", "customer_id": "c-1", "currency": "EUR",
         "items": [{"sku": "TEA-1", "qty": 1, "unit_price": 300}]}


def serves(server, method, path, body=None):
    """Whether the route exists on this process (anything but a 404 problem
    naming the route as unknown)."""
    resp = server.request(method, path, body)
    return not (resp.status_code == 404 and resp.json()["detail"] == "no such route")


def test_a_process_serves_only_its_roles(make_server):
    inv = make_server(["--roles", "inventory,outbox"])
    assert inv.post("/inventory/products", PRODUCT).status_code == 201
    assert serves(inv, "GET", "/outbox")
    for method, path, body in (("POST", "/orders", ORDER), ("GET", "/orders/x", None),
                               ("POST", "/checkout", {}), ("POST", "/payments/authorize", {}),
                               ("GET", "/psp/config", None), ("GET", "/locks", None),
                               ("GET", "/jobs", None), ("GET", "/queues", None)):
        assert not serves(inv, method, path, body), path
    # Health, readiness and metrics belong to every process.
    assert inv.get("/healthz").status_code == 200
    assert inv.get("/readyz").status_code == 200
    assert "backbone_http_requests_total" in inv.metrics()


@pytest.mark.skipif(ENGINE != "pg", reason="one SQLite file has one owner process")
def test_services_in_separate_processes_share_one_database(make_server):
    inv = make_server(["--roles", "inventory,outbox", "--workers", "0"])
    orders = make_server(["--roles", "orders,checkout", "--workers", "0"])
    assert inv.post("/inventory/products", PRODUCT).status_code == 201
    assert orders.post("/orders", ORDER).status_code == 201
    assert not serves(orders, "GET", "/inventory/products/TEA-1")
    assert not serves(inv, "GET", "/orders?checkout_id=co-1")
    # Both services' events are in the one outbox, read from either role.
    types = [ev["type"] for ev in outbox_events(inv)]
    assert types == ["inventory.adjusted.v1", "order.created.v1"]


def test_an_unknown_role_is_refused_by_name(database):
    out = cli("serve", "--db", database.url, "--port", "0", "--roles", "inventory,billing")
    assert out.returncode == 2
    assert "--roles: unknown role 'billing'" in out.stderr
    out = cli("serve", "--db", database.url, "--port", "0", "--roles", "")
    assert out.returncode == 2
    assert "--roles" in out.stderr


def test_bad_input_to_a_role_still_gets_a_problem(make_server):
    inv = make_server(["--roles", "inventory"])
    problem(inv.post("/inventory/products", {"sku": "TEA-1"}), 400, "invalid_request", "name")
