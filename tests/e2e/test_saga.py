"""The checkout saga over HTTP, on both engines: POST /checkout ends by itself
in a confirmed order or a compensated failure. The scenarios of
scripts/scenarios/ as tests: success under concurrency, a PSP that hangs,
a decline, a shortage, a reservation that expires before the payment, a
crash in the middle, one key sent ten times, an order or reservation
moved by hand while its saga waits, and (PostgreSQL) a payment run paused
past its takeover by another process."""
import concurrent.futures
import datetime
import json
import random
import signal
import sqlite3
import uuid

import pytest

from conftest import (ENGINE, api_ms, await_condition, check_events, cli, outbox_events, problem,
                      psql)

FAST_RETRIES = {"max_attempts": 3, "backoff": {"base_ms": 20, "factor": 2}}


def product(server, sku, stock):
    r = server.post("/inventory/products", {"sku": sku, "name": sku, "stock": stock})
    assert r.status_code == 201, r.text


def checkout(server, items, card="tok_visa", key=None):
    body = {"customer_id": "cust-1", "currency": "EUR", "items": items,
            "payment": {"method": "card", "card": card}}
    r = server.post("/checkout", body, headers={"Idempotency-Key": key or uuid.uuid4().hex})
    assert r.status_code == 202, r.text
    return r.json()["checkout_id"]


def settled(server, checkout_id, timeout_s=60):
    """The checkout once its saga has ended it."""
    def done():
        c = server.get(f"/checkout/{checkout_id}").json()
        return c if c["status"] != "PENDING" else None
    return await_condition(done, timeout_s, f"checkout {checkout_id} to settle")


def saga_of(server, checkout_id):
    sagas = server.get(f"/sagas?correlation_id={checkout_id}").json()["sagas"]
    assert len(sagas) == 1, sagas
    return server.get(f"/sagas/{sagas[0]['saga_id']}").json()


def steps(saga):
    return [(t["step"], t["phase"], t["outcome"]) for t in saga["timeline"]]


def stock(server, sku):
    return server.get(f"/inventory/products/{sku}/availability").json()


def payments_of(server, order_id):
    return server.get(f"/payments?order_id={order_id}").json()["payments"]


def psp_charges(server):
    charges, after = [], 0
    while True:
        page = server.get(f"/psp/charges?after={after}&limit=1000").json()
        charges += page["charges"]
        if page["next_after"] is None:
            return charges
        after = page["next_after"]


def fulfilment_jobs(server):
    """The payloads of every fulfilment job ({order_id, checkout_id})."""
    jobs, after = [], 0
    while True:
        page = server.get(f"/jobs?queue=default&after={after}&limit=1000").json()
        jobs += [j["payload"] for j in page["jobs"] if j["handler"] == "fulfilment"]
        if page["next_after"] is None:
            return jobs
        after = page["next_after"]


STATUS_CHANGED = "checkout.status.changed.v1"


def status_events(server, checkout_id=None):
    """The checkout.status.changed.v1 events (of one checkout)."""
    filters = {"type": STATUS_CHANGED}
    if checkout_id:
        filters["aggregate_id"] = checkout_id
    return outbox_events(server, **filters)


def started_traces(server):
    """Each checkout's trace, as its checkout.requested.v1 carries it: the
    request's, or the one the request started without one."""
    return {ev["aggregate_id"]: ev["traceparent"]
            for ev in outbox_events(server, type="checkout.requested.v1")}


def announced_once(c, events, trace):
    """Settled checkout `c` has one status event among `events` (others'
    too, maybe), which says how it ended and carries `trace`."""
    mine = [ev for ev in events if ev["aggregate_id"] == c["checkout_id"]]
    assert len(mine) == 1, mine
    [ev] = mine
    assert ev["aggregate_type"] == "checkout" and ev["traceparent"] == trace, ev
    assert ev["data"] == {"checkout_id": c["checkout_id"], "order_id": c["order_id"],
                          "from": "PENDING", "to": c["status"], "reason": c["reason"]}, ev


def ended_once(server, c, trace=None):
    """Settled checkout `c` has one status event, asked for by its id, with
    `trace` (None: the checkout's own)."""
    if trace is None:
        trace = started_traces(server)[c["checkout_id"]]
        assert trace, c  # a request without a trace started one
    announced_once(c, status_events(server, c["checkout_id"]), trace)


COMPENSATED = [("authorize_payment", "compensation", "ok"),
               ("reserve_inventory", "compensation", "ok"),
               ("create_order", "compensation", "ok")]


