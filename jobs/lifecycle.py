"""Lifecycle job: open and close campaigns when due; load again the scheduled ones Redis lost.

It opens campaigns whose opens_at has come and closes those whose closes_at passed. The database
picks the due campaigns; the look for lost ones (one command per scheduled campaign) is made every
LOST_CHECK seconds."""
import logging
import time

from sqlalchemy import and_, or_, select

from coupon import db, events
from coupon.campaigns import close_campaign, open_campaign
from coupon.clock import utcnow
from coupon.errors import CouponError
from coupon.redis_state import preload, queue_holds

log = logging.getLogger(__name__)
LOST_CHECK = 30.0


def open_and_close_due(svc, look_for_lost=True):
    c = db.campaigns.c
    now = utcnow()
    due = or_(c.closes_at <= now, and_(c.status == "scheduled", c.opens_at <= now))
    with svc.engine.connect() as conn:
        rows = conn.execute(select(db.campaigns).where(c.status.in_(("scheduled", "open")), due)).all()
    for row in rows:
        if row.closes_at and row.closes_at <= now:
            try:
                report = close_campaign(svc, row.id)
                log.info("closed campaign %d at its closes_at: %s", row.id, report.lines()[0])
                if events.enabled(svc.config):  # the close does not wait for the broker
                    log.info("campaign %d: %d events still to go", row.id,
                             events.pending(svc.engine, row.id)[0])
            except CouponError as e:
                log.error("closing campaign %d failed: %s", row.id, e.message)
        else:
            try:
                open_campaign(svc, row.id)
                log.info("opened campaign %d", row.id)
            except CouponError as e:  # Redis lost it: an operator recovers it
                log.error("opening campaign %d failed: %s", row.id, e.message)
    if look_for_lost:
        preload_lost(svc, now)


def preload_lost(svc, now):
    """Load again the scheduled campaigns, not yet started issuing, that Redis lost."""
    c = db.campaigns.c
    with svc.engine.connect() as conn:
        rows = conn.execute(select(db.campaigns).where(c.status == "scheduled", c.opens_at > now)).all()
    batch = svc.redis.batch()
    held = [(row, queue_holds(batch, svc.keys(row.id))) for row in rows]
    if rows:
        batch.execute()
    for row, kept in held:
        if not kept.get():
            preload(svc.redis, svc.keys(row.id), row.total, row.status, row.opens_at, row.closes_at)


class LifecycleJob:
    def __init__(self, svc):
        self.svc = svc
        self._looked_at = None  # monotonic time of the last look for lost campaigns

    def __call__(self):
        now = time.monotonic()
        look = self._looked_at is None or now - self._looked_at >= LOST_CHECK
        open_and_close_due(self.svc, look_for_lost=look)
        if look:
            self._looked_at = now
