"""/metrics with real processes: outcome counters summed over real gunicorn workers; the
scheduler's leader and jobs (successes, failures) follow real schedulers. In this process (the
counters, stock, leases, lost campaigns, a Redis or database down): integration/test_metrics.py."""
import time

from loadtest.harness import free_port, open_campaign, users, wait_until
from tests.support import (
    FAST_JOBS, flood, get, get_text, issue_call, issue_directly, outcome, poll, samples, scrape, value,
)


def test_metrics_sum_over_gunicorn_workers(svc, signer, gunicorn, tmp_path):
    server = gunicorn(workers=2, PROMETHEUS_MULTIPROC_DIR=tmp_path)
    campaign_id = open_campaign(svc, 100, "metrics")
    results = flood([issue_call(server.url, campaign_id, u, t) for u, t in users(signer, 150, prefix="w")],
                    concurrency=50)
    assert sorted(status for _, status, _ in results) == [201] * 100 + [409] * 50

    status, _ = get(server.url, "/healthz")
    assert status == 200
    # any worker answers the scrape with the sum over both
    for _ in range(4):
        values = samples(get_text(server.url, "/metrics"))
        assert outcome(values, "NEW") == 100
        assert outcome(values, "SOLD_OUT") == 50
        assert values[("coupon_issue_duration_seconds_count", ())] == 150
        assert values[("coupon_local_block_serials", (("campaign_id", str(campaign_id)),))] == 0


JOBS = ("flush", "stock_sync", "lifecycle", "reclaim")


def test_leader_gauge_and_job_successes_follow_a_real_scheduler(client, svc, scheduler):
    values = scrape(client)
    assert value(values, "coupon_scheduler_leader") == 0
    assert not [k for k in values if k[0] == "coupon_job_last_success_timestamp_seconds"]

    started = time.time()
    jobs = scheduler(**FAST_JOBS)
    values = poll(client, lambda v: value(v, "coupon_scheduler_leader") == 1 and all(
        value(v, "coupon_job_last_success_timestamp_seconds", name=job) for job in JOBS),
        "the leader and a success of every job")
    for job in JOBS:  # the scheduler host's clock, this one's
        assert started - 1 <= value(values, "coupon_job_last_success_timestamp_seconds", name=job) <= time.time() + 1

    jobs.stop()  # it resigns: no leader at once
    values = poll(client, lambda v: value(v, "coupon_scheduler_leader") == 0, "no leader")
    assert value(values, "coupon_job_last_success_timestamp_seconds", name="flush")  # the last one stays


def test_failed_job_runs_are_counted_and_record_no_success(svc, gunicorn, scheduler, tmp_path):
    """With its database unreachable and a claim to flush, the scheduler's flush, stock sync and
    lifecycle fail every run: counted in the metric files it shares with gunicorn; reclaim, Redis
    only, succeeds."""
    issue_directly(svc, open_campaign(svc, 10, "failing"), "alice")
    server = gunicorn(workers=1, private_metrics=True)
    dead_db = f"mysql+pymysql://root@127.0.0.1:{free_port()}/nowhere"
    scheduler(**FAST_JOBS, DATABASE_URL=dead_db, PROMETHEUS_MULTIPROC_DIR=server.metrics_dir)

    def failing(values):
        return (all(value(values, "coupon_job_failures_total", name=job) >= 2
                    for job in ("flush", "stock_sync", "lifecycle"))
                and value(values, "coupon_job_last_success_timestamp_seconds", name="reclaim"))

    values = wait_until(lambda: (lambda v: failing(v) and v)(samples(get_text(server.url, "/metrics"))),
                        timeout=20, what="failed runs counted")
    assert value(values, "coupon_job_failures_total", name="reclaim") == 0  # there from the start
    for job in ("flush", "stock_sync", "lifecycle"):
        assert value(values, "coupon_job_last_success_timestamp_seconds", name=job) is None
    assert value(values, "coupon_ready", check="database") == 1  # gunicorn's own database is up
