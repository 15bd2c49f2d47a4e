"""/metrics through Flask's test client, against the real Redis and MariaDB: Prometheus text with
outcome counters that move; the figures read at scrape time (stock, leases, lost campaigns,
readiness, replicas) follow Redis keys and a Redis or database that is down. Summed over real
gunicorn workers, and following real schedulers: e2e/test_metrics.py."""
import pytest

from coupon import create_app, redis_state
from coupon.keys import ACTIVE
from coupon.recovery import recover_campaign
from jobs.reclaim import reclaim_expired
from loadtest.harness import free_port, open_campaign
from tests.support import app_config, issue_directly, outcome, poll, samples, scrape, value


def test_metrics_count_outcomes_in_prometheus_text(client, svc, signer):
    campaign_id = open_campaign(svc, 2, "metrics")
    # the app's own counters, from zero; /metrics is scraped once, below, as it caches the
    # outbox figures for a moment
    for user in ("m1", "m1", "m2", "m3"):
        client.post(f"/api/v1/campaigns/{campaign_id}/issue",
                    headers={"Authorization": "Bearer " + signer.mint(user)})
    svc.metrics.record_flush_round("jobs:h:1", {"read": 0.001, "write": 0.004, "ack": 0.001}, 3)

    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain; version=")
    after = samples(response.get_data(as_text=True))
    assert (outcome(after, "NEW"), outcome(after, "HELD"), outcome(after, "SOLD_OUT")) == (2, 1, 1)
    assert after[("coupon_issue_duration_seconds_count", ())] == 4
    flusher = (("flusher", "jobs:h:1"),)
    assert (after[("coupon_flushed_total", flusher)], after[("coupon_flush_rounds_total", flusher)]) == (3, 1)
    assert after[("coupon_flush_part_seconds_total", (("flusher", "jobs:h:1"), ("part", "write")))] == 0.004
    label = (("campaign_id", str(campaign_id)),)
    assert after[("coupon_outbox_backlog", label)] == 2  # no flusher runs in this test
    assert after[("coupon_flush_lag_seconds", label)] >= 0


def test_a_campaign_whose_redis_keys_are_gone_shows_as_lost_until_recovered(client, svc, redis_client):
    lost, kept = open_campaign(svc, 10, "lost"), open_campaign(svc, 10, "kept")
    values = scrape(client)
    assert (value(values, "coupon_campaign_lost", campaign_id=str(lost)),
            value(values, "coupon_campaign_lost", campaign_id=str(kept))) == (0, 0)

    keys = svc.keys(lost)
    buckets = redis_state.Layout.of(redis_client.hgetall(keys.meta)).buckets
    redis_client.delete(*keys.every_key(buckets), ACTIVE)  # as a Redis restarted empty would
    values = poll(client, lambda v: value(v, "coupon_campaign_lost", campaign_id=str(lost)) == 1,
                  "the campaign shown lost")
    assert value(values, "coupon_campaign_lost", campaign_id=str(kept)) == 0

    recover_campaign(svc, lost)
    poll(client, lambda v: value(v, "coupon_campaign_lost", campaign_id=str(lost)) == 0,
         "the campaign held again")


def test_stock_leases_and_an_expired_lease_until_the_reclaim_settles_it(mysql_url, redis_target):
    # an expired lease is counted once older than 2 x REDIS_TIMEOUT + RECLAIM_INTERVAL (1.5 s)
    app = create_app(app_config(mysql_url, redis_target, LEASE_TTL=1.0, REDIS_TIMEOUT=0.5,
                                RECLAIM_INTERVAL=0.5))
    svc, client = app.extensions["coupon"], app.test_client()
    try:
        # (a stock above SINGLE_LEASE_TAIL: this process leases a block, takes one, and idles)
        campaign_id = open_campaign(svc, 1000, "leases")
        issue_directly(svc, campaign_id, "alice")
        label = dict(campaign_id=str(campaign_id))
        values = scrape(client)
        assert [value(values, name, **label) for name in (
            "coupon_campaign_total", "coupon_campaign_issued", "coupon_leases", "coupon_leases_expired",
        )] == [1000, 1, 1, 0]

        poll(client, lambda v: value(v, "coupon_leases_expired", **label) == 1, "the lease counted expired")
        assert reclaim_expired(svc, grace=2 * 0.5) > 0  # what the reclaim job does
        values = poll(client, lambda v: value(v, "coupon_leases_expired", **label) == 0, "the lease settled")
        assert value(values, "coupon_leases", **label) == 0
    finally:
        svc.engine.dispose()


@pytest.mark.parametrize("down", ["redis", "database"])
def test_scrape_answers_with_redis_or_the_database_down(mysql_url, redis_target, down):
    nowhere = f"127.0.0.1:{free_port()}"
    settings = ({"REDIS_URL": f"redis://{nowhere}/0"} if down == "redis"
                else {"DATABASE_URL": f"mysql+pymysql://root@{nowhere}/nowhere"})
    app = create_app(dict(app_config(mysql_url, redis_target), **settings))
    svc = app.extensions["coupon"]
    try:
        values = scrape(app.test_client())
        up = "database" if down == "redis" else "redis"
        assert (value(values, "coupon_ready", check=down), value(values, "coupon_ready", check=up)) == (0, 1)
        names = {name for name, _ in values}
        if down == "redis":  # what is read from Redis is absent
            assert not names & {"coupon_scheduler_leader", "coupon_campaign_lost", "coupon_leases",
                                "coupon_redis_master_replicas"}
        else:
            assert value(values, "coupon_scheduler_leader") == 0
            assert "coupon_campaign_lost" not in names
    finally:
        svc.engine.dispose()


def test_a_master_short_of_replicas(mysql_url, redis_target):
    """The test Redis has no replica: with REDIS_REPLICA_ACKS 1 it is one short."""
    app = create_app(app_config(mysql_url, redis_target, REDIS_REPLICA_ACKS=1))
    try:
        values = scrape(app.test_client())
        assert value(values, "coupon_redis_master_replicas", master="redis") == 0
        assert value(values, "coupon_redis_replicas_required") == 1
        assert value(values, "coupon_ready", check="redis") == 0
    finally:
        app.extensions["coupon"].engine.dispose()
