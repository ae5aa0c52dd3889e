"""/metrics against the deploy/ kit: after real work (a checkout through its
saga, a lock, a dead job) the exposition passes `promtool check metrics`,
and every metric the alert rules and the dashboard name is one the server
declares -- so the rules cannot drift from the binary."""
import pathlib
import re
import subprocess
import uuid

import yaml

from conftest import await_condition

ROOT = pathlib.Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def named_metrics():
    """Metric names in the alert rules, their tests and the dashboard."""
    texts = [(DEPLOY / "prometheus/backbone-rules.yml").read_text(),
             (DEPLOY / "prometheus/backbone-rules.test.yml").read_text(),
             (DEPLOY / "grafana/backbone.json").read_text()]
    names = set()
    for text in texts:
        names |= set(re.findall(r"\bbackbone_[a-z_]+[a-z]\b", text))
    return names


def declared(exposition):
    """{name: type} from the exposition's # TYPE lines, histograms with their
    _bucket, _sum and _count series."""
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", exposition, re.M))
    out = dict(types)
    for name, kind in types.items():
        if kind == "histogram":
            for suffix in ("_bucket", "_sum", "_count"):
                out[name + suffix] = kind
    return out


def busy_server(server):
    """Work that makes most series exist: a checkout settled by its saga, a
    lock taken and released, a job that died."""
    r = server.post("/inventory/products", {"sku": "OBS-1", "name": "obs", "stock": 5})
    assert r.status_code == 201, r.text
    r = server.post("/checkout", {"customer_id": "c1", "currency": "EUR",
                                  "items": [{"sku": "OBS-1", "qty": 1, "unit_price": 900}],
                                  "payment": {"method": "card", "card": "tok_visa"}},
                    headers={"Idempotency-Key": uuid.uuid4().hex})
    assert r.status_code == 202, r.text
    cid = r.json()["checkout_id"]
    await_condition(lambda: server.get(f"/checkout/{cid}").json()["status"] == "COMPLETED",
                    what="the checkout to complete")
    grant = server.post("/locks/obs/acquire", {"owner": "w1", "ttl_ms": 30000}).json()
    assert server.post("/locks/obs/release", {"token": grant["token"]}).status_code == 200
    job_id = server.post("/jobs", {"handler": "fail_permanently"}).json()["job_id"]
    await_condition(lambda: server.get(f"/jobs/{job_id}").json()["state"] == "dead",
                    what="the job to die")


def test_the_exposition_passes_promtool_and_has_what_the_rules_name(server):
    busy_server(server)
    text = server.metrics()
    lint = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True,
                          text=True)
    assert lint.returncode == 0 and lint.stdout == "", lint.stdout + lint.stderr
    have = declared(text)
    missing = sorted(n for n in named_metrics() if n not in have)
    assert not missing, missing
    # The dead job's group is there with its error, as the alert quotes it.
    assert re.search(r'^backbone_dead_jobs_by_error\{queue="default",handler="fail_permanently",'
                     r'fingerprint="[0-9a-f]{16}",error="failed on purpose, permanently"\} 1$',
                     text, re.M), text

