"""The operators' live page: GET /ops/, and the JSON it polls every second. Read-only.

Global figures (from Redis and the database, the same whichever host answers): the campaigns,
stock and issued, outbox backlog and flush lag, leases, health. Figures of this host (summed
over its gunicorn workers, all campaigns together): answers by outcome, time in the worker,
claims flushed by a scheduler sharing its metrics folder, serials in its workers' local blocks.
The JSON carries counters; the page turns them into rates and keeps the recent history itself,
so a poll costs a few Redis and database round trips and no state on the server.

In production the page asks for HTTP Basic with OPS_PASSWORD (any user name); with no password
set it is not registered at all (404 to every method). In development it is open.
"""
import hmac
import math
import socket
import time
from collections import Counter

from flask import Blueprint, current_app, jsonify, render_template, request, url_for
from redis.exceptions import RedisError
from sqlalchemy import func, select

from coupon import db
from coupon.api import campaign_id_of
from coupon.clock import iso
from coupon.errors import CampaignNotFound, Unauthorized, error_response
from coupon.extensions import services
from coupon.health import readiness
from coupon.keys import SCHEDULER_LEADER, active_campaigns
from coupon.outbox import outbox_stats
from coupon.queries import campaign_status, status_view
from coupon.reconcile import reconcile
from coupon.scripts import decode_serials

bp = Blueprint("ops", __name__, url_prefix="/ops")

POLL_SECONDS = 1.0
RECENT_CLOSED = 10  # closed campaigns listed after the live ones
REPLAY_POINTS = 3600  # a longer sale is replayed in steps of several seconds


def enabled(config):
    """Whether the page exists: always in development, with a password in production."""
    return config["ENV"] != "production" or bool(config["OPS_PASSWORD"])


def register(app):
    if enabled(app.config):
        app.register_blueprint(bp)
        app.extensions["coupon_ops"] = {}  # figures of finished sales, computed once


@bp.before_request
def require_password():
    config = current_app.config
    if config["ENV"] != "production":
        return None
    auth = request.authorization
    given = (auth.password or "") if auth and auth.type == "basic" else ""
    if given and hmac.compare_digest(given.encode(), config["OPS_PASSWORD"].encode()):
        return None
    response = error_response(Unauthorized("the operators' page needs HTTP Basic with OPS_PASSWORD"))
    response.headers["WWW-Authenticate"] = 'Basic realm="coupon ops", charset="UTF-8"'
    return response


@bp.get("/")
def page():
    return render_template("ops.html", host=socket.gethostname(), poll_seconds=POLL_SECONDS,
                           live_url=url_for("ops.live"))


@bp.get("/live.json")
def live():
    raw = request.args.get("campaign", "")
    campaign_id = campaign_id_of(raw) if raw else None
    return jsonify(live_state(services(current_app), campaign_id, current_app.extensions["coupon_ops"]))


@bp.get("/campaigns/<raw_id>/replay.json")
def replay(raw_id):
    svc = services(current_app)
    return jsonify(sale_replay(svc, campaign_id_of(raw_id), current_app.extensions["coupon_ops"]))


def live_state(svc, campaign_id, finished):
    """What the page shows now; `finished` caches the figures of sales that can no longer move."""
    health = health_checks(svc)
    redis_up = health["redis"]["ok"]
    active = active_campaigns(svc.redis) if redis_up else []
    campaigns = campaign_list(svc, active)
    if campaign_id is None and campaigns:
        campaign_id = campaigns[0]["id"]
    return {
        "now": time.time(),
        "host": socket.gethostname(),
        "health": health,
        "this_host": svc.metrics.totals(),
        "campaigns": campaigns,
        "campaign": campaign_view(svc, campaign_id, campaign_id in active, finished)
        if campaign_id else None,
    }


def health_checks(svc):
    """Redis, the database and the scheduler leader: {name: {"ok", "detail"}}."""
    checks = {name: {"ok": state == "ok", "detail": state} for name, state in readiness(svc).items()}
    try:
        leader = svc.redis.get(SCHEDULER_LEADER)
        checks["scheduler"] = (
            {"ok": True, "detail": f"leader {leader}"} if leader else
            {"ok": False, "detail": "no leader: is `flask jobs run` running?"})
    except RedisError as e:
        checks["scheduler"] = {"ok": False, "detail": f"unknown: Redis {type(e).__name__}"}
    return checks


def campaign_list(svc, active):
    """The campaigns Redis holds (newest first), then the most recently closed ones."""
    live = []
    for campaign_id in sorted(active, reverse=True):
        try:
            live.append(dict(campaign_status(svc, campaign_id), live=True))
        except CampaignNotFound:  # in Redis, not in this database (another one's leftovers)
            continue
    c = db.campaigns.c
    with svc.engine.connect() as conn:
        closed = conn.execute(
            select(db.campaigns).where(c.status == "closed", c.id.not_in(active or [0]))
            .order_by(c.closed_at.desc(), c.id.desc()).limit(RECENT_CLOSED)).all()
    # closed: the database's count is final, no Redis round trip
    return live + [dict(status_view(row, row.issued), live=False) for row in closed]


