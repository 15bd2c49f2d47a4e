"""Every error a client or an operator can see: the codes, their rendering, the Flask handlers.

The codes are one class each, rendered as the JSON error shape. Each code is defined here and
nowhere else."""
import functools
import json
import logging

from flask import Response
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import HTTPException

log = logging.getLogger("coupon")
JSON = "application/json"


class CouponError(Exception):
    status, code, message = 500, "INTERNAL", "internal error"

    def __init__(self, message=None, retry_after=None):
        super().__init__(message or self.message)
        self.message = message or self.message
        self.retry_after = retry_after  # seconds, sent as Retry-After


def _error_code(status, code, message):
    """One row of the table of codes: a CouponError subclass named after its code."""
    name = code.title().replace("_", "")
    return type(name, (CouponError,), {"status": status, "code": code, "message": message,
                                       "__module__": __name__})


# The table of codes. INVALID_CAMPAIGN: an operator's campaign definition is not acceptable
# (CLI); RECONCILE_MISMATCH: Redis and the database disagree after a drain (the keys are kept);
# NOTHING_TO_RECOVER: `campaign recover` of a campaign Redis still holds, or a closed one;
# REQUEST_ID_REUSED: `campaign add-stock --request-id` of an earlier addition of another amount (CLI).
BadRequest = _error_code(400, "BAD_REQUEST", "the request is malformed")
Unauthorized = _error_code(401, "UNAUTHORIZED", "a valid bearer token is required")
NotFound = _error_code(404, "NOT_FOUND", "no such route")
CampaignNotFound = _error_code(404, "CAMPAIGN_NOT_FOUND", "no such campaign")
NoTicket = _error_code(404, "NO_TICKET", "you hold no ticket of this campaign")
MethodNotAllowed = _error_code(405, "METHOD_NOT_ALLOWED", "the method is not allowed here")
SoldOut = _error_code(409, "SOLD_OUT", "all coupons of this campaign are taken")
NotOpen = _error_code(409, "NOT_OPEN", "the campaign is not open yet")
Closed = _error_code(409, "CLOSED", "the campaign is closed")
RequestTimeout = _error_code(408, "REQUEST_TIMEOUT", "the body did not arrive in time")
PayloadTooLarge = _error_code(413, "PAYLOAD_TOO_LARGE", "the body is too large")
UriTooLong = _error_code(414, "URI_TOO_LONG", "the request line is too long")
HeaderFieldsTooLarge = _error_code(431, "HEADER_FIELDS_TOO_LARGE", "the headers are too large")
UnsupportedTransferCoding = _error_code(501, "UNSUPPORTED_TRANSFER_CODING",
                                        "only the chunked transfer coding is supported")
RateLimited = _error_code(429, "RATE_LIMITED", "too many requests; retry later")
Unavailable = _error_code(503, "UNAVAILABLE", "the service is unavailable; retry shortly")
InvalidCampaign = _error_code(400, "INVALID_CAMPAIGN", "invalid campaign")
ReconcileMismatch = _error_code(500, "RECONCILE_MISMATCH", "Redis and the database disagree")
NothingToRecover = _error_code(409, "NOTHING_TO_RECOVER", "there is nothing to recover")
CampaignLost = _error_code(409, "CAMPAIGN_LOST", "Redis lost this campaign; recover it first")
RequestIdReused = _error_code(409, "REQUEST_ID_REUSED", "this request id named another request")


class OtherHttpError(CouponError):
    """An HTTP error werkzeug raised for which we have no code of our own: HTTP_<status>."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status, self.code = status, "HTTP_%d" % status


# what a client can be answered over HTTP, by status (the OpenAPI document lists these)
HTTP_ERRORS = (BadRequest, Unauthorized, NotFound, CampaignNotFound, NoTicket, MethodNotAllowed,
               RequestTimeout, SoldOut, NotOpen, Closed, PayloadTooLarge, RateLimited, Unavailable)
# the errors werkzeug raises itself (routing, body limits), by status
FOR_HTTP_STATUS = {cls.status: cls for cls in
                   (BadRequest, Unauthorized, NotFound, MethodNotAllowed, PayloadTooLarge)}


def as_coupon_error(e):
    """The CouponError that answers any exception.

    A CouponError answers itself; then 503 while a store is down; the matching code for an HTTP
    error werkzeug raised; else a logged 500."""
    if isinstance(e, CouponError):
        return e
    if isinstance(e, (RedisError, SQLAlchemyError)):
        log.warning("%s unavailable: %s", "Redis" if isinstance(e, RedisError) else "database", e)
        return Unavailable()
    if isinstance(e, HTTPException) and e.code in FOR_HTTP_STATUS:
        return FOR_HTTP_STATUS[e.code](e.description)
    if isinstance(e, HTTPException) and (e.code or 500) < 500:
        return OtherHttpError(e.code, e.description)
    log.error("unhandled error", exc_info=e)
    return CouponError()


@functools.lru_cache(maxsize=256)  # the few fixed messages, encoded once
def error_body(code, message):
    # compact and one line, as jsonify's bodies
    return json.dumps({"error": {"code": code, "message": message}}, separators=(",", ":")).encode() + b"\n"


def error_answer(e):
    """(body, status, headers) of a CouponError."""
    headers = [("Retry-After", str(e.retry_after))] if e.retry_after else []
    return error_body(e.code, e.message), e.status, headers


def error_response(e):
    """The Flask response to any exception."""
    error = as_coupon_error(e)
    response = Response(*error_answer(error), content_type=JSON)
    if isinstance(e, HTTPException) and e.code == 405 and getattr(e, "valid_methods", None):
        response.headers["Allow"] = ", ".join(e.valid_methods)
    return response


def register_errorhandlers(app):
    """One handler for every error: the JSON error shape, never a stack trace."""
    app.register_error_handler(Exception, error_response)
    app.register_error_handler(HTTPException, error_response)  # before Flask's own HTML page
