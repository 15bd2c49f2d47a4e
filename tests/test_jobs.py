"""Write-behind and the scheduled jobs, with real gunicorn workers and real scheduler processes."""
import datetime as dt
import os
import signal
import threading
import time
from collections import Counter

import pytest
from sqlalchemy import event, select
from sqlalchemy.exc import OperationalError

from coupon import campaigns, clock, db, queries, redis_state
from coupon.keys import SCHEDULER_LEADER
from coupon.outbox import Flusher, campaigns_with_news, outbox_stats
from coupon.reconcile import database_tallies, mysql_tickets, reconcile, redis_claims, streamed_tallies
from coupon.scripts import StoredClaim
from jobs.lifecycle import open_and_close_due
from jobs.stock_sync import StockSyncJob, sync_stock
from loadtest.harness import free_port, open_campaign, users, wait_until
from tests.support import (
    FAST_JOBS, answered, assert_exact_tickets, flood, issue_call, issue_directly,
    on_single_and_cluster, request,
)


def backlog(svc, campaign_id):
    return outbox_stats(svc.redis, svc.keys(campaign_id))[0]


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
    assert all(redis_client.ttl(k) > 0 for k in left)  # released; only rate windows expire later
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
def test_a_flush_that_races_a_close_makes_no_key_again(svc, redis_client):
    """The flush job read the registry before the close released the campaign: its next round
    finds the streams gone (NOGROUP) and must not make them again (they would never expire)."""
    campaign_id = open_campaign(svc, 10)
    issue_directly(svc, campaign_id, "alice")
    flusher = Flusher(svc, "racing")
    assert flusher.flush([campaign_id]) == 1
    campaigns.close_campaign(svc, campaign_id)  # released: every key of it deleted
    assert flusher.flush([campaign_id]) == 0
    left = redis_client.keys(f"*c:{campaign_id}:*")
    assert [key for key in left if redis_client.ttl(key) < 0] == []  # rate windows expire


def test_reconcile_reports_a_difference_and_keeps_the_keys(svc, signer, runner, redis_client):
    campaign_id = open_campaign(svc, 10)
    for user in ("a", "b", "c"):
        issue_directly(svc, campaign_id, user)
    Flusher(svc, "test").flush([campaign_id])
    with svc.engine.begin() as conn:  # someone edited a row by hand
        conn.execute(db.coupons.update().where(db.coupons.c.user_id == "b").values(code="FORGED"))
    result = runner.invoke(args=["campaign", "close", str(campaign_id)])
    assert result.exit_code == 1
    assert "different ticket: 1" in result.output and "'b'" in result.output
    assert redis_client.exists(svc.keys(campaign_id).meta)


@on_single_and_cluster
def test_reconcile_names_every_difference_of_every_kind(svc, redis_client):
    """The streamed comparison (counts and digests per shard) finds each kind of difference, and
    the ticket-by-ticket look at the shards that differ names it, whichever shard it is in."""
    campaign_id = open_campaign(svc, 300)
    for i in range(200):
        issue_directly(svc, campaign_id, f"user-{i}")
    Flusher(svc, "test").flush([campaign_id])
    keys = svc.keys(campaign_id)
    assert reconcile(svc.redis, svc.engine, keys, svc.signer).agree
    claim_of = redis_claims(svc.redis, keys)[0]
    serial_of = {user: claim.serial for user, claim in claim_of.items()}
    c = db.coupons.c
    with svc.engine.begin() as conn:  # hands on the rows
        conn.execute(db.coupons.delete().where(c.user_id == "user-1"))
        conn.execute(db.coupons.update().where(c.user_id == "user-2").values(code="FORGED"))
        conn.execute(db.coupons.insert().values(campaign_id=campaign_id, user_id="stranger", serial=290,
                                                code="X", issued_at=clock.utcnow()))
        conn.execute(db.campaigns.update().where(db.campaigns.c.id == campaign_id).values(total=280))
    # and on Redis: a serial claimed again, by a user of another shard than its holder's, whose
    # shard otherwise agrees with the rows
    touched = {keys.shard_of(u) for u in ("user-1", "user-2", "stranger")}
    original = next(u for u in serial_of if keys.shard_of(u) not in touched)
    twin = next(f"twin-{i}" for i in range(100) if keys.shard_of(f"twin-{i}") != keys.shard_of(original))
    shard = keys.shard(keys.shard_of(twin))
    layout = redis_state.Layout.of(redis_client.hgetall(shard.state))
    redis_client.hset(keys.claims_of(twin, layout.buckets), twin,
                      StoredClaim(serial_of[original], 1).encode(layout.time_base))
    redis_client.hincrby(shard.state, "issued", 1)

    report = reconcile(svc.redis, svc.engine, keys, svc.signer)

    assert not report.agree
    assert (report.redis_claims, report.redis_counter, report.mysql_rows) == (201, 201, 200)
    assert report.missing_in_mysql == sorted(["user-1", twin])
    assert report.extra_in_mysql == ["stranger"]
    assert [u for u, _, _ in report.different] == ["user-2"]
    assert report.duplicate_serials == [(serial_of[original], sorted([original, twin]))]
    assert report.beyond_total == [290]


