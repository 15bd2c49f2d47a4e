"""Events on RabbitMQ (coupon/events.py) against the machine's real broker (127.0.0.1:5672,
guest/guest): a flood's events match its rows exactly, also when the broker is stopped or
blocks publishers (memory alarm) in the middle, or unreachable at start, each on a single Redis
and the cluster; the campaign's own events, stock added among them; none without EVENTS_URL;
through real gunicorns and schedulers. Each test reads the events through a quorum queue of its
own bound to the exchange; a test that stops the broker or raises its alarm restores it in a
`finally` (other tests use the same broker). `flask events tail` and the events still to go, in
this process: integration/test_events.py."""
import json
import subprocess
import uuid
from collections import Counter
from contextlib import contextmanager

import pika
import pytest
from sqlalchemy import func, select

from coupon import campaigns, create_app, db, events
from coupon.events import EXCHANGE
from coupon.queries import count_rows
from coupon.reconcile import mysql_tickets
from loadtest.harness import open_campaign, users, wait_until
from tests.flood import STOCK, close_and_check, demand, issued_counter, once, tickets_told
from tests.services import EVENTS_URL
from tests.support import FAST_JOBS, app_config, flood, issue_call, on_single_and_cluster

EVENT_JOBS = dict(FAST_JOBS, EVENTS_URL=EVENTS_URL, EVENTS_CONFIRM_TIMEOUT=2)


def rabbitmqctl(*args):
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=120)


class EventQueue:
    """A durable quorum queue of the test's own bound to the exchange (as docs/events.md's
    consumer), deleted after the test; read() takes what it holds."""

    def __init__(self):
        self.name = f"test-events-{uuid.uuid4().hex[:12]}"
        self.seen = []  # (message_id, routing_key, body as a dict), in the order read
        with self._channel() as channel:
            channel.exchange_declare(EXCHANGE, "topic", durable=True)
            channel.queue_declare(self.name, durable=True, arguments={"x-queue-type": "quorum"})
            channel.queue_bind(self.name, EXCHANGE, "#")

    @contextmanager
    def _channel(self):
        connection = pika.BlockingConnection(pika.URLParameters(EVENTS_URL))
        try:
            yield connection.channel()
        finally:
            connection.close()

    def read(self, campaign_id, routing_key=None):
        """Take what the queue holds now; return every event of the campaign seen so far (with
        that routing key)."""
        with self._channel() as channel:
            while True:
                method, properties, body = channel.basic_get(self.name, auto_ack=True)
                if method is None:
                    break
                self.seen.append((properties.message_id, method.routing_key, json.loads(body)))
        return [(m, k, b) for m, k, b in self.seen if b["campaign_id"] == campaign_id
                and (routing_key is None or k == routing_key)]

    def delete(self):
        with self._channel() as channel:
            channel.queue_delete(self.name)


@pytest.fixture
def event_queue():
    queue = EventQueue()
    yield queue
    queue.delete()


def waiting_events(svc, campaign_id):
    return events.pending(svc.engine, campaign_id)[0]


