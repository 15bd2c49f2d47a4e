"""coupon/events.py's rows and config/settings.py's check of EVENTS_URL, without services."""
import datetime as dt
import json

import pytest
from flask import Config
from sqlalchemy import insert, select

from config.settings import load_into
from coupon import db, events


def test_a_coupon_event_is_written_as_its_key_once():
    engine = db.make_engine("sqlite://")  # MariaDB's: tests/e2e/test_events.py
    db.init_db(engine)
    rows = [{"campaign_id": 7, "user_id": f"u{n}", "serial": n, "code": "abc",
             "issued_at": dt.datetime(2026, 12, 6, 20, 0, 0, 123000)} for n in (41, 42)]
    for written in (rows, rows[1:], []):  # an entry replayed: its event is kept, not doubled
        with engine.begin() as conn:
            events.write_issued(conn, written)
    with engine.connect() as conn:
        assert conn.execute(select(db.issued_events)).all() == [(7, 41), (7, 42)]


@pytest.mark.parametrize("user_id, issued_at, shown", [
    ("u1", dt.datetime(2026, 12, 6, 20, 0, 0, 123000), "2026-12-06T20:00:00.123Z"),
    ('a "quoted\\ üser', dt.datetime(2026, 12, 6, 20, 0, 0), "2026-12-06T20:00:00.000Z")])
def test_the_database_builds_the_issued_body_from_the_coupon_row(user_id, issued_at, shown):
    engine = db.make_engine("sqlite://")  # MariaDB's: tests/e2e/test_events.py
    db.init_db(engine)
    with engine.begin() as conn:
        conn.execute(insert(db.coupons), [{"campaign_id": 7, "user_id": user_id, "serial": 42,
                                           "code": "abc", "issued_at": issued_at}])
        body = conn.execute(select(events.issued_body(db.coupons.c))).scalar_one()
    assert json.loads(body) == {"event": "coupon.issued", "campaign_id": 7, "user_id": user_id,
                                "serial": 42, "code": "abc", "issued_at": shown}
    assert list(json.loads(body)) == ["event", "campaign_id", "user_id", "serial", "code", "issued_at"]


@pytest.mark.parametrize("url", ["http://broker:5672/", "redis://127.0.0.1/", "127.0.0.1:5672"])
def test_an_events_url_that_is_not_amqp_is_refused(url, monkeypatch):
    monkeypatch.setenv("EVENTS_URL", url)
    with pytest.raises(RuntimeError, match="EVENTS_URL must be an amqp://"):
        load_into(Config("."))


@pytest.mark.parametrize("url", ["", "amqp://guest:guest@127.0.0.1:5672/", "amqps://u:p@mq.example/vh"])
def test_amqp_urls_and_none_are_taken(url, monkeypatch):
    monkeypatch.setenv("EVENTS_URL", url)
    assert events.enabled(load_into(Config("."))) == bool(url)


def test_a_window_counts_an_event_sent_only_once_the_broker_acked_it():
    window = events.Window(None, first=11, ids=[101, 102, 103, 104, 105])
    window.settle(12, multiple=True, ack=True)  # tags 11 and 12
    window.settle(14, multiple=False, ack=False)  # a nack: sent again later
    assert not window.done.is_set()
    window.settle(15, multiple=True, ack=True)  # 13 and 15; 14 stays nacked
    assert window.done.is_set() and window.failure is None
    assert window.confirmed() == [101, 102, 103, 105]


def test_a_window_that_fails_keeps_what_was_acked_before():
    window = events.Window(None, first=1, ids=[7, 8, 9])
    window.settle(1, multiple=False, ack=True)
    window.fail(events.BrokerUnavailable("connection lost"))
    assert window.done.is_set() and str(window.failure) == "connection lost"
    assert window.confirmed() == [7]
