"""Payments over HTTP through the PSP mock: authorize, capture, void and
refund along the state table; idempotency keys; declines, PSP failures and
hangs past the caller's timeout, retried without charging twice; the mock's
settings from flags, the seed's MOCK_* variables and PUT /psp/config; bad
input; metrics and events."""
import concurrent.futures
import json

import pytest
import requests

from conftest import check_events, outbox_events, problem


def authorize(server, key, status=200, **body):
    req = {"order_id": "o-1", "amount": 1500, "currency": "EUR", "idempotency_key": key, **body}
    r = server.post("/payments/authorize", req)
    assert r.status_code == status, r.text
    return r.json()


def charges(server):
    return server.get("/psp/charges?limit=1000").json()["charges"]


def test_authorize_capture_refund_with_idempotency(server):
    a = authorize(server, "pay-1", card="tok_visa")
    assert a["state"] == "AUTHORIZED" and a["psp_reference"].startswith("psp_")
    assert authorize(server, "pay-1", card="tok_visa") == a
    doc = problem(server.post("/payments/authorize", {"order_id": "o-1", "amount": 1600,
                                                      "currency": "EUR",
                                                      "idempotency_key": "pay-1"}),
                  422, "idempotency_key_reused", "idempotency_key")
    assert doc["authorization_id"] == a["authorization_id"]
    pid = a["authorization_id"]
    for _ in range(2):  # a second capture is no second charge
        c = server.post(f"/payments/capture/{pid}")
        assert c.status_code == 200 and c.json()["state"] == "CAPTURED", c.text
    problem(server.post(f"/payments/void/{pid}"), 409, "conflict")
    r1 = server.post(f"/payments/{pid}/refund", {"amount": 500, "idempotency_key": "ref-1"})
    assert r1.status_code == 200 and r1.json()["refunded_amount"] == 500
    again = server.post(f"/payments/{pid}/refund", {"amount": 500, "idempotency_key": "ref-1"})
    assert again.json()["refunded_amount"] == 500
    problem(server.post(f"/payments/{pid}/refund", {"amount": 1001, "idempotency_key": "ref-2"}),
            400, "invalid_request", "amount")
    rest = server.post(f"/payments/{pid}/refund", {"idempotency_key": "ref-3"}).json()
    assert rest["state"] == "REFUNDED" and rest["refunded_amount"] == 1500
    assert [x["amount"] for x in rest["refunds"]] == [500, 1000]
    ops = sorted(c["op"] for c in charges(server))
    assert ops == ["authorize", "capture", "refund", "refund"]  # each once
    assert server.get(f"/payments/{pid}").json() == rest
    assert server.get("/payments?order_id=o-1").json() == {"payments": [rest]}


def test_a_refund_the_psp_failed_holds_its_amount_but_is_not_counted_refunded(server):
    # Refund A fails at the PSP (5xx) and stays pending; refund B takes the
    # rest. Only B went back: the payment stays CAPTURED with 1000 refunded,
    # A's 500 held so that nothing more can be refunded, until A's retry.
    pid = authorize(server, "pay-rf")["authorization_id"]
    assert server.post(f"/payments/capture/{pid}").status_code == 200
    assert server.put("/psp/config", {"fail_next": 1}).status_code == 200
    problem(server.post(f"/payments/{pid}/refund", {"amount": 500, "idempotency_key": "ref-a"}),
            502, "upstream_error")
    a = server.get(f"/payments/{pid}").json()
    assert (a["state"], a["refunded_amount"], a["refund_pending_amount"]) == ("CAPTURED", 0, 500)
    assert [r["state"] for r in a["refunds"]] == ["pending"]
    b = server.post(f"/payments/{pid}/refund", {"idempotency_key": "ref-b"})
    assert b.status_code == 200, b.text
    b = b.json()
    assert (b["state"], b["refunded_amount"], b["refund_pending_amount"]) == ("CAPTURED", 1000, 500)
    assert [(r["amount"], r["state"]) for r in b["refunds"]] == [(500, "pending"),
                                                               (1000, "succeeded")]
    problem(server.post(f"/payments/{pid}/refund", {"amount": 1, "idempotency_key": "ref-c"}),
            400, "invalid_request", "amount")
    totals = [ev["data"]["refunded_total"]
              for ev in outbox_events(server) if ev["type"] == "payment.refunded.v1"]
    assert totals == [1000]
    done = server.post(f"/payments/{pid}/refund", {"amount": 500, "idempotency_key": "ref-a"})
    assert done.status_code == 200, done.text
    done = done.json()
    assert (done["state"], done["refunded_amount"], done["refund_pending_amount"]) == \
        ("REFUNDED", 1500, 0)
    totals = [ev["data"]["refunded_total"]
              for ev in check_events(server) if ev["type"] == "payment.refunded.v1"]
    assert totals == [1000, 1500]
    assert len([c for c in charges(server) if c["op"] == "refund"]) == 2


