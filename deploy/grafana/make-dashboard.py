#!/usr/bin/env python3
"""Writes deploy/grafana/backbone.json (the dashboard) to stdout:
    deploy/grafana/make-dashboard.py > deploy/grafana/backbone.json
The test suite checks the file is what this makes."""
import json
panels = []
y = 0
pid = 1
def row(title):
    global y, pid
    panels.append({"type": "row", "title": title, "id": pid, "collapsed": False,
                   "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
    pid += 1; y += 1
x = 0
def panel(title, exprs, unit="short", w=8, kind="timeseries", desc=None):
    global x, y, pid
    if x + w > 24:
        x = 0; y += 8
    targets = [{"refId": chr(65 + i), "expr": e, "legendFormat": l, "datasource": {"type": "prometheus", "uid": "${datasource}"}}
               for i, (e, l) in enumerate(exprs)]
    p = {"type": kind, "title": title, "id": pid, "datasource": {"type": "prometheus", "uid": "${datasource}"},
         "gridPos": {"h": 8, "w": w, "x": x, "y": y}, "targets": targets,
         "fieldConfig": {"defaults": {"unit": unit}, "overrides": []}, "options": {}}
    if desc: p["description"] = desc
    if kind == "table":
        for t in targets:
            t["format"] = "table"; t["instant"] = True
    panels.append(p)
    pid += 1; x += w
def endrow():
    global x, y
    x = 0; y += 8
I = '{instance=~"$instance"}'
def sel(extra=""):
    return '{instance=~"$instance"' + ("," + extra if extra else "") + "}"

row("Overview")
panel("Requests per second by route", [(f"sum by (route, method) (rate(http_requests_total{I}[$__rate_interval]))", "{{method}} {{route}}")], "reqps")
S5 = sel('status=~"5.."')
panel("Share of 5xx answers", [(f"sum(rate(http_requests_total{S5}[$__rate_interval])) / sum(rate(http_requests_total{I}[$__rate_interval]))", "5xx")], "percentunit")
panel("Request latency p50 / p99", [
    (f"histogram_quantile(0.5, sum by (le) (rate(http_request_duration_seconds_bucket{I}[$__rate_interval])))", "p50"),
    (f"histogram_quantile(0.99, sum by (le) (rate(http_request_duration_seconds_bucket{I}[$__rate_interval])))", "p99")], "s")
panel("Resident memory", [(f"backbone_process_resident_memory_bytes{I}", "{{instance}}")], "bytes")
panel("Uptime", [(f"time() - backbone_process_start_time_seconds{I}", "{{instance}}")], "s")
panel("Requests waiting for the database or a lock", [(f"backbone_http_requests_suspended{I}", "{{instance}}")])
endrow()

row("Store")
panel("Commit latency p99", [(f"histogram_quantile(0.99, sum by (engine, le) (rate(backbone_store_transaction_duration_seconds_bucket{I}[$__rate_interval])))", "{{engine}}")], "s")
panel("Transactions per second", [(f"sum by (result) (rate(backbone_store_transactions_total{I}[$__rate_interval]))", "{{result}}")], "ops")
panel("Units per commit (group commit)", [(f"sum(rate(backbone_store_batch_units_sum{I}[$__rate_interval])) / sum(rate(backbone_store_batch_units_count{I}[$__rate_interval]))", "units")])
panel("Conflict retries per second", [(f"sum(rate(backbone_store_conflict_retries_total{I}[$__rate_interval]))", "retries"),
                                      (f"sum(rate(backbone_store_group_fallbacks_total{I}[$__rate_interval]))", "group fallbacks")], "ops")
panel("Units waiting for a database thread", [(f"backbone_store_queue_depth{I}", "{{instance}}")])
endrow()

row("Jobs")
panel("Submitted per second by queue", [(f"sum by (queue) (rate(backbone_jobs_submitted_total{I}[$__rate_interval]))", "{{queue}}"),
                                        (f"sum by (queue) (rate(backbone_job_key_rate_parked_total{I}[$__rate_interval]))", "{{queue}} parked by a key's rate")], "ops")
panel("Attempts finished per second by outcome", [(f"sum by (outcome) (rate(backbone_jobs_finished_total{I}[$__rate_interval]))", "{{outcome}}")], "ops")
panel("Jobs by queue and state", [("max by (queue, state) (backbone_jobs{instance=~\"$instance\"})", "{{queue}} {{state}}")])
panel("Ready to started, p50 / p99", [
    (f"histogram_quantile(0.5, sum by (queue, le) (rate(backbone_job_queue_latency_seconds_bucket{I}[$__rate_interval])))", "{{queue}} p50"),
    (f"histogram_quantile(0.99, sum by (queue, le) (rate(backbone_job_queue_latency_seconds_bucket{I}[$__rate_interval])))", "{{queue}} p99")], "s")
panel("Attempt duration p99", [(f"histogram_quantile(0.99, sum by (queue, le) (rate(backbone_job_duration_seconds_bucket{I}[$__rate_interval])))", "{{queue}}")], "s")
panel("Rescued leases and stale reports", [(f"sum by (queue, kind) (increase(backbone_job_lease_rescues_total{I}[$__rate_interval]))", "rescued {{queue}} {{kind}}"),
                                           (f"sum by (report) (increase(backbone_job_stale_reports_total{I}[$__rate_interval]))", "stale {{report}}")])
panel("Dead letters by error", [("max by (queue, handler, fingerprint, error) (backbone_dead_jobs_by_error{instance=~\"$instance\"})", "")], w=24, kind="table",
      desc="The largest dead-letter groups. backbone dlq list --fingerprint F shows a group's jobs; backbone dlq redrive-all --fingerprint F redrives them.")
endrow()

row("Locks")
panel("Grants per second by outcome", [(f"sum by (outcome) (rate(backbone_lock_acquisitions_total{I}[$__rate_interval]))", "{{outcome}}"),
                                        (f"sum(rate(backbone_lock_contentions_total{I}[$__rate_interval]))", "contended"),
                                        (f"sum(rate(backbone_lock_grants_abandoned_total{I}[$__rate_interval]))", "abandoned (client gone)")], "ops")
panel("Locks held, waiters", [("max(backbone_locks_held{instance=~\"$instance\"})", "held"), (f"sum(backbone_lock_waiters{I})", "waiting")])
panel("Refusals", [(f"sum by (reason) (rate(backbone_lock_renew_failures_total{I}[$__rate_interval]))", "renew {{reason}}"),
                   (f"sum by (reason) (rate(backbone_lock_release_failures_total{I}[$__rate_interval]))", "release {{reason}}"),
                   (f"sum(rate(backbone_fenced_writes_refused_total{I}[$__rate_interval]))", "fenced writes")], "ops")
endrow()

row("Checkout")
panel("Checkouts per second by outcome", [(f"sum by (outcome) (rate(backbone_checkouts_total{I}[$__rate_interval]))", "{{outcome}}")], "ops")
panel("Sagas started and ended", [(f"sum by (type) (rate(backbone_sagas_started_total{I}[$__rate_interval]))", "{{type}} started"),
                                  (f"sum by (type, outcome) (rate(backbone_sagas_ended_total{I}[$__rate_interval]))", "{{type}} {{outcome}}"),
                                  (f"sum by (type) (rate(backbone_sagas_stuck_total{I}[$__rate_interval]))", "{{type}} became STUCK")], "ops")
panel("Sagas STUCK", [("max by (type) (backbone_sagas_stuck{instance=~\"$instance\"})", "{{type}}")])
panel("Saga step p99", [(f"histogram_quantile(0.99, sum by (step, phase, le) (rate(backbone_saga_step_duration_seconds_bucket{I}[$__rate_interval])))", "{{step}} {{phase}}")], "s")
panel("PSP call latency p99", [(f"histogram_quantile(0.99, sum by (op, le) (rate(backbone_payment_attempt_latency_seconds_bucket{I}[$__rate_interval])))", "{{op}}")], "s")
panel("Payment failures by reason", [(f"sum by (reason) (rate(backbone_payment_failures_total{I}[$__rate_interval]))", "{{reason}}")], "ops")
panel("Reservations by outcome", [(f"sum by (outcome) (rate(backbone_inventory_reservations_total{I}[$__rate_interval]))", "{{outcome}}"),
                                  (f"sum by (reason) (rate(backbone_inventory_releases_total{I}[$__rate_interval]))", "released: {{reason}}")], "ops")
panel("Reservation commits by outcome", [(f"sum by (outcome) (rate(backbone_inventory_commits_total{I}[$__rate_interval]))", "{{outcome}}")], "ops")
endrow()

dash = {
    "title": "Backbone", "uid": "backbone", "schemaVersion": 38, "version": 1, "editable": True,
    "tags": ["backbone"], "time": {"from": "now-1h", "to": "now"}, "refresh": "30s",
    "templating": {"list": [
        {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Data source"},
        {"name": "instance", "type": "query", "label": "Instance", "multi": True, "includeAll": True,
         "allValue": ".*", "datasource": {"type": "prometheus", "uid": "${datasource}"},
         "query": "label_values(backbone_build_info, instance)", "refresh": 2}]},
    "annotations": {"list": []},
    "panels": panels,
}
print(json.dumps(dash, indent=2))