def test_a_checkouts_trace_runs_through_its_saga_to_every_event(server):
    product(server, "T", 10)
    traces = [f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01" for _ in range(6)]
    body = {"customer_id": "cust-1", "currency": "EUR",
            "items": [{"sku": "T", "qty": 1, "unit_price": 300}],
            "payment": {"method": "card", "card": "tok_visa"}}

    def go(trace):
        r = server.post("/checkout", body, headers={"Idempotency-Key": uuid.uuid4().hex,
                                                    "traceparent": trace})
        assert r.status_code == 202, r.text
        return r.json()["checkout_id"]
    # At once, so that the steps of several sagas share their batches.
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        ids = list(pool.map(go, traces))
    orders = {}
    for cid, trace in zip(ids, traces):
        c = settled(server, cid)
        assert c["status"] == "COMPLETED", c
        orders[c["order_id"]] = trace
        # Its end too, though the sagas ended in batches: its own trace.
        ended_once(server, c, trace)
    # Every event of an order (its own, its reservation's, its payment's)
    # carries the trace of the request that made it.
    by_order = {}
    for ev in outbox_events(server):
        order_id = ev["data"].get("order_id") or (
            ev["aggregate_id"] if ev["aggregate_type"] == "order" else None)
        if order_id in orders:
            by_order.setdefault(order_id, []).append((ev["type"], ev["traceparent"]))
    for order_id, trace in orders.items():
        types = {t for t, _ in by_order[order_id]}
        assert {"order.created.v1", "inventory.reserved.v1", "payment.authorized.v1",
                "inventory.committed.v1", "order.status.changed.v1"} <= types, types
        assert {tp for _, tp in by_order[order_id]} == {trace}, by_order[order_id]
    # And its fulfilment job.
    jobs = server.get("/jobs?queue=default&limit=1000").json()["jobs"]
    fulfil = {j["payload"]["order_id"]: j["traceparent"] for j in jobs
              if j["handler"] == "fulfilment"}
    assert fulfil == orders


def test_concurrent_checkouts_all_complete_and_everything_agrees(server):
    for sku in ("A", "B", "C"):
        product(server, sku, 100)
    baskets = [[{"sku": random.choice("ABC"), "qty": random.randint(1, 3), "unit_price": 250}]
               for _ in range(40)]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        ids = list(pool.map(lambda b: checkout(server, b), baskets))
    done = [settled(server, i) for i in ids]
    assert {c["status"] for c in done} == {"COMPLETED"}
    sold = {sku: sum(b[0]["qty"] for b in baskets if b[0]["sku"] == sku) for sku in "ABC"}
    for sku in "ABC":
        assert stock(server, sku) == {"sku": sku, "on_hand": 100 - sold[sku], "reserved": 0,
                                      "available": 100 - sold[sku]}
    captured, sagas = 0, []
    for c, basket in zip(done, baskets):
        order = server.get(f"/orders/{c['order_id']}").json()
        assert order["status"] == "CONFIRMED"
        [pay] = payments_of(server, c["order_id"])
        assert pay["state"] == "CAPTURED" and pay["captured_amount"] == c["total_amount"]
        assert c["total_amount"] == basket[0]["qty"] * 250
        captured += pay["captured_amount"]
        saga = saga_of(server, c["checkout_id"])
        assert saga["state"] == "COMPLETED"
        assert [s for s, _, _ in steps(saga)] == saga["steps"]
        sagas.append(saga)
    # The PSP saw one authorization and one capture per order, nothing else.
    ops = [ch["op"] for ch in psp_charges(server)]
    assert sorted(ops) == sorted(["authorize", "capture"] * len(ids))
    assert captured == sum(b[0]["qty"] * 250 for b in baskets)
    # A fulfilment job per confirmed order, recorded with its job's end, once.
    await_condition(lambda: len([j for j in server.get("/jobs?limit=1000").json()["jobs"]
                                 if j["handler"] == "fulfilment" and j["state"] == "completed"])
                    == len(ids), what="every fulfilment job to run")
    for c in done:
        assert server.get(f"/checkout/{c['checkout_id']}").json()["fulfilment_recorded_at"]
    assert all(float(line.split(" ")[1]) == 0 for line in server.metrics().splitlines()
               if line.startswith("backbone_job_stale_reports_total"))
    check_events(server, ["checkout.requested.v1", "order.created.v1", "inventory.reserved.v1",
                          "payment.authorized.v1", "payment.captured.v1",
                          "inventory.committed.v1", "order.status.changed.v1", STATUS_CHANGED])
    ends, traces = status_events(server), started_traces(server)
    assert len(ends) == len(ids)
    for c in done:
        announced_once(c, ends, traces[c["checkout_id"]])
    assert server.metric("backbone_sagas_started_total", 'type="checkout"') == len(ids)
    assert server.metric("backbone_sagas_ended_total", 'type="checkout",outcome="completed"') \
        == len(ids)
    # Each run of a step in every saga's timeline timed, under its step (a
    # batch's member too: once each); more only for a unit the store ran
    # again after a conflict, whose first runs rolled back.
    timed = samples(server)
    for (step, phase), k in step_runs(sagas).items():
        assert timed[step_series(step, phase)] >= k, (step, phase)
    # Jobs submitted inside Backbone count too: a fulfilment per order, and at
    # least the first step's job per saga.
    assert server.metric("backbone_jobs_submitted_total", 'queue="default"') == len(ids)
    assert server.metric("backbone_jobs_submitted_total", 'queue="sagas"') >= len(ids)
    # Every batch that formed (units, payments, accepts, reads, fulfilments)
    # committed as one: none fell back to running its members alone.
    fallbacks = [line for line in server.metrics().splitlines()
                 if line.startswith(("backbone_saga_unit_batch_fallbacks_total",
                                     "backbone_payment_batch_fallbacks_total",
                                     "backbone_store_group_fallbacks_total"))]
    assert all(float(line.split(" ")[1]) == 0 for line in fallbacks), fallbacks


STEP_SECONDS = "backbone_saga_step_duration_seconds"


def samples(server):
    """Every sample /metrics gives now, by its name and labels as written."""
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in server.metrics().splitlines() if line and not line.startswith("#")}


def grew(before, after, series):
    return after.get(series, 0) - before.get(series, 0)


def step_runs(sagas):
    """How many times each (step, phase) ran, as the sagas' timelines say."""
    runs = {}
    for saga in sagas:
        for step, phase, _ in steps(saga):
            runs[step, phase] = runs.get((step, phase), 0) + 1
    return runs


def step_series(step, phase, part="count"):
    return f'{STEP_SECONDS}_{part}{{type="checkout",step="{step}",phase="{phase}"}}'


