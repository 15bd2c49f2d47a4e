"""Campaign operations: create, open, close, status, tickets. Plain values in, plain values out."""
import datetime as dt
import os
import socket
import time
import uuid

from redis.exceptions import RedisError
from sqlalchemy import insert, select, update

from coupon import db
from coupon.errors import (
    CampaignLost, CampaignNotFound, InvalidCampaign, NoTicket, RateLimited, ReconcileMismatch,
    Unavailable,
)
from coupon.keys import ACTIVE
from coupon.outbox import Flusher, outbox_stats
from coupon.reconcile import Report, mysql_tickets, reconcile
from coupon.scripts import StoredClaim

MAX_STOCK = 10_000_000
UTC = dt.timezone.utc


def utcnow():
    return dt.datetime.now(UTC).replace(tzinfo=None)


def parse_time(text):
    """Parse an ISO 8601 time; a time without offset is UTC. Returns a naive UTC datetime."""
    try:
        value = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise InvalidCampaign(f"not an ISO 8601 time: {text!r}") from None
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value


def to_ms(value):
    return int(value.replace(tzinfo=UTC).timestamp() * 1000) if value else 0


def iso(value):
    return value.replace(tzinfo=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z") if value else None


def iso_ms(ms):
    return iso(dt.datetime.fromtimestamp(ms / 1000, UTC).replace(tzinfo=None))


def new_epoch():
    """A campaign's epoch: its Redis state's identity, new when `recover` rebuilds it (lease.lua
    and claim.lua refuse serials leased in another)."""
    return uuid.uuid4().hex[:12]


def campaign_row(engine, campaign_id):
    with engine.connect() as conn:
        row = conn.execute(select(db.campaigns).where(db.campaigns.c.id == campaign_id)).first()
    if row is None:
        raise CampaignNotFound(f"no campaign {campaign_id}")
    return row


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
        # a new id has no Redis state; anything there is left from a database since dropped
        delete_keys(svc, svc.keys(campaign_id))
        preload(svc, campaign_id, stock, status, opens_at, closes_at)
    return campaign_id


def preload(svc, campaign_id, total, status, opens_at, closes_at):
    """Write a campaign's window and stock into Redis; keep the cursor and epoch if they are there
    already. Durable: replicas hold it before it counts (REDIS_REPLICA_ACKS).

    The meta hash last: until it says so, the campaign is not open, and a failure before it
    (one node down) leaves the campaign as it was."""
    keys = svc.keys(campaign_id)
    epoch = svc.redis.hget(keys.meta, "epoch") or new_epoch()
    batch = svc.redis.batch(durable=True)
    for shard in keys.all_shards():
        batch.on(shard.state).hsetnx(shard.state, "issued", 0)  # the shard is live while it exists
        batch.on(shard.state).hset(shard.state, "epoch", epoch)
        if closes_at:
            batch.on(shard.state).hset(shard.state, "closes_at", to_ms(closes_at))
        else:
            batch.on(shard.state).hdel(shard.state, "closes_at")
    batch.on(keys.meta).hsetnx(keys.meta, "cursor", 0)
    batch.on(ACTIVE).sadd(ACTIVE, campaign_id)
    batch.execute()
    batch = svc.redis.batch(durable=True)
    batch.on(keys.meta).hset(keys.meta, mapping={
        "total": total, "status": status, "opens_at": to_ms(opens_at), "closes_at": to_ms(closes_at),
        "epoch": epoch,
    })
    batch.execute()


def redis_holds(svc, row):
    """Whether Redis holds the campaign; False once it was released after close. Raise
    CampaignLost for one not closed that Redis no longer holds (restarted empty, a cluster
    rebuilt): preloaded again it would issue serials the database has, and closed it would lose
    the claims of its users; `recover` rebuilds it from the database first."""
    if svc.redis.exists(svc.keys(row.id).meta):
        return True
    if row.status != "closed":
        raise CampaignLost(f"Redis no longer holds campaign {row.id}: `flask campaign recover "
                           f"{row.id}` rebuilds it from the database")
    return False


def close_claim_shards(batch, keys):
    """Queue what makes every claim shard of a campaign refuse claims from now on."""
    for shard in keys.all_shards():
        batch.on(shard.state).hset(shard.state, "closes_at", 0)  # 0: closed, whatever the clock


def open_campaign(svc, campaign_id):
    """Open a campaign now (or keep it open)."""
    row = campaign_row(svc.engine, campaign_id)
    if row.status == "closed":
        raise InvalidCampaign(f"campaign {campaign_id} is closed; it cannot open again")
    redis_holds(svc, row)  # or CampaignLost
    now = utcnow()
    if row.closes_at and row.closes_at <= now:
        raise InvalidCampaign(f"campaign {campaign_id} ended at {iso(row.closes_at)}")
    opens_at = row.opens_at if row.opens_at and row.opens_at <= now else now
    with svc.engine.begin() as conn:  # the row commits only once Redis has the campaign open
        conn.execute(
            update(db.campaigns).where(db.campaigns.c.id == campaign_id)
            .values(status="open", opens_at=opens_at)
        )
        preload(svc, campaign_id, row.total, "open", opens_at, row.closes_at)


def stop_issuing(svc, campaign_id):
    """Stop issuing at once: every claim shard refuses from now on, every worker within a second.
    Return whether Redis holds the campaign (False: released by an earlier close)."""
    row = campaign_row(svc.engine, campaign_id)
    keys = svc.keys(campaign_id)
    held = redis_holds(svc, row)
    if held:
        batch = svc.redis.batch(durable=True)  # a close lost at failover would reopen the sale
        close_claim_shards(batch, keys)
        batch.on(keys.meta).hset(keys.meta, "status", "closed")
        batch.execute()
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
        rows = len(mysql_tickets(svc.engine, campaign_id))
        return Report(campaign_id, rows, rows, rows)
    drain_outbox(svc, campaign_id, progress)
    report = reconcile(svc.redis, svc.engine, keys)
    if not report.agree:
        raise ReconcileMismatch("\n".join(report.lines()))
    with svc.engine.begin() as conn:
        conn.execute(
            update(db.campaigns).where(db.campaigns.c.id == campaign_id).values(issued=report.mysql_rows)
        )
    release(svc, keys)
    return report


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


def release(svc, keys):
    """Delete a closed campaign's Redis keys; from now on it is read from the database."""
    svc.redis.srem(ACTIVE, keys.campaign_id)
    delete_keys(svc, keys)


def delete_keys(svc, keys):
    """Delete every key of a campaign, one by one (they live on several nodes); the meta hash
    last, so that until it is gone a close run again finds the campaign and finishes."""
    batch = svc.redis.batch()
    for key in keys.every_key():
        if key != keys.meta:
            batch.on(key).delete(key)
    batch.execute()
    svc.redis.delete(keys.meta)


def issued_in_redis(svc, campaign_id):
    """Sum the issued counters of a campaign's claim shards; None if Redis does not hold it."""
    keys = svc.keys(campaign_id)
    batch = svc.redis.batch()
    batch.on(keys.meta).exists(keys.meta)
    for shard in keys.all_shards():
        batch.on(shard.state).hget(shard.state, "issued")
    present, *counts = batch.execute()
    return sum(int(c or 0) for c in counts) if present else None


def campaign_status(svc, campaign_id):
    """Public status of a campaign: from Redis while it is live, from MySQL after close."""
    row = campaign_row(svc.engine, campaign_id)
    try:
        issued = issued_in_redis(svc, campaign_id)
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


def list_campaigns(svc):
    with svc.engine.connect() as conn:
        ids = conn.execute(select(db.campaigns.c.id).order_by(db.campaigns.c.id)).scalars().all()
    return [campaign_status(svc, i) for i in ids]


def find_ticket(svc, campaign_id, user_id):
    """Return the user's ticket as a dict: from Redis while the campaign is live, else MySQL."""
    keys = svc.keys(campaign_id)
    shard = keys.shard(keys.shard_of(user_id))
    try:
        batch = svc.redis.batch()
        batch.on(keys.meta).exists(keys.meta)
        batch.on(shard.claims).hget(shard.claims, user_id)
        live, held = batch.execute()
        if not live:
            campaign_row(svc.engine, campaign_id)  # CAMPAIGN_NOT_FOUND before a key is written for it
        count_request(svc, shard, user_id)
    except RedisError:
        raise Unavailable() from None
    if held:
        claim = StoredClaim.parse(held)
        return ticket_dict(campaign_id, user_id, claim.serial, claim.code, claim.issued_at_ms)
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
    return ticket_dict(campaign_id, user_id, row.serial, row.code, to_ms(row.issued_at))


def count_request(svc, shard, user_id):
    """Count a request of the user against RATE_LIMIT, with their issue calls (as claim.lua
    does, in the same window hash); raise RateLimited past it."""
    rate = svc.rate_limit
    if not rate.limit:
        return
    window, left = rate.window()
    key = shard.rate(window)
    batch = svc.redis.batch()
    batch.on(key).hincrby(key, user_id, 1)
    batch.on(key).expire(key, rate.seconds)
    if batch.execute()[0] > rate.limit:
        raise RateLimited(retry_after=left)


def ticket_dict(campaign_id, user_id, serial, code, issued_at_ms):
    return {
        "campaign_id": campaign_id, "user_id": user_id, "serial": serial, "code": code,
        "issued_at": iso_ms(issued_at_ms),
    }
