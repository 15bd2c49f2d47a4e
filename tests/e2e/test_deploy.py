"""deploy/ with real processes: the Prometheus alerting rules pass `promtool check rules` and
their unit tests (`promtool test rules`), and every metric the rules and the dashboard query is
one that /metrics of a real gunicorn (and the scheduler sharing its metric files) exports. Read
as files (runbooks, the dashboard, the rules' tests): tests/unit/test_deploy.py."""
import shutil
import subprocess
import time

import pytest

from loadtest.harness import open_campaign, users
from tests.support import FAST_JOBS, flood, get_text, issue_call, samples
from tests.support_deploy import RULE_TESTS, RULES, dashboard_expressions, metric_names, read_rules


def promtool(*args):
    """Run promtool; fail (not skip) when it is missing: the rules would go unchecked."""
    if shutil.which("promtool") is None:
        pytest.fail("promtool not found: it comes with Debian's prometheus package "
                    "(apt-get install prometheus; .ci/run installs it)")
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=120)


def test_promtool_checks_the_rules():
    result = promtool("check", "rules", RULES)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(read_rules())} rules found" in result.stdout, result.stdout


def test_promtool_unit_tests_of_the_rules_pass():
    result = promtool("test", "rules", RULE_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


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
