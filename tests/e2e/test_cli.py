"""The `backbone locks` / `backbone fenced` CLI against a live server: human
output, --json, and exit codes (0 ok, 1 refused, 2 usage, 3 unreachable)."""
import json
import socket

from conftest import cli



def test_lock_cycle_with_human_output(server):
    r = cli("locks", "acquire", "orders", "--owner", "w1", "--ttl", "30s", server=server)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("acquired orders: owner w1, token 1, epoch 1, expires ")
    r = cli("locks", "acquire", "orders", "--owner", "w2", server=server)
    assert r.returncode == 1 and "held by another owner" in r.stderr and "409" in r.stderr
    r = cli("locks", "acquire", "orders", "--owner", "w2", "--wait", "200ms", server=server)
    assert r.returncode == 1 and "still held after waiting" in r.stderr
    # --timeout bounds the request beyond the wait, not the wait itself.
    r = cli("locks", "acquire", "orders", "--owner", "w2", "--wait", "1500ms", "--timeout", "300ms",
            server=server)
    assert r.returncode == 1 and "still held after waiting" in r.stderr, r.stderr
    r = cli("locks", "show", "orders", server=server)
    assert r.returncode == 0 and r.stdout.startswith("held orders: owner w1, epoch 1")
    r = cli("locks", "list", server=server)
    assert r.returncode == 0 and "held orders: owner w1" in r.stdout
    r = cli("locks", "renew", "orders", "--token", "1", "--ttl", "1m", server=server)
    assert r.returncode == 0 and r.stdout.startswith("renewed orders: owner w1, token 1")
    r = cli("locks", "release", "orders", "--token", "7", server=server)
    assert r.returncode == 1 and "token 7 was never granted for lock orders" in r.stderr
    r = cli("locks", "release", "orders", "--token", "1", server=server)
    assert r.returncode == 0 and r.stdout == "released orders (token 1)\n"
    r = cli("locks", "show", "orders", server=server)
    assert r.returncode == 1 and "not held" in r.stderr
    r = cli("locks", "list", server=server)
    assert r.returncode == 0 and r.stdout == "no locks held\n"


def test_a_refused_acquire_names_the_holder_and_its_expiry(server):
    r = cli("locks", "acquire", "cli1", "--owner", "o1", "--ttl", "1m", "--json", server=server)
    assert r.returncode == 0, r.stderr
    expires = json.loads(r.stdout)["expires_at"]
    r = cli("locks", "acquire", "cli1", "--owner", "o2", "--wait", "1s", server=server)
    assert r.returncode == 1
    assert r.stderr.splitlines() == [
        r.stderr.splitlines()[0],
        f"backbone: held by o1, lease expires {expires}",
    ], r.stderr
    assert "still held after waiting" in r.stderr and "(HTTP 409)" in r.stderr
    r = cli("locks", "acquire", "cli1", "--owner", "o2", server=server)
    assert r.returncode == 1
    assert r.stderr == ("backbone: lock cli1 is held by another owner (HTTP 409)\n"
                        f"backbone: held by o1, lease expires {expires}\n"), r.stderr
    # --json prints the server's problem as it is, holder included.
    r = cli("locks", "acquire", "cli1", "--owner", "o2", "--json", server=server)
    assert r.returncode == 1 and r.stderr == ""
    doc = json.loads(r.stdout)
    assert doc["holder"] == "o1" and doc["expires_at"] == expires and doc["status"] == 409
    # Other refusals have no holder to name.
    r = cli("locks", "release", "cli1", "--token", "9", server=server)
    assert r.returncode == 1 and "held by" not in r.stderr and len(r.stderr.splitlines()) == 1


def test_json_output_is_the_servers_answer(server):
    r = cli("locks", "acquire", "L", "--owner", "w1", "--json", server=server)
    assert r.returncode == 0
    g = json.loads(r.stdout)
    assert g["token"] == 1 and g["outcome"] == "granted"
    r = cli("locks", "acquire", "L", "--owner", "w2", "--json", server=server)
    assert r.returncode == 1
    assert json.loads(r.stdout)["type"] == "urn:backbone:problem:lock_held"


def test_fenced_put_and_get(server):
    r = cli("fenced", "put", "acct", "--token", "3", "--value", '{"balance": 5}', server=server)
    assert r.returncode == 0 and r.stdout == "stored acct with token 3\n"
    r = cli("fenced", "get", "acct", server=server)
    assert r.returncode == 0 and r.stdout == '{"balance":5} (token 3)\n'
    r = cli("fenced", "put", "acct", "--token", "2", "--value", "1", server=server)
    assert r.returncode == 1 and "older than token 3" in r.stderr
    r = cli("fenced", "put", "acct", "--token", "4", "--value", "not json", server=server)
    assert r.returncode == 2 and "--value must be JSON" in r.stderr


def test_usage_errors_exit_2():
    for args, needle in [
        (["locks"], "expected a command and a name"),
        (["locks", "acquire", "L"], "acquire needs --owner"),
        (["locks", "frob", "L"], "unknown locks command"),
        (["locks", "acquire", "L", "--owner", "w", "--ttl", "5x"], "--ttl"),
        (["locks", "renew", "L"], "need --token"),
        (["nope"], "unknown command 'nope'"),
    ]:
        r = cli(*args)
        assert r.returncode == 2, (args, r.stderr)
        assert needle in r.stderr, (args, r.stderr)


def test_unreachable_server_exits_3():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nobody listens once closed
    r = cli("locks", "show", "L", "--server", f"http://127.0.0.1:{port}")
    assert r.returncode == 3 and "cannot connect" in r.stderr


def test_api_token_from_the_environment(make_server):
    s = make_server(["--api-token", "t0k"])
    r = cli("locks", "list", server=s)
    assert r.returncode == 1 and "401" in r.stderr
    r = cli("locks", "list", server=s, env={"BACKBONE_API_TOKEN": "t0k"})
    assert r.returncode == 0, r.stderr
