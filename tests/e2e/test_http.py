"""The HTTP foundation: probes, metrics, routing errors, body limits, strict
JSON, auth, request ids, configuration errors."""
import os
import pathlib
import re
import socket
import subprocess

import pytest

from conftest import BIN, ENGINE, await_condition, outbox_events, problem, psql

# JSONTestSuite (MIT) sits beside the project in ../shared/testdata.
JSON_SUITE = pathlib.Path(os.environ.get(
    "BB_JSON_SUITE",
    pathlib.Path(__file__).resolve().parents[3] / "shared/testdata/jsontestsuite/test_parsing"))


def test_liveness_readiness_and_version(server):
    r = server.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    r = server.get("/readyz")
    assert r.status_code == 200
    assert r.json() == {"status": "ready", "engine": "sqlite" if ENGINE == "sqlite" else "postgres"}
    out = subprocess.run([BIN, "version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("backbone ")


@pytest.mark.skipif(ENGINE != "pg", reason="a SQLite file cannot stop answering its one owner "
                    "(test_faults.py fails its reads instead)")
def test_readiness_fails_while_the_database_refuses_connections(server, database):
    # The server's connections are cut and new ones refused: not ready,
    # though alive; ready again once the database lets it back in.
    psql(f"ALTER DATABASE {database.name} ALLOW_CONNECTIONS false")
    try:
        psql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
             f"WHERE datname = '{database.name}'")
        await_condition(lambda: server.get("/readyz").status_code != 200,
                        what="readiness to fail")
        problem(server.get("/readyz"), 503, "unavailable")
        assert server.get("/healthz").status_code == 200
    finally:
        psql(f"ALTER DATABASE {database.name} ALLOW_CONNECTIONS true")
    await_condition(lambda: server.get("/readyz").status_code == 200, what="readiness back")


def test_metrics_are_prometheus_text_with_http_families(server):
    server.get("/healthz")
    server.get("/nope")
    text = server.metrics()
    assert server.get("/metrics").headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert '# TYPE http_requests_total counter' in text
    assert 'http_requests_total{route="/healthz",method="GET",status="200"} 1' in text
    assert 'http_requests_total{route="unmatched",method="GET",status="404"} 1' in text
    assert '# TYPE http_request_duration_seconds histogram' in text
    assert 'http_request_duration_seconds_bucket{route="/healthz",method="GET",le="+Inf"} 1' in text
    for family in ("backbone_lock_acquisitions_total", "backbone_lock_contentions_total",
                   "backbone_lock_takeovers_total", "backbone_lock_renew_failures_total",
                   "backbone_lock_release_failures_total", "backbone_locks_held",
                   "backbone_store_transactions_total", "backbone_process_resident_memory_bytes"):
        assert f"# TYPE {family} " in text, family


def server_side_timer(server, client):
    """The kernel's timer kind on the server's end of `client`'s connection
    (/proc/net/tcp: 0 none, 1 retransmit, 2 keepalive, ...)."""
    mine = client.getsockname()[1]
    for line in pathlib.Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].split(":")[1], 16)
        remote_port = int(fields[2].split(":")[1], 16)
        if (local_port, remote_port, fields[3]) == (server.port, mine, "01"):  # ESTABLISHED
            return int(fields[5].split(":")[0], 16)
    return None


def test_connections_carry_tcp_keepalive(server):
    # So that a client gone without closing (its host down) is found, and
    # a request suspended for it gives up instead of taking a lock for no one.
    with socket.create_connection(("127.0.0.1", server.port)) as c:
        c.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
        assert c.recv(4096).startswith(b"HTTP/1.1 200")
        assert await_condition(lambda: server_side_timer(server, c) == 2,
                               what="the keepalive timer") is True


def test_unknown_route_is_404_and_wrong_method_405_with_allow(server):
    problem(server.get("/no/such/thing"), 404, "not_found")
    r = server.request("DELETE", "/locks")
    problem(r, 405, "method_not_allowed")
    assert r.headers["Allow"] == "GET"


def test_an_escaped_nul_in_the_path_or_query_is_refused_not_cut_short(server):
    # Decoded, %00 would end the path: "/jobs/%00/cancel" would reach
    # POST /jobs and submit a job, "/jobs/%00" list the jobs.
    doc = problem(server.post("/jobs/%00/cancel", {"queue": "default", "handler": "noop"}),
                  400, "invalid_request", "job_id")
    assert doc["instance"] == "/jobs/%00/cancel"
    problem(server.get("/jobs/%00"), 400, "invalid_request", "job_id")
    problem(server.post("/locks/a%00b/acquire", {"owner": "w"}), 400, "invalid_request", "name")
    # ... and "?queue=default%00x" would read "default".
    problem(server.get("/jobs?queue=default%00x"), 400, "invalid_request", "queue")
    assert server.get("/jobs").json()["jobs"] == []
    # Other escapes still decode: %41 is "A".
    assert server.post("/locks/%41/acquire", {"owner": "w"}).json()["name"] == "A"


