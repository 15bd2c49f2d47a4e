"""Lifecycle job: open campaigns whose opens_at has come, close those whose closes_at passed."""
import logging

from sqlalchemy import select

from coupon import db
from coupon.campaigns import close_campaign, open_campaign
from coupon.clock import utcnow
from coupon.errors import CouponError
from coupon.redis_state import preload

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
            try:
                open_campaign(svc, row.id)
                log.info("opened campaign %d", row.id)
            except CouponError as e:  # Redis lost it: an operator recovers it
                log.error("opening campaign %d failed: %s", row.id, e.message)
        elif row.status == "scheduled" and not svc.redis.exists(svc.keys(row.id).meta):
            # Redis lost a campaign that has not started issuing yet: load it again
            preload(svc.redis, svc.keys(row.id), row.total, row.status, row.opens_at, row.closes_at)
