"""The operators' lifecycle of a campaign: create, open, add stock, stop issuing, close.

A close drains, reconciles and releases. Plain values in, plain values out; the CLI and the
lifecycle job call these."""
import json
import os
import re
import socket
import time
import uuid
from typing import NamedTuple

from redis.exceptions import RedisError
from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from coupon import db, events, redis_state
from coupon.clock import iso, utcnow
from coupon.errors import InvalidCampaign, ReconcileMismatch, RequestIdReused, Unavailable
from coupon.fairness import SaleOrder
from coupon.flusher import Flusher
from coupon.outbox import outbox_stats
from coupon.queries import campaign_row, count_rows, sale_replay
from coupon.reconcile import Report, reconcile

MAX_STOCK = 10_000_000
REQUEST_ID = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


def create_campaign(svc, name, stock, opens_at=None, closes_at=None):
    """Create a campaign and preload its Redis state; return its id.

    Without opens_at it waits for `open`; with one it opens by itself at that moment.
    """
    name = (name or "").strip()
    if not 1 <= len(name) <= 200:
        raise InvalidCampaign("the name must be 1-200 characters")
    if not isinstance(stock, int) or not 1 <= stock <= MAX_STOCK:
        raise InvalidCampaign(f"the stock must be a whole number from 1 to {MAX_STOCK}")
    if opens_at and closes_at and closes_at <= opens_at:
        raise InvalidCampaign("closes_at must come after opens_at")
    if closes_at and closes_at <= utcnow():
        raise InvalidCampaign("closes_at is in the past")
    status = "scheduled" if opens_at else "pending"
    # Redis is written before the row commits: if Redis refuses, there is no campaign at all
    with svc.engine.begin() as conn:
        campaign_id = conn.execute(
            insert(db.campaigns).values(
                name=name, total=stock, status=status, opens_at=opens_at, closes_at=closes_at,
                issued=0, created_at=utcnow(),
            )
        ).inserted_primary_key[0]
        keys = svc.keys(campaign_id)
        # a new id has no Redis state; anything there is left from a database since dropped
        redis_state.delete_keys(svc.redis, keys)
        redis_state.preload(svc.redis, keys, stock, status, opens_at, closes_at)
    return campaign_id


def open_campaign(svc, campaign_id):
    """Open a campaign now (or keep it open)."""
    row = campaign_row(svc.engine, campaign_id)
    if row.status == "closed":
        raise InvalidCampaign(f"campaign {campaign_id} is closed; it cannot open again")
    keys = svc.keys(campaign_id)
    redis_state.redis_holds(svc.redis, keys, row)  # or CampaignLost
    now = utcnow()
    if row.closes_at and row.closes_at <= now:
        raise InvalidCampaign(f"campaign {campaign_id} ended at {iso(row.closes_at)}")
    opens_at = row.opens_at if row.opens_at and row.opens_at <= now else now
    with svc.engine.begin() as conn:  # the row commits only once Redis has the campaign open
        conn.execute(
            update(db.campaigns).where(db.campaigns.c.id == campaign_id)
            .values(status="open", opens_at=opens_at)
        )
        events.record(svc.config, conn, campaign_id, events.OPENED, None, total=row.total,
                      opens_at=iso(opens_at), closes_at=iso(row.closes_at))
        redis_state.preload(svc.redis, keys, row.total, "open", opens_at, row.closes_at)


def new_request_id():
    return uuid.uuid4().hex


def check_request_id(request_id):
    if not isinstance(request_id, str) or not REQUEST_ID.fullmatch(request_id):
        raise InvalidCampaign("a request id is 1-64 characters of A-Z a-z 0-9 _ . : -")
    return request_id


class StockAdded(NamedTuple):
    campaign_id: int
    request_id: str
    amount: int
    total: int  # the campaign's total in the database, this addition included
    new: bool  # False: the request id named an earlier addition; nothing more was added


