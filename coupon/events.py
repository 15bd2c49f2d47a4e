"""Events on RabbitMQ: every committed coupon and each change of a campaign, at least once.

A transactional outbox in the database (db.event_outbox). The flusher writes a coupon.issued row
in the transaction of the coupon rows (outbox.Flusher), the lifecycle functions a campaign.* row
in the transaction that changes the campaign (campaigns.py, the stock sync for sold_out): an
event exists exactly when what it tells of committed, never for a claim a failover lost (the
flusher reads only what replicas hold). A row asked again (a replayed entry, a close repeated)
is skipped while it waits, as the coupon rows are.

The publisher (the scheduler's events job, jobs/events.py) reads the oldest rows, publishes a
window of EVENTS_BATCH of them as persistent messages on the durable topic exchange EXCHANGE,
awaits the broker's confirms of the whole window together (one by one, a quorum queue took
~1,600 messages/s here; streamed, ~26,000/s), and deletes the rows confirmed. The broker away,
refusing, or blocking publishers (a memory alarm): the rows wait, the window is sent again
later. So an event may go out twice, always under the same message_id: consumers drop repeats
by it (docs/events.md). Issuing and the flush never wait on the broker.

Client: pika (maintained by the RabbitMQ team), its SelectConnection for publishing (Broker: a
window streams, its confirms come back as callbacks), its BlockingConnection for `flask events
tail`.
"""
import datetime as dt
import json
import threading
import time

from sqlalchemy import delete, func, select

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


def issued_rows(coupon_rows):
    """The coupon.issued rows of these coupons rows (outbox.entry_row's), message id
    <campaign_id>:<serial>."""
    now = utcnow()
    return [_row(r["campaign_id"], f"{r['campaign_id']}:{r['serial']}", ISSUED,
                 {"event": ISSUED, "campaign_id": r["campaign_id"], "user_id": r["user_id"],
                  "serial": r["serial"], "code": r["code"], "issued_at": iso(r["issued_at"])}, now)
            for r in coupon_rows]


def record(config, conn, campaign_id, routing_key, key, **fields):
    """With events on, write a campaign.* event in the caller's transaction (conn), message id
    <campaign_id>:<what it is>[:<key>]; one already waiting under that id is kept."""
    if not enabled(config):
        return
    kind = routing_key.split(".", 1)[1]
    message_id = f"{campaign_id}:{kind}" + (f":{key}" if key else "")
    body = {"event": routing_key, "campaign_id": campaign_id, "at": iso(utcnow()), **fields}
    conn.execute(db.insert_ignoring_duplicates(conn.dialect.name, db.event_outbox),
                 [_row(campaign_id, message_id, routing_key, body, utcnow())])


def pending(engine, campaign_id=None):
    """(events not yet confirmed by the broker, age in seconds of the oldest): of one campaign,
    or of all."""
    e = db.event_outbox.c
    count = select(func.count()).select_from(db.event_outbox)
    oldest = select(e.created_at).order_by(e.id).limit(1)
    if campaign_id is not None:
        count, oldest = count.where(e.campaign_id == campaign_id), oldest.where(e.campaign_id == campaign_id)
    with engine.connect() as conn:
        n = conn.execute(count).scalar_one()
        first = conn.execute(oldest).scalar() if n else None
    age = max(0.0, (utcnow() - first) / dt.timedelta(seconds=1)) if first else 0.0
    return n, round(age, 3)


class BrokerUnavailable(Exception):
    """The broker could not be reached, dropped the connection, or did not confirm in time."""


class Window:
    """The events of one window sent on `connection`, by delivery tag (first, first + 1, ...),
    and what the broker said of each: ack (True), nack (False), or nothing yet (None). Settled in
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
    """One connection and channel, confirms on, through pika's SelectConnection, its I/O loop in
    a thread of its own: a publish appends its frames to the connection's buffer, written out in
    large sends, and the confirms come back as callbacks, so a window streams (pika's
    BlockingConnection waits for each confirm in turn; aio-pika sends each message by itself:
    ~4,000/s here against ~16,000/s). A connection the broker blocks (an alarm) longer than
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
        """Open the connection and the channel, declare the exchange; wait for it. A connection's
        callbacks touch only the windows sent on it: one dropped may still answer for a while."""
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

    def publish_window(self, rows, confirm_timeout):
        """Publish rows (with .id, .message_id, .routing_key, .body); return (the ids the broker
        confirmed, the failure that kept the others from being confirmed, or None)."""
        if self.connection is None or not self.connection.is_open:
            self._connect()
        window = self.window = Window(self.connection, self.next_tag, [r.id for r in rows])
        self.next_tag += len(rows)
        channel, properties = self.channel, self.pika.BasicProperties

        def send():
            try:
                for r in rows:
                    channel.basic_publish(EXCHANGE, r.routing_key, r.body.encode(), properties(
                        message_id=r.message_id, content_type="application/json", delivery_mode=2))
            except Exception as e:  # the channel closed meanwhile
                window.fail(BrokerUnavailable(describe(e)))

        self.connection.ioloop.add_callback_threadsafe(send)
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


class Publisher:
    """Publish the event outbox: the oldest rows in windows, deleting those the broker confirmed."""

    def __init__(self, engine, config):
        self.engine = engine
        self.batch = config["EVENTS_BATCH"]
        self.confirm_timeout = config["EVENTS_CONFIRM_TIMEOUT"]
        self.broker = Broker(config["EVENTS_URL"], blocked_timeout=self.confirm_timeout)

    def publish(self, until=None):
        """Publish windows until the outbox is empty or `until` (monotonic) passes; return how
        many events the broker confirmed. Raises BrokerUnavailable (after deleting what was
        confirmed) when the broker fails."""
        sent = 0
        while True:
            e = db.event_outbox.c
            with self.engine.connect() as conn:
                rows = conn.execute(select(e.id, e.message_id, e.routing_key, e.body)
                                    .order_by(e.id).limit(self.batch)).all()
            if not rows:
                return sent
            confirmed, failure = self.broker.publish_window(rows, self.confirm_timeout)
            if confirmed:
                with self.engine.begin() as conn:
                    conn.execute(delete(db.event_outbox).where(e.id.in_(confirmed)))
                sent += len(confirmed)
            if failure:
                raise failure
            if len(rows) < self.batch or (until is not None and time.monotonic() > until):
                return sent

    def close(self):
        self.broker.close()


def tail(url, show, count=None, seconds=None, pattern="#"):
    """Call show(message_id, routing_key, body) for each event published from now on, through a
    queue of its own (exclusive: deleted with the connection) bound to EXCHANGE with `pattern`;
    stop after `count` events or `seconds`. Returns how many were shown; BrokerUnavailable if
    the broker cannot be reached or drops the connection."""
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
