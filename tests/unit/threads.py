"""Real threads for the unit tests of coupon's concurrency helpers: start one, and wait until it
is blocked where a test needs it, judged by its stack (no sleep long enough "in practice")."""
import sys
import threading
import time
from typing import NamedTuple

HANG = 10.0  # seconds: a thread that has not got where it should by then never will


class Raised(NamedTuple):
    """What a Caller raised (as told apart from an exception it returned)."""

    error: Exception


class Caller(threading.Thread):
    """A thread running `call(*args)`; keeps what it returned (result) or raised (error)."""

    def __init__(self, call, *args):
        super().__init__(daemon=True)
        self.call, self.args = call, args
        self.result = self.error = None

    def run(self):
        try:
            self.result = self.call(*self.args)
        except Exception as e:
            self.error = e

    def outcome(self):
        """Join; the result, or Raised(the exception)."""
        self.join(HANG)
        assert not self.is_alive(), f"{self.name} still running after {HANG} s"
        return Raised(self.error) if self.error is not None else self.result


def started(call, *args):
    thread = Caller(call, *args)
    thread.start()
    return thread


def waits_in(thread, function):
    """Whether `thread` is blocked in an Event.wait() called by `function` itself."""
    frame = sys._current_frames().get(thread.ident)
    if frame is None or frame.f_code is not threading.Condition.wait.__code__:
        return False
    event_wait = frame.f_back
    if event_wait is None or event_wait.f_code is not threading.Event.wait.__code__:
        return False
    return event_wait.f_back is not None and event_wait.f_back.f_code is function.__code__


def wait_until_waiting(thread, function):
    """Return once `thread` is blocked in an Event.wait() of `function`; fail after HANG seconds."""
    deadline = time.monotonic() + HANG
    while not waits_in(thread, function):
        assert thread.is_alive(), f"{thread.name} ended without waiting in {function.__qualname__}"
        assert time.monotonic() < deadline, f"{thread.name} never waited in {function.__qualname__}"
        time.sleep(0.001)