def add_stock(svc, campaign_id, amount, request_id=None):
    """Add `amount` coupons to a campaign not closed: serials after the existing ones.

    They are issued from the next lease on (a worker that answered SOLD_OUT asks again within
    STATE_REFRESH).

    The database first: the campaigns row's total and a stock_additions row, in one transaction;
    then Redis's total is raised to the database's (raise_total.lua), so Redis never holds more
    stock than the database. If Redis fails after the commit, the stock sync job raises it. Asked
    again with the same request id, it adds nothing more (and raises Redis again)."""
    if not isinstance(amount, int) or not 1 <= amount <= MAX_STOCK:
        raise InvalidCampaign(f"the stock to add must be a whole number from 1 to {MAX_STOCK}")
    request_id = check_request_id(request_id or new_request_id())
    row = campaign_row(svc.engine, campaign_id)
    keys = svc.keys(campaign_id)
    added = earlier_addition(svc, campaign_id, request_id, amount)
    if added is None:
        redis_state.redis_holds(svc.redis, keys, row)  # or CampaignLost: recover it first
        added = record_addition(svc, row, request_id, amount)
    try:
        held = svc.scripts.raise_total(keys, added.total)
    except RedisError as e:
        raise Unavailable(f"the database holds the addition (total {added.total}), Redis failed "
                          f"({e}): the stock sync job raises Redis to it once Redis answers, or "
                          f"run again with --request-id {request_id}") from None
    if held is None:  # closed and released since, or lost
        redis_state.redis_holds(svc.redis, keys, campaign_row(svc.engine, campaign_id))
        if added.new:
            raise InvalidCampaign(f"campaign {campaign_id} was closed meanwhile: none of the "
                                  f"{amount} coupons added was issued")
    return added


def earlier_addition(svc, campaign_id, request_id, amount):
    """The StockAdded of an earlier addition under this request id, with the campaign's total now.

    None if there was none. The same request id for another amount is refused."""
    a, c = db.stock_additions.c, db.campaigns.c
    with svc.engine.connect() as conn:
        earlier = conn.execute(
            select(a.amount, c.total).join_from(db.stock_additions, db.campaigns, a.campaign_id == c.id)
            .where(a.campaign_id == campaign_id, a.request_id == request_id)
        ).first()
    if earlier is None:
        return None
    if earlier.amount != amount:
        raise RequestIdReused(f"request id {request_id} added {earlier.amount} coupons to campaign "
                              f"{campaign_id}, not {amount}")
    return StockAdded(campaign_id, request_id, amount, earlier.total, new=False)


def record_addition(svc, row, request_id, amount):
    """Raise the campaigns row's total and record the addition, in one transaction.

    Refused for a campaign closed (or ended) by then, or one it would take past MAX_STOCK."""
    campaign_id, c = row.id, db.campaigns.c
    if row.status == "closed" or (row.closes_at and row.closes_at <= utcnow()):
        raise closed_to_stock(campaign_id)
    try:
        with svc.engine.begin() as conn:
            # the conditions again in the update itself: a close or another addition may have
            # come in between, and the row stays locked until the commit
            raised = conn.execute(
                update(db.campaigns)
                .where(c.id == campaign_id, c.status != "closed", c.total + amount <= MAX_STOCK)
                .values(total=c.total + amount)
            ).rowcount
            status, total = conn.execute(select(c.status, c.total).where(c.id == campaign_id)).one()
            if not raised and status == "closed":
                raise closed_to_stock(campaign_id)
            if not raised:
                raise InvalidCampaign(f"campaign {campaign_id} has {total} coupons: adding "
                                      f"{amount} would pass {MAX_STOCK}")
            conn.execute(insert(db.stock_additions).values(
                campaign_id=campaign_id, request_id=request_id, amount=amount, total_after=total,
                added_at=utcnow()))
            events.record(svc.config, conn, campaign_id, events.STOCK_ADDED, request_id,
                          request_id=request_id, amount=amount, total=total)
    except IntegrityError:  # the same request id, asked at the same time: that one added it
        return earlier_addition(svc, campaign_id, request_id, amount)
    return StockAdded(campaign_id, request_id, amount, total, new=True)


def closed_to_stock(campaign_id):
    return InvalidCampaign(f"campaign {campaign_id} is closed; it takes no more stock")


