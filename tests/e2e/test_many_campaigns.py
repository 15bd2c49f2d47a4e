"""Many campaigns live at once: issued, flushed, counted and closed exactly, and once they are
idle, the jobs look at none of them (their cost follows what moved, not how many are live)."""
import random
from collections import Counter

from sqlalchemy import select

from coupon import db
from coupon.flusher import Flusher
from coupon.keys import active_campaigns
from coupon.outbox import campaigns_with_news
from coupon.reconcile import mysql_tickets
from jobs.stock_sync import StockSyncJob
from loadtest.harness import open_campaign, users, wait_until
from tests.support import FAST_JOBS, backlog, flood, issue_call, on_single_and_cluster

CAMPAIGNS = 80
TOTALS = (3, 10, 25, 40)  # coupons of campaign i: TOTALS[i % 4]
EXTRA = 10  # users turned away per campaign


def issued_counts(svc, campaign_ids):
    c = db.campaigns.c
    with svc.engine.connect() as conn:
        return dict(conn.execute(select(c.id, c.issued).where(c.id.in_(campaign_ids))).all())


@on_single_and_cluster
def test_many_live_campaigns_are_flushed_counted_and_closed_exactly(svc, signer, gunicorn, scheduler,
                                                                    runner, redis_client):
    server = gunicorn(workers=2)
    scheduler(**FAST_JOBS)
    totals = {open_campaign(svc, TOTALS[i % len(TOTALS)], f"many {i}"): TOTALS[i % len(TOTALS)]
              for i in range(CAMPAIGNS)}
    people = users(signer, 120)
    rng = random.Random(17)
    calls = [(campaign_id, issue_call(server.url, campaign_id, user, token))
             for campaign_id, total in totals.items()
             for user, token in rng.sample(people, total + EXTRA)]
    rng.shuffle(calls)  # every campaign asked at once, in no order
    results = flood([call for _, call in calls])  # in the order of the calls

    by_campaign = {c: [] for c in totals}
    for (campaign_id, _), answer in zip(calls, results):
        by_campaign[campaign_id].append(answer)
    for campaign_id, total in totals.items():
        answers = by_campaign[campaign_id]
        assert Counter(s for _, s, _ in answers) == {201: total, 409: EXTRA}, campaign_id
        assert all(b["error"]["code"] == "SOLD_OUT" for _, s, b in answers if s == 409)
        new = {u: (b["serial"], b["code"]) for u, s, b in answers if s == 201}
        assert sorted(serial for serial, _ in new.values()) == list(range(1, total + 1))
        assert all(code == signer.ticket_code(campaign_id, serial) for serial, code in new.values())
        by_campaign[campaign_id] = new

    wait_until(lambda: not campaigns_with_news(svc.redis, svc.config["CLAIM_SHARDS"]),
               what="the flush job to flush every campaign (news sets empty)")
    assert all(backlog(svc, c) == 0 for c in totals)
    for campaign_id in totals:
        assert mysql_tickets(svc.engine, campaign_id) == by_campaign[campaign_id], campaign_id
    wait_until(lambda: issued_counts(svc, list(totals)) == totals, what="the stock sync to count each")

    # idle now: a flush round reads no stream, and a stock sync round after the first counts none
    assert Flusher(svc, "probe").shards() == []
    sync = StockSyncJob(svc)
    assert sync() == len(active_campaigns(svc.redis))  # its first round counts each live one once
    assert sync() == 0

    for campaign_id in totals:
        closed = runner.invoke(args=["campaign", "close", str(campaign_id)])
        assert closed.exit_code == 0 and "AGREE" in closed.output, closed.output
        assert mysql_tickets(svc.engine, campaign_id) == by_campaign[campaign_id]
    left = [k for c in totals for k in redis_client.keys(f"*c:{c}:*")]
    # none that lives on: only rate windows, expiring (or gone since: -2)
    assert [k for k in left if redis_client.ttl(k) == -1] == []
    assert not campaigns_with_news(svc.redis, svc.config["CLAIM_SHARDS"])