def campaign_view(svc, campaign_id, live, finished):
    view = dict(campaign_status(svc, campaign_id), live=live)
    if view["status"] == "closed":
        view["replay_url"] = url_for("ops.replay", raw_id=campaign_id)
    if not live:
        return view
    keys = svc.keys(campaign_id)
    backlog, lag = outbox_stats(svc.redis, keys)
    view["outbox"] = {"backlog": backlog, "flush_lag_seconds": lag}
    view["leases"] = leases(svc, keys)
    if view["issued"] >= view["total"]:
        view["sold_out_after_seconds"] = sold_out_after(svc, campaign_id, finished)
    return view


def leases(svc, keys):
    """The leases standing in Redis, by worker: serials leased and seconds until expiry (negative:
    expired, its unclaimed serials wait for the reclaim job)."""
    expiries = svc.redis.zrange(keys.leases, 0, -1, withscores=True)
    encoded = svc.redis.hgetall(keys.lease_serials) if expiries else {}
    now_ms = svc.redis.time_at(keys.leases) if expiries else 0  # the clock lease.lua stamped with
    return [
        {"worker": lease_id.rsplit(":", 2)[0],  # node:pid of worker_id:uuid:number
         "lease": lease_id, "serials": len(decode_serials(encoded.get(lease_id, ""))),
         "expires_in": round((expiry - now_ms) / 1000, 1)}
        for lease_id, expiry in expiries]


def sold_out_after(svc, campaign_id, finished):
    """Seconds from open to the last coupon, once every row is in the database; else None."""
    key = ("sold_out_after", campaign_id)
    if key not in finished:
        row, rows, last = issued_rows(svc, campaign_id)
        if rows < row.total or row.opens_at is None:
            return None
        finished[key] = round((last - row.opens_at).total_seconds(), 3)
    return finished[key]


def issued_rows(svc, campaign_id):
    """(campaign row, its coupon rows in the database, the last one's issued_at)."""
    c = db.coupons.c
    with svc.engine.connect() as conn:
        row = conn.execute(select(db.campaigns).where(db.campaigns.c.id == campaign_id)).first()
        if row is None:
            raise CampaignNotFound()
        rows, last = conn.execute(select(func.count(), func.max(c.issued_at))
                                  .where(c.campaign_id == campaign_id)).one()
    return row, rows, last


def sale_replay(svc, campaign_id, finished):
    """A sale replayed from the database: issues per second (or per step of several seconds)
    from open to the last coupon, time to sell out, and the reconciliation result."""
    key = ("replay", campaign_id)
    if key in finished:
        return finished[key]
    row = issued_rows(svc, campaign_id)[0]
    c = db.coupons.c
    with svc.engine.connect() as conn:
        times = conn.execute(select(c.issued_at).where(c.campaign_id == campaign_id)).scalars().all()
    start = row.opens_at or min(times, default=None)
    offsets = [max(0.0, (t - start).total_seconds()) for t in times]
    length = int(max(offsets, default=-1)) + 1
    step = max(1, math.ceil(length / REPLAY_POINTS))
    per_step = Counter(int(o) // step for o in offsets)
    keys_kept = svc.redis.exists(svc.keys(campaign_id).meta)
    replay = {
        "id": campaign_id, "name": row.name, "total": row.total, "rows": len(times),
        "opened_at": iso(start), "step_seconds": step,
        "issues": [per_step.get(i, 0) for i in range(math.ceil(length / step))],
        "sold_out_after_seconds": round(max(offsets), 3) if len(times) >= row.total else None,
        "reconciliation": reconciliation(svc, row, len(times), keys_kept),
    }
    if row.status == "closed" and not keys_kept:  # released: nothing of it can change
        finished[key] = replay
    return replay


def reconciliation(svc, row, rows, keys_kept):
    """Whether Redis and the database agree on the campaign's tickets, and how it is known."""
    if keys_kept:  # not closed yet, or close found a difference and kept the keys
        report = reconcile(svc.redis, svc.engine, svc.keys(row.id))
        hint = [] if report.agree else [
            f"Redis still holds the campaign: `flask campaign close {row.id}` drains, "
            "reconciles and releases it"]
        return {"agree": report.agree, "lines": report.lines(limit=5) + hint}
    if row.status != "closed":
        return {"agree": False, "lines": [
            f"campaign {row.id} was never closed and Redis does not hold it (lost?): "
            f"its {rows} rows in the database are all that is known"]}
    # close releases the Redis keys only after Redis and the database agreed, and then records
    # the count in the campaigns row
    agree = rows == row.issued
    return {"agree": agree, "lines": [
        f"campaign {row.id}: Redis and the database agreed at close on {row.issued} tickets; "
        f"database rows now {rows}" + ("" if agree else ": DIFFER since close")]}

