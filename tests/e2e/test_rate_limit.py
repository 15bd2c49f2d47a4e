"""The per-user rate limit on issue: counted in Redis by the claim script, so it holds summed over
every worker of every instance; ticket lookups count against it with the issue calls."""
import time
from collections import Counter, defaultdict

from coupon import queries
from loadtest.harness import open_campaign, users
from tests.support import assert_error, flood, fresh_window, issue, on_single_and_cluster, request
from tests.support_http import BODY_TIMEOUT, RawConnection, head_of, issue_head

pytestmark = on_single_and_cluster


def test_over_the_limit_is_429_with_retry_after(make_app, svc, signer, redis_client):
    client = make_app(RATE_LIMIT=3, RATE_LIMIT_WINDOW=2).test_client()
    campaign_id = open_campaign(svc, 10, "rate")
    alice, bob = signer.mint("alice"), signer.mint("bob")
    fresh_window(2, need=1.5)

    statuses = [issue(client, campaign_id, alice).status_code for _ in range(3)]
    assert statuses == [201, 200, 200]
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


def test_limit_holds_summed_over_workers_and_instances(svc, signer, gunicorn, redis_client):
    """Each user's requests alternate between two instances of two workers each: a limit kept
    per process would let 2-4 times as many through."""
    limit, window, repeats, people = 5, 3600, 16, 30
    servers = [gunicorn(workers=2, RATE_LIMIT=limit, RATE_LIMIT_WINDOW=window) for _ in range(2)]
    campaign_id = open_campaign(svc, 1000, "rate")
    tokens = dict(users(signer, people, prefix="r"))
    path = f"/api/v1/campaigns/{campaign_id}/issue"

    def call(server, user):
        return lambda: (user, *request(server.url, "POST", path, tokens[user]))

    calls = [call(servers[n % 2], user) for user in tokens for n in range(repeats)]
    fresh_window(window, need=60)
    results = flood(calls, concurrency=100)

    answers = defaultdict(Counter)
    for user, status, body, headers in results:
        answers[user][status] += 1
        if status == 429:
            assert body["error"]["code"] == "RATE_LIMITED"
            assert 1 <= int(headers["Retry-After"]) <= window
    for user in tokens:
        assert answers[user] == {201: 1, 200: limit - 1, 429: repeats - limit}, (user, answers[user])
    assert queries.campaign_status(svc, campaign_id)["issued"] == people

    keys = svc.keys(campaign_id)
    counted = {}
    for shard in keys.all_shards():
        counted.update(redis_client.hgetall(shard.rate(int(time.time()) // window)))
    assert counted == {user: str(repeats) for user in tokens}


def test_ticket_lookups_count_with_issue_calls_against_the_rate_limit(gunicorn, svc, signer):
    server = gunicorn(workers=2, BODY_TIMEOUT=BODY_TIMEOUT, RATE_LIMIT=5, RATE_LIMIT_WINDOW=3600)
    campaign_id = open_campaign(svc, 10, "ticket rate")
    token = signer.mint("alice")
    lookup = head_of("GET", f"/api/v1/campaigns/{campaign_id}/ticket", f"Authorization: Bearer {token}")
    fresh_window(3600, need=60)
    with RawConnection(server.port) as conn:  # one keep-alive connection
        conn.send(issue_head(campaign_id, token))
        assert conn.answer().status == 201
        answers = []
        for _ in range(10):
            conn.send(lookup)
            answers.append(conn.answer())
    assert [a.status for a in answers[:4]] == [200] * 4, [str(a) for a in answers[:4]]
    for answer in answers[4:]:
        assert_error(answer, 429, "RATE_LIMITED")
        assert int(answer.headers["retry-after"]) > 0
