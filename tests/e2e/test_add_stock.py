"""`flask campaign add-stock`: more coupons for a live campaign, under a real flood through real
gunicorns, on a single Redis and the cluster; exact, recorded in the database, idempotent per
request id; the stock sync raising Redis to the database's; refusals, and a real scheduler closing
the campaign. Additions asked at the same time, in this process: integration/test_add_stock.py."""
import json
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import update

from coupon import campaigns, db
from coupon.clock import now_ms, parse_time, to_ms, utcnow
from coupon.queries import campaign_row
from coupon.recovery import recover_campaign
from coupon.redis_state import issued_in_redis
from jobs.stock_sync import sync_stock
from loadtest.harness import open_campaign, users, wait_until
from tests.support import FAST_JOBS, additions, flood, issue_call, on_single_and_cluster

pytestmark = on_single_and_cluster
REFRESH = 0.5  # the workers' STATE_REFRESH in these tests


def new_tickets(results):
    return [body for _, status, body in results if status == 201]


def until_every_worker_asks_again(since):
    """Wait until every worker asks Redis again at its next request, a few STATE_REFRESH after `since`.

    since: time.monotonic() once the stock was raised. A worker answers SOLD_OUT for STATE_REFRESH
    after its last lease was refused, and every refusal came before `since`. A time, not a
    condition to poll: no request can tell, as the kernel picks the worker that answers it (one
    may answer them all while the other still holds its SOLD_OUT)."""
    time.sleep(max(0.0, since + REFRESH * 4 - time.monotonic()))


def test_stock_added_under_a_flood_is_issued_after_the_existing_serials(svc, signer, gunicorn,
                                                                         runner):
    server = gunicorn(workers=2, STATE_REFRESH=REFRESH)
    campaign_id = open_campaign(svc, 300)
    people = users(signer, 1300)
    first, fresh = people[:1000], people[1000:]
    flooding = ThreadPoolExecutor(1).submit(
        flood, [issue_call(server.url, campaign_id, u, t) for u, t in first], 50)
    # sold out: from here the flood hears SOLD_OUT until the addition (and a refresh)
    wait_until(lambda: issued_in_redis(svc.redis, svc.keys(campaign_id)) == 300, timeout=120)
    assert not flooding.done(), "the flood ended before the sell-out: make it longer"
    added_ms = now_ms()
    added = runner.invoke(args=["campaign", "add-stock", str(campaign_id), "500", "--request-id", "r-1"])
    assert added.exit_code == 0, added.output
    raised = time.monotonic()
    assert f"campaign {campaign_id}: added 500 coupons, 800 in all" in added.output
    again = runner.invoke(args=["campaign", "add-stock", str(campaign_id), "500", "--request-id", "r-1"])
    assert again.exit_code == 0, again.output
    assert "nothing more added, 800 in all" in again.output
    during = flooding.result(timeout=300)

    # the users refused meanwhile, and newcomers, once every worker has looked again
    until_every_worker_asks_again(raised)
    refused = [(u, t) for (u, t), (_, status, _) in zip(first, during) if status == 409]
    after = flood([issue_call(server.url, campaign_id, u, t) for u, t in refused + fresh], 50)

    results = during + after
    tickets = new_tickets(results)
    assert {status for _, status, _ in results} <= {201, 409}
    assert len(tickets) == 800
    assert len({t["user_id"] for t in tickets}) == 800
    assert sorted(t["serial"] for t in tickets) == list(range(1, 801))
    assert all(t["code"] == signer.ticket_code(campaign_id, t["serial"]) for t in tickets)
    # the first 300 went before the addition, the new serials after it
    for t in tickets:
        issued_ms = to_ms(parse_time(t["issued_at"]))
        assert issued_ms >= added_ms if t["serial"] > 300 else issued_ms <= added_ms, t
    assert {b["error"]["code"] for _, s, b in results if s == 409} == {"SOLD_OUT"}
    assert sum(1 for _, s, _ in after if s == 201) == 800 - sum(1 for _, s, _ in during if s == 201)

    assert campaign_row(svc.engine, campaign_id).total == 800
    assert additions(svc, campaign_id) == [("r-1", 500, 800)]
    status = json.loads(runner.invoke(args=["campaign", "status", str(campaign_id)]).output)
    assert (status["total"], status["issued"], status["status"]) == (800, 800, "sold_out")
    assert [(a["request_id"], a["amount"]) for a in status["stock_additions"]] == [("r-1", 500)]
    report = campaigns.close_campaign(svc, campaign_id)
    assert report.agree and report.mysql_rows == 800, report.lines()
    closed = runner.invoke(args=["campaign", "add-stock", str(campaign_id), "10"])
    assert closed.exit_code == 1 and "INVALID_CAMPAIGN" in closed.output
    assert "is closed" in closed.output and "Traceback" not in closed.output
    assert campaign_row(svc.engine, campaign_id).total == 800


