"""Leases between real gunicorn workers: holders asking again at the tail leave the last coupons
to new users. Two apps standing for two workers, in this process: integration/test_leases.py."""
from coupon import queries
from loadtest.harness import open_campaign, users
from tests.support import flood, issue_call, on_single_and_cluster

pytestmark = on_single_and_cluster


def test_holders_asking_again_at_the_tail_leave_the_last_coupons_to_new_users(svc, signer, gunicorn):
    """The last coupons while their holders ask again and again: every new user must still get
    one (no SOLD_OUT while a serial is left for them), on any worker."""
    server = gunicorn(workers=2)
    campaign_id = open_campaign(svc, 60, "tail rush")
    holders = users(signer, 50, prefix="h")
    first = flood([issue_call(server.url, campaign_id, u, t) for u, t in holders])
    assert {status for _, status, _ in first} == {201}

    newcomers = users(signer, 10, prefix="n")
    calls = [issue_call(server.url, campaign_id, u, t) for u, t in holders * 4]
    for i, (user, token) in enumerate(newcomers):  # spread among the holders' requests
        calls.insert(i * 20 + 10, issue_call(server.url, campaign_id, user, token))
    results = flood(calls)
    answers = {user: status for user, status, _ in results if user.startswith("n")}
    assert answers == {user: 201 for user, _ in newcomers}
    assert {status for user, status, _ in results if user.startswith("h")} == {200}
    assert queries.campaign_status(svc, campaign_id)["issued"] == 60