def test_a_capture_repeated_with_another_amount_is_refused(server):
    part = authorize(server, "pay-part")["authorization_id"]
    first = server.post(f"/payments/capture/{part}", {"amount": 1000})
    assert first.status_code == 200 and first.json()["captured_amount"] == 1000, first.text
    again = server.post(f"/payments/capture/{part}", {"amount": 1000})
    assert again.status_code == 200 and again.json() == first.json()
    for body in ({"amount": 1200}, {"amount": 500}, None):  # None: all, 1500
        doc = problem(server.post(f"/payments/capture/{part}", body), 409, "conflict", "amount")
        assert doc["state"] == "CAPTURED"
    whole = authorize(server, "pay-whole", order_id="o-2")["authorization_id"]
    assert server.post(f"/payments/capture/{whole}").status_code == 200
    assert server.post(f"/payments/capture/{whole}", {"amount": 1500}).status_code == 200
    problem(server.post(f"/payments/capture/{whole}", {"amount": 1}), 409, "conflict", "amount")
    # Refunded, it was still captured for 1500.
    assert server.post(f"/payments/{whole}/refund", {"idempotency_key": "r-w"}).status_code == 200
    refunded = server.post(f"/payments/capture/{whole}")
    assert refunded.status_code == 200 and refunded.json()["state"] == "REFUNDED"
    problem(server.post(f"/payments/capture/{whole}", {"amount": 1499}), 409, "conflict", "amount")
    assert sorted(c["op"] for c in charges(server) if c["op"] == "capture") == ["capture"] * 2
    assert server.get(f"/payments/{part}").json()["captured_amount"] == 1000


def test_a_capture_retried_with_another_amount_is_refused_and_books_what_the_psp_did(make_server):
    # The PSP captured 1000 but its answer never came. A retry for another
    # amount (or for all, 2000) under the same PSP key used to get the
    # recorded approval and book its own amount: the ledger said 1500 while
    # the PSP had charged 1000. The PSP refuses it now, naming the capture,
    # and the ledger learns the 1000.
    server = make_server(["--psp-timeout", "200ms"])
    server.put("/psp/config", {"hang_next": 1, "hang_op": "capture"})
    pid = authorize(server, "pay-lc", amount=2000)["authorization_id"]
    hung = problem(server.post(f"/payments/capture/{pid}", {"amount": 1000}), 504, "timeout")
    assert hung["state"] == "AUTHORIZED"
    for body in ({"amount": 1500}, None):
        doc = problem(server.post(f"/payments/capture/{pid}", body), 409, "conflict", "amount")
        assert doc["state"] == "CAPTURED" and "1000" in doc["detail"], doc
    p = server.get(f"/payments/{pid}").json()
    assert p["captured_amount"] == 1000
    assert [(a["op"], a["outcome"]) for a in p["attempts"]] == \
        [("authorize", "approved"), ("capture", "timeout"), ("capture", "declined")]
    ok = server.post(f"/payments/capture/{pid}", {"amount": 1000})
    assert ok.status_code == 200 and ok.json()["captured_amount"] == 1000, ok.text
    assert [(c["amount"], c["outcome"]) for c in charges(server) if c["op"] == "capture"] == \
        [(1000, "approved")]
    assert [ev["data"]["amount"] for ev in check_events(server)
            if ev["type"] == "payment.captured.v1"] == [1000]


def test_concurrent_captures_for_other_amounts_book_what_the_psp_captured(server):
    def go(arg):
        pid, amount = arg
        with requests.Session() as s:
            r = s.post(f"{server.url}/payments/capture/{pid}", json={"amount": amount},
                       timeout=60)
            return amount, r.status_code, r.json()

    for round_ in range(4):
        pid = authorize(server, f"pay-cc-{round_}", order_id=f"o-cc-{round_}",
                        amount=2000)["authorization_id"]
        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
            answers = list(pool.map(go, [(pid, 1000 + 500 * (i % 2)) for i in range(8)]))
        [charge] = [c for c in charges(server)
                    if c["op"] == "capture" and c["key"].endswith(f"pay-cc-{round_}")]
        assert charge["outcome"] == "approved"
        for amount, status, doc in answers:
            assert doc["state"] == "CAPTURED", answers
            if amount == charge["amount"]:
                assert (status, doc["captured_amount"]) == (200, amount), answers
            else:
                assert (status, doc["field"]) == (409, "amount"), answers
        assert server.get(f"/payments/{pid}").json()["captured_amount"] == charge["amount"]
    assert len(outbox_events(server, type="payment.captured.v1")) == 4


