"""The operators' live page: GET /ops/, and the JSON it polls every second. Read-only.

Global figures (from Redis and the database, the same whichever host answers): the campaigns,
stock and issued, outbox backlog and flush lag, leases, health. Figures of this host (summed
over its gunicorn workers, all campaigns together): answers by outcome, time in the worker,
claims flushed by a scheduler sharing its metrics folder, serials in its workers' local blocks.
The JSON carries counters; the page turns them into rates and keeps the recent history itself,
so a poll costs a few Redis round trips and a read of the campaigns rows (RowsReader: a poll
never waits long for the database). A live sale's coupons per second since its opening come
from Redis, which counts them per second as it claims them (one field a second of each claim
shard), once when the page selects it. A closed sale's replay, and what Redis and
the database were found to agree on, are what its close counted and recorded: the page never
reconciles (that reads every claim and row). While a page polls a campaign, the worker reads
its outbox every SAMPLE_SECONDS, so that a poll can say the highest backlog and lag since the
previous one (a sawtooth: it grows between flushes and drops at each, which a once-a-second
sample would alias).

In production the page asks for HTTP Basic with OPS_PASSWORD (any user name); with no password
set it is not registered at all (404 to every method). In development it is open.
"""
import hmac
import math
import os
import socket
import threading
import time
from collections import deque
from typing import NamedTuple

from flask import Blueprint, current_app, jsonify, render_template, request, send_from_directory, url_for
from redis.exceptions import RedisError
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from coupon import db, events
from coupon.api import campaign_id_of
from coupon.clock import iso, to_ms
from coupon.errors import Unauthorized, error_response
from coupon.extensions import services
from coupon.health import check_redis
from coupon.keys import SCHEDULER_LEADER, active_campaigns
from coupon.outbox import outbox_stats, queue_outbox_stats
from coupon.queries import (
    campaign_row, campaign_status, close_report, into_steps, sale_replay, sale_span, seconds_between,
    status_view, step_of,
)
from coupon.redis_state import holds, issues_per_second, queue_stocks
from coupon.scripts import decode_serials
from coupon.supply import lease_holder

bp = Blueprint("ops", __name__, url_prefix="/ops")

POLL_SECONDS = 1.0
DATABASE_WAIT = 0.05  # a poll waits this long for the database, then shows its last reading
DATABASE_DOWN_AFTER = 2.0  # a read under way this long: the page says the database is down
RECENT_CLOSED = 10  # closed campaigns listed after the live ones
SAMPLE_SECONDS = 0.1  # the outbox is read this often while a page polls the campaign
WATCH_SECONDS = 5.0  # and for this long after the last poll
EVENTS_EVERY = 5.0  # seconds between counts of a campaign's events still to go (EventsToGo)


def enabled(config):
    """Whether the page exists: always in development, with a password in production."""
    return config["ENV"] != "production" or bool(config["OPS_PASSWORD"])


def register(app):
    app.add_url_rule("/favicon.ico", "favicon", favicon)  # where browsers ask for it by themselves
    if enabled(app.config):
        app.register_blueprint(bp)
        app.extensions["coupon_ops"] = {}  # figures of finished sales, computed once
        app.extensions["coupon_ops_outbox"] = OutboxWatch()
        app.extensions["coupon_ops_rows"] = RowsReader()
        app.extensions["coupon_ops_events"] = EventsToGo()


def favicon():
    """The page's icon (the API's own answers are JSON), an SVG."""
    return send_from_directory(os.path.join(current_app.root_path, "static"), "favicon.svg",
                               mimetype="image/svg+xml", max_age=86400)


@bp.before_request
def require_password():
    config = current_app.config
    if config["ENV"] != "production":
        return None
    try:
        auth = request.authorization
    except ValueError:  # Basic credentials with a byte above 0x7F: werkzeug lets b64decode's error out
        auth = None
    given = (auth.password or "") if auth and auth.type == "basic" else ""
    if given and hmac.compare_digest(given.encode(), config["OPS_PASSWORD"].encode()):
        return None
    response = error_response(Unauthorized("the operators' page needs HTTP Basic with OPS_PASSWORD"))
    response.headers["WWW-Authenticate"] = 'Basic realm="coupon ops", charset="UTF-8"'
    return response


@bp.get("/")
def page():
    return render_template("ops.html", host=socket.gethostname(), poll_seconds=POLL_SECONDS,
                           sample_seconds=SAMPLE_SECONDS, live_url=url_for("ops.live"))


