"""The hot path under real concurrency, against real gunicorn gevent workers."""
from collections import Counter

from coupon import redis_state
from loadtest.harness import open_campaign, users
from tests.support import assert_exact_tickets, flood, issue_call, on_single_and_cluster

pytestmark = on_single_and_cluster


def redis_issued(svc, campaign_id):
    return redis_state.issued_in_redis(svc.redis, svc.keys(campaign_id))


def test_flood_issues_exactly_the_stock(svc, signer, gunicorn):
    server = gunicorn(workers=2)
    campaign_id = open_campaign(svc, 1000)
    results = flood([issue_call(server.url, campaign_id, u, t) for u, t in users(signer, 1500)])

    statuses = Counter(status for _, status, _ in results)
    assert statuses == {201: 1000, 409: 500}
    assert {body["error"]["code"] for _, s, body in results if s == 409} == {"SOLD_OUT"}
    assert len(assert_exact_tickets(results, signer, campaign_id, 1000)) == 1000
    assert redis_issued(svc, campaign_id) == 1000


def test_repeated_requests_get_one_ticket_each(svc, signer, gunicorn):
    server = gunicorn(workers=2)
    campaign_id = open_campaign(svc, 5000)
    calls = [issue_call(server.url, campaign_id, u, t) for u, t in users(signer, 200) for _ in range(10)]
    results = flood(calls, concurrency=200)

    by_user = {}
    for user_id, status, body in results:
        assert status in (200, 201), body
        by_user.setdefault(user_id, []).append((status, body["serial"], body["code"]))
    assert len(by_user) == 200
    for answers in by_user.values():
        assert [s for s, _, _ in answers].count(201) == 1
        assert len({(serial, code) for _, serial, code in answers}) == 1
    assert len({answers[0][1] for answers in by_user.values()}) == 200
    assert redis_issued(svc, campaign_id) == 200


def test_two_instances_sharing_redis_stay_exact(svc, signer, gunicorn):
    servers = [gunicorn(workers=2), gunicorn(workers=2)]
    campaign_id = open_campaign(svc, 700)
    calls = [issue_call(servers[i % 2].url, campaign_id, u, t)
             for i, (u, t) in enumerate(users(signer, 1200))]
    results = flood(calls)

    assert Counter(status for _, status, _ in results) == {201: 700, 409: 500}
    assert len(assert_exact_tickets(results, signer, campaign_id, 700)) == 700


def test_small_campaign_sells_out_over_all_workers(svc, signer, gunicorn, redis_client):
    server = gunicorn(workers=4)
    campaign_id = open_campaign(svc, 50)
    results = flood([issue_call(server.url, campaign_id, u, t) for u, t in users(signer, 400)])

    assert Counter(status for _, status, _ in results) == {201: 50, 409: 350}
    assert_exact_tickets(results, signer, campaign_id, 50)
    keys = svc.keys(campaign_id)
    assert redis_client.hget(keys.meta, "cursor") == "50"
    assert redis_client.llen(keys.returned) == 0  # no serial left waiting in Redis either


def test_clean_shutdown_gives_unused_serials_back(svc, signer, gunicorn, redis_client):
    server = gunicorn(workers=2)
    campaign_id = open_campaign(svc, 100_000)
    results = flood([issue_call(server.url, campaign_id, u, t) for u, t in users(signer, 100)])
    assert Counter(status for _, status, _ in results) == {201: 100}
    keys = svc.keys(campaign_id)
    leased = int(redis_client.hget(keys.meta, "cursor"))
    assert leased > 100  # the workers hold unused serials in their blocks

    server.stop()

    assert redis_client.zcard(keys.leases) == 0
    returned = [int(s) for s in redis_client.lrange(keys.returned, 0, -1)]
    issued = {body["serial"] for _, _, body in results}
    assert len(returned) == leased - 100
    assert set(returned) | issued == set(range(1, leased + 1))