def flood_through(svc, signer, gunicorn, campaign_id, fault=None):
    """Flood the campaign through a real gunicorn (tests/flood.py's waves); `fault` runs once,
    in a thread, when a third of the stock is issued. Returns (answers, tokens)."""
    server = gunicorn(workers=2)
    issued = issued_counter(svc, campaign_id)
    if fault is None:
        return server, demand(server.url, campaign_id, signer, issued, seconds=90)
    with once(lambda: issued() >= STOCK // 3, fault) as fired:
        answers = demand(server.url, campaign_id, signer, issued, seconds=90)
    assert fired, "the fault never ran"
    return server, answers


def assert_events_match_rows(svc, queue, campaign_id):
    """Wait until the campaign's events are all confirmed and read; then exactly one message id
    a row: each row has its coupon.issued event, with the row's ticket, and no event names a
    serial without a row. A message id read again (at least once: a window the broker took but
    did not confirm is sent again) is a row's, with the same body. Returns how many repeats the
    queue got."""
    wait_until(lambda: waiting_events(svc, campaign_id) == 0, timeout=120, what="the events to go out")
    rows = mysql_tickets(svc.engine, campaign_id)  # {user: (serial, code)}
    wanted = {f"{campaign_id}:{serial}" for serial, _ in rows.values()}
    wait_until(lambda: {m for m, _, _ in queue.read(campaign_id, events.ISSUED)} >= wanted,
               timeout=60, what="every row's event in the queue")
    issued = queue.read(campaign_id, events.ISSUED)
    read = Counter(m for m, _, _ in issued)
    repeats = len(issued) - len(read)
    repeated = sum(n > 1 for n in read.values())
    told = (f"{len(rows)} rows, {len(read)} message ids, {len(issued)} events read: {repeats} "
            f"repeats of {repeated} ids, one read {max(read.values(), default=0)} times at most")
    assert set(read) == wanted, (f"{len(wanted - set(read))} rows without their event, "
                                 f"{len(set(read) - wanted)} ids without a row; {told}")
    assert len(read) == len(rows), told  # and no serial in two rows
    bodies = {}
    for message_id, _, body in issued:
        assert message_id == f"{body['campaign_id']}:{body['serial']}"
        assert rows[body["user_id"]] == (body["serial"], body["code"])
        assert body["issued_at"].endswith("Z")
        assert bodies.setdefault(message_id, body) == body, f"a repeat of {message_id} differs; {told}"
    return repeats


def lifecycle_events(queue, campaign_id):
    """{routing key: body} of the campaign's campaign.* events read so far, once closed is among
    them (None before)."""
    found = {k: b for _, k, b in queue.read(campaign_id) if k != events.ISSUED}
    return found if events.CLOSED in found else None


@on_single_and_cluster
def test_every_row_of_a_flood_has_its_event(events_svc, signer, gunicorn, scheduler, event_queue):
    jobs = scheduler(**EVENT_JOBS)
    campaign_id = open_campaign(events_svc, STOCK - 100)
    campaigns.add_stock(events_svc, campaign_id, 100, "r-1")  # what `flask campaign add-stock` calls
    server, (answers, tokens) = flood_through(events_svc, signer, gunicorn, campaign_id)
    told, _, _ = tickets_told(server.url, campaign_id, answers, tokens)
    close_and_check(events_svc, signer, campaign_id, told)

    repeats = assert_events_match_rows(events_svc, event_queue, campaign_id)
    lifecycle = wait_until(lambda: lifecycle_events(event_queue, campaign_id), timeout=30,
                           what="the campaign.closed event")
    assert lifecycle[events.OPENED]["total"] == STOCK - 100
    assert dict(lifecycle[events.STOCK_ADDED], at=None) == {
        "event": events.STOCK_ADDED, "campaign_id": campaign_id, "at": None, "request_id": "r-1",
        "amount": 100, "total": STOCK}
    assert lifecycle[events.SOLD_OUT]["total"] == STOCK
    assert lifecycle[events.CLOSED]["agree"] is True
    assert lifecycle[events.CLOSED]["database_rows"] == STOCK
    assert "event broker unavailable" not in jobs.output()
    assert repeats == 0  # a window is sent again only after a failure, and none failed


@on_single_and_cluster
def test_broker_stopped_mid_flood_then_every_row_gets_its_event(
        events_svc, signer, gunicorn, scheduler, event_queue, mysql_url, redis_target):
    jobs = scheduler(**EVENT_JOBS)
    campaign_id = open_campaign(events_svc, STOCK)
    try:
        server, (answers, tokens) = flood_through(events_svc, signer, gunicorn, campaign_id,
                                                  fault=lambda: rabbitmqctl("stop_app"))
        # issuing and the flush went on without the broker: every coupon has its row
        wait_until(lambda: count_rows(events_svc.engine, campaign_id) == STOCK, timeout=60,
                   what="the flush to go on with the broker stopped")
        told, _, _ = tickets_told(server.url, campaign_id, answers, tokens)
        # a close does not wait for the broker: it says how many events are still to go
        runner = create_app(app_config(mysql_url, redis_target, EVENTS_URL=EVENTS_URL)).test_cli_runner()
        result = runner.invoke(args=["campaign", "close", str(campaign_id)])
        assert result.exit_code == 0, result.output
        still = waiting_events(events_svc, campaign_id)
        assert still > 0  # what the stopped broker has not confirmed waits in the database
        assert f"events: {still} still to go" in result.output
    finally:
        rabbitmqctl("start_app")
    close_and_check(events_svc, signer, campaign_id, told)  # released already: checks the rows
    repeats = assert_events_match_rows(events_svc, event_queue, campaign_id)
    assert wait_until(lambda: lifecycle_events(event_queue, campaign_id), timeout=30,
                      what="the campaign.closed event")[events.CLOSED]["agree"] is True
    output = jobs.output()
    assert output.count("event broker unavailable") == 1  # once per outage, not per try
    assert "event broker back after" in output
    print(f"\n[events broker stopped] repeats: {repeats}; waiting at close: {still}")


@on_single_and_cluster
def test_memory_alarm_mid_flood_holds_events_back_then_they_go(
        events_svc, signer, gunicorn, scheduler, event_queue):
    jobs = scheduler(**EVENT_JOBS)
    campaign_id = open_campaign(events_svc, STOCK)
    try:
        server, (answers, tokens) = flood_through(
            events_svc, signer, gunicorn, campaign_id,
            fault=lambda: rabbitmqctl("set_vm_memory_high_watermark", "0.000001"))
        wait_until(lambda: count_rows(events_svc.engine, campaign_id) == STOCK, timeout=60,
                   what="the flush to go on while the broker blocks publishers")
        held_back = waiting_events(events_svc, campaign_id)
        assert held_back > 0
        told, _, _ = tickets_told(server.url, campaign_id, answers, tokens)
    finally:
        rabbitmqctl("set_vm_memory_high_watermark", "0.4")
    close_and_check(events_svc, signer, campaign_id, told)
    repeats = assert_events_match_rows(events_svc, event_queue, campaign_id)
    output = jobs.output()
    (outage,) = [line for line in output.splitlines() if "event broker unavailable" in line]
    assert "blocked" in outage.lower()  # pika's blocked-connection timeout, or the confirms'
    assert "event broker back after" in output
    print(f"\n[events memory alarm] repeats: {repeats}; held back: {held_back}")


@on_single_and_cluster
def test_broker_unreachable_at_start_then_every_event_goes(
        events_svc, signer, gunicorn, scheduler, event_queue):
    campaign_id = open_campaign(events_svc, 50)
    try:
        rabbitmqctl("stop_app")
        jobs = scheduler(**EVENT_JOBS)
        server = gunicorn(workers=2)
        results = flood([issue_call(server.url, campaign_id, u, t) for u, t in users(signer, 80)])
        assert Counter(status for _, status, _ in results) == {201: 50, 409: 30}
        wait_until(lambda: count_rows(events_svc.engine, campaign_id) == 50, timeout=60,
                   what="the flush without a broker")
        # every event waits: 50 coupons, opened, and sold_out once the stock sync counted it
        wait_until(lambda: waiting_events(events_svc, campaign_id) == 52, timeout=60,
                   what="the campaign.sold_out event to be written")
    finally:
        rabbitmqctl("start_app")
    repeats = assert_events_match_rows(events_svc, event_queue, campaign_id)
    assert {k for _, k, _ in event_queue.read(campaign_id)} == {events.ISSUED, events.OPENED, events.SOLD_OUT}
    (outage,) = [line for line in jobs.output().splitlines() if "event broker unavailable" in line]
    assert "cannot connect" in outage
    print(f"\n[events broker unreachable at start] repeats: {repeats}")


def test_without_events_url_nothing_is_written_or_published(svc, signer, gunicorn, scheduler, event_queue):
    jobs = scheduler(**FAST_JOBS)  # EVENTS_URL unset
    campaign_id = open_campaign(svc, STOCK)
    server, (answers, tokens) = flood_through(svc, signer, gunicorn, campaign_id)
    told, _, _ = tickets_told(server.url, campaign_id, answers, tokens)
    close_and_check(svc, signer, campaign_id, told)
    with svc.engine.connect() as conn:
        for table in (db.event_outbox, db.issued_events):
            assert conn.execute(select(func.count()).select_from(table)
                                .where(table.c.campaign_id == campaign_id)).scalar_one() == 0
    assert event_queue.read(campaign_id) == []
    assert "events" not in jobs.output().split("jobs: ", 1)[1].splitlines()[0]