@bp.get("/live.json")
def live():
    raw = request.args.get("campaign", "")
    campaign_id = campaign_id_of(raw) if raw else None
    ext = current_app.extensions
    return jsonify(live_state(services(current_app), campaign_id, ext["coupon_ops"], ext["coupon_ops_outbox"],
                              ext["coupon_ops_rows"], since_of(request.args)))


@bp.get("/campaigns/<raw_id>/history.json")
def history(raw_id):
    return jsonify(sale_history(services(current_app), campaign_id_of(raw_id)))


@bp.get("/campaigns/<raw_id>/replay.json")
def replay(raw_id):
    svc = services(current_app)
    return jsonify(replay_of(svc, campaign_id_of(raw_id), current_app.extensions["coupon_ops"]))


def since_of(args):
    """The `since` of a poll (the previous poll's `now`), or None if absent or not a number."""
    try:
        since = float(args.get("since", ""))
    except ValueError:
        return None
    return since if math.isfinite(since) else None


def live_state(svc, campaign_id, finished, outbox_watch, rows_reader, since=None):
    """What the page shows now; `finished` caches the figures of sales that can no longer move;
    `since`: the previous poll's `now`, for the highest outbox figures in between."""
    # the Redis health checks meanwhile: a poll waits for the longer of the two sets of round
    # trips, not their sum (during a big sale each waits behind a busy Redis: BENCHMARKS.md)
    health = Meanwhile(health_checks, svc)
    try:
        active = active_campaigns(svc.redis)
    except RedisError:
        active = []  # Redis down: the health check says so, and the list is the database's alone
    listing, database, read_now = rows_reader.read(svc, active)
    try:
        campaigns, view = campaigns_and_view(svc, *listing.split(active), campaign_id,
                                             finished, outbox_watch, since)
    except RedisError:
        campaigns = None
    if campaigns is None or not health.result()["redis"]["ok"]:  # what the database says alone
        campaigns, view = campaigns_and_view(svc, *listing.split([]), campaign_id, finished, outbox_watch, since)
    return {
        "now": time.time(),
        "host": socket.gethostname(),
        "health": {**health.result(), "database": database},
        "this_host": svc.metrics.totals(),
        "campaigns": campaigns,
        "campaign": view,
        "rows_read_at": listing.read_at,  # when the campaigns rows listed were read
        "rows_read_now": read_now,  # false: the database had not answered within DATABASE_WAIT
    }


def campaigns_and_view(svc, held, closed, campaign_id, finished, outbox_watch, since):
    """The list of campaigns (`held`: the rows of those Redis holds, then the recently `closed`),
    and the view of the one asked for (none asked: the first listed). What Redis says of them is
    read in one batch, a round trip per node: during a sale each round trip waits behind the
    claims queued on a busy Redis."""
    if campaign_id is None and (held or closed):
        campaign_id = (held or closed)[0].id
    batch = svc.redis.batch()
    stocks = queue_stocks(batch, [svc.keys(row.id) for row in held])
    watched = campaign_id in {row.id for row in held}
    if watched:
        outbox = queue_outbox_stats(batch, svc.keys(campaign_id))
        standing = queue_leases(batch, svc.keys(campaign_id))
    batch.execute()
    stocks = stocks()
    # closed: the database's count is final
    campaigns = ([dict(status_view(row, stocks[row.id][1] if row.id in stocks else row.issued), live=True)
                  for row in held]
                 + [dict(status_view(row, row.issued), live=False) for row in closed])
    listed = next((c for c in campaigns if c["id"] == campaign_id), None)
    view = None
    if campaign_id:
        # the figures of the list when it holds the campaign: the sidebar and the headline agree
        view = dict(listed) if listed else dict(campaign_status(svc, campaign_id), live=False)
        if watched:
            live_view(svc, view, finished, outbox_watch.read(svc, campaign_id, since, outbox()),
                      standing())
        elif view["status"] == "closed":
            view["replay_url"] = url_for("ops.replay", raw_id=campaign_id)
    return campaigns, view


class Meanwhile(threading.Thread):
    """f(*args) in a thread of its own (a greenlet under gevent), started at once; result()
    waits for it and returns what it returned, or raises what it raised."""

    def __init__(self, f, *args):
        super().__init__(daemon=True, name=f"ops-{f.__name__}")
        self.f, self.args, self.value, self.error = f, args, None, None
        self.started = time.time()
        self.start()

    def run(self):
        try:
            self.value = self.f(*self.args)
        except BaseException as e:  # raised again in the caller's thread
            self.error = e

    def result(self):
        self.join()
        if self.error is not None:
            raise self.error
        return self.value


