"""A Redis without a file killed and restarted empty in the middle of a flood through a real
gunicorn and scheduler, then `recover` (in-process tests of recover: integration/test_recover.py)."""
import time

import pytest

from coupon import queries
from coupon.outbox import outbox_stats
from coupon.reconcile import mysql_tickets
from coupon.recovery import recover_campaign
from loadtest.harness import open_campaign, wait_until
from tests.flood import (STOCK, close_and_check, demand, issued_counter, once, outcomes, say,
                         service_on, tickets_told)


@pytest.mark.fault
@pytest.mark.parametrize("private_redis", ["no file"], indirect=True)
def test_redis_restarted_empty_mid_sale_then_recovered(mysql_url, signer, private_redis):
    # A Redis without a file, killed at 400 issued, comes back empty: the claims not flushed yet
    # are gone with it. The workers answer 503 until `recover` rebuilds the campaign from the
    # rows, at once (the workers may not even have seen it gone: the new epoch keeps them from
    # claiming the serials they leased before); then the flood goes on to STOCK. Leases of 3 s
    # (the workers' and the reclaim job's): the serials of leases no worker settles come back
    # within seconds, not LEASE_TTL's default 30 s.
    with service_on(mysql_url, private_redis.url, LEASE_TTL=3) as (svc, web):
        campaign_id = open_campaign(svc, STOCK)
        keys = svc.keys(campaign_id)
        issued = issued_counter(svc, campaign_id)
        loss = {}

        def lose_and_recover():
            loss["issued"] = issued()
            loss["down"] = time.monotonic()
            private_redis.kill()
            time.sleep(1.0)
            private_redis.start()  # empty
            loss["rows"] = mysql_tickets(svc.engine, campaign_id)
            loss["synced"] = queries.campaign_row(svc.engine, campaign_id).issued
            loss["recovering"] = time.monotonic()
            loss["report"] = recover_campaign(svc, campaign_id)
            loss["recovered"] = time.monotonic()

        with once(lambda: issued() >= 400, lose_and_recover):
            answers, tokens = demand(web.url, campaign_id, signer, issued, seconds=60)

        seen = outcomes(answers)
        assert set(seen) <= {200, 201, "SOLD_OUT", 503}, seen  # never a 500, never a hang
        refused = [a for a in answers if a.status == 503]  # only while the campaign was gone
        assert all(loss["down"] <= a.started + a.took and a.started < loss["recovered"] for a in refused)
        report = loss["report"]
        assert report.rows == len(loss["rows"]) and report.last_synced == loss["synced"]
        # the flush job goes on after the rebuild
        wait_until(lambda: outbox_stats(svc.redis, keys)[0] == 0, timeout=30, what="the flush job")

        # told before the loss: kept if flushed, else lost with Redis
        before = {id(a) for a in answers if a.started + a.took < loss["recovering"]}
        told_before = {a.user: (a.body["serial"], a.body["code"]) for a in answers
                       if id(a) in before and a.status in (200, 201)}
        lost = {u: t for u, t in told_before.items() if u not in loss["rows"]}
        assert all(loss["rows"][u] == t for u, t in told_before.items() if u not in lost)
        # every claim the last stock sync counted is a row or a ticket told and lost
        assert report.possibly_lost <= len(lost)
        # the rest: answers after, and the unanswered requests of users not told before
        rest = [a for a in answers if id(a) not in before
                or a.status not in (200, 201) and a.user not in told_before]
        told_after, unsure, holding = tickets_told(web.url, campaign_id, rest, tokens)
        rows = close_and_check(svc, signer, campaign_id, {**told_before, **told_after},
                               lost_with_redis=set(lost))
        assert all(rows[u] == t for u, t in loss["rows"].items())  # every row of before the loss kept
        asked_again = {u for u in lost if u in rows}  # and got another ticket
        say("redis kill -9, restarted empty, recover", issued_at_kill=loss["issued"],
            rows_at_recover=report.rows, cursor=report.cursor, returned=report.returned,
            last_stock_sync=loss["synced"], possibly_lost_reported=report.possibly_lost,
            told_and_lost=len(lost), of_them_not_counted_by_the_sync=len(lost) - report.possibly_lost,
            lost_users_with_another_ticket_after=len(asked_again),
            lost_serials=sorted(t[0] for t in lost.values()),
            outage_to_recovered_s=round(loss["recovered"] - loss["down"], 2),
            recover_s=round(loss["recovered"] - loss["recovering"], 2), requests=len(answers),
            users=len(tokens), outcomes=dict(seen), refused_during_outage=dict(outcomes(refused)),
            unanswered_users=unsure, of_them_holding=holding, rows=STOCK)

