"""coupon/events.py's rows and config/settings.py's check of EVENTS_URL, without services."""
import datetime as dt
import json

import pytest
from flask import Config

from config.settings import load_into
from coupon import events


def test_each_coupon_row_becomes_its_issued_event_under_a_stable_message_id():
    rows = [{"campaign_id": 7, "user_id": "u1", "serial": 42, "code": "abc",
             "issued_at": dt.datetime(2026, 12, 6, 20, 0, 0, 123000)}]
    (event,) = events.issued_rows(rows)
    assert (event["message_id"], event["campaign_id"], event["routing_key"]) == ("7:42", 7, "coupon.issued")
    assert json.loads(event["body"]) == {"event": "coupon.issued", "campaign_id": 7, "user_id": "u1",
                                         "serial": 42, "code": "abc", "issued_at": "2026-12-06T20:00:00.123Z"}


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
