"""--roles: a process serves only the services it is given; on PostgreSQL the
services run as separate processes on one database and share its outbox,
and checkouts accepted by one process run their sagas in others."""
import concurrent.futures
import signal
import subprocess
import uuid

import pytest

from conftest import BIN, ENGINE, await_condition, cli, outbox_events, problem

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
    assert "http_requests_total" in inv.metrics()


@pytest.mark.skipif(ENGINE != "pg", reason="one SQLite file has one owner process")
def test_services_in_separate_processes_share_one_database(make_server):
    inv = make_server(["--roles", "inventory,outbox", "--workers", "0"])
    orders = make_server(["--roles", "orders,checkout", "--workers", "0"])
    payments = make_server(["--roles", "payments", "--workers", "0"])
    assert inv.post("/inventory/products", PRODUCT).status_code == 201
    order = orders.post("/orders", ORDER)
    assert order.status_code == 201
    pay = {"order_id": order.json()["order_id"], "amount": 300, "currency": "EUR",
           "idempotency_key": "pay-co-1"}
    auth = payments.post("/payments/authorize", pay)
    assert auth.status_code == 200 and auth.json()["state"] == "AUTHORIZED", auth.text
    assert payments.post(f"/payments/capture/{auth.json()['authorization_id']}").status_code == 200
    assert payments.post("/payments/authorize", pay).json()["state"] == "CAPTURED"  # once
    assert not serves(orders, "GET", "/inventory/products/TEA-1")
    assert not serves(inv, "GET", "/orders?checkout_id=co-1")
    for path in ("/orders/x", "/inventory/products/TEA-1", "/outbox"):
        assert not serves(payments, "GET", path), path
    assert not serves(inv, "POST", "/payments/authorize", pay)
    # Every service's events are in the one outbox, read from the role that serves it.
    types = [ev["type"] for ev in outbox_events(inv)]
    assert types == ["inventory.product.created.v1", "inventory.adjusted.v1", "order.created.v1",
                     "payment.authorized.v1", "payment.captured.v1"]


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


def checkout(server, sku, qty):
    body = {"customer_id": "c-1", "currency": "EUR",
            "items": [{"sku": sku, "qty": qty, "unit_price": 100}],
            "payment": {"method": "card", "card": "tok_visa"}}
    r = server.post("/checkout", body, headers={"Idempotency-Key": uuid.uuid4().hex})
    assert r.status_code == 202, r.text
    return r.json()["checkout_id"]


def completed(server, ids):
    """Every checkout of `ids` once none is PENDING (their documents)."""
    def done():
        docs = [server.get(f"/checkout/{i}").json() for i in ids]
        return docs if all(d["status"] != "PENDING" for d in docs) else None
    return await_condition(done, 120, "every checkout to settle")


@pytest.mark.skipif(ENGINE != "pg", reason="one SQLite file has one owner process")
def test_checkouts_accepted_in_one_process_run_their_sagas_in_others(make_server, database,
                                                                     tmp_path):
    # The edge accepts checkouts and answers reads; it starts and runs no saga.
    edge = make_server(["--roles", "checkout,inventory,orders,payments", "--workers", "0"])
    assert edge.post("/inventory/products", {"sku": "MUG", "name": "Mug", "stock": 500}) \
        .status_code == 201
    # First a starter that hears no notification: its poll alone starts them.
    make_server(["--roles", "sagas,workers", "--job-wakeups", "false", "--saga-poll", "200ms",
                 "--job-poll", "200ms"])
    first = [checkout(edge, "MUG", 1) for _ in range(5)]
    assert {d["status"] for d in completed(edge, first)} == {"COMPLETED"}
    # Then a `backbone worker` joins, woken by LISTEN/NOTIFY: two starters
    # claim the same stream of checkouts.
    log = open(tmp_path / "worker.log", "wb")
    worker = subprocess.Popen([BIN, "worker", "--db", database.url, "--concurrency", "8"],
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            rest = list(pool.map(lambda q: checkout(edge, "MUG", q), [1, 2, 3] * 20))
        docs = completed(edge, rest)
    finally:
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(timeout=60)
        log.close()
    assert code == 0, (tmp_path / "worker.log").read_text()[-4000:]
    assert {d["status"] for d in docs} == {"COMPLETED"}
    ids = first + rest
    # One saga per checkout, whichever starter claimed it; one authorization
    # and one capture per order at the PSP; the stock agrees.
    assert database.scalar("SELECT count(*) FROM sagas") == len(ids)
    assert database.scalar("SELECT count(DISTINCT correlation_id) FROM sagas") == len(ids)
    assert database.scalar("SELECT count(*) FROM psp_charges WHERE op = 'authorize'") == len(ids)
    assert database.scalar("SELECT count(*) FROM psp_charges WHERE op = 'capture'") == len(ids)
    sold = 5 + sum([1, 2, 3] * 20)
    assert edge.get("/inventory/products/MUG/availability").json() == \
        {"sku": "MUG", "on_hand": 500 - sold, "reserved": 0, "available": 500 - sold}
