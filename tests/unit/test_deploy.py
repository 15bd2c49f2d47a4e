"""deploy/ read as files, without services: each alert is tested firing and not firing, has its
runbook in docs/operations.md, the Grafana dashboard is provisioning-ready, and the metric names
of a PromQL expression are read right. promtool and a real /metrics: tests/e2e/test_deploy.py."""
import json
import os
import re

from loadtest.harness import ROOT
from tests.support_deploy import DASHBOARD, metric_names, read_rules, rule_test_expectations
from tests.support_docs import anchors, slug

PROVISIONING = os.path.join(ROOT, "deploy", "grafana", "provisioning", "dashboards.yml")
OPERATIONS = os.path.join(ROOT, "docs", "operations.md")


def test_each_alert_is_tested_firing_and_not_firing():
    expectations = rule_test_expectations()
    for rule in read_rules():
        seen = expectations.get(rule["alert"], [])
        assert True in seen, f"{rule['alert']}: no evaluation where it fires"
        assert False in seen, f"{rule['alert']}: no evaluation where it must not fire"


def alerts_section():
    with open(OPERATIONS) as f:
        text = f.read()
    section = re.search(r"^## Alerts\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert section, "docs/operations.md has no section ## Alerts"
    return section[1]


def test_each_alert_has_its_runbook_in_operations():
    rules = read_rules()
    entries = re.findall(r"^### (\w+)\n(.*?)(?=^### |\Z)", alerts_section(), re.S | re.M)
    assert sorted(name for name, _ in entries) == sorted(r["alert"] for r in rules)
    for name, entry in entries:  # what it means, and what to do
        assert "**What to do**" in entry, f"{name}: the runbook says nothing to do"
    for rule in rules:
        assert rule["runbook_url"] == f"docs/operations.md#{slug(rule['alert'])}", rule
        assert slug(rule["alert"]) in anchors(OPERATIONS)


def test_dashboard_is_ready_for_provisioning():
    with open(DASHBOARD) as f:
        dashboard = json.load(f)
    assert dashboard["uid"] and dashboard["title"] and dashboard.get("id") is None
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert (variables["DS_PROMETHEUS"]["type"], variables["DS_PROMETHEUS"]["query"]) == ("datasource", "prometheus")
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, panel["title"]
        assert panel["targets"] and all(t["expr"] for t in panel["targets"]), panel["title"]
    with open(PROVISIONING) as f:
        provisioning = f.read()
    assert re.search(r"^apiVersion: 1$", provisioning, re.M)
    assert re.search(r"^\s+type: file$", provisioning, re.M)
    assert re.search(r"^\s+path: /\S+$", provisioning, re.M)


def test_metric_names_are_read_from_promql():
    assert metric_names(
        'histogram_quantile(0.99, sum by (le) (rate(a_bucket{outcome=~"X|Y"}[5m]))) '
        '/ ignoring (outcome) group_left () max(b) > 1e3 and on() (c offset 5m == 1) '
        'or absent(d{name="flush"}) + rate(e_total[$__rate_interval])') == {"a_bucket", "b", "c", "d", "e_total"}
