"""Stock sync job: write issued counts of active campaigns into the campaigns table."""
from sqlalchemy import bindparam, update

from coupon import db
from coupon.keys import active_campaigns
from coupon.redis_state import issued_in_redis


def sync_stock(svc):
    """Walk the registry of active campaigns (never SCAN) and store their issued counters."""
    rows = []
    for campaign_id in active_campaigns(svc.redis):
        issued = issued_in_redis(svc.redis, svc.keys(campaign_id))
        if issued is not None:
            rows.append({"cid": campaign_id, "count": issued})
    if rows:
        stmt = (update(db.campaigns).where(db.campaigns.c.id == bindparam("cid"))
                .values(issued=bindparam("count")))
        with svc.engine.begin() as conn:
            conn.execute(stmt, rows)
    return len(rows)
