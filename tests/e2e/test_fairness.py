"""How fair a sale was, as its close reports it (coupon/fairness.py): every real gunicorn worker's
arrival stamps, on Redis's clock, of the coupons it issued and the requests it refused SOLD_OUT.
What the order counts, in this process: integration/test_fairness.py."""
from collections import Counter

from coupon import campaigns
from coupon.fairness import NOTE_EVERY, SaleOrder
from coupon.queries import close_report
from loadtest.harness import open_campaign, users, wait_until
from tests.support import flood, issue_call, on_single_and_cluster


def redis_ms(svc):
    return svc.clock.now_ms()


@on_single_and_cluster
def test_a_close_reports_the_refusals_that_arrived_before_the_last_coupons_request(svc, signer, gunicorn):
    server = gunicorn(workers=2)
    campaign_id = open_campaign(svc, 300)
    keys = svc.keys(campaign_id)
    before = redis_ms(svc)
    results = flood([issue_call(server.url, campaign_id, u, t) for u, t in users(signer, 500)])
    after = redis_ms(svc)
    assert Counter(status for _, status, _ in results) == {201: 300, 409: 200}

    # every answer is noted, within NOTE_EVERY, by the worker that gave it
    order = wait_until(lambda: (o := SaleOrder.read(svc.redis, keys)).refused == 200 and o,
                       timeout=10 * NOTE_EVERY + 5, what="the workers' notes")
    assert before - 5 <= order.last_win <= after + 5  # stamped on Redis's clock
    assert all(before - 5 <= ms <= after + 5 for ms in order.by_ms)
    report = campaigns.close_campaign(svc, campaign_id)
    assert report.order.refused == 200 and report.order.last_win == order.last_win
    assert report.lines()[-1] == order.lines()[0]
    assert order.lines()[0] in close_report(svc.engine, campaign_id)["report"]  # the ops page's
