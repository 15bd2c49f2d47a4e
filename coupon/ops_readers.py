"""What the operators' page reads in a worker's background, so that a poll never waits long.

It reads the campaigns rows (RowsReader, which is also the page's check of the database), the
outbox of the campaigns polled (OutboxWatch), the events still to go (EventsToGo), and a call
run meanwhile (Meanwhile). OpsState holds one of each per worker."""
import threading
import time
from collections import deque
from typing import NamedTuple

from redis.exceptions import RedisError
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from coupon import db, events
from coupon.outbox import outbox_stats

DATABASE_WAIT = 0.05  # a poll waits this long for the database, then shows its last reading
DATABASE_DOWN_AFTER = 2.0  # a read under way this long: the page says the database is down
RECENT_CLOSED = 10  # closed campaigns listed after the live ones
SAMPLE_SECONDS = 0.1  # the outbox is read this often while a page polls the campaign
WATCH_SECONDS = 5.0  # and for this long after the last poll
EVENTS_EVERY = 5.0  # seconds between counts of a campaign's events still to go (EventsToGo)


class OpsState:
    """What the page keeps in a worker between polls (app.extensions["coupon_ops"])."""

    def __init__(self):
        self.finished = {}  # figures of finished sales, computed once
        self.outbox = OutboxWatch()
        self.rows = RowsReader()
        self.events = EventsToGo()


class Meanwhile(threading.Thread):
    """f(*args) in a thread of its own (a greenlet under gevent), started at once.

    result() waits for it and returns what it returned, or raises what it raised."""

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


class Listing(NamedTuple):
    """The campaigns rows the page lists, as read at `read_at` (time.time())."""
    read_at: float
    held: dict  # id -> row, of the campaigns Redis held then
    closed: list  # the rows of the most recently closed of the others, newest first

    def split(self, active):
        """(held, closed): the rows of the campaigns Redis holds now, and of recently closed ones.

        Held: those of `active`, newest first; closed: the most recently closed of the others."""
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
    """A worker's reads of the campaigns rows its pages list.

    They are also the page's check of the database. A read, once under way, serves every poll until
    it ends; a poll waits for it at most DATABASE_WAIT and then answers from the last Listing read,
    with its time: during a big sale the database of a saturated machine can take 50-130 ms to
    answer the smallest query (BENCHMARKS.md, "A big sale"), and one that hangs would hold every
    poll. The first poll waits for its read: there is nothing older to show."""

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


class EventsToGo:
    """A worker's counts of the events of campaigns not yet confirmed by the broker.

    At most one per campaign every EVENTS_EVERY seconds: a count of a million takes ~0.2 s, too
    much for every poll of every page."""

    def __init__(self):
        self.lock = threading.Lock()
        self.counted = {}  # campaign id -> (time.monotonic() of the count, what it found)

    def read(self, engine, campaign_id):
        """{pending, lag_seconds} as of the last count (EVENTS_EVERY seconds old at most).

        None while the database does not answer (the page says so elsewhere)."""
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
    """A worker's readings of the outbox of the campaigns its pages poll.

    One reading every SAMPLE_SECONDS, until WATCH_SECONDS after the last poll, by one thread (a
    greenlet under gevent). The backlog grows between flushes and drops at each; a once-a-second
    poll alone would draw that sawtooth as a slow climb and fall. So a poll reports the highest
    reading since the previous poll."""

    def __init__(self):
        self.lock = threading.Lock()
        self.polled = {}  # campaign id -> time.monotonic() of the last poll
        self.readings = {}  # campaign id -> deque of (time, backlog, lag)
        self.thread = None

    def read(self, svc, campaign_id, since, reading):
        """{backlog, flush_lag_seconds} now, and the highest of the readings after `since`.

        Now is `reading` (outbox_stats, read by the poll). The highest of the readings after
        `since` (this one included): peak_backlog, peak_flush_lag_seconds, and how many readings
        that is."""
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