def test_the_database_tallies_its_rows_as_python_does(svc):
    """MySQL's per-shard count and digest sum of the rows (CRC32, MD5) equal Python's of the
    same rows, for user ids of any script and length: else every close would compare ticket by
    ticket, or worse, two different sets could pass for equal."""
    campaign_id = open_campaign(svc, 400)
    odd = ["사용자", "émile", "ユーザー", "x" * 64, "a|b", "😀" * 16, "tab\tuser", "O'Brien"]
    users = odd + [f"user-{i}" for i in range(300)]
    with svc.engine.begin() as conn:
        conn.execute(db.coupons.insert(), [
            {"campaign_id": campaign_id, "user_id": user, "serial": serial, "code": f"code-{serial}",
             "issued_at": clock.utcnow()} for serial, user in enumerate(users, 1)])
    keys = svc.keys(campaign_id)
    tallies = database_tallies(svc.engine, keys)
    assert tallies == streamed_tallies(svc.engine, keys)
    assert sum(count for count, _ in tallies) == len(users)
    assert all(count for count, _ in tallies)  # each shard has rows: each compared


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
    server = gunicorn(workers=2)
    dead_db = f"mysql+pymysql://root@127.0.0.1:{free_port()}/nowhere"
    broken = scheduler(**FAST_JOBS, DATABASE_URL=dead_db)
    campaign_id = open_campaign(svc, 800)
    results = flood([issue_call(server.url, campaign_id, u, t) for u, t in users(signer, 1000)])
    assert Counter(s for _, s, _ in results) == {201: 800, 409: 200}  # issuing is unaffected
    time.sleep(2)
    assert backlog(svc, campaign_id) == 800, broken.output()
    broken.stop()
    assert broken.output().count("database unreachable") == 1  # once per outage, not per try

    scheduler(**FAST_JOBS)
    wait_until(lambda: backlog(svc, campaign_id) == 0, what="the backlog to drain")
    assert mysql_tickets(svc.engine, campaign_id) == answered(results)


def test_flusher_killed_between_commit_and_ack_replays_without_duplicates(svc):
    campaign_id = open_campaign(svc, 500)
    for i in range(300):
        issue_directly(svc, campaign_id, f"u{i}")

    class Crash(Exception):
        pass

    def crash():
        raise Crash()

    with pytest.raises(Crash):
        Flusher(svc, "dies").flush([campaign_id], before_ack=crash)
    assert len(mysql_tickets(svc.engine, campaign_id)) == 300  # committed ...
    assert backlog(svc, campaign_id) == 300  # ... but not acknowledged
    assert Flusher(svc, "survivor", claim_idle=0).flush([campaign_id]) == 300  # taken over, replayed
    assert backlog(svc, campaign_id) == 0
    report = reconcile(svc.redis, svc.engine, svc.keys(campaign_id), svc.signer)
    assert report.agree and report.mysql_rows == 300


@on_single_and_cluster
def test_a_stalled_flushers_entries_are_taken_over_and_counted_once(svc):
    """Committed, then stalled past the idle time: another flusher takes the entries over and
    writes them again (skipped); the stalled one's late acknowledgement finds nothing pending."""
    campaign_id = open_campaign(svc, 500)
    for i in range(300):
        issue_directly(svc, campaign_id, f"u{i}")
    taker, took = Flusher(svc, "taker", claim_idle=0), []
    moved = Flusher(svc, "stalls").flush(
        [campaign_id], before_ack=lambda: took.append(taker.flush([campaign_id])))
    assert (moved, sum(took)) == (0, 300)  # each row counted by the flusher that acknowledged it
    assert backlog(svc, campaign_id) == 0
    report = reconcile(svc.redis, svc.engine, svc.keys(campaign_id), svc.signer)
    assert report.agree and report.mysql_rows == 300


