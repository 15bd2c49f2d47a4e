"""The scheduler's jobs (jobs/) run in this process as a scheduler runs them, against the real
Redis and MariaDB: the stock sync and the lifecycle. In real scheduler processes: e2e/test_jobs.py."""
import datetime as dt

from sqlalchemy import select

from coupon import campaigns, clock, db, queries
from coupon.flusher import Flusher
from coupon.outbox import campaigns_with_news
from coupon.reconcile import mysql_tickets
from jobs.lifecycle import open_and_close_due
from jobs.stock_sync import StockSyncJob, sync_stock
from loadtest.harness import open_campaign, wait_until
from tests.support import issue_directly, on_single_and_cluster


@on_single_and_cluster
def test_stock_sync_counts_what_another_schedulers_flusher_emptied(svc):
    """The stock sync runs on the leader; the claims after its last count may be flushed, and
    their campaign taken off the news sets, by another scheduler's flush job."""
    campaign_id = open_campaign(svc, 10)
    sync = StockSyncJob(svc)
    assert sync() == 1  # seen first: counted (none issued)
    issue_directly(svc, campaign_id, "alice")
    assert Flusher(svc, "another scheduler").flush() == 1
    assert campaign_id not in campaigns_with_news(svc.redis, svc.config["CLAIM_SHARDS"])
    assert sync() == 1  # from the outbox drained sets
    with svc.engine.connect() as conn:
        issued = conn.execute(select(db.campaigns.c.issued).where(db.campaigns.c.id == campaign_id)).scalar()
    assert issued == 1
    assert sync() == 0  # taken


def test_lifecycle_opens_and_closes_due_campaigns_and_stock_sync(svc):
    now = clock.utcnow()
    due = campaigns.create_campaign(svc, "due", 10, opens_at=now - dt.timedelta(seconds=1))
    closes_at = now + dt.timedelta(seconds=3)  # room for a loaded machine to get to open it
    ending = campaigns.create_campaign(svc, "ending", 10, closes_at=closes_at)
    campaigns.open_campaign(svc, ending)
    issue_directly(svc, ending, "alice")
    open_and_close_due(svc)
    assert queries.campaign_status(svc, due)["status"] == "open"
    sync_stock(svc)
    with svc.engine.connect() as conn:
        issued = conn.execute(select(db.campaigns.c.issued).where(db.campaigns.c.id == ending)).scalar()
    assert issued == 1
    wait_until(lambda: clock.utcnow() >= closes_at + dt.timedelta(seconds=0.1), timeout=10, interval=0.02,
               what="the closing time")
    open_and_close_due(svc)
    assert queries.campaign_status(svc, ending)["status"] == "closed"
    assert mysql_tickets(svc.engine, ending) == {"alice": (1, svc.signer.ticket_code(ending, 1))}
