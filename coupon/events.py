"""Events on RabbitMQ: every committed coupon and each change of a campaign, at least once.

A transactional outbox in the database. The flusher writes a short coupon.issued row (campaign
and serial: db.issued_events) in the transaction of the coupon rows (flusher.Flusher); the
message is built from the coupon row when published, so the flush writes little more than
without events. The lifecycle functions write a campaign.* row, body and all (db.event_outbox),
in the transaction that changes the campaign (campaigns.py, the stock sync for sold_out): an
event exists exactly when what it tells of committed, never for a claim a failover lost (the
flusher reads only what replicas hold). A row asked again (a replayed entry, a close repeated)
is skipped while it waits, as the coupon rows are.

The publisher (the scheduler's events job, jobs/events.py) reads the oldest rows, publishes a
window of EVENTS_BATCH of them as persistent messages on the durable topic exchange EXCHANGE,
awaits the broker's confirms of the whole window together (one by one, a quorum queue took
~1,600 messages/s here; streamed, ~26,000/s), and deletes the rows confirmed while the next
window streams. The broker away, refusing, or blocking publishers (a memory alarm): the rows
wait, the window is sent again later. So an event may go out twice, always under the same
message_id: consumers drop repeats by it (docs/events.md). Issuing and the flush never wait on
the broker.

Client: pika (maintained by the RabbitMQ team), its SelectConnection for publishing (Broker: a
window streams, its confirms come back as callbacks), its BlockingConnection for `flask events
tail`.
"""
import datetime as dt
import json
import threading
import time
from typing import NamedTuple

from sqlalchemy import String, cast, delete, func, literal, select

from coupon import db
from coupon.clock import iso, utcnow

EXCHANGE = "coupon.events"
ISSUED = "coupon.issued"
OPENED, SOLD_OUT, STOCK_ADDED, CLOSED = ("campaign.opened", "campaign.sold_out",
                                         "campaign.stock_added", "campaign.closed")
CONNECT_TIMEOUT = 5.0  # seconds; an unreachable broker fails a round this fast


def enabled(config):
    return bool(config["EVENTS_URL"])


def _row(campaign_id, message_id, routing_key, body, now):
    return {"message_id": message_id, "campaign_id": campaign_id, "routing_key": routing_key,
            "body": json.dumps(body, separators=(",", ":")), "created_at": now}


def write_issued(conn, coupon_rows):
    """Write the coupon.issued events of these coupons rows in the caller's transaction.

    The rows are flusher.entry_row's. Written: only each coupon's key (issued_events), its message
    built from the coupon row when published (issued_body); one already waiting is kept."""
    db.insert_integers_ignoring_duplicates(conn, db.issued_events,
                                           [(r["campaign_id"], r["serial"]) for r in coupon_rows])


def issued_body(coupon):
    """The SQL of a coupon row's coupon.issued body, as compact JSON.

    `coupon`: the coupons columns. The body: {"event", "campaign_id", "user_id", "serial", "code",
    "issued_at"}. Built by the database as it reads the window: parsing the row's fields and dumping
    them here cost the publisher about half as much CPU as publishing them."""
    def text(column):
        return cast(column, String)

    at = text(coupon.issued_at)  # 'YYYY-MM-DD HH:MM:SS.fff' (SQLite: 6 digits): ISO 8601, ms, Z
    return (literal(f'{{"event":"{ISSUED}","campaign_id":') + text(coupon.campaign_id)
            + ',"user_id":' + func.json_quote(coupon.user_id) + ',"serial":' + text(coupon.serial)
            + ',"code":' + func.json_quote(coupon.code) + ',"issued_at":"' + func.substr(at, 1, 10)
            + "T" + func.substr(at, 12, 12) + 'Z"}')


def record(config, conn, campaign_id, routing_key, key, **fields):
    """With events on, write a campaign.* event in the caller's transaction (conn).

    Its message id is <campaign_id>:<what it is>[:<key>]; one already waiting under that id is
    kept."""
    if not enabled(config):
        return
    kind = routing_key.split(".", 1)[1]
    message_id = f"{campaign_id}:{kind}" + (f":{key}" if key else "")
    body = {"event": routing_key, "campaign_id": campaign_id, "at": iso(utcnow()), **fields}
    conn.execute(db.insert_ignoring_duplicates(conn.dialect.name, db.event_outbox),
                 [_row(campaign_id, message_id, routing_key, body, utcnow())])