def test_void_releases_and_then_nothing_can_be_captured(server):
    pid = authorize(server, "pay-v")["authorization_id"]
    for _ in range(2):
        v = server.post(f"/payments/void/{pid}")
        assert v.status_code == 200 and v.json()["state"] == "VOIDED"
    doc = problem(server.post(f"/payments/capture/{pid}"), 409, "conflict")
    assert doc["state"] == "VOIDED" and doc["authorization_id"] == pid
    problem(server.post(f"/payments/{pid}/refund", {"idempotency_key": "r"}), 409, "conflict")


def test_declines_are_final_and_psp_trouble_is_retried_without_a_second_charge(make_server):
    server = make_server(["--psp-timeout", "300ms"])
    cfg = server.put("/psp/config", {"decline_cards": ["tok_stolen"], "decline_amounts": [666],
                                     "hang_next": 1, "fail_next": 1})
    assert cfg.status_code == 200 and cfg.json()["hang_next"] == 1
    hung = problem(server.post("/payments/authorize", {
        "order_id": "o-h", "amount": 100, "currency": "EUR", "idempotency_key": "pay-h"}),
        504, "timeout")
    assert hung["state"] == "PENDING"
    failed = problem(server.post("/payments/authorize", {
        "order_id": "o-h", "amount": 100, "currency": "EUR", "idempotency_key": "pay-h"}),
        502, "upstream_error")
    assert failed["authorization_id"] == hung["authorization_id"]
    ok = authorize(server, "pay-h", order_id="o-h", amount=100)
    assert ok["state"] == "AUTHORIZED"
    assert [a["outcome"] for a in ok["attempts"]] == ["timeout", "error", "approved"]
    assert len([c for c in charges(server) if c["key"] == "authorize:pay-h"]) == 1
    card = problem(server.post("/payments/authorize", {
        "order_id": "o-d", "amount": 100, "currency": "EUR", "idempotency_key": "pay-d",
        "card": "tok_stolen"}), 402, "payment_declined")
    assert card["state"] == "FAILED"
    problem(server.post("/payments/authorize", {
        "order_id": "o-d", "amount": 666, "currency": "EUR", "idempotency_key": "pay-e"}),
        402, "payment_declined")
    # Declined is final: a retry answers the same, and is not counted again
    # (two declines, however often they are replayed).
    for _ in range(2):
        problem(server.post("/payments/authorize", {
            "order_id": "o-d", "amount": 100, "currency": "EUR", "idempotency_key": "pay-d",
            "card": "tok_stolen"}), 402, "payment_declined")
    m = server.metric
    assert m("backbone_payment_failures_total", 'reason="declined"') == 2
    assert m("backbone_payment_failures_total", 'reason="timeout"') == 1
    assert m("backbone_payment_failures_total", 'reason="psp_error"') == 1
    assert m("backbone_payment_attempt_latency_seconds_count",
             'op="authorize",outcome="approved"') == 1


def test_a_settlement_whose_answer_was_lost_is_learned_not_contradicted(make_server):
    # A real PSP settles an authorization once: a void after a capture it
    # made (but whose answer never arrived) is refused, and the ledger learns
    # the capture from that refusal; the same for a capture after a void.
    server = make_server(["--psp-timeout", "200ms"])
    cfg = server.put("/psp/config", {"hang_next": 1, "hang_op": "capture"})
    assert cfg.json()["hang_op"] == "capture"
    pid = authorize(server, "pay-lost")["authorization_id"]  # not hung: not a capture
    assert problem(server.post(f"/payments/capture/{pid}"), 504, "timeout")["state"] == "AUTHORIZED"
    doc = problem(server.post(f"/payments/void/{pid}"), 409, "conflict")
    assert "refund it instead" in doc["detail"]
    p = server.get(f"/payments/{pid}").json()
    assert p["state"] == "CAPTURED" and p["captured_amount"] == 1500
    assert [(a["op"], a["outcome"]) for a in p["attempts"]][-2:] == [("capture", "timeout"),
                                                                     ("void", "declined")]
    r = server.post(f"/payments/{pid}/refund", {"idempotency_key": "ref-lost"})
    assert r.status_code == 200 and r.json()["state"] == "REFUNDED", r.text
    assert len(outbox_events(server, type="payment.captured.v1")) == 1

    server.put("/psp/config", {"hang_next": 1, "hang_op": "void"})
    pid = authorize(server, "pay-lost-2", order_id="o-2")["authorization_id"]
    problem(server.post(f"/payments/void/{pid}"), 504, "timeout")
    doc = problem(server.post(f"/payments/capture/{pid}"), 409, "conflict")
    assert "already voided" in doc["detail"]
    assert server.get(f"/payments/{pid}").json()["state"] == "VOIDED"
    settled = {(c["op"], c["outcome"]) for c in charges(server)}
    assert settled == {("authorize", "approved"), ("capture", "approved"), ("void", "declined"),
                       ("refund", "approved"), ("void", "approved"), ("capture", "declined")}
    problem(server.put("/psp/config", {"hang_op": "charge"}), 400, "invalid_request", "hang_op")


