"""RequestBody over in-memory streams: the size limit, the deadline from the request's arrival,
bodies shorter than announced, chunked bodies that end with the stream; announces_body."""
import io

import gevent
import pytest
from hypothesis import given
from hypothesis import strategies as st

from coupon.bodies import RequestBody, announces_body
from coupon.errors import BadRequest, PayloadTooLarge, RequestTimeout

LIMIT = 4096
STALL = 5.0  # seconds a stalled stream blocks before it gives up (returns the end of the stream)


class Stalled(io.RawIOBase):
    """A client that sent `sent` and then nothing: reads block (cooperatively, as a gevent socket
    does) for STALL seconds, then the stream ends."""

    def __init__(self, sent=b""):
        self.sent = io.BytesIO(sent)

    def read(self, size=-1):
        data = self.sent.read(size)
        if not data:
            gevent.sleep(STALL)
        return data


class Trickle:
    """A client that sends one byte every `every` seconds."""

    def __init__(self, every):
        self.every = every

    def read(self, size=-1):
        gevent.sleep(self.every)
        return b" "


class Broken:
    """A stream that fails as gunicorn's chunked reader does on bad framing."""

    def read(self, size=-1):
        raise ValueError("Invalid chunk size")


def body(data, length="auto", limit=LIMIT, timeout=5.0):
    """A RequestBody over data; length "auto": len(data), None: chunked."""
    return RequestBody(io.BytesIO(data), len(data) if length == "auto" else length, limit, timeout)


def test_a_body_is_read_whole_and_then_complete():
    request = body(b'{"a": 1}')
    assert not request.complete
    assert request.read() == b'{"a": 1}'
    assert request.complete
    assert request.read() == b""


def test_reads_of_a_size_take_the_body_piece_by_piece():
    request = body(b"abcdefg")
    assert request.read(3) == b"abc"
    assert not request.complete
    assert request.read(3) == b"def"
    assert request.read() == b"g"
    assert request.complete


def test_content_length_zero_is_complete_without_a_read():
    request = RequestBody(Broken(), 0, LIMIT, 5.0)
    assert request.complete
    assert request.read() == b""


def test_nothing_past_the_content_length_is_read():
    """What follows a body on a keep-alive connection is the next request."""
    stream = io.BytesIO(b"{}GET / HTTP/1.1\r\n")
    assert RequestBody(stream, 2, LIMIT, 5.0).read() == b"{}"
    assert stream.read() == b"GET / HTTP/1.1\r\n"


def test_a_content_length_over_the_limit_is_refused_before_reading():
    stream = io.BytesIO(b"x" * (LIMIT + 1))
    with pytest.raises(PayloadTooLarge):
        RequestBody(stream, LIMIT + 1, LIMIT, 5.0).read()
    assert stream.tell() == 0


def test_a_body_at_the_limit_is_read():
    assert body(b"x" * LIMIT).read() == b"x" * LIMIT
    assert body(b"x" * LIMIT, length=None).read() == b"x" * LIMIT


def test_a_chunked_body_over_the_limit_is_refused_once_past_it():
    with pytest.raises(PayloadTooLarge):
        body(b"x" * (LIMIT + 1), length=None).read()


def test_a_chunked_body_ends_with_its_stream():
    request = body(b'{"a": 1}', length=None)
    assert request.read(4) == b'{"a"'
    assert not request.complete  # no length: only the end of the stream ends it
    assert request.read(100) == b': 1}'  # short of 100: it ended
    assert request.complete


def test_a_body_shorter_than_its_content_length_is_a_bad_request():
    with pytest.raises(BadRequest, match="shorter than its Content-Length"):
        body(b"{}", length=100).read()


def test_broken_chunked_framing_is_a_bad_request():
    with pytest.raises(BadRequest, match="malformed or incomplete"):
        RequestBody(Broken(), None, LIMIT, 5.0).read()


def test_a_body_that_stops_arriving_times_out():
    request = RequestBody(Stalled(b"{"), 100, LIMIT, 0.2)
    with pytest.raises(RequestTimeout):
        request.read()
    assert not request.complete


def test_the_deadline_counts_from_arrival_not_per_read():
    """A byte every 50 ms never waits long on one read; 100 of them take 5 s, past the deadline."""
    with pytest.raises(RequestTimeout):
        RequestBody(Trickle(0.05), 100, LIMIT, 0.5).read()


def test_reading_after_the_deadline_is_a_timeout_at_once():
    request = RequestBody(io.BytesIO(b"{}"), 2, LIMIT, 0.0)
    with pytest.raises(RequestTimeout):
        request.read()


def test_a_timeout_that_is_not_the_bodys_own_goes_through():
    """The server's own timeouts around the view are not the client's 408."""
    request = RequestBody(Stalled(), 100, LIMIT, 5.0)
    outer = gevent.Timeout(0.1)
    with pytest.raises(gevent.Timeout) as raised:
        with outer:
            request.read()
    assert raised.value is outer


@given(data=st.binary(max_size=3 * 8192 + 5), sizes=st.lists(st.integers(1, 9000), max_size=6),
       chunked=st.booleans())
def test_reads_of_any_sizes_give_back_the_body(data, sizes, chunked):
    request = body(data, length=None if chunked else len(data), limit=len(data))
    pieces = [request.read(size) for size in sizes]
    assert all(len(piece) <= size for piece, size in zip(pieces, sizes))
    pieces.append(request.read())
    assert b"".join(pieces) == data
    assert request.complete


@pytest.mark.parametrize("environ, announced", [
    ({}, False),
    ({"CONTENT_LENGTH": ""}, False),
    ({"CONTENT_LENGTH": "0"}, False),
    ({"CONTENT_LENGTH": "2"}, True),
    ({"CONTENT_LENGTH": "abc"}, True),  # not a length: the guard reads it as chunked/unknown
    ({"HTTP_TRANSFER_ENCODING": "chunked"}, True),
    ({"CONTENT_LENGTH": "0", "HTTP_TRANSFER_ENCODING": "chunked"}, True),
    ({"HTTP_TRANSFER_ENCODING": ""}, True),
])
def test_announces_body(environ, announced):
    assert announces_body(environ) is announced