def health_checks(svc):
    """Redis and the scheduler leader: {name: {"ok", "detail"}} (the database: RowsReader)."""
    checks = {name: {"ok": state == "ok", "detail": state} for name, state in check_redis(svc)[0].items()}
    try:
        leader = svc.redis.get(SCHEDULER_LEADER)
        checks["scheduler"] = (
            {"ok": True, "detail": f"leader {leader}"} if leader else
            {"ok": False, "detail": "no leader: is `flask jobs run` running?"})
    except RedisError as e:
        checks["scheduler"] = {"ok": False, "detail": f"unknown: Redis {type(e).__name__}"}
    return checks


class Listing(NamedTuple):
    """The campaigns rows the page lists, as read at `read_at` (time.time())."""
    read_at: float
    held: dict  # id -> row, of the campaigns Redis held then
    closed: list  # the rows of the most recently closed of the others, newest first

    def split(self, active):
        """(held, closed): the rows of the campaigns Redis holds now (`active`), newest first,
        and of the most recently closed of the others."""
        active = set(active)
        held = sorted((row for i, row in self.held.items() if i in active), key=lambda row: -row.id)
        closed = {row.id: row for row in self.closed}
        closed.update((row.id, row) for row in self.held.values() if row.status == "closed")
        closed = sorted((row for i, row in closed.items() if i not in active),
                        key=lambda row: (row.closed_at, row.id), reverse=True)  # close stamps each
        return held, closed[:RECENT_CLOSED]


def read_listing(svc, active):
    """The Listing of the campaigns Redis holds (`active`) and the most recently closed."""
    c = db.campaigns.c
    read_at = time.time()
    active = [i for i in active if 1 <= i <= db.MAX_ID]  # another database's could be anything
    with svc.engine.connect() as conn:  # one connection: each checkout costs a round trip (ping)
        # in Redis but not in this database (another one's leftovers): not listed
        held = conn.execute(select(db.campaigns).where(c.id.in_(active))).all()
        closed = conn.execute(
            select(db.campaigns).where(c.status == "closed", c.id.not_in(active or [0]))
            .order_by(c.closed_at.desc(), c.id.desc()).limit(RECENT_CLOSED)).all()
    return Listing(read_at, {row.id: row for row in held}, closed)


class RowsReader:
    """A worker's reads of the campaigns rows its pages list, which are also the page's check of
    the database. A read, once under way, serves every poll until it ends; a poll waits for it
    at most DATABASE_WAIT and then answers from the last Listing read, with its time: during a
    big sale the database of a saturated machine can take 50-130 ms to answer the smallest query
    (BENCHMARKS.md), and one that hangs would hold every poll. The first poll waits for its read:
    there is nothing older to show."""

    def __init__(self):
        self.lock = threading.Lock()
        self.last = None  # the last Listing read
        self.reading = None  # the read under way (a Meanwhile), or None

    def read(self, svc, active):
        """(Listing, the database's health {"ok", "detail"}, whether the Listing was read now)."""
        with self.lock:
            if self.reading is None:
                self.reading = Meanwhile(read_listing, svc, active)
            reading, last = self.reading, self.last
        reading.join(DATABASE_WAIT if last is not None else None)
        if reading.is_alive():
            waited = time.time() - reading.started
            if waited < DATABASE_DOWN_AFTER:
                return last, {"ok": True, "detail": f"ok, slow: no answer yet after {waited:.2f} s"}, False
            return last, {"ok": False, "detail": f"down: no answer for {waited:.1f} s"}, False
        with self.lock:
            if self.reading is reading:
                self.reading = None
            try:
                listing = reading.result()
            except SQLAlchemyError as e:
                if last is None:
                    raise  # nothing to show: 503, as for any database failure
                return last, {"ok": False, "detail": f"down: {type(e).__name__}"}, False
            if self.last is None or listing.read_at > self.last.read_at:
                self.last = listing
        return listing, {"ok": True, "detail": "ok"}, True


