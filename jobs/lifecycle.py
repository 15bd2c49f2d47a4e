"""Lifecycle job: open campaigns whose opens_at has come, close those whose closes_at passed."""
import logging

from sqlalchemy import select

from coupon import db
from coupon.campaigns import close_campaign, preload, utcnow
from coupon.errors import CouponError
from coupon.keys import CampaignKeys

log = logging.getLogger(__name__)


def open_and_close_due(svc):
    c = db.campaigns.c
    now = utcnow()
    with svc.engine.connect() as conn:
        live = conn.execute(select(db.campaigns).where(c.status.in_(("scheduled", "open")))).all()
    for row in live:
        if row.closes_at and row.closes_at <= now:
            try:
                report = close_campaign(svc, row.id)
                log.info("closed campaign %d at its closes_at: %s", row.id, report.lines()[0])
            except CouponError as e:
                log.error("closing campaign %d failed: %s", row.id, e.message)
        elif row.status == "scheduled" and row.opens_at <= now:
            with svc.engine.begin() as conn:
                conn.execute(db.campaigns.update().where(c.id == row.id).values(status="open"))
            preload(svc, row.id, row.total, "open", row.opens_at, row.closes_at)
            log.info("opened campaign %d", row.id)
        elif not svc.redis.exists(CampaignKeys(row.id, svc.config["CLAIM_SHARDS"]).meta):
            # Redis lost a campaign that has not started issuing yet: load it again
            if row.status == "scheduled":
                preload(svc, row.id, row.total, row.status, row.opens_at, row.closes_at)
