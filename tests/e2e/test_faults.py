"""Fault tests: break something on purpose in the middle of a flood through real gunicorn workers
with the scheduler running, close the campaign, and check the invariants exactly: issued = N,
every 2xx answer has its MySQL row with the same serial and code, no row that nobody was told of,
no user or serial twice. Each test prints what it injected and what it saw (`pytest -s`)."""
import os
import random
import signal
import socket
import threading
import time

import pytest
from redis.exceptions import ResponseError
from sqlalchemy.engine import make_url

from jobs.reclaim import claimed_serials
from coupon.flusher import GROUP
from coupon.keys import JOB_SUCCESS, SCHEDULER_LEADER
from coupon.outbox import outbox_stats
from coupon.queries import count_rows
from coupon.reconcile import mysql_tickets, redis_claims
from coupon.scripts import OutboxEntry, decode_serials
from tests.flood import (REDIS_TIMEOUT, STOCK, close_and_check, demand, every, issued_counter, once,
                         outcomes, say, service_on, tickets_told)
from loadtest.harness import open_campaign, wait_until
from tests.support import FAST_JOBS, TcpProxy, on_single_and_cluster

pytestmark = pytest.mark.fault


def unclaimed_serials_of(svc, keys, pid):
    """The serials leased to worker `pid` that no claim has taken (yet)."""
    serials = []
    for lease_id, encoded in svc.redis.hgetall(keys.lease_serials).items():
        if lease_id.split(":")[1] == str(pid):
            serials += decode_serials(encoded)
    return sorted(set(serials) - claimed_serials(svc.redis, keys, serials))


def test_web_worker_killed_every_2s(svc, signer, gunicorn, scheduler):
    short = dict(LEASE_TTL=2)  # a dead worker's lease expires 2 s after its last renewal ...
    server = gunicorn(workers=2, **short)
    scheduler(**FAST_JOBS, **short, REDIS_TIMEOUT=0.5)  # ... and is reclaimed 1 s later
    campaign_id = open_campaign(svc, STOCK)
    issued = issued_counter(svc, campaign_id)
    keys = svc.keys(campaign_id)
    kills, busy = [], threading.Event()  # issued at each kill; set while requests are in flight
    stranded = []  # unclaimed serials the killed workers held: only the reclaim job frees them

    def kill_a_worker():
        busy.wait(1.0)  # kill under load, not between two waves
        time.sleep(0.01)
        workers = server.worker_pids()
        if workers:  # none while all are being respawned
            victim = random.choice(workers)
            os.kill(victim, signal.SIGKILL)
            kills.append(issued())
            stranded.extend(unclaimed_serials_of(svc, keys, victim))

    started = time.monotonic()
    with every(2.0, kill_a_worker):  # smaller waves: selling takes long enough for several kills
        answers, tokens = demand(server.url, campaign_id, signer, issued, seconds=30, wave=50, busy=busy)
    flood_s = time.monotonic() - started

    seen = outcomes(answers)
    assert set(seen) <= {200, 201, "SOLD_OUT", "dropped"}, seen  # never a 5xx or a hang
    assert len(kills) >= 3 and sum(k < STOCK for k in kills) >= 2, kills
    # requests in flight on a killed worker are "dropped" (how many is up to timing: reported);
    # the kills left serials that only the reclaim job could give back
    assert stranded
    told, unsure, holding = tickets_told(server.url, campaign_id, answers, tokens)
    close_and_check(svc, signer, campaign_id, told)
    say("worker kill -9", kills=len(kills), issued_at_kills=kills, requests=len(answers),
        stranded_serials=len(stranded), users=len(tokens), outcomes=dict(seen),
        dropped_users=unsure, of_them_holding=holding,
        rows=STOCK, flood_s=round(flood_s, 1))


