"""`flask campaign recover`: a campaign's Redis state rebuilt from the database after Redis lost
it, checked key by key against what the rows imply; then the sale goes on. Its refusals, its
report of what may be lost, and a Redis killed and restarted empty in mid-flood."""
import datetime as dt
import time

import pytest

from coupon import campaigns, clock, create_app, db, queries, recovery, redis_state
from jobs.stock_sync import sync_stock
from coupon.keys import ACTIVE, bucket_count
from coupon.outbox import Flusher, outbox_stats
from coupon.recovery import recover_campaign
from coupon.reconcile import mysql_tickets
from coupon.scripts import StoredClaim
from tests.flood import (STOCK, close_and_check, demand, issued_counter, once, outcomes, say,
                         service_on, tickets_told)
from loadtest.harness import open_campaign, wait_until
from tests.support import app_config, issue, on_single_and_cluster


@pytest.fixture
def workers(mysql_url, redis_target):
    """Start web workers in this process (`workers()`: a test client of an app of its own, with
    its own leases), as if several gunicorn workers served the campaign."""
    apps = []

    def start():
        apps.append(create_app(app_config(mysql_url, redis_target)))
        return apps[-1].test_client()

    yield start
    for app in apps:
        app.extensions["coupon"].engine.dispose()


def issue_to(worker, signer, campaign_id, users, status=201):
    """Issue to each user through a worker; every answer `status`. Returns {user: ticket body}."""
    tickets = {}
    for user in users:
        response = issue(worker, campaign_id, signer.mint(user))
        assert response.status_code == status, response.get_data(as_text=True)
        tickets[user] = response.json
    return tickets


def flush(svc, campaign_id):
    Flusher(svc, consumer="test").flush([campaign_id])


def lose(svc, campaign_id):
    """What Redis holds of the campaign is gone, as after a restart without a file."""
    redis_state.delete_keys(svc.redis, svc.keys(campaign_id))
    svc.redis.srem(ACTIVE, campaign_id)


def recover(runner, campaign_id):
    return runner.invoke(args=["campaign", "recover", str(campaign_id)])


def snapshot(redis_client, keys):
    """What Redis holds of a campaign, to compare before and after."""
    found = {key: redis_client.hgetall(key) for key in (keys.meta, keys.lease_serials)}
    found[keys.leases] = redis_client.zrange(keys.leases, 0, -1, withscores=True)
    found[keys.returned] = redis_client.lrange(keys.returned, 0, -1)
    buckets = redis_state.Layout.of(found[keys.meta]).buckets
    for shard in keys.all_shards():
        for i in range(buckets):
            found[shard.bucket(i)] = redis_client.hgetall(shard.bucket(i))
        found[shard.state] = redis_client.hgetall(shard.state)
        found[shard.claimed] = redis_client.bitcount(shard.claimed)
        found[shard.outbox] = redis_client.xlen(shard.outbox)
    return found


def assert_rebuilt_from(redis_client, keys, rows, row):
    """Redis holds exactly what the rows ({user: coupons row}) and the campaigns row imply: each
    claim in its shard's bucket, each shard's bitmap and counter, the cursor at the highest
    serial, the serials below it that no row holds returned, no lease, the window; one new layout
    throughout (epoch, the buckets of the total, time base)."""
    cursor = max((r.serial for r in rows.values()), default=0)
    meta = redis_client.hgetall(keys.meta)
    layout = redis_state.Layout.of(meta)
    for field in layout.fields():
        del meta[field]
    assert len(layout.epoch) >= 12 and layout.buckets == bucket_count(row.total, keys.shards)
    assert meta == {"total": str(row.total), "cursor": str(cursor), "status": "open",
                    "opens_at": str(clock.to_ms(row.opens_at)), "closes_at": str(clock.to_ms(row.closes_at))}
    held = {r.serial for r in rows.values()}
    holes = [str(s) for s in range(1, cursor) if s not in held]
    assert redis_client.lrange(keys.returned, 0, -1) == holes
    assert not redis_client.exists(keys.leases, keys.lease_serials)
    assert str(keys.campaign_id) in redis_client.smembers(ACTIVE)
    for k, shard in enumerate(keys.all_shards()):
        mine = {u: r for u, r in rows.items() if keys.shard_of(u) == k}
        for i in range(layout.buckets):
            assert redis_client.hgetall(shard.bucket(i)) == {
                u: StoredClaim(r.serial, clock.to_ms(r.issued_at)).encode(layout.time_base)
                for u, r in mine.items() if keys.bucket_of(u, layout.buckets) == i}
        assert redis_client.bitcount(shard.claimed) == len(mine)
        assert all(redis_client.getbit(shard.claimed, r.serial) for r in mine.values())
        state = {"issued": str(len(mine)), **{f: str(v) for f, v in layout.fields().items()}}
        if row.closes_at:
            state["closes_at"] = str(clock.to_ms(row.closes_at))
        assert redis_client.hgetall(shard.state) == state
        assert redis_client.xlen(shard.outbox) == 0


