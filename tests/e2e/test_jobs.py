"""Write-behind and the scheduled jobs, with real gunicorn workers and real scheduler processes (the
Flusher alone, in this process: integration/test_outbox.py; the jobs' functions:
integration/test_jobs.py)."""
import os
import signal
import time
from collections import Counter

import pytest

from coupon.keys import SCHEDULER_LEADER
from coupon.reconcile import mysql_tickets
from loadtest.harness import free_port, open_campaign, users, wait_until
from tests.support import (
    FAST_JOBS, answered, assert_exact_tickets, backlog, flood, get_text, issue_call,
    on_single_and_cluster, request, samples,
)


@on_single_and_cluster
def test_flood_then_close_puts_every_answer_in_mysql(svc, signer, gunicorn, scheduler, runner, redis_client):
    server = gunicorn(workers=2)
    scheduler(**FAST_JOBS)
    campaign_id = open_campaign(svc, 1000)
    results = flood([issue_call(server.url, campaign_id, u, t) for u, t in users(signer, 1500)])
    assert Counter(s for _, s, _ in results) == {201: 1000, 409: 500}
    wait_until(lambda: backlog(svc, campaign_id) == 0, what="the flush job to drain the outbox")

    closed = runner.invoke(args=["campaign", "close", str(campaign_id)])
    assert closed.exit_code == 0, closed.output
    assert "AGREE" in closed.output
    assert mysql_tickets(svc.engine, campaign_id) == answered(results)
    left = redis_client.keys(f"*c:{campaign_id}*")
    # released: nothing is left that does not expire (a rate window may expire between KEYS and TTL)
    assert [k for k in left if redis_client.ttl(k) == -1] == []
    status, body = request(server.url, "GET", f"/api/v1/campaigns/{campaign_id}")[:2]
    assert (status, body["issued"], body["status"]) == (200, 1000, "closed")
    user, token = users(signer, 1)[0]
    status, body = request(server.url, "GET", f"/api/v1/campaigns/{campaign_id}/ticket", token)[:2]
    assert status == 200 and (body["serial"], body["code"]) == answered(results)[user]
    started = time.monotonic()  # workers learn of the close within STATE_REFRESH (1 s)
    wait_until(lambda: request(server.url, "POST", f"/api/v1/campaigns/{campaign_id}/issue", token)[1]
               ["error"]["code"] == "CLOSED", timeout=3, what="CLOSED")
    assert time.monotonic() - started < 1.5
    again = runner.invoke(args=["campaign", "close", str(campaign_id)])
    assert again.exit_code == 0 and "database rows 1000" in again.output


@pytest.mark.parametrize("redis_kind", ["cluster"])
def test_on_a_cluster_every_command_goes_to_its_node_unasked(svc, signer, gunicorn, scheduler, runner,
                                                             session_cluster):
    """Issue, flush, stock sync, reclaim, close and release send each command to the master of
    its key: no node is asked where a command goes (COMMAND GETKEYS), and every master runs claims."""
    for node in session_cluster.live():
        with node.client() as client:
            client.config_resetstat()
    server = gunicorn(workers=2)
    scheduler(**FAST_JOBS)
    campaign_id = open_campaign(svc, 300)
    results = flood([issue_call(server.url, campaign_id, u, t) for u, t in users(signer, 400)])
    assert Counter(s for _, s, _ in results) == {201: 300, 409: 100}
    wait_until(lambda: backlog(svc, campaign_id) == 0, what="the flush job to drain the outbox")
    assert runner.invoke(args=["campaign", "close", str(campaign_id)]).exit_code == 0

    stats = {node.port: node.info("commandstats") for node in session_cluster.live()}
    assert not [port for port, s in stats.items() if "cmdstat_command|getkeys" in s], stats
    masters = [node.port for node in session_cluster.masters()]
    assert all(stats[port].get("cmdstat_evalsha", {}).get("calls", 0) > 0 for port in masters), stats


@on_single_and_cluster
def test_close_drains_without_scheduler_and_refuses_late_claims(svc, signer, gunicorn, runner):
    server = gunicorn(workers=2)
    campaign_id = open_campaign(svc, 300)
    first = flood([issue_call(server.url, campaign_id, u, t) for u, t in users(signer, 200)])
    assert backlog(svc, campaign_id) == 200  # no scheduler: all still in Redis
    closed = runner.invoke(args=["campaign", "close", str(campaign_id)])
    assert closed.exit_code == 0, closed.output
    late = flood([issue_call(server.url, campaign_id, u, t) for u, t in users(signer, 50, prefix="late")])
    assert {body["error"]["code"] for _, _, body in late} == {"CLOSED"}
    assert mysql_tickets(svc.engine, campaign_id) == answered(first)


