"""The read side: a campaign's row and public status, the list of campaigns, a user's ticket.
From Redis while a campaign is live, from the database once it was closed and released."""
from redis.exceptions import RedisError
from sqlalchemy import func, select

from coupon import db
from coupon.clock import iso, to_ms, utcnow
from coupon.errors import CampaignNotFound, NoTicket, Unavailable
from coupon.redis_state import issued_in_redis, stored_claim
from coupon.tickets import Ticket

CHUNK = 2000  # rows read a round (rows_by_serial), by default


def campaign_row(engine, campaign_id):
    if not 1 <= campaign_id <= db.MAX_ID:  # no such row, and no query the driver cannot bind
        raise CampaignNotFound(f"no campaign {campaign_id}")
    with engine.connect() as conn:
        row = conn.execute(select(db.campaigns).where(db.campaigns.c.id == campaign_id)).first()
    if row is None:
        raise CampaignNotFound(f"no campaign {campaign_id}")
    return row


def campaign_status(svc, campaign_id):
    """Public status of a campaign: from Redis while it is live, from MySQL after close."""
    row = campaign_row(svc.engine, campaign_id)
    try:
        issued = issued_in_redis(svc.redis, svc.keys(campaign_id))
    except RedisError:
        issued = None
    return status_view(row, row.issued if issued is None else issued)


def status_view(row, issued):
    """The public status of a campaigns row with `issued` coupons."""
    now = utcnow()
    status = row.status
    if status != "closed" and row.closes_at and now >= row.closes_at:
        status = "closed"
    elif status == "scheduled" and row.opens_at <= now:
        status = "open"
    if status == "open" and issued >= row.total:
        status = "sold_out"
    return {
        "id": row.id, "name": row.name, "total": row.total, "issued": issued,
        "remaining": row.total - issued, "status": status,
        "opens_at": iso(row.opens_at), "closes_at": iso(row.closes_at),
    }


def stock_additions(engine, campaign_id):
    """The additions `add-stock` made to a campaign, oldest first."""
    a = db.stock_additions.c
    with engine.connect() as conn:
        rows = conn.execute(select(a.request_id, a.amount, a.total_after, a.added_at)
                            .where(a.campaign_id == campaign_id).order_by(a.id)).all()
    return [{"request_id": r.request_id, "amount": r.amount, "total_after": r.total_after,
             "added_at": iso(r.added_at)} for r in rows]


def count_rows(engine, campaign_id):
    """The campaign's rows in the database (what recover restores)."""
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(db.coupons)
                            .where(db.coupons.c.campaign_id == campaign_id)).scalar()


def rows_by_serial(engine, campaign_id, columns=("user_id", "serial", "code", "issued_at"),
                   chunk=CHUNK):
    """The campaign's rows (those columns of them) in serial order, `chunk` at a time."""
    c = db.coupons.c
    after = 0
    while True:
        with engine.connect() as conn:
            rows = conn.execute(
                select(*(c[name] for name in columns))
                .where(c.campaign_id == campaign_id, c.serial > after)
                .order_by(c.serial).limit(chunk)
            ).all()
        if not rows:
            return
        yield rows
        after = rows[-1].serial


def list_campaigns(svc):
    with svc.engine.connect() as conn:
        ids = conn.execute(select(db.campaigns.c.id).order_by(db.campaigns.c.id)).scalars().all()
    return [campaign_status(svc, i) for i in ids]


def find_ticket(svc, campaign_id, user_id):
    """Return the user's Ticket: from Redis while the campaign is live, else from the database.
    Counted against the user's rate limit."""
    keys = svc.keys(campaign_id)
    shard = keys.shard(keys.shard_of(user_id))
    try:
        live = svc.redis.exists(keys.meta)
        if not live:
            campaign_row(svc.engine, campaign_id)  # CAMPAIGN_NOT_FOUND before a key is written for it
        svc.rate_limit.count_lookup(svc.redis, shard, user_id)
        held = stored_claim(svc.redis, keys, user_id)
    except RedisError:
        raise Unavailable() from None
    if held:
        code = svc.signer.ticket_code(campaign_id, held.serial)
        return Ticket(campaign_id, user_id, held.serial, code, held.issued_at_ms, new=False)
    if live:
        raise NoTicket()
    with svc.engine.connect() as conn:
        row = conn.execute(
            select(db.coupons).where(
                db.coupons.c.campaign_id == campaign_id, db.coupons.c.user_id == user_id
            )
        ).first()
    if row is None:
        raise NoTicket()
    return Ticket(campaign_id, user_id, row.serial, row.code, to_ms(row.issued_at), new=False)