def test_workers_recycled_by_max_requests_and_reloaded(svc, signer, gunicorn, scheduler):
    # the default 30 s lease: serials come back within the test only if exiting workers return them
    # a recycled worker takes 1-2 s to be replaced (gunicorn checks every second): few requests per
    # worker and a paced sale, so that several are replaced while stock remains
    server = gunicorn(workers=2, MAX_REQUESTS=100, MAX_REQUESTS_JITTER=30)
    scheduler(**FAST_JOBS)
    campaign_id = open_campaign(svc, STOCK)
    issued = issued_counter(svc, campaign_id)
    born = dict.fromkeys(server.worker_pids(), 0)  # worker pid -> issued when first seen
    before_hup = []

    def watch_workers():
        for pid in server.worker_pids():
            born.setdefault(pid, issued())

    def reload():
        before_hup.extend(server.worker_pids())
        os.kill(server.proc.pid, signal.SIGHUP)

    started = time.monotonic()
    with every(0.05, watch_workers), once(lambda: issued() >= 400, reload):
        answers, tokens = demand(server.url, campaign_id, signer, issued, seconds=30, pause=0.6)
    flood_s = time.monotonic() - started

    seen = outcomes(answers)
    assert set(seen) <= {200, 201, "SOLD_OUT"}, seen  # graceful: not one request lost
    assert before_hup
    wait_until(lambda: not set(before_hup) & set(server.worker_pids()), timeout=25,
               what="the workers of before the reload to exit")
    assert sum(0 < at < STOCK for at in born.values()) >= 3, born  # replaced while selling
    # every worker that exited gave its lease back (none left to expire): the leases standing
    # are those of live workers
    keys = svc.keys(campaign_id)
    owners = {int(lease.split(":")[1]) for lease in svc.redis.zrange(keys.leases, 0, -1)}
    assert owners <= set(server.worker_pids()), (owners, server.worker_pids())
    told, _, _ = tickets_told(server.url, campaign_id, answers, tokens)
    close_and_check(svc, signer, campaign_id, told)
    say("recycle + SIGHUP", workers_born=len(born),
        born_at_issued=sorted(born.values()), slowest_s=round(max(a.took for a in answers), 2),
        requests=len(answers), users=len(tokens),
        outcomes=dict(seen), rows=STOCK, flood_s=round(flood_s, 1))