def test_a_void_learns_the_reference_of_an_authorization_whose_answer_was_lost(make_server):
    # The PSP authorized but its answer never came (the payment stays
    # PENDING); voiding it (a saga's compensation does) settles the
    # authorization, and the void's answer names it: the ledger keeps the
    # reference it would otherwise never learn.
    server = make_server(["--psp-timeout", "200ms"])
    server.put("/psp/config", {"hang_next": 1, "hang_op": "authorize"})
    hung = problem(server.post("/payments/authorize", {
        "order_id": "o-hv", "amount": 100, "currency": "EUR", "idempotency_key": "pay-hv"}),
        504, "timeout")
    assert hung["state"] == "PENDING"
    v = server.post(f"/payments/void/{hung['authorization_id']}")
    assert v.status_code == 200 and v.json()["state"] == "VOIDED", v.text
    [approved] = [c["reference"] for c in charges(server)
                  if c["key"] == "authorize:pay-hv" and c["outcome"] == "approved"]
    assert v.json()["psp_reference"] == approved


def test_the_mock_takes_its_settings_from_flags_and_the_seed_variables(make_server):
    server = make_server(["--psp-seed", "3"], env={"MOCK_LATENCY_MS": "40",
                                                   "MOCK_FAILURE_RATE": "0.25"})
    cfg = server.get("/psp/config").json()
    assert (cfg["latency_ms"], cfg["failure_rate"], cfg["seed"]) == (40, 0.25, 3)
    server.put("/psp/config", {"failure_rate": 0})
    a = authorize(server, "pay-l")
    assert a["attempts"][0]["latency_ms"] >= 40  # the mock waited at least its latency


def test_concurrent_retries_of_one_authorization_charge_once(server):
    def go(_):
        return server.session.post(f"{server.url}/payments/authorize", json={
            "order_id": "o-c", "amount": 700, "currency": "EUR", "idempotency_key": "pay-c"},
            timeout=60).json()["authorization_id"]

    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        ids = set(pool.map(go, range(32)))
    assert len(ids) == 1
    assert len(charges(server)) == 1
    assert len(outbox_events(server, type="payment.authorized.v1")) == 1


def test_concurrent_refunds_with_one_key_all_get_the_first_answer(server):
    # Requests racing with one key: on PostgreSQL the late ones used to look
    # the key up before the first committed and hit the unique constraint.
    pid = authorize(server, "pay-rc", amount=1000)["authorization_id"]
    assert server.post(f"/payments/capture/{pid}").status_code == 200

    def go(key):
        with requests.Session() as s:
            r = s.post(f"{server.url}/payments/{pid}/refund",
                       json={"amount": 100, "idempotency_key": key}, timeout=60)
            return r.status_code, r.text

    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        for round_ in range(5):
            answers = list(pool.map(go, [f"ref-{round_}"] * 8))
            assert {status for status, _ in answers} == {200}, answers
            # One refund more per round, the same one in every answer.
            seen = {json.dumps([(r["refund_id"], r["amount"], r["state"])
                                for r in json.loads(text)["refunds"]]) for _, text in answers}
            assert len(seen) == 1, seen
            assert len(json.loads(seen.pop())) == round_ + 1
    p = server.get(f"/payments/{pid}").json()
    assert (p["refunded_amount"], p["refund_pending_amount"], len(p["refunds"])) == (500, 0, 5)
    assert len([c for c in charges(server) if c["op"] == "refund"]) == 5
    assert len(outbox_events(server, type="payment.refunded.v1")) == 5


