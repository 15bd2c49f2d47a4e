"""coupon/reconcile.py: Redis's claims and the database's rows compared at close, shard by shard
(counts and digests, the database's tallied by MariaDB as Python tallies them), then ticket by
ticket where a shard differs, each difference named; a close that finds one keeps the keys."""
from coupon import clock, db, redis_state
from coupon.flusher import Flusher
from coupon.reconcile import database_tallies, reconcile, redis_claims, streamed_tallies
from coupon.scripts import StoredClaim
from loadtest.harness import open_campaign
from tests.support import issue_directly, on_single_and_cluster


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
def test_reconcile_names_every_difference_of_every_kind(make_app, redis_client):
    """The streamed comparison (counts and digests per shard) finds each kind of difference, and
    the ticket-by-ticket look at the shards that differ names it, whichever shard it is in."""
    svc = make_app(CLAIM_SHARDS=12).extensions["coupon"]  # shards to tell apart on one Redis too
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
