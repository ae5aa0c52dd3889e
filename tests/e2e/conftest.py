"""End-to-end harness: the real `backbone` binary on an ephemeral port, a
fresh database per test (a SQLite file, or a new PostgreSQL database), driven
over HTTP.

Environment (set by CTest, see tests/CMakeLists.txt):
  BACKBONE_BIN           the binary under test
  BB_TEST_ENGINE         sqlite | pg
  BACKBONE_TEST_PG_URL   a PostgreSQL to create databases in (pg only)
  BB_TEST_SANITIZED      the binary has ASan/UBSan: check its exit for reports
"""
import concurrent.futures
import contextlib
import datetime
import json
import os
import pathlib
import signal
import socket
import subprocess
import threading
import time
import urllib.parse
import uuid

import pytest
import requests

BIN = os.environ.get("BACKBONE_BIN", "")
ENGINE = os.environ.get("BB_TEST_ENGINE", "sqlite")
PG_URL = os.environ.get("BACKBONE_TEST_PG_URL", "")
SANITIZED = os.environ.get("BB_TEST_SANITIZED", "0") in ("1", "ON", "TRUE", "true")
SANITIZER_MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                   "WARNING: ThreadSanitizer")

# Generous: a sanitized build on a busy 2-core machine starts slowly.
START_TIMEOUT_S = 60


def pytest_sessionstart(session):
    if not BIN or not os.path.exists(BIN):
        pytest.exit("BACKBONE_BIN is not set to a built backbone binary", returncode=2)
    if ENGINE == "pg" and not PG_URL:
        if os.environ.get("BACKBONE_TEST_REQUIRE_PG") == "1":
            pytest.exit("BACKBONE_TEST_PG_URL is not set", returncode=1)
        pytest.exit("no PostgreSQL configured: skipped", returncode=77)


_poll = threading.Event()  # never set: its wait() is the poll interval


