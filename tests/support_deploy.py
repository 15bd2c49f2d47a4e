"""deploy/ as the tests read it: the alerting rules of alerts.yml, what their promtool tests
expect of each, the Grafana dashboard's expressions, and the metric names a PromQL expression
reads."""
import json
import os
import re

from loadtest.harness import ROOT

RULES = os.path.join(ROOT, "deploy", "prometheus", "alerts.yml")
RULE_TESTS = os.path.join(ROOT, "deploy", "prometheus", "alerts_test.yml")
DASHBOARD = os.path.join(ROOT, "deploy", "grafana", "coupon.json")


# The virtualenv has no YAML parser, and alerts.yml keeps to one shape: `- alert: NAME`, then
# `expr:` on one line or as a `|` block, then its labels and annotations. promtool parses it for
# real; tests/e2e/test_deploy.py checks this reading finds as many rules as promtool does.
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


def dashboard_expressions():
    """The PromQL of every panel of the dashboard, and the metric of each query variable."""
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
