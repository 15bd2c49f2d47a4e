"""Error rendering: the one JSON error shape, and the error that answers any exception."""
import json
import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy.exc import OperationalError
from werkzeug import exceptions as http

from coupon.errors import (
    HTTP_ERRORS, BadRequest, CouponError, MethodNotAllowed, NotFound, OtherHttpError,
    PayloadTooLarge, RateLimited, SoldOut, Unavailable, as_coupon_error, error_answer, error_body,
)


@given(code=st.from_regex(r"[A-Z][A-Z_0-9]{0,30}", fullmatch=True), message=st.text(max_size=200))
def test_an_error_body_is_one_compact_json_line_of_code_and_message(code, message):
    body = error_body(code, message)
    assert body.endswith(b"\n") and body.count(b"\n") == 1
    assert json.loads(body) == {"error": {"code": code, "message": message}}


def test_an_error_body_byte_for_byte():
    assert error_body("SOLD_OUT", "all gone") == b'{"error":{"code":"SOLD_OUT","message":"all gone"}}\n'


def test_every_code_is_its_own_and_names_its_class():
    classes = [cls for cls in CouponError.__subclasses__() if cls is not OtherHttpError]
    codes = [cls.code for cls in classes]
    assert len(codes) == len(set(codes)), codes
    for cls in classes:
        assert cls.__name__ == cls.code.title().replace("_", ""), cls
        assert cls.message and 400 <= cls.status < 600
    assert set(HTTP_ERRORS) <= set(classes)


def test_error_answer_sends_retry_after_only_when_set():
    assert error_answer(SoldOut()) == (error_body("SOLD_OUT", SoldOut.message), 409, [])
    body, status, headers = error_answer(RateLimited(retry_after=7))
    assert (status, headers) == (429, [("Retry-After", "7")])
    assert json.loads(body)["error"]["code"] == "RATE_LIMITED"


def test_a_message_given_replaces_the_default():
    assert BadRequest("the body is too short").message == "the body is too short"
    assert BadRequest().message == "the request is malformed"


def test_a_coupon_error_answers_as_itself():
    error = SoldOut()
    assert as_coupon_error(error) is error


@pytest.mark.parametrize("down", [
    RedisConnectionError("Connection refused"),
    OperationalError("SELECT 1", {}, Exception("Lost connection to MySQL server")),
])
def test_a_store_down_is_503_unavailable_and_logged_without_a_trace(down, caplog):
    with caplog.at_level(logging.WARNING, logger="coupon"):
        error = as_coupon_error(down)
    assert isinstance(error, Unavailable) and (error.status, error.code) == (503, "UNAVAILABLE")
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert caplog.records[0].exc_info is None


@pytest.mark.parametrize("raised, ours", [
    (http.BadRequest("Failed to decode JSON object"), BadRequest),
    (http.NotFound(), NotFound),
    (http.MethodNotAllowed(["GET"]), MethodNotAllowed),
    (http.RequestEntityTooLarge(), PayloadTooLarge),
])
def test_werkzeugs_errors_answer_with_our_code_and_its_description(raised, ours):
    error = as_coupon_error(raised)
    assert type(error) is ours and error.status == raised.code
    assert error.message == raised.description


@pytest.mark.parametrize("raised", [http.Gone(), http.UnsupportedMediaType(), http.ImATeapot()])
def test_other_client_errors_of_werkzeug_are_http_status_codes(raised):
    error = as_coupon_error(raised)
    assert isinstance(error, OtherHttpError)
    assert (error.status, error.code) == (raised.code, f"HTTP_{raised.code}")


@pytest.mark.parametrize("raised", [RuntimeError("secret internals"), http.InternalServerError("x"),
                                    KeyError("k")])
def test_anything_else_is_a_logged_500_that_tells_nothing(raised, caplog):
    with caplog.at_level(logging.ERROR, logger="coupon"):
        error = as_coupon_error(raised)
    assert type(error) is CouponError
    assert (error.status, error.code, error.message) == (500, "INTERNAL", "internal error")
    assert caplog.records and caplog.records[-1].exc_info[1] is raised  # the trace is in the log only
