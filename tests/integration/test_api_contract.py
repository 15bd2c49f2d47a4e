"""The HTTP contract: its answers and every error code as JSON with a stable code, identity from
the token only, no admin operation over HTTP; nothing half-written."""
import datetime as dt

from sqlalchemy import delete, text

from coupon import campaigns, clock, create_app, db, redis_state
from coupon.signing import Signer
from loadtest.harness import RedisTarget, free_port, open_campaign, wait_until
from tests.support import app_config, assert_error, issue, issue_directly, on_single_and_cluster

pytestmark = on_single_and_cluster


def test_issue_then_repeat_then_ticket(client, signer, open_id):
    token = signer.mint("alice")
    first = issue(client, open_id, token)
    assert first.status_code == 201
    body = first.json
    assert set(body) == {"campaign_id", "user_id", "serial", "code", "issued_at"}
    assert body["user_id"] == "alice" and body["campaign_id"] == open_id
    again = issue(client, open_id, token)
    assert again.status_code == 200 and again.json == body
    ticket = client.get(f"/api/v1/campaigns/{open_id}/ticket", headers={"Authorization": f"Bearer {token}"})
    assert ticket.status_code == 200 and ticket.json == body


def test_identity_comes_from_the_token_only(client, signer, open_id):
    response = issue(client, open_id, signer.mint("alice"), json={"user_id": "mallory"},
                     query_string={"user_id": "mallory"})
    assert response.status_code == 201 and response.json["user_id"] == "alice"


def test_sold_out(client, signer, open_id):
    for user in ("a", "b"):
        assert issue(client, open_id, signer.mint(user)).status_code == 201
    assert_error(issue(client, open_id, signer.mint("c")), 409, "SOLD_OUT")
    status = client.get(f"/api/v1/campaigns/{open_id}").json
    assert (status["issued"], status["remaining"], status["status"]) == (2, 0, "sold_out")


def test_unauthorized(client, open_id):
    other = Signer("another-secret", 3600).mint("alice")
    expired = Signer("test-secret-not-for-production", -10).mint("alice")
    for token in (None, "garbage", other, expired, other[:-2] + "xx"):
        assert_error(issue(client, open_id, token), 401, "UNAUTHORIZED")
    response = client.post(f"/api/v1/campaigns/{open_id}/issue", headers={"Authorization": "Basic abc"})
    assert_error(response, 401, "UNAUTHORIZED")
    assert_error(client.get(f"/api/v1/campaigns/{open_id}/ticket"), 401, "UNAUTHORIZED")


def test_not_found_ids(client, signer, redis_client):
    token = signer.mint("alice")
    for raw in ("abc", "-1", "0", "99999999999999999999", "2147483648", "424242"):
        assert_error(issue(client, raw, token), 404, "CAMPAIGN_NOT_FOUND")
        assert_error(client.get(f"/api/v1/campaigns/{raw}"), 404, "CAMPAIGN_NOT_FOUND")
    assert redis_client.keys("*424242*") == []  # unknown ids never become Redis keys


def test_bad_request_body(client, signer, open_id):
    token = signer.mint("alice")
    for body in (b"{not json", b"[1, 2]"):
        response = issue(client, open_id, token, data=body, content_type="application/json")
        assert_error(response, 400, "BAD_REQUEST")
    assert client.get(f"/api/v1/campaigns/{open_id}").json["issued"] == 0


def test_not_open_before_opens_at_and_pending(client, svc, signer):
    soon = clock.utcnow() + dt.timedelta(hours=1)
    scheduled = campaigns.create_campaign(svc, "later", 10, opens_at=soon)
    pending = campaigns.create_campaign(svc, "pending", 10)
    for campaign_id in (scheduled, pending):
        assert_error(issue(client, campaign_id, signer.mint("alice")), 409, "NOT_OPEN")