def rows_of(svc, campaign_id):
    """{user: coupons row} of a campaign."""
    with svc.engine.connect() as conn:
        return {r.user_id: r for r in conn.execute(
            db.coupons.select().where(db.coupons.c.campaign_id == campaign_id))}


@on_single_and_cluster
def test_recover_rebuilds_what_the_rows_imply_and_the_sale_goes_on(svc, signer, runner, workers,
                                                                    redis_client, monkeypatch):
    # rows of 3 serials read and written a round: each step of a big recover
    monkeypatch.setattr(recovery, "ROWS", 3)
    campaign_id = open_campaign(svc, 1000)
    keys = svc.keys(campaign_id)
    # two workers, each with a lease of its own: the rows leave a gap of serials leased, never claimed
    first, second = workers(), workers()
    told = issue_to(first, signer, campaign_id, [f"a{i}" for i in range(5)])
    told |= issue_to(second, signer, campaign_id, [f"b{i}" for i in range(5)])
    flush(svc, campaign_id)
    sync_stock(svc)
    rows = rows_of(svc, campaign_id)
    assert {u: (r.serial, r.code) for u, r in rows.items()} == {
        u: (t["serial"], t["code"]) for u, t in told.items()}
    cursor = max(r.serial for r in rows.values())
    holes = cursor - len(rows)
    assert holes > 0

    lose(svc, campaign_id)
    result = recover(runner, campaign_id)
    assert result.exit_code == 0, result.output
    assert ("restored 10 claims from the database" in result.output
            and f"cursor {cursor}, {holes} serials returned for issue, status open" in result.output)
    assert "possibly lost: none that the last stock sync counted: it counted 10 issued" in result.output
    assert f"campaign {campaign_id} is live again" in result.output
    assert_rebuilt_from(redis_client, keys, rows, queries.campaign_row(svc.engine, campaign_id))

    # a worker that starts now sells on: the holders get their own tickets back (200), new users
    # serials no row holds
    worker = workers()
    for user, ticket in told.items():
        assert issue_to(worker, signer, campaign_id, [user], status=200)[user] == ticket
    new = issue_to(worker, signer, campaign_id, [f"n{i}" for i in range(10)])
    serials = {t["serial"] for t in new.values()}
    assert len(serials) == 10 and not serials & {r.serial for r in rows.values()}
    assert redis_client.llen(keys.returned) < holes  # its lease took returned serials first
    closed = runner.invoke(args=["campaign", "close", str(campaign_id)])
    assert closed.exit_code == 0 and "database rows 20: AGREE" in closed.output, closed.output


def test_recover_stops_at_an_aggregated_chunk_cut_short_and_runs_again(svc, signer, runner, workers,
                                                                      redis_client, monkeypatch):
    # MySQL's group_concat_max_len cuts a GROUP_CONCAT short (with a warning only): here at 40
    # bytes, less than the rows of a chunk take
    campaign_id = open_campaign(svc, 1000)
    issue_to(workers(), signer, campaign_id, [f"a{i}" for i in range(5)])
    flush(svc, campaign_id)
    lose(svc, campaign_id)
    monkeypatch.setattr(queries, "AGGREGATED_MAX", 40)
    cut = recover(runner, campaign_id)
    assert cut.exit_code == 1 and "Traceback" not in cut.output
    assert f"INTERNAL: campaign {campaign_id}: only 2 of 5 rows read from serial 1" in cut.output
    assert not redis_client.exists(svc.keys(campaign_id).meta)  # workers do not serve it
    monkeypatch.undo()
    assert recover(runner, campaign_id).exit_code == 0
    assert_rebuilt_from(redis_client, svc.keys(campaign_id), rows_of(svc, campaign_id),
                        queries.campaign_row(svc.engine, campaign_id))


@on_single_and_cluster
def test_recover_drains_the_shards_redis_kept_before_it_rebuilds(svc, signer, runner, workers,
                                                                  redis_client):
    # a cluster that lost only the master of the campaign's home keys: the claim shards, with
    # their outbox entries not yet flushed, are still there
    campaign_id = open_campaign(svc, 1000)
    keys = svc.keys(campaign_id)
    told = issue_to(workers(), signer, campaign_id, [f"u{i}" for i in range(6)])
    for key in keys.home_keys():
        svc.redis.delete(key)
    result = recover(runner, campaign_id)
    assert result.exit_code == 0, result.output
    assert "first drained 6 claims from the outbox streams Redis still held" in result.output
    rows = rows_of(svc, campaign_id)
    assert {u: (r.serial, r.code) for u, r in rows.items()} == {
        u: (t["serial"], t["code"]) for u, t in told.items()}
    assert_rebuilt_from(redis_client, keys, rows, queries.campaign_row(svc.engine, campaign_id))