def live_view(svc, view, finished, outbox, leases):
    """Add to the view of a campaign Redis holds what the page shows of a live one."""
    campaign_id = view["id"]
    if view["status"] == "closed":  # its close under way
        view["replay_url"] = url_for("ops.replay", raw_id=campaign_id)
    view["history_url"] = url_for("ops.history", raw_id=campaign_id)
    view["outbox"], view["leases"] = outbox, leases
    if events.enabled(svc.config):
        view["events"] = current_app.extensions["coupon_ops_events"].read(svc.engine, campaign_id)
    if view["issued"] >= view["total"]:
        # sold out and the outbox empty: every claim is in the database (the flusher deletes an
        # entry only after its row was committed), so the replay is whole. Not counted here: a
        # count of a million rows takes 170 ms
        everything_in = view["outbox"]["backlog"] == 0
        view["sold_out_after_seconds"] = (sold_out_after(svc, campaign_id, view["total"], finished)
                                          if everything_in else None)
        if view["sold_out_after_seconds"] is not None:
            view["replay_url"] = url_for("ops.replay", raw_id=campaign_id)


class EventsToGo:
    """A worker's counts of the events of campaigns not yet confirmed by the broker, at most one
    per campaign every EVENTS_EVERY seconds: a count of a million takes ~0.2 s, too much for
    every poll of every page."""

    def __init__(self):
        self.lock = threading.Lock()
        self.counted = {}  # campaign id -> (time.monotonic() of the count, what it found)

    def read(self, engine, campaign_id):
        """{pending, lag_seconds} as of the last count (EVENTS_EVERY seconds old at most); None
        while the database does not answer (the page says so elsewhere)."""
        now = time.monotonic()
        with self.lock:
            counted, found = self.counted.get(campaign_id, (None, None))
        if counted is not None and now - counted < EVENTS_EVERY:
            return found
        try:
            pending, lag = events.pending(engine, campaign_id)
        except SQLAlchemyError:
            return None
        found = {"pending": pending, "lag_seconds": lag}
        with self.lock:
            self.counted[campaign_id] = (now, found)
        return found


class OutboxWatch:
    """A worker's readings of the outbox of the campaigns its pages poll: every SAMPLE_SECONDS,
    until WATCH_SECONDS after the last poll, by one thread (a greenlet under gevent). The backlog
    grows between flushes and drops at each; a once-a-second poll alone would draw that sawtooth
    as a slow climb and fall. So a poll reports the highest reading since the previous poll."""

    def __init__(self):
        self.lock = threading.Lock()
        self.polled = {}  # campaign id -> time.monotonic() of the last poll
        self.readings = {}  # campaign id -> deque of (time, backlog, lag)
        self.thread = None

    def read(self, svc, campaign_id, since, reading):
        """{backlog, flush_lag_seconds} now (`reading`: outbox_stats, read by the poll), and the
        highest of the readings after `since` (this one included): peak_backlog,
        peak_flush_lag_seconds, and how many readings that is."""
        backlog, lag = reading
        now = time.time()
        with self.lock:
            self.polled[campaign_id] = time.monotonic()
            if campaign_id not in self.readings:
                self.readings[campaign_id] = deque(maxlen=int(2 * WATCH_SECONDS / SAMPLE_SECONDS))
            if self.thread is None:
                self.thread = threading.Thread(target=self._watch, args=(svc,), daemon=True,
                                               name="ops-outbox-watch")
                self.thread.start()
            window = [r for r in self.readings[campaign_id] if since is not None and r[0] > since]
        window.append((now, backlog, lag))
        return {"backlog": backlog, "flush_lag_seconds": lag,
                "peak_backlog": max(r[1] for r in window),
                "peak_flush_lag_seconds": max(r[2] for r in window), "readings": len(window)}

    def _watch(self, svc):
        try:
            while True:
                with self.lock:
                    now = time.monotonic()
                    for campaign_id in [c for c, t in self.polled.items() if now - t > WATCH_SECONDS]:
                        del self.polled[campaign_id], self.readings[campaign_id]
                    watched = list(self.polled)
                if not watched:
                    return
                for campaign_id in watched:
                    try:
                        backlog, lag = outbox_stats(svc.redis, svc.keys(campaign_id))
                    except RedisError:
                        continue  # Redis down shows in the page's health
                    with self.lock:
                        if campaign_id in self.readings:
                            self.readings[campaign_id].append((time.time(), backlog, lag))
                time.sleep(SAMPLE_SECONDS)
        finally:
            with self.lock:
                self.thread = None