def test_scheduled_campaign_opens_by_itself(client, svc, signer):
    opens_at = clock.utcnow() + dt.timedelta(seconds=1.5)
    campaign_id = campaigns.create_campaign(svc, "at the minute", 10, opens_at=opens_at)
    assert_error(issue(client, campaign_id, signer.mint("alice")), 409, "NOT_OPEN")
    wait_until(lambda: clock.utcnow() >= opens_at, timeout=5, interval=0.01, what="the opening")
    assert issue(client, campaign_id, signer.mint("alice")).status_code == 201


def test_closed_after_close_and_after_closes_at(client, svc, signer, open_id):
    assert issue(client, open_id, signer.mint("alice")).status_code == 201
    campaigns.stop_issuing(svc, open_id)
    assert_error(issue(client, open_id, signer.mint("bob")), 409, "CLOSED")
    ended = campaigns.create_campaign(svc, "short", 10, closes_at=clock.utcnow() + dt.timedelta(seconds=1))
    campaigns.open_campaign(svc, ended)
    assert issue(client, ended, signer.mint("carol")).status_code == 201
    wait_until(lambda: client.get(f"/api/v1/campaigns/{ended}").json["status"] == "closed", timeout=5,
               interval=0.02, what="the campaign to say closed")
    assert_error(issue(client, ended, signer.mint("dave")), 409, "CLOSED")


def test_no_ticket(client, signer, open_id):
    response = client.get(f"/api/v1/campaigns/{open_id}/ticket",
                          headers={"Authorization": f"Bearer {signer.mint('nobody')}"})
    assert_error(response, 404, "NO_TICKET")


def test_http_errors_are_json(client, signer, open_id):
    assert_error(client.get("/no/such/route"), 404, "NOT_FOUND")
    assert_error(client.get(f"/api/v1/campaigns/{open_id}/issue"), 405, "METHOD_NOT_ALLOWED")
    big = issue(client, open_id, signer.mint("alice"), data=b"{" + b" " * 10_000 + b"}",
                content_type="application/json")
    assert_error(big, 413, "PAYLOAD_TOO_LARGE")


def test_unexpected_error_is_500_json_without_trace(app, client):
    @app.get("/boom")
    def boom():
        raise RuntimeError("secret internals")

    response = client.get("/boom")
    assert_error(response, 500, "INTERNAL")
    assert "secret internals" not in response.get_data(as_text=True)


def test_redis_down_is_503(mysql_url, svc, signer, open_id, redis_kind):
    nowhere = f"127.0.0.1:{free_port()}"
    dead_redis = RedisTarget(f"redis://{nowhere}/0", nowhere if redis_kind == "cluster" else "")
    dead = create_app(app_config(mysql_url, dead_redis, REDIS_TIMEOUT=0.5))
    response = issue(dead.test_client(), open_id, signer.mint("alice"))
    assert_error(response, 503, "UNAVAILABLE")
    assert dead.test_client().get("/readyz").status_code == 503


def test_status_and_health(client, open_id):
    status = client.get(f"/api/v1/campaigns/{open_id}").json
    assert status == {
        "id": open_id, "name": "open", "total": 2, "issued": 0, "remaining": 2,
        "status": "open", "opens_at": status["opens_at"], "closes_at": None,
    }
    assert client.get("/healthz").json == {"status": "ok"}
    assert client.get("/readyz").json["status"] == "ready"


def test_create_clears_stale_redis_state(svc, redis_client, make_app):
    """A new id's Redis state is made afresh, not built on what Redis still holds under that id:
    the keys of a campaign of a database since dropped and made anew (its ids counting again)."""
    stale = open_campaign(svc, 1000, "of the database dropped")
    issue_directly(svc, stale, "alice")
    keys = svc.keys(stale)
    assert redis_client.hget(keys.meta, "cursor") != "0" and redis_client.zcard(keys.leases) == 1  # a block
    assert redis_state.stored_claim(svc.redis, keys, "alice") is not None
    with svc.engine.begin() as conn:  # its row gone, its id the next one given again
        conn.execute(delete(db.campaigns).where(db.campaigns.c.id == stale))
        conn.execute(text(f"ALTER TABLE campaigns AUTO_INCREMENT = {stale}"))

    campaign_id = campaigns.create_campaign(svc, "x", 1000)

    assert campaign_id == stale
    assert redis_client.hget(keys.meta, "cursor") == "0"
    assert redis_client.zcard(keys.leases) == 0
    assert redis_state.stored_claim(svc.redis, keys, "alice") is None
    assert redis_state.issued_in_redis(svc.redis, keys) == 0
    campaigns.open_campaign(svc, campaign_id)
    ticket = issue_directly(make_app().extensions["coupon"], campaign_id, "alice")  # a worker of now
    assert (ticket.serial, ticket.new) == (1, True)


