"""The HTTP API: parse, call the service, map the outcome to a status."""
import json
import re

from flask import Blueprint, Response, current_app, jsonify, request
from flask.sessions import SessionInterface
from redis.exceptions import RedisError
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from coupon.campaigns import campaign_status, find_ticket, iso_ms
from coupon.errors import BadRequest, CampaignNotFound, Closed, NotOpen, SoldOut, Unauthorized
from coupon.extensions import services
from coupon.metrics import count_outcome, instrumented, make_registry, metrics_response
from coupon.openapi import SPEC

bp = Blueprint("api", __name__)

CAMPAIGN_ID = re.compile(r"^[1-9][0-9]{0,9}$")
MAX_CAMPAIGN_ID = 2**31 - 1


class NoSessions(SessionInterface):
    """The API is token-based: no cookie session to open and save around each request (Flask's
    default builds a signing serializer and parses cookies per request: 4-7 % of a worker's time
    under the benchmark, BENCHMARKS.md)."""

    def open_session(self, app, request):
        return None  # Flask then uses a NullSession, and never saves it


def campaign_id_of(raw):
    """Only ids that can name a campaign get further; anything else is simply not found."""
    if not CAMPAIGN_ID.match(raw) or int(raw) > MAX_CAMPAIGN_ID:
        raise CampaignNotFound()
    return int(raw)


def bearer_token():
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("send Authorization: Bearer <token>")
    return token.strip()


def check_body():
    """The issue call takes no parameters; a body, if any, must be a JSON object (its fields,
    a user_id included, are ignored: who asks comes from the token only)."""
    environ = request.environ
    if environ.get("CONTENT_LENGTH") in (None, "", "0") and "HTTP_TRANSFER_ENCODING" not in environ:
        return  # no body: nothing to read (the usual case, and the cheap one)
    raw = request.get_data(cache=False)
    if not raw.strip():
        return
    try:
        body = json.loads(raw)
    except ValueError:
        raise BadRequest("the body must be empty or a JSON object") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be empty or a JSON object")


# The answers of the flood after sell-out, encoded once: raising them through Flask's error
# handling costs about a fifth of a bare request (measured: loadtest/bench.py, BENCHMARKS.md).
REFUSALS = {
    e.code: json.dumps({"error": {"code": e.code, "message": e.message}}).encode() + b"\n"
    for e in (SoldOut(), NotOpen(), Closed())
}


# A ticket's body, formatted rather than json.dumps'ed: every field is an int or a string of a
# charset that needs no JSON escaping (user ids: signing.USER_ID; codes: hex; the time: ISO).
TICKET = '{"campaign_id": %d, "user_id": "%s", "serial": %d, "code": "%s", "issued_at": "%s"}'
_last_second = (None, "")  # the last second issued_at formatted, and its ISO text


def issued_at(ms):
    """iso_ms(ms), formatting each second once: the tickets of one second share all but the ms."""
    global _last_second
    second, millis = divmod(ms, 1000)
    last = _last_second
    if last[0] != second:
        last = _last_second = (second, iso_ms(second * 1000)[:-5])  # without ".000Z"
    return "%s.%03dZ" % (last[1], millis)


@bp.post("/api/v1/campaigns/<raw_id>/issue")
@instrumented
def issue(raw_id):
    svc = services(current_app)
    campaign_id = campaign_id_of(raw_id)
    try:  # sold out, not open, closed: answered before anything else
        svc.issuer.early_out(campaign_id)
    except (SoldOut, NotOpen, Closed) as e:
        count_outcome(e.code)
        return Response(REFUSALS[e.code], e.status, content_type="application/json")
    check_body()
    ticket = svc.issuer.issue(campaign_id, svc.signer.user_of(bearer_token()))
    body = TICKET % (ticket.campaign_id, ticket.user_id, ticket.serial, ticket.code,
                     issued_at(ticket.issued_at_ms))
    return Response(body, 201 if ticket.new else 200, content_type="application/json")


@bp.get("/api/v1/campaigns/<raw_id>")
def status(raw_id):
    return jsonify(campaign_status(services(current_app), campaign_id_of(raw_id)))


@bp.get("/api/v1/campaigns/<raw_id>/ticket")
def ticket(raw_id):
    svc = services(current_app)
    campaign_id = campaign_id_of(raw_id)
    user_id = svc.signer.user_of(bearer_token())
    return jsonify(find_ticket(svc, campaign_id, user_id))


@bp.get("/openapi.json")
def openapi():
    return jsonify(SPEC)


@bp.get("/metrics")
def metrics():
    registry = current_app.extensions.get("coupon.metrics")
    if registry is None:  # built once per worker, on the first scrape
        svc = services(current_app)
        registry = make_registry(svc.redis, svc.config["CLAIM_SHARDS"])
        current_app.extensions["coupon.metrics"] = registry
    return metrics_response(registry)


@bp.get("/healthz")
def healthz():
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz():
    svc = services(current_app)
    checks = {}
    try:
        svc.redis.ping()
        checks["redis"] = "ok"
    except RedisError as e:
        checks["redis"] = f"down: {type(e).__name__}"
    try:
        with svc.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except SQLAlchemyError as e:
        checks["database"] = f"down: {type(e).__name__}"
    ready = all(v == "ok" for v in checks.values())
    return jsonify(status="ready" if ready else "not ready", checks=checks), 200 if ready else 503
