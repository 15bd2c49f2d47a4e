"""The HTTP API: parse, call the service, map the outcome to a status."""
import functools
import json
import re

from flask import Blueprint, Response, current_app, jsonify, request
from flask.sessions import SessionInterface
from redis.exceptions import RedisError
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.http import HTTP_STATUS_CODES

from coupon.bodies import announces_body
from coupon.campaigns import campaign_status, find_ticket, iso_ms
from coupon.errors import JSON, BadRequest, CampaignNotFound, Unauthorized, as_coupon_error, error_answer
from coupon.extensions import services
from coupon.openapi import SPEC

bp = Blueprint("api", __name__)

CAMPAIGN_ID = re.compile(r"[1-9][0-9]{0,9}")
MAX_CAMPAIGN_ID = 2**31 - 1


class NoSessions(SessionInterface):
    """The API is token-based: no cookie session to open and save around each request (Flask's
    default builds a signing serializer and parses cookies per request: 4-7 % of a worker's time
    under the benchmark, BENCHMARKS.md)."""

    def open_session(self, app, request):
        return None  # Flask then uses a NullSession, and never saves it


def campaign_id_of(raw):
    """Only ids that can name a campaign get further; anything else is simply not found."""
    if not CAMPAIGN_ID.fullmatch(raw) or int(raw) > MAX_CAMPAIGN_ID:
        raise CampaignNotFound()
    return int(raw)


def bearer_token(header):
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("send Authorization: Bearer <token>")
    return token.strip()


def check_body(raw):
    """The issue call takes no parameters; a body, if any, must be a JSON object (its fields,
    a user_id included, are ignored: who asks comes from the token only)."""
    if not raw.strip():
        return
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than Python recurses
        raise BadRequest("the body must be empty or a JSON object") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be empty or a JSON object")


# A ticket's body, formatted rather than json.dumps'ed: every field is an int or a string of a
# charset that needs no JSON escaping (user ids: signing.USER_ID; codes: hex; the time: ISO).
# Compact and one line, as every other body (jsonify, errors.error_body).
TICKET = '{"campaign_id":%d,"user_id":"%s","serial":%d,"code":"%s","issued_at":"%s"}\n'


@functools.lru_cache(maxsize=4)  # the tickets of one second share all but the ms
def iso_second(second):
    return iso_ms(second * 1000)[:-5]  # without ".000Z"


def ticket_body(ticket):
    second, millis = divmod(ticket.issued_at_ms, 1000)
    issued_at = "%s.%03dZ" % (iso_second(second), millis)
    return (TICKET % (ticket.campaign_id, ticket.user_id, ticket.serial, ticket.code,
                      issued_at)).encode()


def answer_issue(svc, raw_id, authorization, read_body=None):
    """The answer to an issue call, as (body, status, headers); counted and timed. read_body,
    if the call has a body, reads it: only once the caller is known (bodies.py)."""
    started = svc.metrics.issue_started()
    outcome = "INTERNAL"
    try:
        # sold out, not open, closed: answered before anything else
        campaign = svc.issuer.admit(campaign_id_of(raw_id))
        user_id = svc.signer.user_of(bearer_token(authorization))
        if read_body is not None:
            check_body(read_body())
        ticket = svc.issuer.issue(campaign, user_id)
        outcome = "NEW" if ticket.new else "HELD"
        return ticket_body(ticket), 201 if ticket.new else 200, []
    except Exception as e:
        error = as_coupon_error(e)
        outcome = error.code
        return error_answer(error)
    finally:
        svc.metrics.issue_answered(outcome, started)


class IssueEndpoint:
    """WSGI middleware: serve the issue call without a body, the flood's kind, before Flask.

    Flask's request context, routing and Response cost 50-70 us per request, a quarter of a
    worker's time on a bare endpoint (BENCHMARKS.md); this call needs none of them. Anything else,
    issue calls with a body included, goes on to Flask, whose view answers through answer_issue too.
    """

    PATH = re.compile(r"/api/v1/campaigns/([^/]+)/issue")
    STATUS = {status: "%d %s" % (status, HTTP_STATUS_CODES[status])
              for status in (200, 201, 400, 401, 404, 409, 429, 500, 503)}

    def __init__(self, app, services):
        self.app = app  # everything else: bodies.BodyGuard, then Flask
        self.services = services

    def __call__(self, environ, start_response):
        match = self.PATH.fullmatch(environ.get("PATH_INFO", ""))
        if match is None or environ["REQUEST_METHOD"] != "POST" or announces_body(environ):
            return self.app(environ, start_response)
        body, status, headers = answer_issue(
            self.services, match[1], environ.get("HTTP_AUTHORIZATION", ""))
        start_response(self.STATUS[status], [
            ("Content-Type", JSON), ("Content-Length", str(len(body))), *headers])
        return [body]


@bp.post("/api/v1/campaigns/<raw_id>/issue")
def issue(raw_id):
    """The issue call with a body (IssueEndpoint answers those without)."""
    answer = answer_issue(services(current_app), raw_id, request.headers.get("Authorization", ""),
                          read_body=request.environ["wsgi.input"].read)
    return Response(*answer, content_type=JSON)


@bp.get("/api/v1/campaigns/<raw_id>")
def status(raw_id):
    return jsonify(campaign_status(services(current_app), campaign_id_of(raw_id)))


@bp.get("/api/v1/campaigns/<raw_id>/ticket")
def ticket(raw_id):
    svc = services(current_app)
    campaign_id = campaign_id_of(raw_id)
    user_id = svc.signer.user_of(bearer_token(request.headers.get("Authorization", "")))
    return jsonify(find_ticket(svc, campaign_id, user_id))


@bp.get("/openapi.json")
def openapi():
    return jsonify(SPEC)


@bp.get("/metrics")
def metrics():
    svc = services(current_app)
    body, content_type = svc.metrics.scrape(svc.redis, svc.keys)
    return Response(body, content_type=content_type)


@bp.get("/healthz")
def healthz():
    return jsonify(status="ok")


def readiness(svc):
    """{"redis": "ok" or "down: <error>", "database": the same}; on a cluster also one entry
    per master ("redis host:port"), and "redis" is ok only while every master is (and, with
    REDIS_REPLICA_ACKS, has that many replicas keeping up)."""
    checks = {"redis": "ok"}
    try:
        primaries = svc.redis.primaries()
    except RedisError as e:
        primaries, checks["redis"] = {}, f"down: {type(e).__name__}"
    for name, node in primaries.items():  # every master: one down stops its users' sales
        try:
            state = "ok"
            if svc.redis.replica_acks:  # a master short of replicas acknowledges nothing
                info = node.info("replication")
                replicas = int(info.get("min_slaves_good_slaves", info.get("connected_slaves", 0)))
                if replicas < svc.redis.replica_acks:
                    state = f"down: {replicas} of {svc.redis.replica_acks} replicas"
            else:
                node.ping()
        except RedisError as e:
            state = f"down: {type(e).__name__}"
            svc.redis.refresh()  # a master gone: its replica may serve by the next look
        if svc.redis.cluster:
            checks[f"redis {name}"] = state
        if state != "ok":
            checks["redis"] = f"down: master {name}" if svc.redis.cluster else state
    try:
        with svc.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except SQLAlchemyError as e:
        checks["database"] = f"down: {type(e).__name__}"
    return checks


@bp.get("/readyz")
def readyz():
    checks = readiness(services(current_app))
    ready = all(v == "ok" for v in checks.values())
    return jsonify(status="ready" if ready else "not ready", checks=checks), 200 if ready else 503