def test_issue_answers_alike_with_and_without_a_body(client, signer, open_id):
    """Calls without a body are served before Flask (api.IssueEndpoint), calls with one by
    Flask's view: both must give the same answers."""
    alice = signer.mint("alice")
    first, again = issue(client, open_id, alice), issue(client, open_id, alice, json={})
    assert (first.status_code, again.status_code) == (201, 200) and first.json == again.json
    assert issue(client, open_id, signer.mint("bob"), json={}).status_code == 201  # the last one
    for campaign_id, token, status in ((open_id, "not-a-token", 401),
                                       (open_id, signer.mint("carol"), 409),  # sold out
                                       (999_999, signer.mint("dave"), 404)):
        bare, with_body = issue(client, campaign_id, token), issue(client, campaign_id, token, json={})
        assert bare.status_code == with_body.status_code == status
        assert bare.get_data() == with_body.get_data()
        assert bare.headers["Content-Type"] == with_body.headers["Content-Type"] == "application/json"


def test_cli_token_ttl_expires(runner, client, open_id, svc, monkeypatch):
    monkeypatch.setattr(svc.signer, "leeway", 0)  # AUTH_LEEWAY's seconds would keep it 5 s longer
    token = runner.invoke(args=["token", "alice", "--ttl", "1"]).output.strip()
    assert issue(client, open_id, token).status_code == 201
    # expiry is a whole second, 1 to 2 s from now: asked again (200, held) until it is refused
    refused = wait_until(lambda: (lambda r: r.status_code == 401 and r)(issue(client, open_id, token)),
                         timeout=5, interval=0.1, what="the token to expire")
    assert_error(refused, 401, "UNAUTHORIZED")
    response = client.get(f"/api/v1/campaigns/{open_id}/ticket", headers={"Authorization": f"Bearer {token}"})
    assert_error(response, 401, "UNAUTHORIZED")


def test_identity_ignores_user_id_in_body_and_query(client, signer, open_id, redis_client):
    token = signer.mint("alice")
    response = issue(client, open_id, token, json={"user_id": "mallory", "serial": 1},
                     query_string={"user_id": "mallory"})
    assert response.status_code == 201 and response.json["user_id"] == "alice"
    mallory = client.get(f"/api/v1/campaigns/{open_id}/ticket", query_string={"user_id": "alice"},
                         headers={"Authorization": f"Bearer {signer.mint('mallory')}"})
    assert_error(mallory, 404, "NO_TICKET")  # asking for alice's ticket by query gets nothing
    assert client.get(f"/api/v1/campaigns/{open_id}").json["issued"] == 1


def test_no_admin_operation_over_http(client, open_id):
    """Campaigns are managed with the CLI only: nothing that changes one answers over HTTP."""
    paths = ["/api/v1/campaigns", f"/api/v1/campaigns/{open_id}/open", f"/api/v1/campaigns/{open_id}/close",
             "/admin", "/api/v1/admin/campaigns"]
    for path in paths:
        for method in ("POST", "PUT", "DELETE"):
            assert client.open(path, method=method, json={"name": "x", "stock": 1}).status_code in (404, 405)
    for method in ("PUT", "PATCH", "DELETE"):
        assert_error(client.open(f"/api/v1/campaigns/{open_id}", method=method), 405, "METHOD_NOT_ALLOWED")
    assert client.get(f"/api/v1/campaigns/{open_id}").json["status"] == "open"