def test_saga_metrics_count_the_sagas_and_every_step_run(server):
    # Checkouts one after another (no unit runs twice for a conflict): the
    # step histogram counts exactly the runs the timelines show, each step
    # and phase under its own labels; every PSP call takes at least 2 ms.
    product(server, "M", 10)
    server.put("/psp/config", {"latency_ms": 2, "decline_cards": ["tok_stolen"]})
    before = samples(server)
    n = 3
    done = [settled(server, checkout(server, [{"sku": "M", "qty": 1, "unit_price": 100}]))
            for _ in range(n)]
    assert {c["status"] for c in done} == {"COMPLETED"}
    sagas = [saga_of(server, c["checkout_id"]) for c in done]
    mid = samples(server)
    assert grew(before, mid, 'backbone_sagas_started_total{type="checkout"}') == n
    assert grew(before, mid, 'backbone_sagas_ended_total{type="checkout",outcome="completed"}') \
        == n
    runs = step_runs(sagas)
    assert {step for step, _ in runs} == set(sagas[0]["steps"])  # all six, actions only
    assert {phase for _, phase in runs} == {"action"}
    for (step, phase), k in runs.items():
        assert grew(before, mid, step_series(step, phase)) == k, (step, phase)
        assert grew(before, mid, step_series(step, phase, "bucket").replace(
            "}", ',le="+Inf"}')) == k
    for step in ("authorize_payment", "capture_payment"):  # a PSP call each, >= 2 ms
        assert grew(before, mid, step_series(step, "action", "sum")) >= n * 0.002
    assert all(grew(before, mid, step_series(step, "compensation")) == 0 for step in runs)

    # A declined checkout: its actions up to the payment, then the
    # compensations, each counted under its step and phase "compensation".
    c = settled(server, checkout(server, [{"sku": "M", "qty": 1, "unit_price": 100}],
                                 card="tok_stolen"))
    assert c["status"] == "FAILED"
    saga = saga_of(server, c["checkout_id"])
    after = samples(server)
    assert grew(mid, after, 'backbone_sagas_started_total{type="checkout"}') == 1
    assert grew(mid, after,
                'backbone_sagas_ended_total{type="checkout",outcome="compensated"}') == 1
    assert grew(mid, after, 'backbone_sagas_ended_total{type="checkout",outcome="completed"}') \
        == 0
    runs = step_runs([saga])
    assert [(s, p) for s, p, _ in COMPENSATED] == [k for k in runs if k[1] == "compensation"]
    for step in sagas[0]["steps"]:
        for phase in ("action", "compensation"):
            assert grew(mid, after, step_series(step, phase)) == runs.get((step, phase), 0), \
                (step, phase)


def test_a_decline_compensates_at_once_without_retries(server):
    product(server, "A", 5)
    server.put("/psp/config", {"decline_cards": ["tok_stolen"]})
    c = settled(server, checkout(server, [{"sku": "A", "qty": 2, "unit_price": 100}],
                                 card="tok_stolen"))
    assert c["status"] == "FAILED" and c["reason"] == "the payment was declined"
    saga = saga_of(server, c["checkout_id"])
    assert saga["state"] == "FAILED"
    assert steps(saga) == [("create_order", "action", "ok"), ("reserve_inventory", "action", "ok"),
                           ("authorize_payment", "action", "failed")] + COMPENSATED
    assert server.get(f"/orders/{c['order_id']}").json()["status"] == "CANCELLED"
    assert stock(server, "A")["available"] == 5
    [pay] = payments_of(server, c["order_id"])
    assert pay["state"] == "FAILED" and pay["captured_amount"] == 0
    assert fulfilment_jobs(server) == []  # nothing to fulfil
    ended_once(server, c)  # FAILED, "the payment was declined", its order


def test_more_buyers_than_stock_the_excess_fail_out_of_stock(server):
    product(server, "LAST", 4)
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        ids = list(pool.map(lambda _: checkout(server, [{"sku": "LAST", "qty": 1,
                                                          "unit_price": 100}]), range(10)))
    done = [settled(server, i) for i in ids]
    assert sorted(c["status"] for c in done) == ["COMPLETED"] * 4 + ["FAILED"] * 6
    assert {c["reason"] for c in done if c["status"] == "FAILED"} == {"out of stock"}
    assert stock(server, "LAST") == {"sku": "LAST", "on_hand": 0, "reserved": 0, "available": 0}
    for c in done:
        if c["status"] == "FAILED":  # nothing was charged for them
            assert payments_of(server, c["order_id"]) == []
    ends, traces = status_events(server), started_traces(server)
    assert len(ends) == len(ids)
    for c in done:
        announced_once(c, ends, traces[c["checkout_id"]])


def test_a_psp_that_hangs_is_retried_then_compensated(make_server):
    server = make_server(["--psp-timeout", "100ms"])
    server.put("/queues/sagas", FAST_RETRIES)
    product(server, "A", 5)
    # Every authorization attempt hangs past the step's timeout (then the PSP
    # is back, for the void).
    server.put("/psp/config", {"hang_next": FAST_RETRIES["max_attempts"]})
    c = settled(server, checkout(server, [{"sku": "A", "qty": 1, "unit_price": 700}]))
    assert c["status"] == "FAILED" and c["reason"] == "the payment service is unavailable"
    saga = saga_of(server, c["checkout_id"])
    tries = [o for s, p, o in steps(saga) if s == "authorize_payment" and p == "action"]
    assert tries == ["retry", "retry", "failed"]
    assert steps(saga)[-3:] == COMPENSATED
    assert server.get(f"/orders/{c['order_id']}").json()["status"] == "CANCELLED"
    assert stock(server, "A")["available"] == 5
    [pay] = payments_of(server, c["order_id"])
    assert pay["captured_amount"] == 0 and pay["state"] in ("VOIDED", "FAILED")
    assert "capture" not in {ch["op"] for ch in psp_charges(server)}


