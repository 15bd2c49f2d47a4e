"""`flask campaign recover`: a campaign's Redis state rebuilt from the database after Redis lost
it, checked key by key against what the rows imply; then the sale goes on. Its refusals and its
report of what may be lost; on SQLite as on MariaDB. (A Redis killed and restarted empty in
mid-flood: e2e/test_recover_mid_flood.py.)"""
import datetime as dt

from sqlalchemy import delete

from coupon import campaigns, clock, create_app, db, queries, recovery, redis_state
from coupon.flusher import Flusher
from jobs.stock_sync import sync_stock
from loadtest.harness import open_campaign
from tests.support import (
    app_config, assert_rebuilt_from, issue, issue_directly, lose, on_single_and_cluster, rows_of,
)


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


@on_single_and_cluster
def test_recover_rebuilds_what_the_rows_imply_and_the_sale_goes_on(svc, signer, runner, make_app,
                                                                    redis_client, monkeypatch):
    # rows of 3 serials read and written a round: each step of a big recover
    monkeypatch.setattr(recovery, "ROWS", 3)
    campaign_id = open_campaign(svc, 1000)
    keys = svc.keys(campaign_id)
    # two workers, each with a lease of its own: the rows leave a gap of serials leased, never claimed
    first, second = make_app().test_client(), make_app().test_client()
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
    worker = make_app().test_client()
    for user, ticket in told.items():
        assert issue_to(worker, signer, campaign_id, [user], status=200)[user] == ticket
    new = issue_to(worker, signer, campaign_id, [f"n{i}" for i in range(10)])
    serials = {t["serial"] for t in new.values()}
    assert len(serials) == 10 and not serials & {r.serial for r in rows.values()}
    assert redis_client.llen(keys.returned) < holes  # its lease took returned serials first
    closed = runner.invoke(args=["campaign", "close", str(campaign_id)])
    assert closed.exit_code == 0 and "database rows 20: AGREE" in closed.output, closed.output


def test_recover_stops_at_an_aggregated_chunk_cut_short_and_runs_again(svc, signer, runner, make_app,
                                                                      redis_client, monkeypatch):
    # MySQL's group_concat_max_len cuts a GROUP_CONCAT short (with a warning only): here at 40
    # bytes, less than the rows of a chunk take
    campaign_id = open_campaign(svc, 1000)
    issue_to(make_app().test_client(), signer, campaign_id, [f"a{i}" for i in range(5)])
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
def test_recover_drains_the_shards_redis_kept_before_it_rebuilds(svc, signer, runner, make_app,
                                                                  redis_client):
    # a cluster that lost only the master of the campaign's home keys: the claim shards, with
    # their outbox entries not yet flushed, are still there
    campaign_id = open_campaign(svc, 1000)
    keys = svc.keys(campaign_id)
    told = issue_to(make_app().test_client(), signer, campaign_id, [f"u{i}" for i in range(6)])
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
                                                                              make_app):
    campaign_id = open_campaign(svc, 1000)
    worker = make_app().test_client()
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
    again = issue_to(make_app().test_client(), signer, campaign_id, ["other", "late0"])
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
def test_recover_refuses_while_redis_holds_the_campaign(svc, signer, runner, make_app, redis_client):
    campaign_id = open_campaign(svc, 1000)
    issue_to(make_app().test_client(), signer, campaign_id, ["alice", "bob"])
    keys = svc.keys(campaign_id)
    before = snapshot(redis_client, keys)
    result = recover(runner, campaign_id)
    assert result.exit_code == 1
    assert (f"NOTHING_TO_RECOVER: Redis still holds campaign {campaign_id}; recover is only for a "
            "Redis that lost it") in result.output
    assert "Traceback" not in result.output
    assert snapshot(redis_client, keys) == before


def test_recover_refuses_an_unknown_or_closed_campaign(svc, signer, runner, make_app, redis_client):
    unknown = recover(runner, 987654)
    assert unknown.exit_code == 1 and "CAMPAIGN_NOT_FOUND" in unknown.output
    campaign_id = open_campaign(svc, 10)
    issue_to(make_app().test_client(), signer, campaign_id, ["alice"])
    keys = svc.keys(campaign_id)
    buckets = redis_state.Layout.of(redis_client.hgetall(keys.meta)).buckets
    assert runner.invoke(args=["campaign", "close", str(campaign_id)]).exit_code == 0
    closed = recover(runner, campaign_id)
    assert closed.exit_code == 1
    assert f"NOTHING_TO_RECOVER: campaign {campaign_id} is closed" in closed.output
    assert not redis_client.exists(*keys.every_key(buckets))  # nothing written


def test_recover_on_sqlite(tmp_path, redis_target, redis_client):
    """Recover reads SQLite's rows one by one (MySQL's come aggregated): the same state."""
    app = create_app(app_config(f"sqlite:///{tmp_path}/coupon.db", redis_target))
    runner = app.test_cli_runner()
    assert runner.invoke(args=["db", "init"]).exit_code == 0
    svc = app.extensions["coupon"]
    campaign_id = open_campaign(svc, 10, "recover sqlite")
    for user in ("r1", "r2", "r3", "r4"):
        issue_directly(svc, campaign_id, user)
    Flusher(svc, consumer="test").flush([campaign_id])
    with svc.engine.begin() as conn:  # a serial between the rows that no row holds
        conn.execute(delete(db.coupons).where(db.coupons.c.user_id == "r2"))
    lose(svc, campaign_id)
    assert runner.invoke(args=["campaign", "recover", str(campaign_id)]).exit_code == 0
    rows = rows_of(svc, campaign_id)
    assert sorted(rows) == ["r1", "r3", "r4"]
    assert_rebuilt_from(redis_client, svc.keys(campaign_id), rows, queries.campaign_row(svc.engine, campaign_id))
    svc.engine.dispose()
