"""Domain errors. Each carries the HTTP status and the stable code clients see."""
import logging

from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError

log = logging.getLogger("coupon")


class CouponError(Exception):
    status = 500
    code = "INTERNAL"
    message = "internal error"

    def __init__(self, message=None):
        super().__init__(message or self.message)
        self.message = message or self.message


class BadRequest(CouponError):
    status, code, message = 400, "BAD_REQUEST", "the request is malformed"


class Unauthorized(CouponError):
    status, code, message = 401, "UNAUTHORIZED", "a valid bearer token is required"


class CampaignNotFound(CouponError):
    status, code, message = 404, "CAMPAIGN_NOT_FOUND", "no such campaign"


class NoTicket(CouponError):
    status, code, message = 404, "NO_TICKET", "you hold no ticket of this campaign"


class SoldOut(CouponError):
    status, code, message = 409, "SOLD_OUT", "all coupons of this campaign are taken"


class NotOpen(CouponError):
    status, code, message = 409, "NOT_OPEN", "the campaign is not open yet"


class Closed(CouponError):
    status, code, message = 409, "CLOSED", "the campaign is closed"


class RateLimited(CouponError):
    status, code, message = 429, "RATE_LIMITED", "too many requests; retry later"

    def __init__(self, retry_after=1, message=None):
        super().__init__(message)
        self.retry_after = retry_after


class Unavailable(CouponError):
    status, code, message = 503, "UNAVAILABLE", "the service is unavailable; retry shortly"


class InvalidCampaign(CouponError):
    """An operator's campaign definition is not acceptable (CLI)."""

    status, code, message = 400, "INVALID_CAMPAIGN", "invalid campaign"


class ReconcileMismatch(CouponError):
    """Redis and MySQL disagree after a drain; the keys are kept."""

    status, code, message = 500, "RECONCILE_MISMATCH", "Redis and MySQL disagree"


def as_coupon_error(e):
    """The answer to an exception that is not a CouponError: 503 while a store is down, else a
    logged 500. Used by the Flask error handler and by api.IssueEndpoint alike."""
    if isinstance(e, (RedisError, SQLAlchemyError)):
        log.warning("%s unavailable: %s", "Redis" if isinstance(e, RedisError) else "database", e)
        return Unavailable()
    log.error("unhandled error", exc_info=e)
    return CouponError()