def test_a_capture_whose_answers_are_lost_is_refunded_not_voided(make_server):
    server = make_server(["--psp-timeout", "100ms"])
    server.put("/queues/sagas", FAST_RETRIES)
    product(server, "A", 5)
    # The PSP captures on every attempt, but no answer arrives in time: the
    # compensation's void is refused (the money was taken), so it refunds.
    server.put("/psp/config", {"hang_next": FAST_RETRIES["max_attempts"], "hang_op": "capture"})
    c = settled(server, checkout(server, [{"sku": "A", "qty": 1, "unit_price": 700}]))
    assert c["status"] == "FAILED" and c["reason"] == "the payment service is unavailable"
    saga = saga_of(server, c["checkout_id"])
    tries = [o for s, p, o in steps(saga) if s == "capture_payment" and p == "action"]
    assert tries == ["retry", "retry", "failed"]
    assert ("capture_payment", "compensation", "ok") in steps(saga)
    [pay] = payments_of(server, c["order_id"])
    assert (pay["state"], pay["captured_amount"], pay["refunded_amount"]) == ("REFUNDED", 700, 700)
    ops = sorted((ch["op"], ch["outcome"]) for ch in psp_charges(server))
    assert ops == [("authorize", "approved"), ("capture", "approved"), ("refund", "approved"),
                   ("void", "declined")]
    assert server.get(f"/orders/{c['order_id']}").json()["status"] == "CANCELLED"
    assert stock(server, "A")["available"] == 5


def test_finished_sagas_are_deleted_after_the_retention(make_server):
    server = make_server(["--saga-retention", "1ms", "--saga-poll", "50ms"])
    product(server, "A", 5)
    c = settled(server, checkout(server, [{"sku": "A", "qty": 1, "unit_price": 300}]))
    assert c["status"] == "COMPLETED"
    payment_lock = f"payment:{c['order_id']}"
    assert server.get(f"/fenced/{payment_lock}").status_code == 200
    await_condition(lambda: server.get(
        f"/sagas?correlation_id={c['checkout_id']}").json()["sagas"] == [],
        what="the saga to be deleted")
    assert server.metric("backbone_sagas_pruned_total") >= 1
    # Its payment lock and fence went with it (two rows per order, else)...
    problem(server.get(f"/locks/{payment_lock}"), 404, "not_found", None)
    problem(server.get(f"/fenced/{payment_lock}"), 404, "not_found", None)
    # ...but the business records stay: only the orchestration's history goes.
    assert server.get(f"/checkout/{c['checkout_id']}").json()["status"] == "COMPLETED"
    assert server.get(f"/orders/{c['order_id']}").json()["status"] == "CONFIRMED"


def test_a_reservation_that_expires_before_the_payment_is_never_oversold(make_server):
    # The seed's "oversell" scenario, prevented: the payment takes longer than
    # the reservation's TTL, the stock goes back meanwhile, and the commit is
    # refused instead of selling it twice.
    server = make_server(["--checkout-reservation-ttl", "200ms", "--reservation-sweep", "20ms",
                          "--psp-latency-ms", "300"])
    product(server, "A", 1)
    c = settled(server, checkout(server, [{"sku": "A", "qty": 1, "unit_price": 900}]))
    assert c["status"] == "FAILED"
    assert c["reason"] == "the reservation expired before the payment completed"
    [pay] = payments_of(server, c["order_id"])
    assert pay["state"] == "REFUNDED" and pay["refunded_amount"] == 900
    assert stock(server, "A") == {"sku": "A", "on_hand": 1, "reserved": 0, "available": 1}
    assert server.get(f"/orders/{c['order_id']}").json()["status"] == "CANCELLED"
    saga = saga_of(server, c["checkout_id"])
    assert ("commit_reservation", "action", "failed") in steps(saga)
    assert ("capture_payment", "compensation", "ok") in steps(saga)


def test_one_key_sent_ten_times_at_once_makes_one_saga(server):
    product(server, "A", 5)
    items = [{"sku": "A", "qty": 1, "unit_price": 100}]
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        ids = set(pool.map(lambda _: checkout(server, items, key="same-key"), range(10)))
    assert len(ids) == 1
    c = settled(server, ids.pop())
    assert c["status"] == "COMPLETED"
    assert len(server.get(f"/sagas?correlation_id={c['checkout_id']}").json()["sagas"]) == 1
    assert stock(server, "A")["on_hand"] == 4


def test_kill_9_in_the_middle_of_checkouts_loses_nothing_and_charges_once(make_server):
    server = make_server(["--psp-latency-ms", "2"])
    product(server, "A", 1000)
    accepted = []
    for _ in range(3):
        for _ in range(60):
            accepted.append(checkout(server, [{"sku": "A", "qty": 1, "unit_price": 100}]))
        server.kill9()
        server.start()
    done = [settled(server, i, timeout_s=120) for i in accepted]
    assert {c["status"] for c in done} == {"COMPLETED"}
    assert stock(server, "A") == {"sku": "A", "on_hand": 1000 - len(accepted), "reserved": 0,
                                  "available": 1000 - len(accepted)}
    for c in done:
        [pay] = payments_of(server, c["order_id"])
        assert pay["state"] == "CAPTURED" and pay["captured_amount"] == 100
    ops = [ch["op"] for ch in psp_charges(server)]
    assert sorted(ops) == sorted(["authorize", "capture"] * len(accepted))
    ends, traces = status_events(server), started_traces(server)  # one per checkout, crashes or not
    assert len(ends) == len(accepted)
    for c in done:
        announced_once(c, ends, traces[c["checkout_id"]])
    # One fulfilment job per order, naming its checkout, crashes or not.
    assert sorted((j["order_id"], j["checkout_id"]) for j in fulfilment_jobs(server)) \
        == sorted((c["order_id"], c["checkout_id"]) for c in done)