def test_an_escaped_slash_is_part_of_a_name_never_a_separator(server):
    # Routing splits the raw path on '/' and decodes each segment after:
    # "zz%2Facquire" is one segment (the name "zz/acquire"), so neither of
    # these reaches lock zz, whatever a proxy in front allowed by path.
    r = server.post("/locks/zz%2Facquire", {"owner": "w"})
    problem(r, 405, "method_not_allowed")
    assert r.headers["Allow"] == "GET"
    doc = problem(server.get("/locks/zz%2Facquire"), 400, "invalid_request", "name")
    assert doc["instance"] == "/locks/zz%2Facquire"
    problem(server.get("/locks%2Fzz"), 404, "not_found")
    # A name with a slash is addressable, and refused like any name with a
    # character names do not allow.
    problem(server.post("/locks/a%2Fb/acquire", {"owner": "w"}), 400, "invalid_request", "name")
    problem(server.put("/fenced/a%2fb", {"token": 1, "value": 1}), 400, "invalid_request", "key")
    problem(server.get("/jobs/1%2F2"), 400, "invalid_request", "job_id")
    problem(server.get("/locks/zz"), 404, "not_found")
    assert server.get("/locks").json()["locks"] == []
    # Decoded once: "%252F" is the name "%2F", refused too, not "/".
    problem(server.post("/locks/a%252Fb/acquire", {"owner": "w"}), 400, "invalid_request", "name")