def queue_leases(batch, keys):
    """Queue the reads of the leases standing in Redis; return what makes of them, once the batch
    has run, their list, by worker: serials leased and seconds until expiry (negative: expired,
    its unclaimed serials wait for the reclaim job)."""
    expiries = batch.on(keys.leases).zrange(keys.leases, 0, -1, withscores=True)
    encoded = batch.on(keys.lease_serials).hgetall(keys.lease_serials)
    clock = batch.on(keys.leases).time()  # the clock lease.lua stamped with

    def leases():
        (seconds, micros), encoded_of = clock.get(), encoded.get()
        now_ms = seconds * 1000 + micros // 1000
        return [
            {"worker": lease_holder(lease_id),
             "lease": lease_id, "serials": len(decode_serials(encoded_of.get(lease_id, ""))),
             "expires_in": round((expiry - now_ms) / 1000, 1)}
            for lease_id, expiry in expiries.get()]
    return leases


def sold_out_after(svc, campaign_id, total, finished):
    """Seconds from open to the last coupon; call it once every row is in the database."""
    key = ("sold_out_after", campaign_id, total)  # add-stock makes another sale of it
    if key not in finished:
        opened, last = sale_span(svc.engine, campaign_row(svc.engine, campaign_id))
        if last is None:
            return None
        finished[key] = seconds_between(opened, last)
    return finished[key]


def sale_history(svc, campaign_id):
    """A live sale's coupons per step (a second, or several in a long sale) from its opening to
    `until` (epoch s), from Redis's count of new tickets per second (claim.lua counts each in the
    call that claims it): every claim stamped before `until` is there, in the database or not
    yet. The page counts what follows from the live polls."""
    row = campaign_row(svc.engine, campaign_id)
    per_second, now = issues_per_second(svc.redis, svc.keys(campaign_id))
    start = min(now, to_ms(row.opens_at) // 1000) if row.opens_at else now
    step = step_of(now - start)
    steps = (now - start) // step  # whole steps only
    issues = into_steps(per_second, start, steps, step)
    return {"id": campaign_id, "start": start, "step_seconds": step, "issues": issues,
            "until": start + steps * step, "rows": sum(issues)}


def replay_of(svc, campaign_id, finished):
    """A sale replayed: issues per second (or per step of several seconds) from open to the last
    coupon, time to sell out, and what is known of its reconciliation. The replay a close
    counted once Redis and the database agreed (the rows are final then); while Redis holds the
    campaign, its count per second; else the database's, counted now."""
    key = ("replay", campaign_id)
    if key in finished:
        return finished[key]
    row = campaign_row(svc.engine, campaign_id)
    keys = svc.keys(campaign_id)
    keys_kept = holds(svc.redis, keys)
    record = close_report(svc.engine, campaign_id)
    if record and record["replay"]:
        counted = record["replay"]
    else:
        counted = sale_replay(svc.engine, row, issues_per_second(svc.redis, keys)[0] if keys_kept else None)
    replay = {"id": campaign_id, "name": row.name, "total": row.total, **counted,
              "reconciliation": reconciliation(row, keys_kept, record, counted["rows"])}
    if row.status == "closed" and not keys_kept:  # released: nothing of it can change
        finished[key] = replay
    return replay


def reconciliation(row, keys_kept, record, rows):
    """Whether Redis and the database agree on the campaign's tickets, as the last close found
    (db.close_reports): never reconciled here, which reads every claim and every row.
    agree: True, False, or None when no close has reconciled them yet."""
    close = f"`flask campaign close {row.id}`"
    if record:
        found = [f"the close of {iso(record['reconciled_at'])} found:", *record["report"].splitlines()]
    if keys_kept and row.status != "closed":
        state = "sold out" if rows >= row.total else "the sale is live"  # `rows`: Redis's count
        return {"agree": None, "lines": [
            f"not reconciled yet: {state}, not closed; {close} drains, reconciles and releases it"]}
    if keys_kept and not record:
        return {"agree": None, "lines": [
            f"not reconciled yet: closed, but its close is under way or stopped before it "
            f"reconciled; {close} (safe to run again) drains, reconciles and releases it"]}
    if keys_kept:
        return {"agree": record["agree"], "lines": found + [
            f"Redis still holds the campaign: {close} reconciles again, and releases it once "
            "Redis and the database agree"]}
    if row.status != "closed":
        return {"agree": False, "lines": [
            f"campaign {row.id} was never closed and Redis does not hold it (lost?): "
            f"its {rows} rows in the database are all that is known"]}
    if record:
        return {"agree": record["agree"], "lines": found}
    # closed before close recorded its reports: close releases the Redis keys only after Redis
    # and the database agreed, and then records the count in the campaigns row
    return {"agree": True, "lines": [
        f"campaign {row.id}: Redis and the database agreed at close on {row.issued} tickets"]}
