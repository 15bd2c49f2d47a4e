"""The operators' page (/ops/) through Flask's test client, against the real Redis and MariaDB:
what live.json and replay.json say, bad ids, and HTTP Basic in production (401, 404)."""
import base64
import threading
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sqlalchemy import delete, insert, inspect, select, text

from coupon import campaigns, create_app, db, ops_readers, queries, redis_state
from coupon.clock import parse_time, to_ms, utcnow
from coupon.db import init_db
from coupon.errors import ReconcileMismatch
from coupon.flusher import Flusher
from coupon.keys import ACTIVE, SCHEDULER_LEADER
from coupon.recovery import recover_campaign
from loadtest.harness import open_campaign, wait_until
from tests.support import app_config, assert_error, issue, issue_directly, on_single_and_cluster

PASSWORD = "ops-password-for-tests"


def basic(user, password):
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def into_the_next_second(svc, ticket):
    """Wait until Redis's clock, as svc reads it, is in an epoch second after the one the ticket
    was stamped in (20 ms past its start: the offset measured last may be off by a few), so that
    what is claimed next is counted in a later second."""
    next_second = (ticket.issued_at_ms // 1000 + 1) * 1000
    wait_until(lambda: svc.clock.now_ms() >= next_second + 20, timeout=5, interval=0.01,
               what="the next second")


@on_single_and_cluster
def test_live_json_shows_a_sale_in_progress(client, svc, signer, redis_client):
    campaign_id = open_campaign(svc, 100_000, "ops live")  # not at the tail: leased in blocks
    for user in ("a", "b", "c", "a"):
        issue(client, campaign_id, signer.mint(user))

    page = client.get("/ops/")
    assert page.status_code == 200 and page.content_type.startswith("text/html")
    assert b"/ops/live.json" in page.data and b"uPlot.iife.min.js" in page.data

    state = client.get(f"/ops/live.json?campaign={campaign_id}").json
    c = state["campaign"]
    assert (c["id"], c["issued"], c["remaining"], c["status"], c["live"]) == (campaign_id, 3, 99_997, "open", True)
    assert c["outbox"]["backlog"] == 3  # no flusher runs in this test
    assert c["outbox"]["flush_lag_seconds"] >= 0
    [lease] = c["leases"]  # this process's worker leased one block
    block = svc.config["BLOCK_SIZE"]
    assert lease["serials"] == block and 0 < lease["expires_in"] <= svc.config["LEASE_TTL"]
    assert lease["worker"].split(":")[1].isdigit()
    assert "sold_out_after_seconds" not in c and "replay_url" not in c
    # this host's counters: the answers of this app, all of them timed
    host = state["this_host"]
    assert host["answers"] == {"NEW": 3, "HELD": 1}
    assert host["latency_buckets"][-1] == [None, 4]
    # serials of the block not handed out (the gauge moves in steps: supply.GAUGE_STEP)
    assert block - 32 < host["block_serials"][str(campaign_id)] <= block
    assert state["campaigns"][0]["id"] == campaign_id
    assert state["health"]["redis"]["ok"] and state["health"]["database"]["ok"]
    assert not state["health"]["scheduler"]["ok"]

    redis_client.set(SCHEDULER_LEADER, "host:1:abc", px=5000)
    assert client.get("/ops/live.json").json["health"]["scheduler"] == {"ok": True, "detail": "leader host:1:abc"}


def test_live_campaigns_come_first_then_recently_closed(client, svc, signer):
    closed = open_campaign(svc, 2, "ops closed")
    issue_directly(svc, closed, "x")
    campaigns.close_campaign(svc, closed)
    older, newer = open_campaign(svc, 5, "ops older"), open_campaign(svc, 5, "ops newer")

    state = client.get("/ops/live.json").json
    listed = [(c["id"], c["live"]) for c in state["campaigns"]]
    assert listed[:3] == [(newer, True), (older, True), (closed, False)]
    assert state["campaign"]["id"] == newer  # the newest live one, when none is asked for
    closed_view = client.get(f"/ops/live.json?campaign={closed}").json["campaign"]
    assert closed_view["live"] is False and closed_view["status"] == "closed"
    assert closed_view["replay_url"] == f"/ops/campaigns/{closed}/replay.json"


def test_sold_out_campaign_says_when_it_sold_out(client, svc):
    campaign_id = open_campaign(svc, 2, "ops sold out")
    issue_directly(svc, campaign_id, "p")
    issue_directly(svc, campaign_id, "q")
    view = client.get(f"/ops/live.json?campaign={campaign_id}").json["campaign"]
    assert view["status"] == "sold_out"
    assert view["sold_out_after_seconds"] is None  # the rows are not in the database yet
    Flusher(svc, consumer="test").flush([campaign_id])
    state = client.get(f"/ops/live.json?campaign={campaign_id}").json
    assert 0 <= state["campaign"]["sold_out_after_seconds"] < 30
    # the flush's figures, by flusher: the page's batch time and each one's rows/s
    spent = state["this_host"]["time"]
    assert spent["flush_rounds"] == 1 and spent["by_flusher"]["test"]["rows"] == 2
    [flusher] = spent["by_flusher"].values()
    assert flusher["rounds"] == 1 and flusher["seconds"] == pytest.approx(sum(spent["flush"].values()))


@pytest.mark.parametrize("counted", ["by Redis", "by the database"])
def test_replay_of_a_closed_sale(client, svc, counted):
    campaign_id = open_campaign(svc, 5, "ops replay")
    tickets = [issue_directly(svc, campaign_id, user) for user in ("r1", "r2", "r3")]
    into_the_next_second(svc, tickets[-1])  # the last two a second later
    tickets += [issue_directly(svc, campaign_id, user) for user in ("r4", "r5")]
    if counted == "by the database":  # a state older than Redis's counts per second
        svc.redis.delete(*(shard.per_second for shard in svc.keys(campaign_id).all_shards()))
    campaigns.close_campaign(svc, campaign_id)

    replay = client.get(f"/ops/campaigns/{campaign_id}/replay.json").json
    assert (replay["rows"], replay["total"], replay["step_seconds"]) == (5, 5, 1)
    issues = replay["issues"]
    assert sum(issues) == 5 and len(issues) >= 2
    first_second = issues.index(next(n for n in issues if n))
    assert issues[first_second] == 3 and sum(issues[first_second + 1:]) == 2
    start = to_ms(parse_time(replay["opened_at"])) // 1000
    assert per_second(start, 1, issues) == rows_per_second(svc, campaign_id)
    assert abs(replay["sold_out_after_seconds"] - seconds_to(replay["opened_at"], tickets[-1])) <= 0.002
    rec = replay["reconciliation"]
    assert rec["agree"] is True and rec["lines"][0].startswith("the close of 20")
    assert f"campaign {campaign_id}: redis claims 5, redis counter 5, database rows 5: AGREE" in rec["lines"]
    # what the page served is what the close counted and recorded, not counted again
    recorded = queries.close_report(svc.engine, campaign_id)
    assert recorded["agree"] and recorded["replay"] == {
        k: replay[k] for k in ("rows", "opened_at", "step_seconds", "issues", "sold_out_after_seconds")}


def test_replay_says_what_the_last_close_found_and_never_reconciles_itself(client, svc):
    campaign_id = open_campaign(svc, 5, "ops kept")
    issue_directly(svc, campaign_id, "k1")
    Flusher(svc, consumer="test").flush([campaign_id])

    def reconciliation():
        return client.get(f"/ops/campaigns/{campaign_id}/replay.json").json["reconciliation"]

    close = f"flask campaign close {campaign_id}"
    rec = reconciliation()  # live: Redis and the database are compared at close, not here
    assert rec["agree"] is None and len(rec["lines"]) == 1
    assert "not reconciled yet: the sale is live" in rec["lines"][0] and close in rec["lines"][0]


    campaigns.stop_issuing(svc, campaign_id)  # closed, not drained nor reconciled
    rec = reconciliation()
    assert rec["agree"] is None and "not reconciled yet: closed" in rec["lines"][0]

    # a row Redis does not know of: the close finds it, records it and keeps the keys
    with svc.engine.begin() as conn:
        conn.execute(insert(db.coupons).values(campaign_id=campaign_id, user_id="stray", serial=5,
                                               code="x", issued_at=utcnow()))
    with pytest.raises(ReconcileMismatch):
        campaigns.close_campaign(svc, campaign_id)
    rec = reconciliation()
    assert rec["agree"] is False and rec["lines"][0].startswith("the close of 20")
    assert f"campaign {campaign_id}: redis claims 1, redis counter 1, database rows 2: DIFFER" in rec["lines"]
    assert "  in the database, not in redis: 1" in rec["lines"] and "    stray" in rec["lines"]
    assert close in rec["lines"][-1]

    with svc.engine.begin() as conn:  # the operator removes it and closes again
        conn.execute(delete(db.coupons).where(db.coupons.c.campaign_id == campaign_id,
                                              db.coupons.c.user_id == "stray"))
    campaigns.close_campaign(svc, campaign_id)
    replay = client.get(f"/ops/campaigns/{campaign_id}/replay.json").json
    assert replay["rows"] == 1 and replay["reconciliation"]["agree"] is True
    assert "database rows 1: AGREE" in replay["reconciliation"]["lines"][1]


def test_replay_of_a_sold_out_sale_not_closed_says_so(client, svc):
    campaign_id = open_campaign(svc, 2, "ops sold out")
    for user in ("s1", "s2"):
        issue_directly(svc, campaign_id, user)
    Flusher(svc, consumer="test").flush([campaign_id])
    rec = client.get(f"/ops/campaigns/{campaign_id}/replay.json").json["reconciliation"]
    assert rec["agree"] is None and len(rec["lines"]) == 1 and "live" not in rec["lines"][0]
    assert rec["lines"][0] == (f"not reconciled yet: sold out, not closed; `flask campaign close "
                               f"{campaign_id}` drains, reconciles and releases it")


def test_replay_of_a_campaign_closed_before_close_reports(client, svc):
    """Closed by a version that recorded no report: the release says they agreed."""
    campaign_id = open_campaign(svc, 3, "ops old close")
    issue_directly(svc, campaign_id, "o1")
    campaigns.close_campaign(svc, campaign_id)
    with svc.engine.begin() as conn:
        conn.execute(delete(db.close_reports).where(db.close_reports.c.campaign_id == campaign_id))
    replay = client.get(f"/ops/campaigns/{campaign_id}/replay.json").json
    assert replay["rows"] == sum(replay["issues"]) == 1 and replay["sold_out_after_seconds"] is None
    assert replay["reconciliation"] == {"agree": True, "lines": [
        f"campaign {campaign_id}: Redis and the database agreed at close on 1 tickets"]}


def test_replay_on_sqlite(tmp_path, redis_target):
    """The embedded default counts the seconds too (strftime, not TIMESTAMPDIFF)."""
    app = create_app(app_config(f"sqlite:///{tmp_path}/coupon.db", redis_target))
    assert app.test_cli_runner().invoke(args=["db", "init"]).exit_code == 0
    svc = app.extensions["coupon"]
    campaign_id = open_campaign(svc, 4, "ops sqlite")
    tickets = [issue_directly(svc, campaign_id, user) for user in ("q1", "q2")]
    into_the_next_second(svc, tickets[-1])
    issue_directly(svc, campaign_id, "q3")
    campaigns.close_campaign(svc, campaign_id)
    replay = app.test_client().get(f"/ops/campaigns/{campaign_id}/replay.json").json
    start = to_ms(parse_time(replay["opened_at"])) // 1000
    assert per_second(start, replay["step_seconds"], replay["issues"]) == rows_per_second(svc, campaign_id)
    assert replay["rows"] == 3 and replay["reconciliation"]["agree"] is True
    svc.engine.dispose()


def test_ids_another_database_left_in_the_registry_are_not_listed(tmp_path, redis_target, redis_client):
    """Redis's registry of live campaigns may hold another database's ids, of any size: the page
    lists this database's campaigns, and never asks it for an id no row can have (SQLite
    refuses to bind one beyond 64 bits)."""
    app = create_app(app_config(f"sqlite:///{tmp_path}/coupon.db", redis_target))
    assert app.test_cli_runner().invoke(args=["db", "init"]).exit_code == 0
    svc = app.extensions["coupon"]
    campaign_id = open_campaign(svc, 4, "ops ours")
    redis_client.sadd(ACTIVE, 10**20, 2**31, 424242)
    state = app.test_client().get("/ops/live.json")
    assert state.status_code == 200, state.get_data(as_text=True)
    assert [c["id"] for c in state.json["campaigns"]] == [campaign_id]
    svc.engine.dispose()


def test_db_init_adds_the_replay_index_to_a_table_made_before_it(svc):
    def indexes():
        return {ix["name"] for ix in inspect(svc.engine).get_indexes("coupons")}

    with svc.engine.begin() as conn:
        conn.execute(text("DROP INDEX ix_coupon_issued_at ON coupons"))
    assert "ix_coupon_issued_at" not in indexes()
    init_db(svc.engine)
    assert "ix_coupon_issued_at" in indexes()
    init_db(svc.engine)  # again: nothing to do


def rows_per_second(svc, campaign_id):
    """The campaign's coupons in the database counted per epoch second, here in Python."""
    with svc.engine.connect() as conn:
        times = conn.execute(select(db.coupons.c.issued_at)
                             .where(db.coupons.c.campaign_id == campaign_id)).scalars().all()
    return Counter(to_ms(t) // 1000 for t in times)


def seconds_to(opened_at, ticket):
    """A sale's seconds from its opening (ISO, as replay.json says it, to the ms) to the ticket's
    stamp: what replay.json says within a ms or two of rounding."""
    return round((ticket.issued_at_ms - to_ms(parse_time(opened_at))) / 1000, 3)


def per_second(start, step, issues):
    """{epoch second: coupons} of a history or replay counted per second, the empty ones left out."""
    assert step == 1
    return {start + i: n for i, n in enumerate(issues) if n}


@on_single_and_cluster
def test_history_of_a_live_sale_counts_every_claim_per_second(client, svc):
    campaign_id = open_campaign(svc, 100, "ops history")
    tickets = [issue_directly(svc, campaign_id, user) for user in ("h1", "h2", "h3")]
    into_the_next_second(svc, tickets[-1])
    tickets += [issue_directly(svc, campaign_id, user) for user in ("h4", "h5")]
    Flusher(svc, consumer="test").flush([campaign_id])
    into_the_next_second(svc, tickets[-1])
    tickets.append(issue_directly(svc, campaign_id, "h6"))  # in the outbox, not in the database
    into_the_next_second(svc, tickets[-1])  # the history ends at a whole second: the one of h6 is over

    view = client.get(f"/ops/live.json?campaign={campaign_id}").json["campaign"]
    assert view["history_url"] == f"/ops/campaigns/{campaign_id}/history.json"
    history = client.get(view["history_url"]).json
    opened = to_ms(parse_time(view["opens_at"])) // 1000
    assert history["start"] == opened and history["step_seconds"] == 1
    assert history["until"] == history["start"] + len(history["issues"])
    assert history["until"] > tickets[-1].issued_at_ms / 1000
    # every claim, in the database or not yet, in the second it was stamped
    claimed = Counter(t.issued_at_ms // 1000 for t in tickets)
    assert history["rows"] == sum(history["issues"]) == 6
    assert per_second(history["start"], 1, history["issues"]) == claimed
    assert len(claimed) >= 3  # three seconds at least: a shape to compare
    Flusher(svc, consumer="test").flush([campaign_id])
    assert rows_per_second(svc, campaign_id) == claimed  # what the rows will say


@on_single_and_cluster
def test_a_recovered_sale_counts_its_seconds_as_before_redis_lost_it(client, svc):
    campaign_id = open_campaign(svc, 100, "ops recovered history")
    tickets = [issue_directly(svc, campaign_id, user) for user in ("r1", "r2")]
    into_the_next_second(svc, tickets[-1])
    tickets.append(issue_directly(svc, campaign_id, "r3"))
    Flusher(svc, consumer="test").flush([campaign_id])
    redis_state.delete_keys(svc.redis, svc.keys(campaign_id))  # Redis lost it
    svc.redis.srem(ACTIVE, campaign_id)
    recover_campaign(svc, campaign_id)
    into_the_next_second(svc, tickets[-1])
    tickets.append(issue_directly(svc, campaign_id, "r4"))  # the sale goes on
    into_the_next_second(svc, tickets[-1])

    history = client.get(f"/ops/campaigns/{campaign_id}/history.json").json
    claimed = Counter(t.issued_at_ms // 1000 for t in tickets)
    assert history["rows"] == 4 and per_second(history["start"], 1, history["issues"]) == claimed
    assert len(claimed) >= 3


def test_sold_out_sale_not_closed_has_its_replay_once_its_rows_are_in(client, svc):
    campaign_id = open_campaign(svc, 3, "ops sold out replay")
    tickets = [issue_directly(svc, campaign_id, "s1")]
    into_the_next_second(svc, tickets[-1])
    tickets += [issue_directly(svc, campaign_id, user) for user in ("s2", "s3")]
    view = client.get(f"/ops/live.json?campaign={campaign_id}").json["campaign"]
    assert view["status"] == "sold_out" and "replay_url" not in view  # the rows are not all in
    Flusher(svc, consumer="test").flush([campaign_id])

    view = client.get(f"/ops/live.json?campaign={campaign_id}").json["campaign"]
    assert (view["status"], view["live"]) == ("sold_out", True)
    replay = client.get(view["replay_url"]).json
    assert (replay["rows"], replay["total"]) == (3, 3)
    start = to_ms(parse_time(replay["opened_at"])) // 1000
    assert per_second(start, replay["step_seconds"], replay["issues"]) == rows_per_second(svc, campaign_id)
    assert replay["sold_out_after_seconds"] == view["sold_out_after_seconds"]
    assert abs(replay["sold_out_after_seconds"] - seconds_to(replay["opened_at"], tickets[-1])) <= 0.002
    assert replay["reconciliation"]["agree"] is None  # live: not reconciled yet


def test_a_poll_says_the_highest_backlog_since_the_previous_one(app, client, svc):
    campaign_id = open_campaign(svc, 100, "ops peak")
    first = client.get(f"/ops/live.json?campaign={campaign_id}").json  # the worker starts reading
    for user in ("p1", "p2", "p3", "p4", "p5"):
        issue_directly(svc, campaign_id, user)
    readings = app.extensions["coupon_ops"].outbox.readings  # the worker's, between polls
    wait_until(lambda: any(backlog == 5 for _, backlog, _ in readings.get(campaign_id, ())),
               timeout=10, what="the worker to read the backlog of 5")
    Flusher(svc, consumer="test").flush([campaign_id])

    second = client.get(f"/ops/live.json?campaign={campaign_id}&since={first['now']}").json
    outbox = second["campaign"]["outbox"]
    assert (outbox["backlog"], outbox["flush_lag_seconds"]) == (0, 0.0)  # now: flushed
    assert outbox["peak_backlog"] == 5 and outbox["peak_flush_lag_seconds"] > 0  # in between
    assert outbox["readings"] >= 2
    third = client.get(f"/ops/live.json?campaign={campaign_id}&since={second['now']}").json
    assert third["campaign"]["outbox"]["peak_backlog"] == 0  # nothing since the second poll
    without = client.get(f"/ops/live.json?campaign={campaign_id}&since=nan").json["campaign"]["outbox"]
    assert without["readings"] == 1 and without["peak_backlog"] == 0  # this poll's reading only


def test_the_list_and_the_campaign_give_the_same_figure(client, svc, make_app, mysql_url):
    campaign_id = open_campaign(svc, 100_000, "ops agree")
    other_host = make_app().extensions["coupon"]  # issues meanwhile, as another host would
    stop = threading.Event()

    def sell():
        n = 0
        while not stop.is_set():
            issue_directly(other_host, campaign_id, f"agree{n}")
            n += 1

    seller = threading.Thread(target=sell)
    seller.start()
    try:
        seen = []
        for _ in range(60):
            state = client.get(f"/ops/live.json?campaign={campaign_id}").json
            [listed] = [c for c in state["campaigns"] if c["id"] == campaign_id]
            seen.append((listed["issued"], state["campaign"]["issued"]))
    finally:
        stop.set()
        seller.join()
    assert len({shown for shown, _ in seen}) > 10  # the sale moved while the page polled
    assert all(listed == shown for listed, shown in seen)


def test_the_page_says_loading_until_its_first_poll_and_has_an_icon(client):
    page = client.get("/ops/").data.decode()
    assert "loading…" in page and "none yet" not in page
    assert '<link rel="icon" href="/favicon.ico" type="image/svg+xml">' in page
    icon = client.get("/favicon.ico")
    assert icon.status_code == 200 and icon.mimetype == "image/svg+xml"
    assert icon.data.startswith(b"<svg") and len(icon.data) < 1024


def test_the_page_answers_while_redis_is_down(svc, mysql_url):
    closed = open_campaign(svc, 2, "ops down closed")
    issue_directly(svc, closed, "d1")
    campaigns.close_campaign(svc, closed)
    live = open_campaign(svc, 5, "ops down live")
    app = create_app(app_config(mysql_url, "redis://127.0.0.1:1/0"))  # nothing listens there
    down = app.test_client()

    for asked in ("", f"?campaign={live}"):
        state = down.get(f"/ops/live.json{asked}")
        assert state.status_code == 200
        health = state.json["health"]
        assert not health["redis"]["ok"] and not health["scheduler"]["ok"] and health["database"]["ok"]
        assert not any(c["live"] for c in state.json["campaigns"])  # what the database says alone
    assert (state.json["campaign"]["id"], state.json["campaign"]["live"]) == (live, False)
    # whether Redis still holds a campaign is unknown: a clear 503, never a 500
    assert_error(down.get(f"/ops/campaigns/{closed}/replay.json"), 503, "UNAVAILABLE")
    assert_error(down.get(f"/ops/campaigns/{live}/history.json"), 503, "UNAVAILABLE")
    app.extensions["coupon"].engine.dispose()


def test_a_poll_answers_from_its_last_reading_while_the_database_does_not(client, svc):
    campaign_id = open_campaign(svc, 100, "ops database stuck")
    live = f"/ops/live.json?campaign={campaign_id}"
    first = client.get(live).json
    assert first["rows_read_now"] and first["health"]["database"] == {"ok": True, "detail": "ok"}
    issue_directly(svc, campaign_id, "stuck1")

    def poll():  # in a thread: a poll waiting on the locked table would never end
        answers = []
        asking = threading.Thread(target=lambda: answers.append(client.get(live)), daemon=True)
        asking.start()
        asking.join(60)
        assert answers, "the poll waited on the database"
        assert answers[0].status_code == 200
        return answers[0].json

    with svc.engine.connect() as locker:
        locker.execute(text("LOCK TABLES campaigns WRITE"))  # every other session's read waits
        try:
            stuck = poll()
            later = wait_until(lambda: (lambda state: state["health"]["database"]["ok"] is False and state)(poll()),
                               timeout=ops_readers.DATABASE_DOWN_AFTER + 10, interval=0.2,
                               what="the page to say the database is down")
        finally:
            locker.execute(text("UNLOCK TABLES"))
    # the rows of the first poll's read; what Redis says, now
    assert (stuck["rows_read_now"], stuck["rows_read_at"]) == (False, first["rows_read_at"])
    assert stuck["health"]["database"]["ok"] and "no answer yet" in stuck["health"]["database"]["detail"]
    assert [(c["id"], c["issued"]) for c in stuck["campaigns"] if c["live"]] == [(campaign_id, 1)]
    assert (stuck["campaign"]["id"], stuck["campaign"]["issued"]) == (campaign_id, 1)
    assert stuck["health"]["redis"]["ok"]
    assert later["health"]["database"]["ok"] is False
    assert later["health"]["database"]["detail"].startswith("down: no answer for")
    assert later["rows_read_at"] == first["rows_read_at"]

    # the read under way ends; then a poll reads again and waits for it
    state = wait_until(lambda: (lambda state: state["rows_read_now"] and state)(client.get(live).json),
                       timeout=30, interval=0.1, what="a poll to read the rows again")
    assert state["health"]["database"] == {"ok": True, "detail": "ok"}
    assert state["rows_read_at"] > first["rows_read_at"]


@pytest.mark.parametrize("path", ["/ops/live.json?campaign={}", "/ops/campaigns/{}/replay.json"])
@pytest.mark.parametrize("bad_id", ["abc", "0", "-1", "2147483648", "1e3", "99999999"])
def test_bad_campaign_ids_are_not_found_and_write_nothing(client, redis_client, path, bad_id):
    before = redis_client.dbsize()
    assert_error(client.get(path.format(bad_id)), 404, "CAMPAIGN_NOT_FOUND")
    assert redis_client.dbsize() == before


def test_production_asks_for_the_password(make_app):
    client = make_app(ENV="production", OPS_PASSWORD=PASSWORD).test_client()
    for path in ("/ops/", "/ops/live.json", "/ops/campaigns/1/replay.json"):
        for headers in ({}, basic("ops", "wrong"), basic("ops", ""), {"Authorization": "Bearer " + PASSWORD}):
            response = client.get(path, headers=headers)
            assert_error(response, 401, "UNAUTHORIZED")
            assert response.headers["WWW-Authenticate"].startswith("Basic ")
    assert client.get("/ops/", headers=basic("anyone", PASSWORD)).status_code == 200
    assert client.get("/ops/live.json", headers=basic("ops", PASSWORD)).json["health"]["database"]["ok"]


def test_production_without_a_password_has_no_page(make_app):
    client = make_app(ENV="production", OPS_PASSWORD="").test_client()
    for path in ("/ops/", "/ops/live.json", "/ops/campaigns/1/replay.json"):
        for method in ("GET", "POST", "DELETE"):
            assert_error(client.open(path, method=method, headers=basic("ops", "")), 404, "NOT_FOUND")
    assert client.get("/healthz").status_code == 200  # the rest of the service is there
    assert client.get("/favicon.ico").status_code == 200


def test_fuzz_production_authorization(make_app):
    """No Authorization header but the password's opens the page; every refusal is a JSON 401."""
    client = make_app(ENV="production", OPS_PASSWORD=PASSWORD).test_client()
    text = st.text(st.characters(min_codepoint=32, max_codepoint=0xFF), max_size=40)
    basic_header = st.tuples(text, st.one_of(text, st.just(PASSWORD[:-1]), st.just(PASSWORD + " "))).map(
        lambda up: basic(*up)["Authorization"])
    headers = st.one_of(text, basic_header, st.binary(max_size=40).map(
        lambda b: "Basic " + base64.b64encode(b).decode()))

    @settings(max_examples=300, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(header=headers, path=st.sampled_from(["/ops/", "/ops/live.json"]))
    def refused(header, path):
        response = client.get(path, headers={"Authorization": header})
        assert_error(response, 401, "UNAUTHORIZED")

    refused()
