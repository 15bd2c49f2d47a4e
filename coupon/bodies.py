"""Request bodies, read on the service's terms.

A body is read only when a view asks for it (the issue call: after the caller's token checked
out), within BODY_TIMEOUT seconds of the request's arrival and up to MAX_CONTENT_LENGTH bytes;
whatever goes wrong while reading it (too slow, too large, shorter than announced, broken
chunking, the client gone) is the client's error and answers as one. A connection whose body was
left unread is closed after the answer: kept alive, gunicorn would first read the rest of it,
and a client that never sends it would hold the connection for KEEPALIVE seconds.
"""
import time

import gevent

from werkzeug.http import HTTP_STATUS_CODES

from coupon.errors import (
    JSON, BadRequest, PayloadTooLarge, RequestTimeout, UnsupportedTransferCoding, error_answer,
)

READ_SIZE = 8192


def announces_body(environ):
    """Whether a request says a body follows (a Content-Length above 0, or a transfer coding)."""
    return (environ.get("CONTENT_LENGTH") not in (None, "", "0")
            or "HTTP_TRANSFER_ENCODING" in environ)


class RequestBody:
    """wsgi.input of a request that announced a body: read with a deadline and a size limit."""

    def __init__(self, stream, length, limit, timeout):
        self.stream = stream
        self.length = length  # None: chunked (or unknown), ends with the stream
        self.limit = limit
        self.deadline = time.monotonic() + timeout
        self.received = 0
        self.complete = length == 0

    def read(self, size=-1):
        """Up to `size` bytes of the body, all of it if size < 0."""
        if self.length is not None and self.length > self.limit:
            raise PayloadTooLarge()
        data = bytearray()
        while not self.complete and (size < 0 or len(data) < size):
            want = READ_SIZE if size < 0 else min(READ_SIZE, size - len(data))
            if self.length is not None:
                want = min(want, self.length - self.received)
            data += self._receive(want)
        return bytes(data)

    def _receive(self, want):
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise RequestTimeout()
        timer = gevent.Timeout(left)
        timer.start()
        try:
            piece = self.stream.read(want)
        except gevent.Timeout as timeout:
            if timeout is not timer:
                raise
            raise RequestTimeout() from None
        except Exception:  # broken chunking, the client gone: the client's error, not ours
            raise BadRequest("the body is malformed or incomplete") from None
        finally:
            timer.close()
        self.received += len(piece)
        if self.received > self.limit:
            raise PayloadTooLarge()
        if not piece:  # the end of the stream
            if self.length is not None:
                raise BadRequest("the body is shorter than its Content-Length")
            self.complete = True
        elif self.received == self.length:
            self.complete = True
        return piece


class BodyGuard:
    """WSGI middleware in front of Flask: every announced body goes through a RequestBody.

    The server may put a callable at environ["coupon.close_connection"] that closes the
    connection after the answer (coupon/worker.py does, under gunicorn).
    """

    def __init__(self, app, limit, timeout):
        self.app = app
        self.limit = limit
        self.timeout = timeout

    def __call__(self, environ, start_response):
        if not announces_body(environ):
            return self.app(environ, start_response)
        raw_length = environ.get("CONTENT_LENGTH") or ""
        coding = environ.get("HTTP_TRANSFER_ENCODING")
        close_connection = environ.get("coupon.close_connection", lambda: None)
        if coding is not None and coding.strip().lower() != "chunked":
            # gunicorn lets gzip, deflate and compress through, before chunked: we decode none
            close_connection()
            body, status, headers = error_answer(UnsupportedTransferCoding())
            start_response("%d %s" % (status, HTTP_STATUS_CODES[status]),
                           [("Content-Type", JSON), ("Content-Length", str(len(body))), *headers])
            return [body]
        length = int(raw_length) if raw_length.isdigit() and coding is None else None
        body = environ["wsgi.input"] = RequestBody(environ["wsgi.input"], length, self.limit,
                                                   self.timeout)
        answer = self.app(environ, start_response)
        if not body.complete:
            close_connection()
        return answer
