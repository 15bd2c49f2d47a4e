"""`flask campaign add-stock`'s logic (campaigns.add_stock) in this process, against the real
Redis and MariaDB: additions asked at the same time each count once. Under a real flood, with
the stock sync and a scheduler: e2e/test_add_stock.py."""
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from coupon import campaigns
from coupon.queries import campaign_row
from loadtest.harness import open_campaign
from tests.support import additions, on_single_and_cluster

pytestmark = on_single_and_cluster


def test_additions_at_the_same_time_each_count_once(svc):
    campaign_id = open_campaign(svc, 100)
    # eight distinct additions, each asked by three operators at once
    asks = [(f"r-{i}", 10 * (i + 1)) for i in range(8)] * 3
    with ThreadPoolExecutor(len(asks)) as pool:
        answers = list(pool.map(lambda ask: campaigns.add_stock(svc, campaign_id, ask[1], ask[0]), asks))

    assert Counter(a.request_id for a in answers if a.new) == {f"r-{i}": 1 for i in range(8)}
    total = 100 + sum(10 * (i + 1) for i in range(8))
    assert campaign_row(svc.engine, campaign_id).total == total
    assert int(svc.redis.hget(svc.keys(campaign_id).meta, "total")) == total
    recorded = additions(svc, campaign_id)
    assert sorted((r, n) for r, n, _ in recorded) == sorted(set(asks))
    assert sorted(after for _, _, after in recorded)[-1] == total