def stop_issuing(svc, campaign_id):
    """Stop issuing at once: every claim shard refuses from now on, every worker within a second.

    Return whether Redis holds the campaign (False: released by an earlier close)."""
    row = campaign_row(svc.engine, campaign_id)
    keys = svc.keys(campaign_id)
    held = redis_state.redis_holds(svc.redis, keys, row)
    if held:
        redis_state.stop_claims(svc.redis, keys)
    if row.status != "closed":
        with svc.engine.begin() as conn:
            conn.execute(
                update(db.campaigns).where(db.campaigns.c.id == campaign_id)
                .values(status="closed", closed_at=utcnow())
            )
    return held


def close_campaign(svc, campaign_id, progress=None):
    """Close a campaign: stop issuing, drain its outbox into the database, reconcile, release.

    Returns the reconciliation report. Redis keys are released only when Redis and the database
    agree; otherwise ReconcileMismatch is raised and the keys stay for inspection. Safe to repeat.
    progress, if given, is called with the number of rows moved by each drain round.
    """
    held = stop_issuing(svc, campaign_id)  # from here on every claim script refuses: the set is final
    keys = svc.keys(campaign_id)
    if not held:  # released by an earlier close
        rows = count_rows(svc.engine, campaign_id)
        return Report(campaign_id, rows, rows, rows)
    drain_outbox(svc, campaign_id, progress)
    report = reconcile(svc.redis, svc.engine, keys, svc.signer)
    report.order = SaleOrder.read(svc.redis, keys)
    # the rows are final once they agree: the sale's replay is counted once, here, from Redis's
    # count per second of the claims the rows were found to be (a GROUP BY of 10M rows: 9 s), or
    # by the database if Redis did not count them all (a state older than the counts)
    replay = None
    if report.agree:
        per_second = redis_state.issues_per_second(svc.redis, keys)[0]
        whole = sum(per_second.values()) == report.mysql_rows
        replay = sale_replay(svc.engine, campaign_row(svc.engine, campaign_id), per_second if whole else None)
    with svc.engine.begin() as conn:
        record_close(conn, report, replay)
        # keyed by its verdict: a close repeated after a mismatch was mended tells it again
        verdict = "agree" if report.agree else "differ"
        events.record(svc.config, conn, campaign_id, events.CLOSED, f"{verdict}:{report.mysql_rows}",
                      agree=report.agree, database_rows=report.mysql_rows,
                      redis_claims=report.redis_claims, redis_counter=report.redis_counter,
                      report=report.lines())
        if report.agree:
            conn.execute(update(db.campaigns).where(db.campaigns.c.id == campaign_id)
                         .values(issued=report.mysql_rows))
    if not report.agree:
        raise ReconcileMismatch("\n".join(report.lines()))
    redis_state.release(svc.redis, keys)
    return report


def record_close(conn, report, replay):
    """Keep what a close found (and the replay, once they agree) for the operators' page.

    The last close of a campaign replaces the one before."""
    r = db.close_reports.c
    conn.execute(delete(db.close_reports).where(r.campaign_id == report.campaign_id))
    conn.execute(insert(db.close_reports).values(
        campaign_id=report.campaign_id, reconciled_at=utcnow(), agree=report.agree,
        report="\n".join(report.lines()), replay=json.dumps(replay) if replay else None))


def drain_outbox(svc, campaign_id, progress=None):
    """Move every entry of a campaign's outbox streams into the database; return the rows moved.

    Stop the claims first (their shards closed), or the streams may never be empty.
    progress, if given, is called with the number of rows moved by each round.
    """
    keys = svc.keys(campaign_id)
    drainer = Flusher(svc, consumer=f"drain:{socket.gethostname()}:{os.getpid()}", claim_idle=0)
    stalled = drained = 0
    while outbox_stats(svc.redis, keys)[0] > 0:
        moved = drainer.flush([campaign_id])
        drained += moved
        if progress:
            progress(moved)
        stalled = 0 if moved else stalled + 1
        if stalled > 50:
            raise Unavailable("the outbox does not drain; is another flusher stuck?")
        time.sleep(0 if moved else 0.1)
    return drained