def pending(engine, campaign_id=None):
    """(events not yet confirmed by the broker, age in seconds of the oldest).

    Of one campaign, or of all. A coupon event's age is its coupon's; the oldest is taken in key
    order (lowest campaign, lowest serial): close to the oldest, without reading them all."""
    e, i, c = db.event_outbox.c, db.issued_events.c, db.coupons.c
    reads = [(select(func.count()).select_from(db.event_outbox),
              select(e.created_at).order_by(e.id).limit(1), e),
             (select(func.count()).select_from(db.issued_events),
              select(c.issued_at).join_from(db.issued_events, db.coupons, of_coupon(i, c))
              .order_by(i.campaign_id, i.serial).limit(1), i)]
    n, firsts = 0, []
    with engine.connect() as conn:
        for count, oldest, table in reads:
            if campaign_id is not None:
                count, oldest = (q.where(table.campaign_id == campaign_id) for q in (count, oldest))
            if found := conn.execute(count).scalar_one():
                n += found
                firsts.append(conn.execute(oldest).scalar())
    first = min((f for f in firsts if f is not None), default=None)
    age = max(0.0, (utcnow() - first) / dt.timedelta(seconds=1)) if first else 0.0
    return n, round(age, 3)


def of_coupon(issued, coupon):
    """The join of an issued_events row to its coupons row."""
    return (coupon.campaign_id == issued.campaign_id) & (coupon.serial == issued.serial)


class BrokerUnavailable(Exception):
    """The broker could not be reached, dropped the connection, or did not confirm in time."""


class Window:
    """The events of one window sent on `connection`, and what the broker said of each.

    The events are by delivery tag (first, first + 1, ...); the broker said ack (True), nack
    (False), or nothing yet (None). Settled in
    the I/O loop's thread, read in the publisher's once done or timed out."""

    def __init__(self, connection, first, ids):
        self.connection, self.first, self.ids = connection, first, ids
        self.said = [None] * len(ids)
        self.low = 0  # every tag below first + low is settled
        self.left = len(ids)
        self.failure = None
        self.done = threading.Event()

    def settle(self, tag, multiple, ack):
        top = min(tag - self.first, len(self.ids) - 1)
        for i in range(self.low if multiple else top, top + 1):
            if i >= 0 and self.said[i] is None:
                self.said[i] = ack
                self.left -= 1
        while self.low < len(self.said) and self.said[self.low] is not None:
            self.low += 1
        if self.left == 0:
            self.done.set()

    def fail(self, failure):
        if not self.done.is_set():
            self.failure = failure
            self.done.set()

    def confirmed(self):
        return [i for i, said in zip(self.ids, list(self.said)) if said]