def await_condition(predicate, timeout_s=30, what="condition"):
    """Poll `predicate` (every 10 ms) until it returns a truthy value; fail
    after timeout_s. The only way tests wait for anything."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        _poll.wait(0.01)


def psql(sql, url=None):
    subprocess.run(["psql", "-q", "-v", "ON_ERROR_STOP=1", "-d", url or PG_URL, "-c", sql],
                   check=True, capture_output=True)


class Database:
    """A fresh database for one test."""

    def __init__(self, tmp_path):
        self.tmp_path = tmp_path
        if ENGINE == "sqlite":
            self.url = f"sqlite:{tmp_path / 'backbone.db'}"
            self.name = None
        else:
            self.name = "bb_e2e_" + uuid.uuid4().hex[:16]
            psql(f"CREATE DATABASE {self.name}")
            self.url = urllib.parse.urlparse(PG_URL)._replace(path="/" + self.name).geturl()

    def drop(self):
        if self.name:
            psql(f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE)")

    def scalar(self, sql):
        """One value, read straight from the database (test checks only)."""
        if self.name is None:
            import sqlite3
            path = self.url[len("sqlite:"):]
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30) as c:
                return c.execute(sql).fetchone()[0]
        out = subprocess.run(["psql", "-tAq", "-d", self.url, "-c", sql], check=True,
                             capture_output=True, text=True).stdout.strip()
        return int(out) if out.lstrip("-").isdigit() else out


class Server:
    """One `backbone serve` process."""

    def __init__(self, db, workdir, args=(), env=None):
        self.db = db
        self.workdir = pathlib.Path(workdir)
        self.args = list(args)
        self.env = env or {}
        self.proc = None
        self.port = None
        self.runs = 0
        self.session = requests.Session()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self):
        return self.workdir / f"server-{self.runs}.log"

    def start(self, port=0):
        self.runs += 1
        env = dict(os.environ)
        env.update(self.env)
        env.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0")
        env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1")
        self.log = open(self.log_path, "wb")
        cmd = [BIN, "serve", "--db", self.db.url, "--port", str(port)] + self.args
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env)

        def listening():
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode}:\n{self.output()}")
            for line in self.lines():
                if line.get("event") == "server.listening":
                    return line["port"]
            return None

        self.port = await_condition(listening, START_TIMEOUT_S, "server to listen")
        return self

    def lines(self):
        out = []
        for raw in self.log_path.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(raw))
            except ValueError:
                pass
        return out

    def output(self):
        return self.log_path.read_text(errors="replace")

    def stop(self, sig=signal.SIGTERM, timeout=60):
        """Stop with `sig` (unless it already exited) and check a clean exit:
        code 0, no sanitizer report. A process killed with kill9 is skipped."""
        if self.proc is None or self.log.closed:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout=timeout)
        self.log.close()
        text = self.output()
        assert code == 0, f"server exited {code}:\n{text[-4000:]}"
        for mark in SANITIZER_MARKS:
            assert mark not in text, f"sanitizer report:\n{text[-8000:]}"

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.log.close()
        self.session.close()
        self.session = requests.Session()

    # -- HTTP ------------------------------------------------------------
    def request(self, method, path, body=None, raw=None, headers=None, timeout=60):
        kwargs = {"timeout": timeout, "headers": headers or {}}
        if raw is not None:
            kwargs["data"] = raw
        elif body is not None:
            kwargs["json"] = body
        return self.session.request(method, self.url + path, **kwargs)

    def post(self, path, body=None, **kw):
        return self.request("POST", path, body, **kw)

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def put(self, path, body=None, **kw):
        return self.request("PUT", path, body, **kw)

    def metrics(self):
        r = self.get("/metrics")
        assert r.status_code == 200
        return r.text

    def metric(self, name, labels=""):
        """The value of one sample, e.g. metric('backbone_lock_waiters')."""
        wanted = name + (("{" + labels + "}") if labels else "")
        for line in self.metrics().splitlines():
            if line.startswith(wanted + " "):
                return float(line[len(wanted) + 1:])
        return None


@pytest.fixture
def database(tmp_path):
    db = Database(tmp_path)
    yield db
    db.drop()


@pytest.fixture
def make_server(database, tmp_path):
    """Factory: make_server(args=[...], env={...}) starts a server on the test's
    database; every server it made is stopped (and checked) at the end."""
    servers = []

    def make(args=(), env=None, start=True):
        # Each server after the first logs in a directory of its own.
        workdir = tmp_path / f"server{len(servers)}" if servers else tmp_path
        workdir.mkdir(exist_ok=True)
        s = Server(database, workdir, args, env)
        servers.append(s)
        return s.start() if start else s

    yield make
    for s in servers:
        s.stop()


@pytest.fixture
def server(make_server):
    return make_server()


def cli(*args, server=None, env=None, stdin=None):
    """Run the backbone CLI (against `server` when given, `stdin` its input);
    the CompletedProcess."""
    e = dict(os.environ)
    e.update(env or {})
    cmd = [BIN, *args] + (["--server", server.url] if server else [])
    return subprocess.run(cmd, capture_output=True, text=True, env=e, timeout=60, input=stdin)


def api_ms(stamp):
    """A time as the API writes it ("2026-11-23T10:00:00.123Z"), in epoch ms."""
    return round(datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() * 1000)


def at_once(server, path, body, headers=None, n=10):
    """POST `body` to `path` from `n` threads together, each on its own
    connection; the (status, answer) of each."""
    start = threading.Barrier(n)

    def go(_):
        with requests.Session() as s:
            start.wait(timeout=60)
            r = s.post(server.url + path, json=body, headers=headers or {}, timeout=120)
            return r.status_code, r.json()

    with concurrent.futures.ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(go, range(n)))


def post_and_hang_up(server, path, body, gauge, parked=1):
    """POST `body` to `path` on a connection of its own, wait until the
    server has parked the request (`gauge` reads `parked`), then hang up."""
    data = json.dumps(body).encode()
    s = socket.create_connection(("127.0.0.1", server.port))
    s.sendall(b"POST %s HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n%s" % (path.encode(), len(data), data))
    await_condition(lambda: server.metric(gauge) == parked, what="the request to be parked")
    s.close()


@contextlib.contextmanager
def writes_blocked(database, table):
    """Keep Backbone's writes to `table` waiting while the block lasts: a
    transaction of the test's holds PostgreSQL's EXCLUSIVE lock on it (reads
    go on), or SQLite's write lock on the whole file."""
    if database.name is None:
        import sqlite3
        c = sqlite3.connect(database.url[len("sqlite:"):], timeout=30, isolation_level=None)
        c.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            c.execute("ROLLBACK")
            c.close()
        return
    p = subprocess.Popen(["psql", "-qAt", "-v", "ON_ERROR_STOP=1", "-d", database.url],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        p.stdin.write(f"BEGIN; LOCK TABLE {table} IN EXCLUSIVE MODE; SELECT 'held';\n")
        p.stdin.flush()
        assert p.stdout.readline().strip() == "held"
        yield
    finally:
        p.stdin.write("COMMIT;\n")
        p.stdin.close()
        assert p.wait(timeout=60) == 0


def hang_up_in_the_database(server, database, table, path, body):
    """POST `body` to `path` and hang up while the request waits for the
    database, its writes to `table` held up until then."""
    with writes_blocked(database, table):
        # Suspended: the request, and the /metrics request that reads it.
        post_and_hang_up(server, path, body, "backbone_http_requests_suspended", parked=2)


def stops_cleanly(server):
    """Stop `server` and check it had nothing left running (no request still
    counted as suspended, no handler ignoring cancellation)."""
    server.stop()
    [stopped] = [line for line in server.lines() if line.get("event") == "server.stopped"][-1:]
    assert stopped.get("clean") != "false", stopped


def request_logged(server, path):
    """The log line of the last request to `path` the server has finished."""
    done = [line for line in server.lines()
            if line.get("event") == "http.request" and line.get("path") == path]
    return done[-1] if done else None


EVENTS_DIR = pathlib.Path(__file__).resolve().parents[2] / "docs" / "events"


def outbox_events(server, **filters):
    """Every event committed so far, paging through GET /outbox to the end and
    coming back while events are held back (on PostgreSQL, events beyond one
    read's sequencing batch)."""
    events, after = [], 0
    query = "&".join(f"{k}={v}" for k, v in filters.items())
    deadline, page = time.monotonic() + 60, None
    while True:
        assert time.monotonic() < deadline, f"events still held back after 60 s: {page}"
        page = server.get(f"/outbox?after={after}&limit=1000&{query}").json()
        events += page["events"]
        if page["events"]:
            after = page["events"][-1]["seq"]
        if page["next_after"] is None and page["held_back"] == 0:
            return events


def check_events(server, want_types=()):
    """Validate every event against docs/events (the envelope and its type's
    schema; each type must have one); check seqs grow and that each of
    `want_types` occurs. Returns the events."""
    import jsonschema
    checker = jsonschema.FormatChecker()
    envelope = json.loads((EVENTS_DIR / "envelope.json").read_text())
    events = outbox_events(server)
    seqs = [ev["seq"] for ev in events]
    assert seqs == sorted(set(seqs)), seqs
    for ev in events:
        jsonschema.validate(ev, envelope, format_checker=checker)
        schema = EVENTS_DIR / f"{ev['type']}.json"
        assert schema.exists(), f"no schema for {ev['type']}"
        jsonschema.validate(ev["data"], json.loads(schema.read_text()), format_checker=checker)
    missing = set(want_types) - {ev["type"] for ev in events}
    assert not missing, missing
    return events


def wait_job(server, job_id, states=("completed",), timeout_s=60):
    """Poll GET /jobs/{id} until its state is one of `states`; return it."""
    def done():
        j = server.get(f"/jobs/{job_id}").json()
        return j if j["state"] in states else None
    return await_condition(done, timeout_s, f"job {job_id} to be {'/'.join(states)}")


def problem(resp, status, type_slug=None, field=None):
    """Assert `resp` is a problem+json with this status (type, field) and return it."""
    assert resp.status_code == status, f"{resp.status_code} {resp.text}"
    assert resp.headers["Content-Type"].startswith("application/problem+json"), resp.headers
    doc = resp.json()
    assert doc["status"] == status
    assert doc["title"] and doc["detail"]
    if type_slug:
        assert doc["type"] == "urn:backbone:problem:" + type_slug, doc
    if field is not None:
        assert doc.get("field") == field, doc
    return doc
