"""The per-user rate limit on issue through real gunicorns: counted in Redis by the claim script,
so it holds summed over every worker of every instance; ticket lookups count against it with the
issue calls. 429, Retry-After and RATE_LIMIT=0, in this process: integration/test_rate_limit.py."""
import time
from collections import Counter, defaultdict

from coupon import queries
from loadtest.harness import open_campaign, users
from tests.support import assert_error, flood, fresh_window, on_single_and_cluster, request
from tests.support_http import BODY_TIMEOUT, RawConnection, head_of, issue_head

pytestmark = on_single_and_cluster


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
    for user in tokens:  # the call that issued the user's ticket is not counted
        assert answers[user] == {201: 1, 200: limit, 429: repeats - limit - 1}, (user, answers[user])
    assert queries.campaign_status(svc, campaign_id)["issued"] == people

    keys = svc.keys(campaign_id)
    counted = {}
    for shard in keys.all_shards():
        counted.update(redis_client.hgetall(shard.rate(int(time.time()) // window)))
    assert counted == {user: str(repeats - 1) for user in tokens}


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
    # the issue call that got the ticket is not counted: 5 lookups are
    assert [a.status for a in answers[:5]] == [200] * 5, [str(a) for a in answers[:5]]
    for answer in answers[5:]:
        assert_error(answer, 429, "RATE_LIMITED")
        assert int(answer.headers["retry-after"]) > 0