def test_the_stock_sync_raises_redis_to_what_the_database_committed(svc, signer, gunicorn):
    """What an addition whose Redis part failed leaves (the database raised, Redis not):
    the stock sync job raises Redis, and the sale goes on; never the other way round."""
    server = gunicorn(workers=2, STATE_REFRESH=REFRESH)
    campaign_id = open_campaign(svc, 50)
    people = users(signer, 120)
    sold = flood([issue_call(server.url, campaign_id, u, t) for u, t in people[:60]])
    assert Counter(s for _, s, _ in sold) == {201: 50, 409: 10}
    with svc.engine.begin() as conn:
        conn.execute(update(db.campaigns).where(db.campaigns.c.id == campaign_id).values(total=80))

    sync_stock(svc)

    raised = time.monotonic()
    assert svc.redis.hget(svc.keys(campaign_id).meta, "total") == "80"
    until_every_worker_asks_again(raised)
    more = flood([issue_call(server.url, campaign_id, u, t) for u, t in people[60:]])
    assert Counter(s for _, s, _ in more) == {201: 30, 409: 30}
    assert sorted(t["serial"] for t in new_tickets(sold + more)) == list(range(1, 81))
    assert campaigns.close_campaign(svc, campaign_id).agree


def test_add_stock_refusals_change_nothing(svc, runner, scheduler):
    campaign_id = open_campaign(svc, 10)
    meta = svc.keys(campaign_id).meta

    def refused(*args, exit_code=1):
        result = runner.invoke(args=["campaign", "add-stock", *map(str, args)])
        assert result.exit_code == exit_code, (args, result.output)
        assert "Traceback" not in result.output
        assert campaign_row(svc.engine, campaign_id).total == 10
        assert svc.redis.hget(meta, "total") == "10"
        return result.output

    assert "CAMPAIGN_NOT_FOUND" in refused(987654321, 5)
    assert "CAMPAIGN_NOT_FOUND" in refused(99999999999999999999, 5)
    for amount in (0, -3, "x", campaigns.MAX_STOCK + 1):
        assert "AMOUNT" in refused(campaign_id, amount, exit_code=2)
    for request_id in ("", "a b", "x" * 65, "é"):
        assert "--request-id" in refused(campaign_id, 5, "--request-id", request_id, exit_code=2)
    assert "would pass" in refused(campaign_id, campaigns.MAX_STOCK)
    assert additions(svc, campaign_id) == []

    ok = runner.invoke(args=["campaign", "add-stock", str(campaign_id), "5", "--request-id", "r-1"])
    assert ok.exit_code == 0, ok.output
    assert "REQUEST_ID_REUSED" in runner.invoke(
        args=["campaign", "add-stock", str(campaign_id), "6", "--request-id", "r-1"]).output
    unnamed = runner.invoke(args=["campaign", "add-stock", str(campaign_id), "7"])
    assert unnamed.exit_code == 0 and "request id " in unnamed.output  # printed, to ask again
    assert campaign_row(svc.engine, campaign_id).total == 22

    # Redis lost the campaign: refused until `recover` rebuilds it, which keeps the added stock
    svc.redis.delete(meta)
    lost = runner.invoke(args=["campaign", "add-stock", str(campaign_id), "5"])
    assert lost.exit_code == 1 and "CAMPAIGN_LOST" in lost.output
    recover_campaign(svc, campaign_id)
    assert svc.redis.hget(meta, "total") == "22"

    # a campaign whose closes_at has passed takes no more, even before the scheduler closes it
    with svc.engine.begin() as conn:
        conn.execute(update(db.campaigns).where(db.campaigns.c.id == campaign_id)
                     .values(closes_at=utcnow()))
    ended = runner.invoke(args=["campaign", "add-stock", str(campaign_id), "5"])
    assert ended.exit_code == 1 and "is closed" in ended.output
    assert campaign_row(svc.engine, campaign_id).total == 22
    scheduler(**FAST_JOBS)
    wait_until(lambda: campaign_row(svc.engine, campaign_id).status == "closed", timeout=60)
    # asked again after the close, an addition made before is still answered as made
    retried = runner.invoke(args=["campaign", "add-stock", str(campaign_id), "5", "--request-id", "r-1"])
    assert retried.exit_code == 0 and "nothing more added, 22 in all" in retried.output