class Broker:
    """One connection and channel, confirms on, through pika's SelectConnection.

    Its I/O loop runs in a thread of its own: a publish appends its frames to the connection's
    buffer, written out in large sends, and the confirms come back as callbacks, so a window streams
    (pika's BlockingConnection waits for each confirm in turn; aio-pika sends each message by
    itself: ~4,000/s here against ~16,000/s). A connection the broker blocks (an alarm) longer than
    `blocked_timeout` is closed by pika. Every failure of the broker is BrokerUnavailable."""

    def __init__(self, url, blocked_timeout):
        import pika  # here, not at the top: web workers import this module and never talk AMQP

        self.pika = pika
        self.params = pika.URLParameters(url)
        self.params.connection_attempts = 1
        self.params.socket_timeout = CONNECT_TIMEOUT
        self.params.blocked_connection_timeout = blocked_timeout
        self.connection = self.channel = self.window = None
        self.next_tag = 1

    def _connect(self):
        """Open the connection and the channel, declare the exchange; wait for it.

        A connection's callbacks touch only the windows sent on it: one dropped may still answer
        for a while."""
        ready, failed, this = threading.Event(), [], {}

        def ours():
            window = self.window
            return window if window is not None and window.connection is this.get("connection") else None

        def lost(reason):
            failed.append(reason)
            ready.set()
            if window := ours():
                window.fail(BrokerUnavailable(describe(reason)))

        def confirm(frame):
            if window := ours():
                method = frame.method
                window.settle(method.delivery_tag, method.multiple,
                              isinstance(method, self.pika.spec.Basic.Ack))

        def channel_open(channel):
            channel.add_on_close_callback(lambda _, reason: lost(reason))
            channel.confirm_delivery(confirm, callback=lambda _: channel.exchange_declare(
                EXCHANGE, "topic", durable=True, callback=lambda _: ready.set()))
            this["channel"] = channel

        def closed(connection, reason):
            lost(reason)
            connection.ioloop.stop()

        connection = this["connection"] = self.pika.SelectConnection(
            self.params, on_open_callback=lambda c: c.channel(on_open_callback=channel_open),
            on_open_error_callback=closed, on_close_callback=closed)
        threading.Thread(target=connection.ioloop.start, daemon=True, name="events-broker").start()
        if not ready.wait(3 * CONNECT_TIMEOUT) or failed:
            self._drop(connection)
            reason = failed[0] if failed else f"no answer within {3 * CONNECT_TIMEOUT:g} s"
            raise BrokerUnavailable(f"cannot connect: {describe(reason)}")
        self.connection, self.channel, self.next_tag = connection, this["channel"], 1

    def _drop(self, connection=None):
        connection = connection or self.connection
        self.connection = None
        if connection is not None and not (connection.is_closing or connection.is_closed):
            try:
                connection.ioloop.add_callback_threadsafe(connection.close)
            except Exception:  # its loop has stopped already
                pass

    def send(self, events):
        """Start publishing events (Event tuples) in the I/O loop's thread; return their Window.

        The Window is for wait(). One window at a time: wait() for it before the next send()."""
        if self.connection is None or not self.connection.is_open:
            self._connect()
        window = self.window = Window(self.connection, self.next_tag, [e.key for e in events])
        self.next_tag += len(events)
        channel, properties = self.channel, self.pika.BasicProperties

        def send():
            try:
                for e in events:
                    channel.basic_publish(EXCHANGE, e.routing_key, e.body, properties(
                        message_id=e.message_id, content_type="application/json", delivery_mode=2))
            except Exception as error:  # the channel closed meanwhile
                window.fail(BrokerUnavailable(describe(error)))

        self.connection.ioloop.add_callback_threadsafe(send)
        return window

    def wait(self, window, confirm_timeout):
        """Wait for the window's confirms; return (the keys confirmed, the failure or None).

        The keys are those the broker confirmed; the failure is the one that kept the others from
        being confirmed."""
        if not window.done.wait(confirm_timeout):
            window.fail(BrokerUnavailable(f"no confirms within {confirm_timeout:g} s "
                                          "(publishers blocked: a memory or disk alarm?)"))
        if window.failure:
            self._drop()  # what it holds unconfirmed is sent again: at least once
        return window.confirmed(), window.failure

    def close(self):
        self._drop()


def describe(error):
    return f"{error.__class__.__name__}: {error}".splitlines()[0][:200]


class Event(NamedTuple):
    """One message to publish, and the key of its outbox row.

    The key is an event_outbox id, or an issued_events (campaign_id, serial)."""
    key: object
    message_id: str
    routing_key: str
    body: bytes
    at: str  # when it was written (a coupon's: issued), as text: the order of the window