BAD = [
    ({"order_id": "o", "amount": 0, "currency": "EUR", "idempotency_key": "k"}, "amount"),
    ({"order_id": "o", "amount": -5, "currency": "EUR", "idempotency_key": "k"}, "amount"),
    ({"order_id": "o", "amount": 1.5, "currency": "EUR", "idempotency_key": "k"}, "amount"),
    ({"order_id": "o", "amount": 5, "currency": "eur", "idempotency_key": "k"}, "currency"),
    ({"order_id": "o", "amount": 5, "currency": "ZZZ", "idempotency_key": "k"}, "currency"),
    ({"order_id": "o", "amount": 5, "currency": "EUR"}, "idempotency_key"),
    ({"order_id": "o", "amount": 5, "currency": "EUR", "idempotency_key": "a b"},
     "idempotency_key"),
    ({"order_id": "o", "amount": 5, "currency": "EUR", "idempotency_key": "saga:x:authorize"},
     "idempotency_key"),  # the saga's own keys are reserved
    ({"order_id": "o", "amount": 5, "currency": "EUR", "idempotency_key": "k", "tip": 1}, "tip"),
    ({"order_id": "o", "amount": 5, "currency": "EUR", "idempotency_key": "k", "lock_token": 0},
     "lock_token"),
    ({"amount": 5, "currency": "EUR", "idempotency_key": "k"}, "order_id"),
]


@pytest.mark.parametrize("body,field", BAD)
def test_bad_payments_get_a_precise_problem_and_charge_nothing(server, body, field):
    problem(server.post("/payments/authorize", body), 400, "invalid_request", field)
    assert charges(server) == [] and outbox_events(server) == []


MALFORMED = b'{"order_id":'


def test_malformed_json_on_authorize_charges_nothing(server):
    r = server.post("/payments/authorize", raw=MALFORMED,
                    headers={"Content-Type": "application/json"})
    problem(r, 400, "malformed_json")
    assert server.get("/payments?order_id=o-1").json() == {"payments": []}
    assert charges(server) == [] and outbox_events(server) == []


@pytest.mark.parametrize("route", ["capture/{id}", "void/{id}", "{id}/refund"])
def test_malformed_json_on_a_settlement_changes_nothing(server, route):
    pid = authorize(server, "pay-m")["authorization_id"]
    if route == "{id}/refund":  # something to refund
        assert server.post(f"/payments/capture/{pid}").status_code == 200
    before = (server.get(f"/payments/{pid}").json(), charges(server), outbox_events(server))
    r = server.post("/payments/" + route.format(id=pid), raw=MALFORMED,
                    headers={"Content-Type": "application/json"})
    problem(r, 400, "malformed_json")
    assert (server.get(f"/payments/{pid}").json(), charges(server), outbox_events(server)) == \
        before


def test_bad_settle_requests_and_bad_psp_settings(server):
    pid = authorize(server, "pay-b")["authorization_id"]
    problem(server.post(f"/payments/void/{pid}", {"amount": 5}), 400, "invalid_request", "amount")
    problem(server.post(f"/payments/capture/{pid}", {"idempotency_key": "x"}), 400,
            "invalid_request", "idempotency_key")
    problem(server.post(f"/payments/capture/{pid}", {"amount": 99999}), 400, "invalid_request",
            "amount")
    problem(server.post(f"/payments/{pid}/refund", {"amount": 5}), 400, "invalid_request",
            "idempotency_key")
    problem(server.post(f"/payments/{pid}/refund", {"idempotency_key": "saga:x:refund"}), 400,
            "invalid_request", "idempotency_key")
    problem(server.post("/payments/capture/not-a-payment"), 404, "not_found", "authorization_id")
    problem(server.put("/psp/config", {"failure_rate": 2}), 400, "invalid_request", "failure_rate")
    problem(server.put("/psp/config", {"failure_rate": 0.5, "timeout_rate": 0.6}), 400,
            "invalid_request", "timeout_rate")
    problem(server.put("/psp/config", {"decline_cards": [""]}), 400, "invalid_request",
            "decline_cards")
    problem(server.put("/psp/config", {"latency": 5}), 400, "invalid_request", "latency")
    problem(server.get("/payments"), 400, "invalid_request", "order_id")


def test_every_payment_change_writes_an_event_that_matches_its_schema(server):
    server.put("/psp/config", {"decline_cards": ["tok_bad"]})
    a = authorize(server, "pay-1")["authorization_id"]
    server.post(f"/payments/capture/{a}")
    server.post(f"/payments/{a}/refund", {"amount": 100, "idempotency_key": "r"})
    b = authorize(server, "pay-2", order_id="o-2")["authorization_id"]
    server.post(f"/payments/void/{b}")
    authorize(server, "pay-3", status=402, order_id="o-3", card="tok_bad")
    check_events(server, ["payment.authorized.v1", "payment.captured.v1", "payment.refunded.v1",
                          "payment.voided.v1", "payment.failed.v1"])
