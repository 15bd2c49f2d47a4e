"""Stock sync job: write issued counts of active campaigns into the campaigns table."""
from sqlalchemy import bindparam, update

from coupon import db
from coupon.campaigns import issued_in_redis
from coupon.keys import ACTIVE, CampaignKeys


def sync_stock(svc):
    """Walk the registry of active campaigns (never SCAN) and store their issued counters."""
    rows = []
    for campaign_id in sorted(int(c) for c in svc.redis.smembers(ACTIVE)):
        issued = issued_in_redis(svc, CampaignKeys(campaign_id, svc.config["CLAIM_SHARDS"]))
        if issued is not None:
            rows.append({"cid": campaign_id, "count": issued})
    if rows:
        stmt = (update(db.campaigns).where(db.campaigns.c.id == bindparam("cid"))
                .values(issued=bindparam("count")))
        with svc.engine.begin() as conn:
            conn.execute(stmt, rows)
    return len(rows)