def test_redis_killed_and_restarted_from_its_append_only_file(mysql_url, signer, private_redis):
    # While Redis is down each request burns a serial of its worker's block (the claim's
    # outcome is unknown). The default 30 s lease: the worker marks that block expired at
    # its first refill once Redis is back, and the reclaim job returns what was never
    # claimed after its grace (2 x the scheduler's REDIS_TIMEOUT), not after LEASE_TTL.
    with service_on(mysql_url, private_redis.url) as (svc, web):
        campaign_id = open_campaign(svc, STOCK)
        issued = issued_counter(svc, campaign_id)
        keys = svc.keys(campaign_id)
        outage = {}

        def crash_and_restart():
            outage["issued"] = issued()
            outage["down"] = time.monotonic()
            private_redis.kill()
            time.sleep(2.0)
            outage["restart"] = time.monotonic()
            private_redis.start()  # from the append-only file
            outage["up"] = time.monotonic()

        with once(lambda: issued() >= 400, crash_and_restart):
            answers, tokens = demand(web.url, campaign_id, signer, issued, seconds=30)

        seen = outcomes(answers)
        assert set(seen) <= {200, 201, "SOLD_OUT", 503}, seen  # never a 500, never a hang
        down = [a for a in answers if outage["down"] <= a.started and a.started + a.took <= outage["restart"]]
        assert {a.status for a in down} <= {503, 409} and sum(a.status == 503 for a in down) > 50
        assert all(a.body["error"]["code"] == "UNAVAILABLE" for a in answers if a.status == 503)
        took = sorted(a.took for a in down)  # refused at once, not waited for; never a hang
        assert took[len(took) // 2] < REDIS_TIMEOUT / 4 and took[-1] < REDIS_TIMEOUT + 1, took
        # every ticket acknowledged before the crash came back with Redis
        before = {a.user: (a.body["serial"], a.body["code"]) for a in answers
                  if a.status in (200, 201) and a.started + a.took < outage["down"]}
        claims = redis_claims(svc.redis, keys)[0]
        kept = {u: (claims[u].serial, signer.ticket_code(campaign_id, claims[u].serial))
                for u in before if u in claims}
        assert kept == before
        recovered = sum(a.status == 201 and a.started > outage["up"] for a in answers)
        assert recovered > 0  # it sold on by itself, scripts loaded again after NOSCRIPT

        told, unsure, holding = tickets_told(web.url, campaign_id, answers, tokens)
        close_and_check(svc, signer, campaign_id, told)
        say("redis kill -9 + AOF restart", issued_at_crash=outage["issued"],
            outage_s=round(outage["up"] - outage["down"], 2), requests=len(answers), users=len(tokens),
            outcomes=dict(seen), answers_while_down=dict(outcomes(down)),
            latency_503_ms_p50_max=(round(took[len(took) // 2] * 1000, 1), round(took[-1] * 1000, 1)),
            acknowledged_before_crash=len(before), kept=len(kept), new_after_restart=recovered,
            unanswered_users=unsure, of_them_holding=holding, rows=STOCK)


def test_database_cut_during_the_flood(svc, signer, gunicorn, scheduler, mysql_url):
    url = make_url(mysql_url)
    proxy = TcpProxy(url.port or 3306, url.host)
    try:
        server = gunicorn(workers=2)
        through_proxy = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        jobs = scheduler(**FAST_JOBS, DATABASE_URL=through_proxy)
        campaign_id = open_campaign(svc, STOCK)
        issued = issued_counter(svc, campaign_id)
        keys = svc.keys(campaign_id)
        cut = {}

        def cut_for_a_while():
            cut["issued"] = issued()
            cut["at"] = time.monotonic()
            proxy.cut()
            time.sleep(0.5)  # a flush caught in flight has failed (or committed) by now
            cut["rows"], cut["backlog"] = count_rows(svc.engine, campaign_id), outbox_stats(svc.redis, keys)[0]
            # at least 3 s, and 100 more coupons issued meanwhile (the machine may be busy)
            time.sleep(2.5)
            wait_until(lambda: issued() >= cut["issued"] + 100, timeout=10, what="issuing during the cut")
            cut["rows_end"], cut["backlog_end"] = count_rows(svc.engine, campaign_id), outbox_stats(svc.redis, keys)[0]
            cut["issued_end"] = issued()
            proxy.restore()
            cut["restored"] = time.monotonic()

        # cut once the flush job is writing through the proxy
        with once(lambda: count_rows(svc.engine, campaign_id) >= 100, cut_for_a_while, poll=0.02):
            answers, tokens = demand(server.url, campaign_id, signer, issued, seconds=30)
        seen = outcomes(answers)
        assert set(seen) <= {200, 201, "SOLD_OUT"}, seen  # issuing is unaffected
        assert cut["rows_end"] == cut["rows"]  # nothing reached MySQL while cut ...
        assert cut["backlog_end"] > cut["backlog"] > 0  # ... and the backlog grew in Redis
        wait_until(lambda: outbox_stats(svc.redis, keys)[0] == 0, timeout=30, what="the backlog to drain")
        drained_s = time.monotonic() - cut["restored"]
        assert jobs.output().count("database unreachable") == 1  # logged once per outage
        assert "database back" in jobs.output()

        told, _, _ = tickets_told(server.url, campaign_id, answers, tokens)
        close_and_check(svc, signer, campaign_id, told)
        say("mysql cut", cut_s=round(cut["restored"] - cut["at"], 1), issued_at_cut=cut["issued"], issued_during_cut=cut["issued_end"] - cut["issued"],
            rows_during_cut=cut["rows"], backlog_during_cut=(cut["backlog"], cut["backlog_end"]),
            drained_s_after_restore=round(drained_s, 1), requests=len(answers), users=len(tokens),
            outcomes=dict(seen), rows=STOCK)
    finally:
        proxy.cut()


class Flushers:
    """Two real schedulers, each flushing with a consumer of its own; one of them leads."""

    def __init__(self, scheduler, redis_client, outboxes, **settings):
        self.redis = redis_client
        self.outboxes = outboxes
        pair = [scheduler(**FAST_JOBS | settings), scheduler(**FAST_JOBS | settings)]
        ident = wait_until(lambda: redis_client.get(SCHEDULER_LEADER), what="a leader")
        self.leader = next(p for p in pair if p.proc.pid == int(ident.split(":")[1]))
        self.standby = next(p for p in pair if p is not self.leader)

    def pending_of(self, process):
        """Outbox entries the process's flusher has read and not acknowledged: (stream, id) each."""
        consumer = f"jobs:{socket.gethostname()}:{process.proc.pid}"
        pipe = self.redis.pipeline(transaction=False)
        for stream in self.outboxes:
            pipe.xpending_range(stream, GROUP, "-", "+", 100_000, consumername=consumer)
        try:
            replies = pipe.execute()
        except ResponseError:  # no consumer group yet
            return []
        return [(stream, p["message_id"]) for stream, ps in zip(self.outboxes, replies) for p in ps]

    def stopped_holding_pending(self, process):
        """Freeze the process (SIGSTOP) while its flusher holds pending entries, so that they stay
        pending: read between a look and a stop, they could be acknowledged meanwhile. Returns how
        many it held once stopped (0: it runs on). The other flusher may take them over at any
        moment after (XAUTOCLAIM), so a later look may find none."""
        if not self.pending_of(process):
            return 0
        os.kill(process.proc.pid, signal.SIGSTOP)
        held = len(self.pending_of(process))
        if not held:
            os.kill(process.proc.pid, signal.SIGCONT)
        return held

    def users_of(self, pending):
        return [claim.user_id for s, i in pending
                for claim in OutboxEntry.decode(self.redis.xrange(s, i, i)[0][1], 0, str)]


@pytest.mark.parametrize("victim", ["leader", "standby"])
def test_scheduler_killed_during_a_flush(svc, signer, gunicorn, scheduler, redis_client, victim):
    """Every scheduler flushes: one killed -9 holding entries read and not acknowledged (some
    maybe committed) has them taken over by the other (XAUTOCLAIM); each row lands once. The
    leader killed: the standby leads within one lease period too."""
    server = gunicorn(workers=2)
    campaign_id = open_campaign(svc, STOCK)
    issued = issued_counter(svc, campaign_id)
    outboxes = [shard.outbox for shard in svc.keys(campaign_id).all_shards()]
    flushers = Flushers(scheduler, redis_client, outboxes)
    doomed = getattr(flushers, victim)
    survivor = flushers.standby if doomed is flushers.leader else flushers.leader
    killed = {}

    def kill():
        doomed.kill()
        killed["at"] = time.monotonic()
        pending = flushers.pending_of(doomed)
        rows = mysql_tickets(svc.engine, campaign_id)
        killed["pending"] = len(pending)
        killed["committed"] = sum(u in rows for u in flushers.users_of(pending))
        os.kill(survivor.proc.pid, signal.SIGCONT)
        wait_until(lambda: str(survivor.proc.pid) in (redis_client.get(SCHEDULER_LEADER) or ""),
                   timeout=5, interval=0.01, what="the survivor to lead")
        killed["takeover_s"] = time.monotonic() - killed["at"]

    # the survivor frozen till the kill: the doomed flusher alone reads the entries, so it is sure
    # to be caught holding some (else the other may read them all first)
    os.kill(survivor.proc.pid, signal.SIGSTOP)
    try:
        with once(lambda: issued() >= 300 and flushers.stopped_holding_pending(doomed), kill, poll=0.001):
            answers, tokens = demand(server.url, campaign_id, signer, issued, seconds=30)
    finally:
        os.kill(survivor.proc.pid, signal.SIGCONT)
    seen = outcomes(answers)
    assert set(seen) <= {200, 201, "SOLD_OUT"}, seen
    assert killed["pending"] > 0  # it died holding entries read and not acknowledged
    assert killed["takeover_s"] <= FAST_JOBS["SCHEDULER_LEASE"] + 1  # one lease period and a poll
    # the survivor takes the dead flusher's entries over and drains everything before any close
    wait_until(lambda: not flushers.pending_of(doomed) and outbox_stats(
        svc.redis, svc.keys(campaign_id))[0] == 0,
        timeout=15, what="the survivor to drain the outbox")

    told, _, _ = tickets_told(server.url, campaign_id, answers, tokens)
    close_and_check(svc, signer, campaign_id, told)
    say(f"scheduler {victim} kill -9", pending_at_kill=killed["pending"],
        of_them_committed_not_acked=killed["committed"], takeover_s=round(killed["takeover_s"], 2),
        requests=len(answers), users=len(tokens), outcomes=dict(seen), rows=STOCK)


@on_single_and_cluster
def test_leader_stopped_mid_flood_the_other_scheduler_flushes_at_once(svc, signer, gunicorn, scheduler,
                                                                      redis_client):
    """The leader frozen (SIGSTOP) holding entries read and not acknowledged, with a lease long
    enough that nobody takes the lead: rows keep arriving from the standby's flusher at once,
    which takes the frozen one's entries over and drains the outbox; thawed, the leader writes
    no row twice."""
    server = gunicorn(workers=2)
    campaign_id = open_campaign(svc, STOCK)
    issued = issued_counter(svc, campaign_id)
    keys = svc.keys(campaign_id)
    flushers = Flushers(scheduler, redis_client, [s.outbox for s in keys.all_shards()],
                        SCHEDULER_LEASE=120)
    leader, leader_ident = flushers.leader, redis_client.get(SCHEDULER_LEADER)
    stopped = {}

    def rows():
        return count_rows(svc.engine, campaign_id)

    def frozen_mid_batch():
        if issued() >= 300 and rows() > 0:
            stopped["pending"] = flushers.stopped_holding_pending(leader)
        return stopped.get("pending", 0) > 0

    def watch_rows():
        stopped["at"], stopped["rows"] = time.monotonic(), rows()
        wait_until(lambda: rows() > stopped["rows"], timeout=10, interval=0.01,
                   what="a row after the leader stopped")
        stopped["first_row_s"] = time.monotonic() - stopped["at"]

    try:
        with once(frozen_mid_batch, watch_rows, poll=0.001):
            answers, tokens = demand(server.url, campaign_id, signer, issued, seconds=30)
        assert stopped.get("pending", 0) > 0  # frozen mid-batch
        assert stopped["first_row_s"] < 5  # at once: a flush interval, not a lease period
        wait_until(lambda: not flushers.pending_of(leader) and outbox_stats(svc.redis, keys)[0] == 0,
                   timeout=30, what="the standby to drain the outbox, the frozen leader's entries too")
        assert rows() == issued() == STOCK
        assert redis_client.get(SCHEDULER_LEADER) == leader_ident  # it flushed without leading
        drained_s = time.monotonic() - stopped["at"]
    finally:
        thawed_at = time.time()
        os.kill(leader.proc.pid, signal.SIGCONT)
    seen = outcomes(answers)
    assert set(seen) <= {200, 201, "SOLD_OUT"}, seen
    # thawed, the leader ends its batch: its commit fails (MariaDB rolled it back) or its insert
    # skips the rows; its ack finds nothing pending
    wait_until(lambda: float(redis_client.hget(JOB_SUCCESS, "lifecycle")) > thawed_at, timeout=30,
               what="the thawed leader to run its jobs")
    told, _, _ = tickets_told(server.url, campaign_id, answers, tokens)
    close_and_check(svc, signer, campaign_id, told)
    assert "Traceback" not in leader.output() + flushers.standby.output()
    say("scheduler leader SIGSTOP", pending_at_stop=stopped["pending"],
        first_row_after_s=round(stopped["first_row_s"], 2), drained_after_s=round(drained_s, 2),
        requests=len(answers), users=len(tokens), outcomes=dict(seen), rows=STOCK)