def test_sagas_api_filters_and_refuses_bad_input(server):
    product(server, "A", 1)
    settled(server, checkout(server, [{"sku": "A", "qty": 1, "unit_price": 100}]))
    assert len(server.get("/sagas?type=checkout&state=COMPLETED").json()["sagas"]) == 1
    assert server.get("/sagas?state=STUCK").json() == {"sagas": [], "next_after": None}
    problem(server.get("/sagas?state=DONE"), 400, "invalid_request", "state")
    problem(server.get("/sagas?limit=0"), 400, "invalid_request", "limit")
    problem(server.get("/sagas/nope"), 404, "not_found", "saga_id")
    saga = server.get("/sagas").json()["sagas"][0]
    problem(server.post(f"/sagas/{saga['saga_id']}/retry"), 409, "conflict", "saga_id")


def test_a_checkout_wakes_its_saga_and_its_steps_without_waiting_for_a_poll(make_server):
    # Pollers a minute apart: the saga starter (for new checkouts) and the
    # idle workers (for step jobs). Each checkout still ends well inside
    # half a minute, so the starter and the workers were woken: in process
    # on SQLite, by LISTEN/NOTIFY on PostgreSQL. One after another, so that
    # each needs a wake-up of its own (not the starter's first look).
    server = make_server(["--saga-poll", "60s", "--job-poll", "60s"])
    product(server, "W", 5)
    for _ in range(3):
        c = settled(server, checkout(server, [{"sku": "W", "qty": 1, "unit_price": 100}]),
                    timeout_s=30)
        assert c["status"] == "COMPLETED", c
        saga = saga_of(server, c["checkout_id"])
        assert saga["state"] == "COMPLETED"
        assert [s for s, _, o in steps(saga) if o == "ok"] == saga["steps"]
    assert stock(server, "W") == {"sku": "W", "on_hand": 2, "reserved": 0, "available": 2}


def add_finished_saga(database, saga_type):
    """A COMPLETED saga of another type, written straight into the database
    (the server defines only "checkout"): what a second saga type's rows
    look like to GET /sagas. Returns its id."""
    saga_id = str(uuid.uuid4())
    now = int(datetime.datetime.now(datetime.timezone.utc).timestamp() * 1000)
    sql = ("INSERT INTO sagas (id, type, correlation_id, state, step, version, data,"
           " retries, created_at_ms, updated_at_ms)"
           f" VALUES ('{saga_id}', '{saga_type}', 'corr-{saga_id}', 'COMPLETED', 0, 2, '{{}}',"
           f" 0, {now}, {now})")
    if database.name is None:
        with sqlite3.connect(database.url[len("sqlite:"):], timeout=30) as c:
            c.execute(sql)
    else:
        psql(sql, database.url)
    return saga_id


def test_sagas_are_listed_by_type(server, database):
    product(server, "A", 5)
    done = [settled(server, checkout(server, [{"sku": "A", "qty": 1, "unit_price": 100}]))
            for _ in range(2)]
    mine = sorted(saga_of(server, c["checkout_id"])["saga_id"] for c in done)
    other = add_finished_saga(database, "refund")

    def listed(query):
        page = server.get(f"/sagas?{query}").json()
        return [(s["saga_id"], s["type"]) for s in page["sagas"]], page["next_after"]
    assert sorted(listed("")[0]) == sorted([(i, "checkout") for i in mine] + [(other, "refund")])
    assert listed("type=checkout") == ([(i, "checkout") for i in mine], None)
    assert listed("type=refund") == ([(other, "refund")], None)
    assert listed("type=checkout&state=COMPLETED") == ([(i, "checkout") for i in mine], None)
    assert listed("type=refund&state=COMPLETED") == ([(other, "refund")], None)
    assert listed("type=checkout&state=FAILED") == ([], None)
    # A type nothing has: no sagas, not an error.
    assert server.get("/sagas?type=nosuchtype").json() == {"sagas": [], "next_after": None}
    assert server.get("/sagas?type=nosuchtype&state=COMPLETED").json() == \
        {"sagas": [], "next_after": None}
    # Pages of one, the filter applied on every page.
    first, after = listed("type=checkout&limit=1")
    assert first == [(mine[0], "checkout")] and after == mine[0]
    second, after = listed(f"type=checkout&limit=1&after={after}")
    assert second == [(mine[1], "checkout")] and after == mine[1]
    assert listed(f"type=checkout&limit=1&after={after}") == ([], None)
    problem(server.get("/sagas?type=no%20spaces"), 400, "invalid_request", "type")


def stuck_checkout(make_server):
    """A server whose one checkout's saga is STUCK: the PSP hangs past its
    timeout for the authorization and for the void that would undo it. The
    server, the checkout's id and the saga as GET /sagas lists it."""
    server = make_server(["--psp-timeout", "100ms"])
    server.put("/queues/sagas", FAST_RETRIES)
    product(server, "A", 5)
    server.put("/psp/config", {"hang_next": 100})
    cid = checkout(server, [{"sku": "A", "qty": 1, "unit_price": 700}])
    [stuck] = await_condition(lambda: server.get("/sagas?state=STUCK").json()["sagas"],
                              what="the saga to be stuck")
    assert stuck["correlation_id"] == cid
    return server, cid, stuck