def raw_http(port, head, body=b""):
    """Send raw bytes; return the status line and the response."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(head + body)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        return data


ORDER = {"checkout_id": "chk-q", "customer_id": "cust-q", "currency": "EUR",
         "items": [{"sku": "A", "qty": 1, "unit_price": 100}]}
CHECKOUT = {"customer_id": "cust-q", "currency": "EUR", "payment": {"card": "tok_visa"},
            "items": [{"sku": "A", "qty": 1, "unit_price": 100}]}
KEY = {"Idempotency-Key": "typo-1"}

# (method, path, body, headers, the parameter named): on every module's
# routes, a list's filter misspelt, or given twice, and a write that would
# succeed without its stray parameter.
QUERY_TYPOS = [
    ("GET", "/healthz?verbose=1", None, None, "verbose"),
    ("GET", "/readyz?full", None, None, "full"),
    ("GET", "/metrics?name=http_requests_total", None, None, "name"),
    ("GET", "/locks?limt=1", None, None, "limt"),
    ("GET", "/locks?after=a&after=b", None, None, "after"),
    ("GET", "/locks/held?owner=w", None, None, "owner"),
    ("POST", "/locks/free/acquire?ttl=1000", {"owner": "w"}, None, "ttl"),
    ("POST", "/locks/held/release?force=1", {"token": "TOKEN"}, None, "force"),
    ("PUT", "/fenced/k?tokn=1", {"token": "TOKEN", "value": 1}, None, "tokn"),
    ("GET", "/outbox?typ=order.created.v1", None, None, "typ"),
    ("GET", "/outbox?limit=1&limit=2", None, None, "limit"),
    ("GET", "/sagas?stat=STUCK", None, None, "stat"),
    ("GET", "/sagas?state=STUCK&state=FAILED", None, None, "state"),
    ("GET", "/sagas?state", None, None, "state"),  # no value: no filter at all
    ("POST", "/sagas/s-1/retry?force=1", {}, None, "force"),
    ("POST", "/inventory/products?dry_run=1", {"sku": "Z", "name": "Z", "stock": 5}, None,
     "dry_run"),
    ("POST", "/inventory/products/A/stock?qty=1", {"qty": 10}, {"Idempotency-Key": "d-1"}, "qty"),
    ("GET", "/inventory/products/A/availability?warehouse=1", None, None, "warehouse"),
    ("POST", "/inventory/reservations?ttl_ms=1", {"order_id": "o-q", "items": [{"sku": "A",
                                                                              "qty": 1}]},
     None, "ttl_ms"),
    ("POST", "/inventory/adjust?sku=A", {"sku": "A", "delta": -1, "reason": "count",
                                         "key": "adj-1"}, None, "sku"),
    ("GET", "/orders?checkout=chk-q", None, None, "checkout"),
    ("GET", "/orders?checkout_id=chk-q&limit=5", None, None, "limit"),
    ("POST", "/orders?checkout_id=chk-q", ORDER, None, "checkout_id"),
    ("POST", "/payments/authorize?amount=1", {"order_id": "o-q", "amount": 1500,
                                              "currency": "EUR", "idempotency_key": "p-1",
                                              "card": "tok_visa"}, None, "amount"),
    ("GET", "/payments?order=o-q", None, None, "order"),
    ("PUT", "/psp/config?fail_next=1", {"fail_next": 1}, None, "fail_next"),
    ("GET", "/psp/charges?afer=0", None, None, "afer"),
    ("POST", "/checkout?dry_run=1", CHECKOUT, KEY, "dry_run"),
    ("GET", "/checkout/c-1?verbose=1", None, None, "verbose"),
]


def settled_state(server):
    """What a write anywhere would change: every event (each module's writes
    emit some), the locks, the fenced value, the PSP mock, the sagas."""
    locks = [{k: v for k, v in lock.items() if k != "expires_in_ms"}  # a countdown
             for lock in server.get("/locks").json()["locks"]]
    return {"events": outbox_events(server), "locks": locks,
            "fenced": server.get("/fenced/k").status_code,
            "psp": server.get("/psp/config").json(),
            "charges": server.get("/psp/charges").json(),
            "sagas": server.get("/sagas").json()}


def test_a_query_parameter_a_route_does_not_take_is_refused_and_changes_nothing(server):
    # A parameter a route did not know was ignored: GET /outbox?typ= listed
    # every event, and a write given a stray parameter went ahead.
    assert server.post("/inventory/products", {"sku": "A", "name": "A", "stock": 5}) \
        .status_code == 201
    token = server.post("/locks/held/acquire", {"owner": "w", "ttl_ms": 60000}).json()["token"]
    before = settled_state(server)
    for method, path, body, headers, name in QUERY_TYPOS:
        if isinstance(body, dict):
            body = {k: token if v == "TOKEN" else v for k, v in body.items()}
        r = server.request(method, path, body, headers=headers)
        doc = problem(r, 400, "invalid_request", name)
        assert f"'{name}'" in doc["detail"], (path, doc)
    assert settled_state(server) == before
    assert server.get("/inventory/products/Z").status_code == 404
    assert server.get("/orders?checkout_id=chk-q").json() == {"orders": []}
    # The detail says what the route takes.
    assert problem(server.get("/locks?x=1"), 400)["detail"] == \
        "unknown query parameter 'x': GET /locks takes limit, after"
    assert problem(server.get("/healthz?x=1"), 400)["detail"] == \
        "unknown query parameter 'x': GET /healthz takes none"
    assert problem(server.get("/outbox?=5"), 400)["detail"].startswith(
        "a query parameter without a name: GET /outbox takes after, limit")
    # An empty piece says nothing, like the trailing '&' a URL builder leaves.
    assert server.get("/locks?&limit=1&&").json()["locks"][0]["name"] == "held"
    # The parameters each route takes still work.
    assert server.get("/locks?limit=1&after=a").json()["locks"][0]["name"] == "held"
    assert server.get("/outbox?type=inventory.product.created.v1&limit=1").json()["events"]
    assert server.get("/sagas?state=STUCK&limit=1").json()["sagas"] == []
    assert server.post("/locks/held/release", {"token": token}).status_code == 200


def test_oversized_body_is_413_and_the_server_stays_healthy(server):
    big = b'{"owner":"' + b"x" * (5 * 1024 * 1024) + b'"}'
    doc = problem(server.post("/locks/a/acquire", raw=big,
                              headers={"Content-Type": "application/json"}), 413,
                  "payload_too_large")
    assert "1048576" in doc["detail"]
    # With Expect: 100-continue the answer comes before the body is sent.
    head = (b"POST /locks/a/acquire HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(big))
    assert raw_http(server.port, head).startswith(b"HTTP/1.1 413")
    assert server.get("/healthz").status_code == 200
    assert server.get("/locks").json()["locks"] == []


def test_what_libmicrohttpd_refuses_itself_is_plain_html_and_harms_nothing(server):
    # Refused before Backbone sees the request: libmicrohttpd's own HTML
    # answers, with Connection: close (README, "Errors"; docs/openapi.yaml).
    for head, status in (
        (b"GET /locks/" + b"a" * 40960 + b" HTTP/1.1\r\nHost: x\r\n\r\n", b"414"),
        (b"GET /locks HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40960 + b"\r\n\r\n", b"431"),
        (b"POST /locks/a/acquire HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", b"400"),
        (b"POST /locks/a/acquire HTTP/1.1\r\nHost: x\r\n"
         b"Content-Length: 99999999999999999999999\r\n\r\n", b"413"),
    ):
        answer = raw_http(server.port, head)
        assert answer.startswith(b"HTTP/1.1 " + status + b" "), answer[:200]
        assert b"Connection: close" in answer.split(b"\r\n\r\n")[0]
    # The server is unharmed, and none of them reached a handler (nor the
    # request metrics).
    text = server.metrics()
    for status in ("400", "413", "414", "431"):
        assert f'status="{status}"' not in text
    assert server.get("/healthz").status_code == 200
    assert server.get("/locks").json()["locks"] == []
    assert server.post("/locks/a/acquire", {"owner": "w"}).status_code == 200


def test_body_limit_is_configurable(make_server):
    s = make_server(["--body-limit", "2KiB"])
    problem(s.post("/locks/a/acquire", {"owner": "x" * 3000}), 413)
    assert s.post("/locks/a/acquire", {"owner": "x" * 100}).status_code == 200


# Valid JSON that we refuse: duplicate member names by design (RFC 8259 leaves
# their meaning open), and a NUL inside a member name, which jansson cannot
# represent.
REFUSED_VALID = {"y_object_duplicated_key.json", "y_object_duplicated_key_and_value.json",
                 "y_object_escaped_null_in_key.json"}


@pytest.mark.parametrize("kind", ["n", "i", "y"])
@pytest.mark.skipif(not JSON_SUITE.is_dir(), reason=f"JSONTestSuite corpus not at {JSON_SUITE}")
def test_json_test_suite_bodies_get_4xx_and_never_harm_the_server(server, kind):
    files = sorted(JSON_SUITE.glob(f"{kind}_*.json"))
    assert files, JSON_SUITE
    for f in files:
        data = f.read_bytes()
        r = server.post("/locks/suite/acquire", raw=data, headers={"Content-Type": "application/json"})
        assert 400 <= r.status_code < 500, (f.name, r.status_code, r.text)
        doc = problem(r, r.status_code)
        if kind == "n":
            expected = "invalid_request" if len(data) == 0 else "malformed_json"
            assert doc["type"] == "urn:backbone:problem:" + expected, (f.name, doc)
        if kind == "y" and f.name not in REFUSED_VALID:
            # Valid JSON: refused for what it says (no owner...), not how.
            assert doc["type"] != "urn:backbone:problem:malformed_json", (f.name, doc)
    assert server.get("/healthz").status_code == 200
    assert server.get("/locks").json()["locks"] == []


def test_an_integer_beyond_64_bits_is_refused_naming_its_field(server):
    # jansson cannot hold it, so it never reaches a field's own check; the
    # error still says where it is, and nothing is written.
    raw = b'{"owner":"w1","ttl_ms":99999999999999999999}'
    doc = problem(server.post("/locks/wide/acquire", raw=raw,
                              headers={"Content-Type": "application/json"}), 400, "invalid_request",
                  "ttl_ms")
    assert "64 bits" in doc["detail"]
    raw = b'{"items":[{"sku":"a","qty":1},{"sku":"b","qty":-18446744073709551616}]}'
    problem(server.post("/inventory/reservations", raw=raw,
                        headers={"Content-Type": "application/json"}), 400, "invalid_request",
            "items[1].qty")
    assert server.get("/locks/wide").status_code == 404


def test_non_json_content_type_is_415(server):
    problem(server.post("/locks/a/acquire", raw=b"owner=x",
                        headers={"Content-Type": "text/plain"}), 415, "unsupported_media_type",
            "Content-Type")


def test_request_ids_are_echoed_or_generated(server):
    r = server.get("/healthz", headers={"X-Request-Id": "abc-123"})
    assert r.headers["X-Request-Id"] == "abc-123"
    r = server.get("/healthz", headers={"X-Request-Id": "bad id with spaces"})
    assert len(r.headers["X-Request-Id"]) == 36
    tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    r = server.get("/locks", headers={"traceparent": tp, "X-Request-Id": "trace-me"})
    assert r.headers["traceresponse"] == tp
    # The request's log line is written once its answer has gone out.
    logged = await_condition(
        lambda: [l for l in server.lines() if l.get("request_id") == "trace-me"],
        what="the request's log line")
    assert logged[-1]["traceparent"] == tp
    assert logged[-1]["event"] == "http.request" and logged[-1]["status"] == 200
    # Without a trace (or with one that is not valid) the request starts one.
    for headers in ({}, {"traceparent": "00-nope"}):
        r = server.get("/locks", headers={**headers, "X-Request-Id": f"untraced-{len(headers)}"})
        logged = await_condition(
            lambda: [l for l in server.lines() if l.get("request_id") == f"untraced-{len(headers)}"],
            what="the request's log line")
        assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-01", logged[-1]["traceparent"])
        # The answer names the trace the request started.
        assert r.headers["traceresponse"] == logged[-1]["traceparent"]


def test_api_token_guards_everything_but_healthz(make_server):
    s = make_server(["--api-token", "s3cret"])
    assert s.get("/healthz").status_code == 200
    r = s.get("/locks")
    problem(r, 401, "unauthorized")
    assert r.headers["WWW-Authenticate"] == "Bearer"
    problem(s.get("/locks", headers={"Authorization": "Bearer wrong"}), 401)
    problem(s.get("/locks", headers={"Authorization": "Bearer s3cret-and-more"}), 401)
    problem(s.get("/metrics"), 401)
    problem(s.get("/nope"), 401)  # no route discovery without the token
    ok = {"Authorization": "Bearer s3cret"}
    assert s.get("/locks", headers=ok).status_code == 200
    assert s.get("/metrics", headers=ok).status_code == 200
    # The start line says whether requests need the token; an empty one is none.
    [up] = [ln for ln in s.lines() if ln.get("event") == "server.listening"]
    assert up["auth"] == "bearer"
    s.stop()  # one process per SQLite file
    open_ = make_server(env={"BACKBONE_API_TOKEN": ""})
    assert open_.get("/locks").status_code == 200
    [up] = [ln for ln in open_.lines() if ln.get("event") == "server.listening"]
    assert up["auth"] == "off"


def run_backbone(*args, env=None):
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([BIN, *args], capture_output=True, text=True, env=e, timeout=60)


def test_configuration_errors_name_the_option(database, tmp_path):
    r = run_backbone("serve", "--db", database.url, "--port", "99999")
    assert r.returncode == 2 and "--port" in r.stderr and "out of range" in r.stderr
    r = run_backbone("serve", "--db", database.url, env={"BACKBONE_PORT": "abc"})
    assert r.returncode == 2 and "BACKBONE_PORT" in r.stderr
    r = run_backbone("serve", "--db", database.url, "--log-level", "loud")
    assert r.returncode == 2 and "--log-level" in r.stderr
    # A PSP call must end well inside the payment lock and the step lease
    # (30 s): --psp-timeout stops at 10 s, by flag or variable.
    r = run_backbone("serve", "--db", database.url, "--psp-timeout", "11s")
    assert r.returncode == 2 and "--psp-timeout" in r.stderr and "out of range" in r.stderr
    r = run_backbone("serve", "--db", database.url, env={"BACKBONE_PSP_TIMEOUT": "600s"})
    assert r.returncode == 2 and "BACKBONE_PSP_TIMEOUT" in r.stderr and "out of range" in r.stderr
    r = run_backbone("serve", "--bogus")
    assert r.returncode == 2 and "unknown option '--bogus'" in r.stderr
    # The PSP's settings are checked before the database is opened.
    path = tmp_path / "never.db"
    r = run_backbone("serve", "--db", f"sqlite:{path}", "--psp-latency-ms", "abc")
    assert r.returncode == 2 and "--psp-latency-ms" in r.stderr and not path.exists()
    r = run_backbone("serve", "--db", f"sqlite:{path}", "--psp-failure-rate", "0.6",
                     "--psp-timeout-rate", "0.6")
    assert r.returncode == 2 and "add up to more than 1" in r.stderr and not path.exists()
    r = run_backbone("serve", "--db", "mysql://nope", "--port", "0")
    assert r.returncode == 3 and "unsupported database URL" in r.stderr
    r = run_backbone("serve", "--help")
    assert r.returncode == 0 and "BACKBONE_DB" in r.stdout


def test_the_longest_psp_timeout_is_accepted(make_server):
    server = make_server(["--psp-timeout", "10s"])
    assert server.get("/healthz").status_code == 200


def test_migrate_applies_the_schema_and_is_idempotent(database):
    for _ in range(2):
        r = run_backbone("migrate", "--db", database.url)
        assert r.returncode == 0, r.stderr
        assert "schema up to date" in r.stdout


@pytest.mark.skipif(ENGINE != "sqlite", reason="PostgreSQL is shared by many processes by design")
def test_one_process_owns_a_sqlite_file(server, database):
    r = run_backbone("serve", "--db", database.url, "--port", "0")
    assert r.returncode == 3
    assert "in use by another backbone process" in r.stderr
