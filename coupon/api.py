"""The HTTP API: parse, call the service, map the outcome to a status."""
import json
import re
import time

from flask import Blueprint, Response, current_app, jsonify, request
from flask.sessions import SessionInterface
from werkzeug.http import HTTP_STATUS_CODES

from coupon import db
from coupon.arrival import arrival_ms, received_ns
from coupon.bodies import announces_body
from coupon.errors import JSON, BadRequest, CampaignNotFound, Unauthorized, as_coupon_error, error_answer
from coupon.extensions import services
from coupon.health import readiness
from coupon.metrics import IssueParts
from coupon.openapi import SPEC
from coupon.queries import campaign_status, find_ticket

bp = Blueprint("api", __name__)

CAMPAIGN_ID = re.compile(r"[1-9][0-9]{0,9}")


class NoSessions(SessionInterface):
    """The API is token-based: no cookie session to open and save around each request.

    Flask's default builds a signing serializer and parses cookies per request: 4-7 % of a
    worker's time under the benchmark (BENCHMARKS.md, "Where a request's time goes")."""

    def open_session(self, app, request):
        return None  # Flask then uses a NullSession, and never saves it


def campaign_id_of(raw):
    """Only ids that can name a campaign get further; anything else is simply not found."""
    if not CAMPAIGN_ID.fullmatch(raw) or int(raw) > db.MAX_ID:
        raise CampaignNotFound()
    return int(raw)


def bearer_token(header):
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("send Authorization: Bearer <token>")
    return token.strip()


def check_body(raw):
    """The issue call takes no parameters; a body, if any, must be a JSON object.

    Its fields, a user_id included, are ignored: who asks comes from the token only."""
    if not raw.strip():
        return
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than Python recurses
        raise BadRequest("the body must be empty or a JSON object") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be empty or a JSON object")


def answer_issue(svc, raw_id, environ, read_body=None):
    """The answer to an issue call, as (body, status, headers).

    The call is counted, timed (in parts: metrics.IssueParts), and its arrival noted with its
    outcome (fairness.py). read_body, if the call has a body, reads it: only once the caller is
    known (bodies.py)."""
    started = svc.metrics.issue_started()
    received = received_ns(environ, svc.config["TRUST_REQUEST_START"])
    arrival = arrival_ms(received, svc.clock)
    parts = IssueParts()
    if received is not None:
        parts.queued = max(0, time.time_ns() - received) / 1e9
    campaign_id, turn, outcome = None, None, "INTERNAL"
    try:
        campaign_id = campaign_id_of(raw_id)
        # sold out, not open, closed: answered before anything else, then in the order they
        # arrived (coupon/arrival.py), asking Redis only then (a request that waited for Redis
        # before its turn would be overtaken by later ones)
        if svc.gate.enabled:
            svc.issuer.admit_known(campaign_id)
            at = time.perf_counter()
            turn = svc.gate.wait_turn(arrival, campaign_id)
            parts.turn = time.perf_counter() - at
        at = time.perf_counter()
        campaign = svc.issuer.admit(campaign_id)
        checked = time.perf_counter()
        user_id = svc.signer.user_of(bearer_token(environ.get("HTTP_AUTHORIZATION", "")))
        parts.admit, parts.token = checked - at, time.perf_counter() - checked
        if read_body is not None:
            check_body(read_body())
        ticket = svc.issuer.issue(campaign, user_id, turn, parts)
        outcome = "NEW" if ticket.new else "HELD"
        return ticket.body(), 201 if ticket.new else 200, []
    except Exception as e:
        error = as_coupon_error(e)
        outcome = error.code
        return error_answer(error)
    finally:
        svc.gate.finished(turn)
        svc.metrics.issue_answered(outcome, started, parts)
        if campaign_id is not None:
            svc.arrivals.note(campaign_id, outcome, arrival)


class IssueEndpoint:
    """WSGI middleware: serve the issue call without a body, the flood's kind, before Flask.

    Flask's request context, routing and Response cost 50-70 us per request, a quarter of a
    worker's time on a bare endpoint (BENCHMARKS.md, "The issue call in front of Flask"); this call
    needs none of them. Anything else, issue calls with a body included, goes on to Flask, whose
    view answers through answer_issue too.
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
        body, status, headers = answer_issue(self.services, match[1], environ)
        start_response(self.STATUS[status], [
            ("Content-Type", JSON), ("Content-Length", str(len(body))), *headers])
        return [body]


@bp.post("/api/v1/campaigns/<raw_id>/issue")
def issue(raw_id):
    """The issue call with a body (IssueEndpoint answers those without)."""
    answer = answer_issue(services(current_app), raw_id, request.environ,
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
    return Response(find_ticket(svc, campaign_id, user_id).body(), content_type=JSON)


@bp.get("/openapi.json")
def openapi():
    return jsonify(SPEC)


@bp.get("/metrics")
def metrics():
    svc = services(current_app)
    body, content_type = svc.metrics.scrape(svc)
    return Response(body, content_type=content_type)


@bp.get("/healthz")
def healthz():
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz():
    svc = services(current_app)
    checks = readiness(svc)
    ready = all(v == "ok" for v in checks.values())
    body = dict(status="ready" if ready else "not ready", checks=checks)
    warnings = svc.redis_guard.verdict().warnings  # what does not refuse readiness, said anyway
    if warnings:
        body["warnings"] = list(warnings)
    return jsonify(body), 200 if ready else 503