def test_the_cli_lists_by_type_and_retries_a_stuck_saga(make_server):
    # The stuck compensation of test_a_compensation_that_keeps_failing_is_
    # stuck_until_retried, found and retried with `backbone sagas`.
    server, cid, stuck = stuck_checkout(make_server)
    saga_id = stuck["saga_id"]

    out = cli("sagas", "list", "--type", "checkout", server=server)
    assert out.returncode == 0, out.stderr
    [line] = out.stdout.splitlines()
    assert line.split()[:3] == [saga_id, "STUCK", "checkout"], line
    out = cli("sagas", "list", "--type", "checkout", "--json", server=server)
    assert out.returncode == 0, out.stderr
    listed = json.loads(out.stdout)
    assert [(s["saga_id"], s["type"], s["state"]) for s in listed["sagas"]] == \
        [(saga_id, "checkout", "STUCK")]
    out = cli("sagas", "list", "--type", "checkout", "--state", "STUCK", "--json", server=server)
    assert [s["saga_id"] for s in json.loads(out.stdout)["sagas"]] == [saga_id]
    out = cli("sagas", "list", "--type", "nosuchtype", "--json", server=server)
    assert out.returncode == 0 and json.loads(out.stdout) == {"sagas": [], "next_after": None}
    out = cli("sagas", "list", "--type", "nosuchtype", server=server)
    assert out.returncode == 0 and out.stdout == ""

    # A person brings the PSP back and retries from the command line.
    server.put("/psp/config", {"hang_next": 0})
    out = cli("sagas", "retry", saga_id, "--json", server=server)
    assert out.returncode == 0, out.stderr
    retried = json.loads(out.stdout)
    assert retried["saga_id"] == saga_id and retried["state"] == "COMPENSATING"
    assert retried["error"] is None
    assert steps(retried)[-1] == ("authorize_payment", "compensation", "retried")
    c = settled(server, cid)
    assert c["status"] == "FAILED" and c["reason"] == "the payment service is unavailable"
    saga = saga_of(server, cid)
    assert saga["state"] == "FAILED"
    assert steps(saga)[-3:] == COMPENSATED
    [pay] = payments_of(server, c["order_id"])
    assert pay["state"] == "VOIDED" and pay["captured_amount"] == 0
    assert stock(server, "A")["available"] == 5
    assert server.metric("backbone_sagas_stuck", 'type="checkout"') == 0
    out = cli("sagas", "list", "--type", "checkout", "--state", "STUCK", "--json", server=server)
    assert json.loads(out.stdout)["sagas"] == []
    # Not stuck any more: a second retry is refused.
    out = cli("sagas", "retry", saga_id, server=server)
    assert out.returncode == 1 and "only a STUCK saga" in out.stderr


def test_a_saga_waiting_for_a_retry_says_when(server):
    # The authorization fails once, transiently; the retry is ten minutes
    # away (no jitter, so the server's backoff is exact). Meanwhile the saga
    # says when it will try again: its step outcome's time plus the backoff,
    # the time its job is due.
    backoff_ms = 600000
    assert server.put("/queues/sagas", {"max_attempts": 5, "backoff": {
        "base_ms": backoff_ms, "factor": 2, "cap_ms": 3600000, "jitter_pct": 0}}).status_code \
        in (200, 201)
    product(server, "A", 5)
    server.put("/psp/config", {"fail_next": 1})
    cid = checkout(server, [{"sku": "A", "qty": 1, "unit_price": 400}])

    def waiting():
        sagas = server.get(f"/sagas?correlation_id={cid}").json()["sagas"]
        if not sagas:
            return None  # not started yet
        saga = server.get(f"/sagas/{sagas[0]['saga_id']}").json()
        return saga if saga["timeline"] and saga["timeline"][-1]["outcome"] == "retry" else None
    saga = await_condition(waiting, what="the first authorization to fail")
    last = saga["timeline"][-1]
    assert (last["step"], last["phase"], last["attempt"]) == ("authorize_payment", "action", 1)
    assert last["error"]
    assert (saga["state"], saga["step"], saga["retries"]) == ("RUNNING", "authorize_payment", 1)
    assert saga["next_retry_at"] is not None
    assert api_ms(saga["next_retry_at"]) - api_ms(last["ended_at"]) == backoff_ms
    assert saga["updated_at"] == last["ended_at"]
    # The list says the same, and the job that will retry is due then.
    [listed] = server.get(f"/sagas?correlation_id={cid}").json()["sagas"]
    assert listed["next_retry_at"] == saga["next_retry_at"] and listed["retries"] == 1
    job = server.get(f"/jobs/{saga['job_id']}").json()
    assert job["state"] == "pending" and job["run_at"] == saga["next_retry_at"]
    out = cli("sagas", "get", saga["saga_id"], server=server)
    assert out.returncode == 0 and f"retries 1, next retry at {saga['next_retry_at']}" in out.stdout
    # Run now, it succeeds: nothing waits for a retry any more.
    assert server.post(f"/jobs/{saga['job_id']}/run").status_code == 200
    assert settled(server, cid)["status"] == "COMPLETED"
    done = saga_of(server, cid)
    assert done["state"] == "COMPLETED" and done["next_retry_at"] is None
    tries = [(t["outcome"], t["attempt"]) for t in done["timeline"]
             if t["step"] == "authorize_payment"]
    assert tries == [("retry", 1), ("ok", 2)]