@on_single_and_cluster
def test_killed_worker_block_is_reclaimed(svc, signer, gunicorn, scheduler, redis_client):
    # leases short enough to be reclaimed soon after the kill, long enough that a wave on a loaded
    # machine ends before an unrenewed one could be (with 2 s, CI once found none held after 600 claims)
    short = dict(LEASE_TTL=4, BLOCK_SIZE=200)
    server = gunicorn(workers=2, **short)
    scheduler(**FAST_JOBS, **short, REDIS_TIMEOUT=0.5)  # reclaims 2 x REDIS_TIMEOUT after expiry
    campaign_id = open_campaign(svc, 1000)
    keys = svc.keys(campaign_id)
    people = users(signer, 4000)
    results, rest = [], people

    def holding_worker():
        holders = {int(lease.split(":")[1]) for lease in redis_client.zrange(keys.leases, 0, -1)}
        return next((pid for pid in server.worker_pids() if pid in holders), None)

    # leases that happen to be used up at the end of a wave are ended: send more until one is held
    while (victim := holding_worker()) is None and len(results) < 600:
        wave, rest = rest[:100], rest[100:]
        results += flood([issue_call(server.url, campaign_id, u, t) for u, t in wave])
    assert victim is not None, "no worker holds a lease after 600 claims"
    os.kill(victim, signal.SIGKILL)

    deadline = time.monotonic() + 40
    while sum(s == 201 for _, s, _ in results) < 1000 and rest and time.monotonic() < deadline:
        wave, rest = rest[:200], rest[200:]
        results += flood([issue_call(server.url, campaign_id, u, t) for u, t in wave])
        time.sleep(0.3)
    assert {s for _, s, _ in results} <= {201, 409}
    new = assert_exact_tickets(results, signer, campaign_id, 1000)
    missing = set(range(1, 1001)) - {t["serial"] for t in new}
    assert not missing, (sorted(missing)[:20], redis_client.zrange(keys.leases, 0, -1, withscores=True),
                         redis_client.hgetall(keys.lease_serials), redis_client.lrange(keys.returned, 0, -1))


def test_database_down_then_back(svc, signer, gunicorn, scheduler, mysql_url):
    server = gunicorn(workers=2, private_metrics=True)  # its /metrics: the broken scheduler's too
    dead_db = f"mysql+pymysql://root@127.0.0.1:{free_port()}/nowhere"
    broken = scheduler(**FAST_JOBS, DATABASE_URL=dead_db, PROMETHEUS_MULTIPROC_DIR=server.metrics_dir)
    campaign_id = open_campaign(svc, 800)
    results = flood([issue_call(server.url, campaign_id, u, t) for u, t in users(signer, 1000)])
    assert Counter(s for _, s, _ in results) == {201: 800, 409: 200}  # issuing is unaffected

    def flush_runs_failed():
        return samples(get_text(server.url, "/metrics")).get(
            ("coupon_job_failures_total", (("name", "flush"),)), 0)

    # six failed runs of the flush job (every FLUSH_INTERVAL, 0.2 s): a second try at least, its
    # backoff after the first being 0.4 s
    wait_until(lambda: flush_runs_failed() >= 6, what="the flush job to fail six runs")
    assert backlog(svc, campaign_id) == 800, broken.output()
    broken.stop()
    assert broken.output().count("database unreachable") == 1  # once per outage, not per try

    scheduler(**FAST_JOBS)
    wait_until(lambda: backlog(svc, campaign_id) == 0, what="the backlog to drain")
    assert mysql_tickets(svc.engine, campaign_id) == answered(results)


def test_two_schedulers_one_leads_and_the_standby_takes_over(svc, signer, gunicorn, scheduler, redis_client):
    server = gunicorn(workers=2)
    pair = [scheduler(**FAST_JOBS), scheduler(**FAST_JOBS)]
    leader_pid = wait_until(lambda: redis_client.get(SCHEDULER_LEADER), what="a leader")
    leader_pid = int(leader_pid.split(":")[1])
    leader = next(p for p in pair if p.proc.pid == leader_pid)
    standby = next(p for p in pair if p is not leader)

    campaign_id = open_campaign(svc, 500)
    results = flood([issue_call(server.url, campaign_id, u, t) for u, t in users(signer, 600)])
    wait_until(lambda: backlog(svc, campaign_id) == 0, what="the outbox to drain")
    assert mysql_tickets(svc.engine, campaign_id) == answered(results)

    leader.kill()
    killed_at = time.monotonic()
    wait_until(lambda: str(standby.proc.pid) in (redis_client.get(SCHEDULER_LEADER) or ""),
               timeout=4, what="the standby to take over")
    assert time.monotonic() - killed_at <= 2 + 1  # within one lease period (2 s) and a poll
    second = open_campaign(svc, 100)
    more = flood([issue_call(server.url, second, u, t) for u, t in users(signer, 100, prefix="m")])
    wait_until(lambda: backlog(svc, second) == 0, what="the new leader to flush")
    assert mysql_tickets(svc.engine, second) == answered(more)
