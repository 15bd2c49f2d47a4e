"""The per-user rate limit on issue through Flask's test client, against the real Redis: 429
with Retry-After past the limit, per user, keys that expire, a new window; 0 turns it off. Summed
over real gunicorn workers and instances: e2e/test_rate_limit.py."""
from collections import Counter

from coupon import queries
from loadtest.harness import open_campaign
from tests.support import assert_error, fresh_window, issue, on_single_and_cluster

pytestmark = on_single_and_cluster


def test_over_the_limit_is_429_with_retry_after(make_app, svc, signer, redis_client):
    client = make_app(RATE_LIMIT=3, RATE_LIMIT_WINDOW=2).test_client()
    campaign_id = open_campaign(svc, 10, "rate")
    alice, bob = signer.mint("alice"), signer.mint("bob")
    fresh_window(2, need=1.5)

    statuses = [issue(client, campaign_id, alice).status_code for _ in range(4)]
    assert statuses == [201, 200, 200, 200]  # the call that issued the ticket is not counted
    for _ in range(2):
        response = issue(client, campaign_id, alice)
        assert_error(response, 429, "RATE_LIMITED")
        assert 1 <= int(response.headers["Retry-After"]) <= 2
    assert issue(client, campaign_id, bob).status_code == 201  # the limit is per user

    rate_keys = list(redis_client.scan_iter("*:rate:*"))
    assert rate_keys and all(0 < redis_client.ttl(key) <= 2 for key in rate_keys)  # they expire
    assert queries.campaign_status(svc, campaign_id)["issued"] == 2  # a 429 takes no coupon

    fresh_window(2, need=2)  # the next window: alice may ask again
    assert issue(client, campaign_id, alice).status_code == 200


def test_zero_turns_the_limit_off(make_app, svc, signer, redis_client):
    client = make_app(RATE_LIMIT=0, RATE_LIMIT_WINDOW=10).test_client()
    campaign_id = open_campaign(svc, 10, "rate")
    token = signer.mint("alice")
    statuses = Counter(issue(client, campaign_id, token).status_code for _ in range(50))
    assert statuses == {201: 1, 200: 49}
    assert list(redis_client.scan_iter("*:rate:*")) == []
