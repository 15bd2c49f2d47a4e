"""How fair a sale was (coupon/fairness.py), in this process against the real Redis: the order
counts what the workers noted, in `flask campaign status`, /metrics and the close's report; behind
a trusted front proxy a request's arrival is its X-Request-Start. Through real gunicorn workers:
e2e/test_fairness.py."""
import json
import time

import pytest

from coupon import campaigns, create_app
from coupon.fairness import SaleOrder
from loadtest.harness import open_campaign, users
from tests.support import app_config


def test_the_order_counts_what_the_workers_noted(svc, runner, client):
    campaign_id = open_campaign(svc, 10)
    for outcome, arrival in [("NEW", 1_000.0), ("NEW", 1_100.25), ("SOLD_OUT", 1_020.0),
                             ("SOLD_OUT", 1_090.0), ("SOLD_OUT", 1_200.0), ("UNAUTHORIZED", 900.0)]:
        svc.arrivals.note(campaign_id, outcome, arrival)
    svc.arrivals.write()

    # while the sale runs: in flask campaign status and in /metrics
    status = json.loads(runner.invoke(args=["campaign", "status", str(campaign_id)]).output)
    assert status["order"] == {"refused_sold_out": 3, "refused_ahead": 2, "refused_ahead_50ms": 1,
                               "max_lead_ms": 80.2, "last_winning_arrival": "1970-01-01T00:00:01.100Z"}
    metrics = client.get("/metrics").get_data(as_text=True)
    assert f'coupon_campaign_refused_ahead{{campaign_id="{campaign_id}"}} 2.0' in metrics
    assert f'coupon_campaign_refused_ahead_plainly{{campaign_id="{campaign_id}"}} 1.0' in metrics

    report = campaigns.close_campaign(svc, campaign_id)
    line = ("order: 2 of 3 refused SOLD_OUT arrived before the last coupon's request (1 of them "
            "50 ms or more before it; the earliest 80.2 ms before)")
    assert report.lines()[-1] == line
    status = json.loads(runner.invoke(args=["campaign", "status", str(campaign_id)]).output)
    assert status["order"] == {"at_close": line}  # Redis has released it: as its close found it
    svc.arrivals.note(campaign_id, "SOLD_OUT", 1_300.0)  # a late answer, after the release
    svc.arrivals.write()
    assert not svc.redis.exists(svc.keys(campaign_id).arrivals)  # never written back


@pytest.mark.parametrize("trusted", [True, False])
def test_behind_a_trusted_front_proxy_a_requests_arrival_is_its_x_request_start(
        mysql_url, redis_target, signer, trusted):
    app = create_app(app_config(mysql_url, redis_target, TRUST_REQUEST_START=trusted))
    svc, client = app.extensions["coupon"], app.test_client()
    campaign_id = open_campaign(svc, 1)
    (first, first_token), (second, second_token) = users(signer, 2)

    def issue(token, **headers):
        return client.post(f"/api/v1/campaigns/{campaign_id}/issue",
                           headers={"Authorization": f"Bearer {token}", **headers}).status_code

    assert issue(first_token) == 201
    waited = time.time() - 10  # the second came to the proxy 10 s before, and waited there
    assert issue(second_token, **{"X-Request-Start": f"t={waited:.3f}"}) == 409
    svc.arrivals.write()
    order = SaleOrder.read(svc.redis, svc.keys(campaign_id))
    assert order.refused == 1
    if trusted:  # refused though it arrived first: 10 s ahead of the winner
        assert order.refused_ahead == 1 and 9_900 <= order.max_lead_ms <= 10_100
    else:  # a client's own header is not believed
        assert order.refused_ahead == 0
    app.extensions["coupon"].engine.dispose()
