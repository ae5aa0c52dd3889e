"""deploy/: the alert rules pass `promtool check` and their own unit tests
(each alert shown to fire), the example Prometheus configuration loads, the
dashboard is well-formed, and the example environment names only options
the binary has. (tests/e2e/test_observability.py checks the metric names
against a live server.)"""
import json
import os
import pathlib
import re
import subprocess

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
PROM = ROOT / "deploy/prometheus"


def promtool(*args):
    r = subprocess.run(["promtool", *args], cwd=PROM, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def test_rules_check_and_pass_their_unit_tests():
    assert "SUCCESS" in promtool("check", "rules", "backbone-rules.yml")
    assert "SUCCESS" in promtool("test", "rules", "backbone-rules.test.yml")
    assert "SUCCESS" in promtool("check", "config", "prometheus.yml")


def test_every_alert_is_shown_to_fire():
    rules = yaml.safe_load((PROM / "backbone-rules.yml").read_text())
    alerts = [r["alert"] for g in rules["groups"] for r in g["rules"]]
    assert len(alerts) == len(set(alerts)) >= 10
    tested = yaml.safe_load((PROM / "backbone-rules.test.yml").read_text())
    fired = {t["alertname"] for case in tested["tests"] for t in case["alert_rule_test"]
             if t.get("exp_alerts")}
    assert fired == set(alerts), set(alerts) ^ fired


def test_the_dashboard_is_well_formed_and_what_its_script_makes():
    text = (ROOT / "deploy/grafana/backbone.json").read_text()
    made = subprocess.run(["python3", ROOT / "deploy/grafana/make-dashboard.py"],
                          capture_output=True, text=True, check=True).stdout
    assert made == text, "run deploy/grafana/make-dashboard.py > deploy/grafana/backbone.json"
    dash = json.loads(text)
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        assert p["gridPos"]["x"] + p["gridPos"]["w"] <= 24, p["title"]
        for t in p.get("targets", []):
            assert t["expr"] and t["refId"], p["title"]
    assert sum(len(p.get("targets", [])) for p in dash["panels"]) >= 30


def test_the_example_environment_names_real_options():
    help_text = subprocess.run([os.environ["BACKBONE_BIN"], "serve", "--help"],
                               capture_output=True, text=True).stdout
    known = set(re.findall(r"env (BACKBONE_[A-Z_]+)", help_text))
    assert len(known) > 20, help_text
    named = set(re.findall(r"^#?(BACKBONE_[A-Z_]+)=", (ROOT / "deploy/systemd/backbone.env")
                           .read_text(), re.M))
    assert named and not named - known, named - known
