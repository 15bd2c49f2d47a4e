"""Events (coupon/events.py) in this process against the machine's real broker (127.0.0.1:5672,
guest/guest) and MariaDB: `flask events tail` prints what is published and refuses clearly; the
status and the operators' page say how many events are still to go. A flood's events through
real gunicorns and schedulers, with the broker stopped or blocking: e2e/test_events.py."""
import json
import threading
import uuid

from coupon import campaigns, create_app, events
from loadtest.harness import open_campaign
from tests.services import EVENTS_URL
from tests.support import app_config


def test_tail_prints_events_as_they_come(events_svc, mysql_url, redis_target):
    runner = create_app(app_config(mysql_url, redis_target, EVENTS_URL=EVENTS_URL)).test_cli_runner()
    result = {}
    thread = threading.Thread(target=lambda: result.update(
        out=runner.invoke(args=["events", "tail", "--count", "1", "--seconds", "60",
                                "--pattern", "campaign.stock_added"])))
    thread.start()
    publisher = events.Publisher(events_svc.engine, events_svc.config)
    sent = []
    try:
        while thread.is_alive() and len(sent) < 200:  # until the tail's queue is bound and hears one
            request_id = uuid.uuid4().hex
            with events_svc.engine.begin() as conn:
                events.record(events_svc.config, conn, 999_999, events.STOCK_ADDED, request_id,
                              request_id=request_id, amount=1)
            sent.append(f"999999:stock_added:{request_id}")
            publisher.publish()
            thread.join(0.2)
    finally:
        publisher.close()
        thread.join(60)
    out = result["out"]
    assert out.exit_code == 0, out.output
    message_id, routing_key, body = out.output.strip().split("\t")
    assert message_id in sent and routing_key == events.STOCK_ADDED
    assert json.loads(body)["request_id"] == message_id.rsplit(":", 1)[1]


def test_tail_refuses_clearly(app, mysql_url, redis_target):
    result = app.test_cli_runner().invoke(args=["events", "tail", "--count", "1"])
    assert result.exit_code == 1
    assert "NO_EVENTS" in result.output and "Traceback" not in result.output
    unreachable = create_app(app_config(mysql_url, redis_target,
                                        EVENTS_URL="amqp://guest:guest@127.0.0.1:1/"))
    result = unreachable.test_cli_runner().invoke(args=["events", "tail", "--seconds", "1"])
    assert result.exit_code == 1
    assert "UNAVAILABLE" in result.output and "Traceback" not in result.output


def test_status_and_ops_page_say_how_many_events_are_still_to_go(mysql_url, redis_target):
    app = create_app(app_config(mysql_url, redis_target, EVENTS_URL=EVENTS_URL))
    svc = app.extensions["coupon"]
    campaign_id = open_campaign(svc, 10)  # its campaign.opened waits: no events job runs here
    for request_id in ("r1", "r2"):
        campaigns.add_stock(svc, campaign_id, 5, request_id)
    campaigns.add_stock(svc, campaign_id, 5, "r1")  # asked again: added once, told once

    result = app.test_cli_runner().invoke(args=["campaign", "status", str(campaign_id)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["events"]["pending"] == 3
    live = app.test_client().get(f"/ops/live.json?campaign={campaign_id}").json
    assert live["campaign"]["events"]["pending"] == 3
    assert live["campaign"]["events"]["lag_seconds"] >= 0
    svc.engine.dispose()
