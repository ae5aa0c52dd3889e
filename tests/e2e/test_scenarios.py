"""The scripts in scripts/scenarios/, run as a person would, against a
server of this build: each exits 0 only when its reconciliation adds up."""
import os
import pathlib
import subprocess

import pytest

from conftest import BIN

SCENARIOS = pathlib.Path(__file__).resolve().parents[2] / "scripts" / "scenarios"


def run(script, server=None, **env):
    e = dict(os.environ, **{k: str(v) for k, v in env.items()})
    if server:
        e["BACKBONE_URL"] = server.url
    out = subprocess.run([str(SCENARIOS / script)], capture_output=True, text=True, env=e,
                         timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "all checks passed" in out.stdout
    return out.stdout


@pytest.mark.parametrize("script,env", [("success.sh", {"N": 15}), ("decline.sh", {}),
                                        ("shortage.sh", {"BUYERS": 8, "STOCK": 3}),
                                        ("duplicate.sh", {})])
def test_scenario_against_a_live_server(server, script, env):
    run(script, server, **env)


def test_psp_timeout_scenario(make_server):
    run("psp-timeout.sh", make_server(["--psp-timeout", "100ms"]))


def test_reservation_expiry_scenario(make_server):
    server = make_server(["--checkout-reservation-ttl", "300ms", "--reservation-sweep", "20ms"])
    run("reservation-expiry.sh", server, LATENCY_MS=400)


def test_crash_scenario(database, tmp_path):
    out = run("crash.sh", N=60, KILLS=3, BACKBONE_BIN=BIN, BACKBONE_DB=database.url,
              PORT=18400 + os.getpid() % 1000)
    assert out.count("kill -9 #") == 3
