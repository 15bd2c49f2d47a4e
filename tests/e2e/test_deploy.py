"""deploy/: the Prometheus alerting rules pass `promtool check rules` and their unit tests
(`promtool test rules`), each alert has its runbook in docs/operations.md, the Grafana dashboard is
provisioning-ready, and every metric the rules and the dashboard query is one that /metrics of a
real gunicorn (and the scheduler sharing its metric files) exports."""
import json
import os
import re
import shutil
import subprocess
import time

import pytest

from loadtest.harness import ROOT, open_campaign, users
from tests.support import FAST_JOBS, flood, get_text, issue_call, samples
from tests.support_docs import anchors, slug

RULES = os.path.join(ROOT, "deploy", "prometheus", "alerts.yml")
RULE_TESTS = os.path.join(ROOT, "deploy", "prometheus", "alerts_test.yml")
DASHBOARD = os.path.join(ROOT, "deploy", "grafana", "coupon.json")
PROVISIONING = os.path.join(ROOT, "deploy", "grafana", "provisioning", "dashboards.yml")
OPERATIONS = os.path.join(ROOT, "docs", "operations.md")


def promtool(*args):
    """Run promtool; fail (not skip) when it is missing: the rules would go unchecked."""
    if shutil.which("promtool") is None:
        pytest.fail("promtool not found: it comes with Debian's prometheus package "
                    "(apt-get install prometheus; .ci/run installs it)")
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=120)


# The virtualenv has no YAML parser, and alerts.yml keeps to one shape: `- alert: NAME`, then
# `expr:` on one line or as a `|` block, then its labels and annotations. promtool parses it for
# real; the test below checks this reading finds as many rules as promtool does.
def read_rules():
    """[{"alert", "expr", "runbook_url"}] of alerts.yml."""
    rules, block = [], None
    with open(RULES) as f:
        for line in f:
            if m := re.match(r"\s*- alert: (\w+)$", line):
                rules.append({"alert": m[1]})
                block = None
            elif m := re.match(r"(\s*)expr: (.*)$", line):
                block = len(m[1]) if m[2] == "|" else None
                rules[-1]["expr"] = "" if block is not None else m[2]
            elif block is not None and (not line.strip() or len(line) - len(line.lstrip()) > block):
                rules[-1]["expr"] += line.strip() + " "
            else:
                block = None
                if m := re.match(r"\s*runbook_url: (\S+)$", line):
                    rules[-1]["runbook_url"] = m[1]
    return rules


def rule_test_expectations():
    """{alert name: [True if an evaluation expects it firing, False if it expects nothing]}."""
    with open(RULE_TESTS) as f:
        text = f.read()
    found = {}
    for name, exp in re.findall(r"alertname: (\w+)\n\s*exp_alerts:(.*)", text):
        found.setdefault(name, []).append(exp.strip() != "[]")
    return found


def test_promtool_checks_the_rules():
    result = promtool("check", "rules", RULES)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(read_rules())} rules found" in result.stdout, result.stdout


def test_promtool_unit_tests_of_the_rules_pass():
    result = promtool("test", "rules", RULE_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


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


def dashboard_expressions():
    with open(DASHBOARD) as f:
        dashboard = json.load(f)
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":  # label_values(METRIC, label): METRIC
            exprs.append(re.match(r"label_values\((\w+)", variable["query"]["query"])[1])
    return exprs


PROMQL_WORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
                "group_left", "group_right", "inf", "nan"}


def metric_names(expr):
    """The metric names a PromQL expression reads: identifiers outside strings, label matchers,
    ranges and label lists, not followed by "(" (functions), not keywords."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", " ", expr)
    expr = re.sub(r"\[[^\]]*\]", " ", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    expr = re.sub(r"\$\{?\w+\}?", " ", expr)  # Grafana's variables
    return {name for name in re.findall(r"\b[a-zA-Z_][a-zA-Z0-9_:]*\b(?!\s*\()", expr)
            if name.lower() not in PROMQL_WORDS}


def test_metric_names_are_read_from_promql():
    assert metric_names(
        'histogram_quantile(0.99, sum by (le) (rate(a_bucket{outcome=~"X|Y"}[5m]))) '
        '/ ignoring (outcome) group_left () max(b) > 1e3 and on() (c offset 5m == 1) '
        'or absent(d{name="flush"}) + rate(e_total[$__rate_interval])') == {"a_bucket", "b", "c", "d", "e_total"}


def test_every_metric_the_rules_and_dashboard_query_is_exported(svc, signer, gunicorn, scheduler):
    """A real gunicorn after issue calls, a scheduler sharing its metric files after its jobs ran."""
    queried = set()
    for expr in [rule["expr"] for rule in read_rules()] + dashboard_expressions():
        queried |= metric_names(expr)
    assert {"coupon_issue_duration_seconds_bucket", "coupon_scheduler_leader"} <= queried  # the reading works

    server = gunicorn(workers=2, private_metrics=True)
    scheduler(**FAST_JOBS, PROMETHEUS_MULTIPROC_DIR=server.metrics_dir)
    campaign_id = open_campaign(svc, 5, "deploy")
    results = flood([issue_call(server.url, campaign_id, u, t) for u, t in users(signer, 8)])
    assert sorted(status for _, status, _ in results) == [201] * 5 + [409] * 3

    deadline = time.monotonic() + 30  # until every job ran once, and the scrape cache expired
    while True:
        exported = {name for name, _ in samples(get_text(server.url, "/metrics"))}
        missing = queried - exported
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert not missing, f"queried by deploy/ but not exported by /metrics: {sorted(missing)}"