class Publisher:
    """Publish the event outbox: the oldest rows in windows, deleting those the broker confirmed.

    While a window's messages stream out and its confirms come back (the broker's thread), this
    one deletes the previous window's rows and reads the next window: the database's time hides
    behind the broker's."""

    def __init__(self, engine, config):
        self.engine = engine
        self.batch = config["EVENTS_BATCH"]
        self.confirm_timeout = config["EVENTS_CONFIRM_TIMEOUT"]
        self.broker = Broker(config["EVENTS_URL"], blocked_timeout=self.confirm_timeout)

    def publish(self, until=None):
        """Publish windows until the outbox is empty or `until` (monotonic) passes.

        Return how many events the broker confirmed. Raises BrokerUnavailable (after deleting what
        was confirmed) when the broker fails."""
        sent, after = 0, {}
        events, more = self._read(after)
        confirmed = []
        while events:
            window = self.broker.send(events)
            sent += self._delete(confirmed)
            late = until is not None and time.monotonic() > until
            following, more = self._read(after) if more and not late else ([], False)
            confirmed, failure = self.broker.wait(window, self.confirm_timeout)
            if failure:
                sent += self._delete(confirmed)
                raise failure
            events = following
        return sent + self._delete(confirmed)

    def _read(self, after):
        """The next window after `after` (the last keys read, updated).

        It holds coupon.issued events in key order, their bodies from the coupon rows, and the
        campaign.* events written no later than the newest of those coupons (so that sold_out and
        closed follow the coupons before them), oldest first. Returns (events, whether more may
        follow)."""
        i, c, e = db.issued_events.c, db.coupons.c, db.event_outbox.c
        issued = (select(i.campaign_id, i.serial, cast(c.issued_at, String), issued_body(c))
                  .outerjoin_from(db.issued_events, db.coupons, of_coupon(i, c))
                  .order_by(i.campaign_id, i.serial).limit(self.batch))
        if "issued" in after:
            last_campaign, last_serial = after["issued"]
            issued = issued.where((i.campaign_id > last_campaign)
                                  | ((i.campaign_id == last_campaign) & (i.serial > last_serial)))
        others = select(e.id, e.message_id, e.routing_key, e.body, cast(e.created_at, String)).where(
            e.id > after.get("outbox", 0)).order_by(e.id).limit(self.batch)
        with self.engine.connect() as conn:
            coupons = conn.execute(issued).all()
            full = len(coupons) == self.batch
            times = [r[2] for r in coupons if r[2] is not None]
            if full and times:  # coupons wait beyond this window: the campaign events after them too
                others = others.where(cast(e.created_at, String) <= max(times))
            campaign = conn.execute(others).all()
        if coupons:
            after["issued"] = tuple(coupons[-1][:2])
        if campaign:
            after["outbox"] = campaign[-1].id
        # plain tuples, not Row attributes: a window is thousands of them. Times as the database
        # writes them as text, both tables alike: the order of the window
        events = [Event(r[0], r[1], r[2], r[3].encode(), r[4]) for r in campaign]
        events += [Event((campaign_id, serial), f"{campaign_id}:{serial}", ISSUED, body.encode(), at)
                   for campaign_id, serial, at, body in coupons if body is not None]
        # a coupon row gone (nothing deletes them, but by hand) has nothing to tell: dropped unsent
        self._delete([tuple(r[:2]) for r in coupons if r[3] is None])
        events.sort(key=lambda event: event.at)  # stable: the coupons stay in key order
        return events, full or len(campaign) == self.batch

    def _delete(self, keys):
        """Delete the outbox rows of these keys (confirmed); return how many."""
        ids = [k for k in keys if not isinstance(k, tuple)]
        serials = {}
        for campaign_id, serial in (k for k in keys if isinstance(k, tuple)):
            serials.setdefault(campaign_id, []).append(serial)
        if keys:
            with self.engine.begin() as conn:
                if ids:
                    conn.execute(delete(db.event_outbox).where(db.event_outbox.c.id.in_(ids)))
                for campaign_id, of_campaign in serials.items():
                    i = db.issued_events.c
                    conn.execute(delete(db.issued_events).where(
                        (i.campaign_id == campaign_id) & i.serial.in_(of_campaign)))
        return len(keys)

    def close(self):
        self.broker.close()


def tail(url, show, count=None, seconds=None, pattern="#"):
    """Call show(message_id, routing_key, body) for each event published from now on.

    The events come through a queue of its own (exclusive: deleted with the connection) bound to
    EXCHANGE with `pattern`; stop after `count` events or `seconds`. Returns how many were shown;
    BrokerUnavailable if the broker cannot be reached or drops the connection."""
    import pika

    params = pika.URLParameters(url)
    params.connection_attempts, params.socket_timeout = 1, CONNECT_TIMEOUT
    deadline = None if seconds is None else time.monotonic() + seconds
    shown = 0
    try:
        connection = pika.BlockingConnection(params)
        try:
            channel = connection.channel()
            channel.exchange_declare(EXCHANGE, "topic", durable=True)
            queue = channel.queue_declare("", exclusive=True).method.queue
            channel.queue_bind(queue, EXCHANGE, pattern)
            for method, properties, body in channel.consume(queue, auto_ack=True, inactivity_timeout=0.2):
                if method is not None:
                    show(properties.message_id or "", method.routing_key, body.decode())
                    shown += 1
                if (count and shown >= count) or (deadline and time.monotonic() >= deadline):
                    break
        finally:
            if connection.is_open:
                connection.close()
    except (OSError, pika.exceptions.AMQPError) as e:
        raise BrokerUnavailable(describe(e)) from None
    return shown
