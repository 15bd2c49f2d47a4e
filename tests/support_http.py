"""Raw HTTP on loopback sockets: exact bytes written, answers parsed back with a deadline (a
server that neither answers nor closes in time raises Hang)."""
import json
import socket
import threading
import time
from typing import NamedTuple

HOST = "127.0.0.1"
BODY_TIMEOUT = 2  # seconds: the servers of the tests that send unfinished bodies (the fuzz: 1)
HANG = 10.0  # seconds: no answer and no close within this is a hang


class Answer(NamedTuple):
    """An HTTP answer as read off the wire. It also reads as a Flask test client's response does
    (status_code, is_json, json, get_data), so that one support.assert_error checks both."""
    status: int
    headers: dict  # lower-case names
    body: bytes

    def __str__(self):
        return f"{self.status} {self.headers} {self.body[:300]!r}"

    @property
    def status_code(self):
        return self.status

    @property
    def is_json(self):
        return self.headers.get("content-type", "").startswith("application/json")

    @property
    def json(self):
        return json.loads(self.body)

    def get_data(self, as_text=False):
        return self.body.decode("utf-8", "replace") if as_text else self.body


class Hang(AssertionError):
    """The server neither answered nor closed the connection in time."""


def parse_head(head):
    """(status, {lower-case name: value}) of an answer's status line and headers."""
    status_line, *lines = head.decode("latin-1").split("\r\n")
    version, status, _ = (status_line + " ").split(" ", 2)
    assert version in ("HTTP/1.1", "HTTP/1.0") and status.isdigit(), f"not an answer: {head!r}"
    headers = {}
    for line in lines:
        name, colon, value = line.partition(":")
        assert colon, f"not a header line: {line!r}"
        headers[name.strip().lower()] = value.strip()
    return int(status), headers


class RawConnection:
    """One loopback connection to the server: exact bytes written, HTTP answers read back."""

    def __init__(self, port):
        self.sock = socket.create_connection((HOST, port), timeout=HANG)
        self.received = bytearray()  # read, not yet parsed
        self.stop = threading.Event()
        self.writers = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self.stop.set()
        for thread in self.writers:
            thread.join(timeout=HANG)
        self.sock.close()

    def send(self, data):
        """Write data; False if the server had closed the connection already."""
        try:
            self.sock.sendall(data)
            return True
        except OSError:  # closed or reset by the server, or timed out
            return False

    def _writer(self, target, *args):
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        self.writers.append(thread)

    def send_behind(self, data):
        """Write data from another thread: a payload the server may stop reading (413, 431)."""
        self._writer(self.send, data)

    def trickle(self, data, every=1.0):
        """Write data one byte every `every` seconds, from another thread, until the server closes
        the connection or close() is called."""
        def run():
            for i in range(len(data)):
                if self.stop.wait(every) or not self.send(data[i:i + 1]):
                    return
        self._writer(run)

    def end_writes(self):
        self.sock.shutdown(socket.SHUT_WR)

    def _receive(self, deadline):
        """Read what comes within the deadline into self.received; False at the end of the stream."""
        hang = Hang(f"nothing more within the deadline; so far {bytes(self.received[:200])!r}")
        if deadline <= time.monotonic():
            raise hang
        self.sock.settimeout(deadline - time.monotonic())
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            raise hang from None
        except ConnectionResetError:
            data = b""
        self.received += data
        return bool(data)

    def _take(self, count, deadline):
        while len(self.received) < count:
            assert self._receive(deadline), f"closed mid-answer: {bytes(self.received)!r}"
        data = bytes(self.received[:count])
        del self.received[:count]
        return data

    def _line(self, deadline):
        while (end := self.received.find(b"\r\n")) < 0:
            assert self._receive(deadline), f"closed mid-answer: {bytes(self.received)!r}"
        return self._take(end + 2, deadline)[:-2]

    def _body(self, headers, deadline):
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = bytearray()
            while size := int(self._line(deadline).split(b";")[0], 16):
                body += self._take(size + 2, deadline)[:-2]
            while self._line(deadline):  # trailers, up to the empty line
                pass
            return bytes(body)
        if "content-length" in headers:
            return self._take(int(headers["content-length"]), deadline)
        while self._receive(deadline):  # delimited by the close
            pass
        return self._take(len(self.received), deadline)

    def answer(self, timeout=HANG, head=False):
        """The next final answer (1xx skipped) within `timeout` seconds, else Hang; None if the
        connection closed (or was reset) before one began. head: the answer to a HEAD, no body."""
        deadline = time.monotonic() + timeout
        while True:
            while (end := self.received.find(b"\r\n\r\n")) < 0:
                if not self._receive(deadline):
                    assert not self.received, f"closed mid-answer: {bytes(self.received)!r}"
                    return None
            status, headers = parse_head(self._take(end + 4, deadline)[:-4])
            if status >= 200:
                no_body = head or status in (204, 304)
                return Answer(status, headers, b"" if no_body else self._body(headers, deadline))

    def answers(self, timeout=HANG, head=False):
        """Every answer until the server closes the connection, within `timeout` seconds."""
        deadline, answers = time.monotonic() + timeout, []
        while (answer := self.answer(deadline - time.monotonic(), head)) is not None:
            answers.append(answer)
            if head:  # what follows a HEAD's answer cannot be framed: not read
                break
        return answers

    def closed_within(self, seconds):
        """Whether the server closes the connection within `seconds` (what comes first is read
        and dropped)."""
        deadline = time.monotonic() + seconds
        try:
            while self._receive(deadline):
                self.received.clear()
        except Hang:
            return False
        return True


def exchange(port, data, end_writes=False, timeout=HANG):
    """Write data on a fresh connection (half-closed after it with end_writes); its first answer,
    or None if the server closed the connection without one."""
    with RawConnection(port) as conn:
        conn.send_behind(data)
        if end_writes:
            conn.writers[0].join(timeout)
            conn.end_writes()
        return conn.answer(timeout)


def head_of(method, path, *headers):
    """An HTTP/1.1 request head: line, Host, the headers given, the empty line."""
    return "\r\n".join([f"{method} {path} HTTP/1.1", "Host: x", *headers, "", ""]).encode("latin-1")


def issue_head(campaign_id, token=None, *headers):
    auth = [f"Authorization: Bearer {token}"] if token else []
    return head_of("POST", f"/api/v1/campaigns/{campaign_id}/issue", *auth, *headers)