def test_the_cli_lists_shows_and_refuses_to_retry_a_finished_saga(server):
    product(server, "A", 1)
    server.put("/psp/config", {"decline_cards": ["tok_stolen"]})
    c = settled(server, checkout(server, [{"sku": "A", "qty": 1, "unit_price": 100}],
                                 card="tok_stolen"))
    saga_id = saga_of(server, c["checkout_id"])["saga_id"]
    out = cli("sagas", "list", "--state", "FAILED", server=server)
    assert out.returncode == 0 and saga_id in out.stdout and "the payment was declined" in out.stdout
    out = cli("sagas", "get", saga_id, server=server)
    assert out.returncode == 0
    assert "authorize_payment    action       failed" in out.stdout
    assert "create_order         compensation ok" in out.stdout
    out = cli("sagas", "get", saga_id, "--json", server=server)
    assert '"state":"FAILED"' in out.stdout
    out = cli("sagas", "retry", saga_id, server=server)
    assert out.returncode == 1 and "only a STUCK saga" in out.stderr
    assert cli("sagas", "list", "--state", "BAD", server=server).returncode == 1
    assert cli("sagas", "frob", server=server).returncode == 2


def test_a_compensation_that_keeps_failing_is_stuck_until_retried(make_server):
    server, cid, stuck = stuck_checkout(make_server)
    assert server.get(f"/checkout/{cid}").json()["status"] == "PENDING"
    assert stock(server, "A")["reserved"] == 1  # held until the payment is settled
    assert server.metric("backbone_sagas_stuck", 'type="checkout"') == 1
    # A person brings the PSP back and retries.
    server.put("/psp/config", {"hang_next": 0})
    retry_trace = f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01"
    r = server.post(f"/sagas/{stuck['saga_id']}/retry", headers={"traceparent": retry_trace})
    assert r.status_code == 200 and r.json()["state"] == "COMPENSATING"
    assert r.json()["error"] is None  # the stuck compensation's error went with it
    assert ("authorize_payment", "compensation", "retried") in steps(r.json())
    c = settled(server, cid)
    assert c["status"] == "FAILED" and c["reason"] == "the payment service is unavailable"
    saga = saga_of(server, cid)
    undo = [o for s, p, o in steps(saga) if s == "authorize_payment" and p == "compensation"]
    assert undo == ["retry", "retry", "failed", "retried", "ok"]
    # Stuck, then retried: it ended once, on the checkout's trace, not on
    # the one of the retry that drove it on.
    ended_once(server, c)
    assert status_events(server, cid)[0]["traceparent"] != retry_trace
    assert stock(server, "A")["available"] == 5
    [pay] = payments_of(server, c["order_id"])
    assert pay["state"] == "VOIDED" and pay["captured_amount"] == 0
    assert server.metric("backbone_sagas_stuck", 'type="checkout"') == 0
    # It stuck once and ended once, compensated (counted just after its
    # commit, which the checkout's status shows first).
    await_condition(lambda: server.metric("backbone_sagas_ended_total",
                                          'type="checkout",outcome="compensated"') == 1,
                    what="the end to be counted")
    assert server.metric("backbone_sagas_stuck_total", 'type="checkout"') == 1
    ended = [line for line in server.metrics().splitlines()
             if line.startswith("backbone_sagas_ended_total{")]
    assert ended == ['backbone_sagas_ended_total{type="checkout",outcome="compensated"} 1'], ended


def waiting_for_a_retry(server):
    """Fail the authorization once with retries an hour apart: the saga waits
    at authorize_payment with its order created and its stock reserved until
    the test runs its job by hand. Returns (checkout, the saga's job id)."""
    server.put("/queues/sagas", {"max_attempts": 5, "backoff": {"base_ms": 3600000}})
    server.put("/psp/config", {"fail_next": 1})
    cid = checkout(server, [{"sku": "A", "qty": 2, "unit_price": 400}])

    def failed_once():
        if not server.get(f"/sagas?correlation_id={cid}").json()["sagas"]:
            return False  # not started yet
        return ("authorize_payment", "action", "retry") in steps(saga_of(server, cid))
    await_condition(failed_once, what="the first authorization to fail")
    [job] = server.get("/jobs?queue=sagas&state=pending").json()["jobs"]
    return server.get(f"/checkout/{cid}").json(), job["job_id"]


# Someone moves the order or the stock by hand while the saga waits: the
# saga finds it at commit or at confirmation, after the capture, and undoes
# what it did (the sale returned as an adjustment, the capture refunded).
HAND_MOVES = [
    ("order cancelled", lambda s, c: s.put(f"/orders/{c['order_id']}/cancel", {"reason": "by hand"}),
     "confirm_order", "the order was cancelled"),
    ("reservation released", lambda s, c: s.request("DELETE",
                                                    f"/inventory/reservations/{c['order_id']}"),
     "commit_reservation", "the reserved stock was released"),
]


@pytest.mark.parametrize("move,step,reason", [m[1:] for m in HAND_MOVES],
                         ids=[m[0] for m in HAND_MOVES])
def test_a_hand_move_while_the_saga_waits_is_found_and_compensated(server, move, step, reason):
    product(server, "A", 5)
    c, job_id = waiting_for_a_retry(server)
    assert move(server, c).status_code == 200
    assert server.post(f"/jobs/{job_id}/run").status_code == 200
    done = settled(server, c["checkout_id"])
    assert done["status"] == "FAILED" and done["reason"] == reason
    saga = saga_of(server, c["checkout_id"])
    assert (step, "action", "failed") in steps(saga)
    assert ("capture_payment", "compensation", "ok") in steps(saga)
    assert steps(saga)[-2:] == [("reserve_inventory", "compensation", "ok"),
                                ("create_order", "compensation", "ok")]
    [pay] = payments_of(server, c["order_id"])
    assert (pay["state"], pay["captured_amount"], pay["refunded_amount"]) == ("REFUNDED", 800, 800)
    assert stock(server, "A") == {"sku": "A", "on_hand": 5, "reserved": 0, "available": 5}
    assert server.get(f"/orders/{c['order_id']}").json()["status"] == "CANCELLED"


