"""Stock sync job: write the issued counts of active campaigns into the campaigns table, and
raise their stock in Redis to the database's where an add-stock's Redis part failed."""
import logging

from sqlalchemy import bindparam, select, update

from coupon import db
from coupon.keys import active_campaigns
from coupon.redis_state import stock_in_redis

log = logging.getLogger(__name__)


def sync_stock(svc):
    """Walk the registry of active campaigns (never SCAN); return how many it synced."""
    in_redis = {}
    for campaign_id in active_campaigns(svc.redis):
        stock = stock_in_redis(svc.redis, svc.keys(campaign_id))
        if stock is not None:
            in_redis[campaign_id] = stock
    if not in_redis:
        return 0
    c = db.campaigns.c
    with svc.engine.begin() as conn:
        conn.execute(update(db.campaigns).where(c.id == bindparam("cid")).values(issued=bindparam("count")),
                     [{"cid": cid, "count": issued} for cid, (_, issued) in in_redis.items()])
        totals = conn.execute(select(c.id, c.total).where(c.id.in_(in_redis))).all()
    for campaign_id, total in totals:
        if total > in_redis[campaign_id][0]:
            svc.scripts.raise_total(svc.keys(campaign_id), total)
            log.info("raised the stock of campaign %d in Redis to the database's %d", campaign_id, total)
    return len(in_redis)