def test_recover_reports_claims_the_last_stock_sync_counted_that_no_row_holds(svc, signer, runner,
                                                                              workers):
    campaign_id = open_campaign(svc, 1000)
    worker = workers()
    issue_to(worker, signer, campaign_id, [f"u{i}" for i in range(8)])
    flush(svc, campaign_id)
    lost = issue_to(worker, signer, campaign_id, ["late0", "late1", "late2"])  # never flushed
    sync_stock(svc)  # counts them: 11 issued
    lose(svc, campaign_id)
    result = recover(runner, campaign_id)
    assert result.exit_code == 0, result.output
    assert ("possibly lost: 3 claims: the last stock sync counted 11 issued, the database holds 8 rows"
            in result.output)
    assert "their serials may" in result.output and "have no row" in result.output
    # so it is: a lost serial goes to another user, and a user told of one gets a new ticket (201)
    again = issue_to(workers(), signer, campaign_id, ["other", "late0"])
    assert again["other"]["serial"] == lost["late0"]["serial"]
    assert again["late0"]["serial"] == lost["late1"]["serial"]


def test_recover_restores_the_window_and_opens_a_scheduled_campaign_whose_time_came(svc, runner,
                                                                                     redis_client):
    now = clock.utcnow()
    campaign_id = campaigns.create_campaign(svc, "scheduled", 100, opens_at=now - dt.timedelta(minutes=1),
                                      closes_at=now + dt.timedelta(hours=1))
    lose(svc, campaign_id)
    assert recover(runner, campaign_id).exit_code == 0
    assert_rebuilt_from(redis_client, svc.keys(campaign_id), {}, queries.campaign_row(svc.engine, campaign_id))
    pending = campaigns.create_campaign(svc, "pending", 100)
    lose(svc, pending)
    assert recover(runner, pending).exit_code == 0
    meta = redis_client.hgetall(svc.keys(pending).meta)
    assert (meta["status"], meta["opens_at"], meta["cursor"]) == ("pending", "0", "0")
    for done in (campaign_id, pending):  # not for the schedulers of later tests to open
        campaigns.close_campaign(svc, done)


@on_single_and_cluster
def test_recover_refuses_while_redis_holds_the_campaign(svc, signer, runner, workers, redis_client):
    campaign_id = open_campaign(svc, 1000)
    issue_to(workers(), signer, campaign_id, ["alice", "bob"])
    keys = svc.keys(campaign_id)
    before = snapshot(redis_client, keys)
    result = recover(runner, campaign_id)
    assert result.exit_code == 1
    assert (f"NOTHING_TO_RECOVER: Redis still holds campaign {campaign_id}; recover is only for a "
            "Redis that lost it") in result.output
    assert "Traceback" not in result.output
    assert snapshot(redis_client, keys) == before


def test_recover_refuses_an_unknown_or_closed_campaign(svc, signer, runner, workers, redis_client):
    unknown = recover(runner, 987654)
    assert unknown.exit_code == 1 and "CAMPAIGN_NOT_FOUND" in unknown.output
    campaign_id = open_campaign(svc, 10)
    issue_to(workers(), signer, campaign_id, ["alice"])
    keys = svc.keys(campaign_id)
    buckets = redis_state.Layout.of(redis_client.hgetall(keys.meta)).buckets
    assert runner.invoke(args=["campaign", "close", str(campaign_id)]).exit_code == 0
    closed = recover(runner, campaign_id)
    assert closed.exit_code == 1
    assert f"NOTHING_TO_RECOVER: campaign {campaign_id} is closed" in closed.output
    assert not redis_client.exists(*keys.every_key(buckets))  # nothing written


@pytest.mark.fault
@pytest.mark.parametrize("private_redis", ["no file"], indirect=True)
def test_redis_restarted_empty_mid_sale_then_recovered(mysql_url, signer, private_redis):
    # A Redis without a file, killed at 400 issued, comes back empty: the claims not flushed yet
    # are gone with it. The workers answer 503 until `recover` rebuilds the campaign from the
    # rows, at once (the workers may not even have seen it gone: the new epoch keeps them from
    # claiming the serials they leased before); then the flood goes on to STOCK.
    with service_on(mysql_url, private_redis.url) as (svc, web):
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