def test_a_flusher_frozen_before_its_commit_holds_no_row_from_the_one_taking_over(svc, monkeypatch):
    """Frozen between its insert and its commit (SIGSTOP, a paused VM), a flusher's transaction
    holds its rows' locks; MariaDB rolls it back once idle FLUSH_CLAIM_IDLE seconds, so the
    flusher taking its entries over waits that long, not innodb_lock_wait_timeout (50 s)."""
    monkeypatch.setitem(svc.config, "FLUSH_CLAIM_IDLE", 1)
    campaign_id = open_campaign(svc, 500)
    for i in range(200):
        issue_directly(svc, campaign_id, f"u{i}")
    inserted, thaw, failed = threading.Event(), threading.Event(), []
    frozen = threading.Thread(
        target=lambda: failed.append(flush_or_error(Flusher(svc, "frozen"), campaign_id)))

    def freeze(conn, cursor, statement, *args):
        if threading.current_thread() is frozen and statement.lstrip().upper().startswith("INSERT"):
            inserted.set()
            thaw.wait(60)

    event.listen(svc.engine, "after_cursor_execute", freeze)
    try:
        frozen.start()
        assert inserted.wait(30)
        started = time.monotonic()
        assert Flusher(svc, "taker", claim_idle=0).flush([campaign_id]) == 200
        assert time.monotonic() - started < 15  # a loaded machine; the lock wait would be 50 s
    finally:
        thaw.set()
        frozen.join(60)
        event.remove(svc.engine, "after_cursor_execute", freeze)
    assert isinstance(failed[0], OperationalError)  # thawed: its transaction was rolled back
    assert backlog(svc, campaign_id) == 0
    report = reconcile(svc.redis, svc.engine, svc.keys(campaign_id), svc.signer)
    assert report.agree and report.mysql_rows == 200


def flush_or_error(flusher, campaign_id):
    try:
        return flusher.flush([campaign_id])
    except Exception as e:
        return e


@on_single_and_cluster
def test_stock_sync_counts_what_another_schedulers_flusher_emptied(svc):
    """The stock sync runs on the leader; the claims after its last count may be flushed, and
    their campaign taken off the news sets, by another scheduler's flush job."""
    campaign_id = open_campaign(svc, 10)
    sync = StockSyncJob(svc)
    assert sync() == 1  # seen first: counted (none issued)
    issue_directly(svc, campaign_id, "alice")
    assert Flusher(svc, "another scheduler").flush() == 1
    assert campaign_id not in campaigns_with_news(svc.redis, svc.config["CLAIM_SHARDS"])
    assert sync() == 1  # from the outbox drained sets
    with svc.engine.connect() as conn:
        issued = conn.execute(select(db.campaigns.c.issued).where(db.campaigns.c.id == campaign_id)).scalar()
    assert issued == 1
    assert sync() == 0  # taken


def test_a_flusher_makes_its_streams_again_after_redis_lost_them(svc):
    campaign_id = open_campaign(svc, 500)
    flusher = Flusher(svc, "long-lived")  # as the flush job's: it made the streams' group once
    issue_directly(svc, campaign_id, "before")
    assert flusher.flush([campaign_id]) == 1
    for shard in svc.keys(campaign_id).all_shards():  # Redis restarted empty, the campaign recovered
        svc.redis.delete(shard.outbox)
    for user in ("after-1", "after-2"):
        issue_directly(svc, campaign_id, user)
    assert flusher.flush([campaign_id]) == 2
    assert set(mysql_tickets(svc.engine, campaign_id)) == {"before", "after-1", "after-2"}


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


def test_lifecycle_opens_and_closes_due_campaigns_and_stock_sync(svc):
    now = clock.utcnow()
    due = campaigns.create_campaign(svc, "due", 10, opens_at=now - dt.timedelta(seconds=1))
    closes_at = now + dt.timedelta(seconds=3)  # room for a loaded machine to get to open it
    ending = campaigns.create_campaign(svc, "ending", 10, closes_at=closes_at)
    campaigns.open_campaign(svc, ending)
    issue_directly(svc, ending, "alice")
    open_and_close_due(svc)
    assert queries.campaign_status(svc, due)["status"] == "open"
    sync_stock(svc)
    with svc.engine.connect() as conn:
        issued = conn.execute(select(db.campaigns.c.issued).where(db.campaigns.c.id == ending)).scalar()
    assert issued == 1
    time.sleep(max(0.0, (closes_at - clock.utcnow()).total_seconds()) + 0.1)
    open_and_close_due(svc)
    assert queries.campaign_status(svc, ending)["status"] == "closed"
    assert mysql_tickets(svc.engine, ending) == {"alice": (1, svc.signer.ticket_code(ending, 1))}