def test_a_saga_whose_job_is_cancelled_is_stuck_until_retried(make_server):
    # The job that would retry the authorization is cancelled by hand while
    # the saga waits for it: the sweep makes the saga STUCK (in sight: listed,
    # counted, its error naming the job), and the retry drives it on.
    server = make_server(["--psp-timeout", "100ms", "--saga-poll", "50ms"])
    server.put("/queues/sagas", {"max_attempts": 3, "backoff": {"base_ms": 3600000}})
    product(server, "A", 5)
    server.put("/psp/config", {"hang_next": 1, "hang_op": "authorize"})
    cid = checkout(server, [{"sku": "A", "qty": 1, "unit_price": 700}])
    waiting = await_condition(
        lambda: [s for s in server.get(f"/sagas?correlation_id={cid}").json()["sagas"]
                 if s["retries"] == 1], what="the authorization to wait for its retry")[0]
    job_id = waiting["job_id"]
    assert server.post(f"/jobs/{job_id}/cancel").status_code == 200
    [stuck] = await_condition(lambda: server.get("/sagas?state=STUCK").json()["sagas"],
                              what="the saga to be stuck")
    assert stuck["saga_id"] == waiting["saga_id"] and stuck["job_id"] is None
    assert f"its job {job_id} is cancelled" in stuck["error"]
    assert server.get(f"/checkout/{cid}").json()["status"] == "PENDING"
    assert server.metric("backbone_sagas_stuck", 'type="checkout"') == 1
    server.put("/queues/sagas", {"backoff": {"base_ms": 20}})
    r = server.post(f"/sagas/{stuck['saga_id']}/retry")
    assert r.status_code == 200 and r.json()["state"] == "RUNNING" and r.json()["error"] is None
    # The timeline says why it stopped, and that a person drove it on.
    [found] = [t for t in r.json()["timeline"] if t["outcome"] == "stuck"]
    assert found["step"] == "authorize_payment" and found["phase"] == "action"
    assert f"its job {job_id} is cancelled" in found["error"]
    assert steps(r.json())[-2:] == [("authorize_payment", "action", "stuck"),
                                    ("authorize_payment", "action", "retried")]
    c = settled(server, cid)
    assert c["status"] == "COMPLETED"
    ended_once(server, c)  # on the checkout's trace, carried on by the retry
    assert server.get(f"/orders/{c['order_id']}").json()["status"] == "CONFIRMED"
    [pay] = payments_of(server, c["order_id"])
    assert pay["state"] == "CAPTURED" and pay["captured_amount"] == 700
    assert stock(server, "A") == {"sku": "A", "on_hand": 4, "reserved": 0, "available": 4}
    assert server.metric("backbone_sagas_stuck", 'type="checkout"') == 0


@pytest.mark.skipif(ENGINE != "pg", reason="two processes on one database")
def test_a_paused_payment_run_is_fenced_out_by_the_run_that_overtook_it(make_server, database):
    # Kleppmann's paused lease holder, in the saga: process A authorizes a
    # payment and is stopped (SIGSTOP) while the PSP answers; its step is
    # taken over by process B (the job cancelled by hand, the STUCK saga
    # retried), which completes the checkout with a larger payment token.
    # When A resumes, the answer it carries is refused: the customer is
    # charged once, the ledger moved once, the fence never went back.
    a = make_server(["--psp-timeout", "10s"])
    product(a, "A", 5)
    assert a.put("/psp/config", {"latency_ms": 8000}).status_code == 200
    cid = checkout(a, [{"sku": "A", "qty": 1, "unit_price": 700}])
    await_condition(lambda: database.scalar(
        "SELECT count(*) FROM psp_charges WHERE op = 'authorize'") == 1,
        what="A's authorization to reach the PSP")
    a.proc.send_signal(signal.SIGSTOP)
    try:
        a_token = database.scalar("SELECT token FROM locks WHERE name LIKE 'payment:%'")
        b = make_server(["--saga-poll", "50ms"])
        saga = b.get(f"/sagas?correlation_id={cid}").json()["sagas"][0]
        assert saga["step"] == "authorize_payment"
        assert b.post(f"/jobs/{saga['job_id']}/cancel").status_code == 200
        await_condition(lambda: b.get(f"/sagas/{saga['saga_id']}").json()["state"] == "STUCK",
                        what="the saga to be stuck")
        assert b.post(f"/sagas/{saga['saga_id']}/retry").status_code == 200
        done = settled(b, cid)
        assert done["status"] == "COMPLETED"
        fence = database.scalar(
            f"SELECT token FROM fences WHERE key = 'payment:{done['order_id']}'")
        assert fence > a_token  # B's run took the lock over with a larger token
    finally:
        a.proc.send_signal(signal.SIGCONT)
    # A's run wakes up with the PSP's answer, under a lease and a payment
    # token both overtaken: what it would record is refused (the lease's
    # fence refuses the whole transaction, the ledger's write in it too).
    await_condition(lambda: [line for line in a.lines()
                             if line.get("event") == "jobs.stale_outcome"
                             and line.get("job") == saga["job_id"]],
                    what="A's late outcome to be refused")
    [pay] = payments_of(b, done["order_id"])
    assert (pay["state"], pay["captured_amount"]) == ("CAPTURED", 700)
    assert [att["op"] for att in pay["attempts"]].count("authorize") == 1
    assert database.scalar("SELECT count(*) FROM psp_charges WHERE op = 'authorize'") == 1
    assert database.scalar("SELECT count(*) FROM psp_charges WHERE op = 'capture'") == 1
    assert database.scalar("SELECT token FROM fences WHERE key = "
                           f"'payment:{done['order_id']}'") == fence
    assert b.get(f"/checkout/{cid}").json()["status"] == "COMPLETED"
