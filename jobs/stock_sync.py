"""Stock sync job: write issued counts into the database; raise Redis's stock to the database's.

It writes the issued counts of active campaigns into the campaigns table, and raises their stock
in Redis to the database's where an add-stock's Redis part failed.

A round costs what may have moved, not every live campaign: it counts the campaigns with claims
not yet flushed (the outbox news sets), those whose stream a flusher of any scheduler emptied
since the last round (the outbox drained sets: a claim written after a count has its campaign
in one of the two until the next), and each campaign once when this scheduler first sees it.
Totals: one query of the database's, and Redis's read where the database's is higher than last
seen, or last seen a while ago (a preload racing an add-stock can have lowered it)."""
import logging
import time

from sqlalchemy import bindparam, select, update

from coupon import db, events
from coupon.keys import active_campaigns
from coupon.outbox import news_and_drained
from coupon.redis_state import queue_total, stocks_in_redis

log = logging.getLogger(__name__)
TOTAL_RECHECK = 60.0  # seconds a total read from Redis is trusted to be at least the database's


def sync_stock(svc):
    """Count and raise every active campaign at once; return how many were counted.

    A round of the job does part of this."""
    campaign_ids = active_campaigns(svc.redis)
    counted = count_issued(svc, campaign_ids)
    raise_totals(svc, campaign_ids, database_totals(svc.engine))
    return counted


def count_issued(svc, campaign_ids):
    """Write Redis's issued counts of these campaigns into their rows; return how many were counted.

    Write too the campaign.sold_out event of those that sold out since the last count."""
    stocks = stocks_in_redis(svc.redis, [svc.keys(c) for c in campaign_ids])
    if stocks:
        c = db.campaigns.c
        with svc.engine.begin() as conn:
            full = {cid: total for cid, (total, issued) in stocks.items() if issued >= total}
            sold_out = []
            if full and events.enabled(svc.config):  # the rows still say not all issued
                sold_out = conn.execute(select(c.id).where(c.id.in_(full), c.issued < c.total)
                                        ).scalars().all()
            conn.execute(update(db.campaigns).where(c.id == bindparam("cid")).values(issued=bindparam("count")),
                         [{"cid": cid, "count": issued} for cid, (_, issued) in stocks.items()])
            for cid in sold_out:  # keyed by the total: sold out again after an add-stock is news
                events.record(svc.config, conn, cid, events.SOLD_OUT, str(full[cid]), total=full[cid])
    return len(stocks)


def database_totals(engine):
    """{campaign id: total} of the campaigns not closed."""
    c = db.campaigns.c
    with engine.connect() as conn:
        return dict(conn.execute(select(c.id, c.total).where(c.status != "closed")).all())


def raise_totals(svc, campaign_ids, totals):
    """Raise Redis's total of these campaigns to the database's (`totals`) where it is lower.

    Return {campaign id: the total Redis holds now} of those it holds."""
    campaign_ids = [c for c in campaign_ids if c in totals]
    batch = svc.redis.batch()
    read = {campaign_id: queue_total(batch, svc.keys(campaign_id)) for campaign_id in campaign_ids}
    if campaign_ids:
        batch.execute()
    held = {}
    for campaign_id, total in read.items():
        if total.get() is None:
            continue  # released since the registry was read, or lost (recover raises it)
        held[campaign_id] = int(total.get())
        if totals[campaign_id] > held[campaign_id]:
            svc.scripts.raise_total(svc.keys(campaign_id), totals[campaign_id])
            held[campaign_id] = totals[campaign_id]
            log.info("raised the stock of campaign %d in Redis to the database's %d",
                     campaign_id, totals[campaign_id])
    return held


class StockSyncJob:
    def __init__(self, svc):
        self.svc = svc
        self._drained = set()  # campaigns taken off the drained sets and not counted yet
        self._counted = set()  # campaigns counted at least once by this scheduler
        self._totals = {}  # campaign id -> (the total Redis held, monotonic time it was read)

    def __call__(self):
        svc = self.svc
        active = set(active_campaigns(svc.redis))
        news, drained = news_and_drained(svc.redis, svc.config["CLAIM_SHARDS"])
        self._drained = (self._drained | drained) & active  # popped: counted here or next round
        due = active & (news | self._drained) | (active - self._counted)
        counted = count_issued(svc, sorted(due))
        self._drained = set()
        self._counted = (self._counted | due) & active
        totals, now = database_totals(svc.engine), time.monotonic()
        seen = {c: seen for c, seen in self._totals.items() if c in active}
        look = sorted(c for c in active if c not in seen or now - seen[c][1] > TOTAL_RECHECK
                      or totals.get(c, 0) > seen[c][0])
        seen.update({c: (total, now) for c, total in raise_totals(svc, look, totals).items()})
        self._totals = seen
        return counted
