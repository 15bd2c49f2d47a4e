"""SingleFlight: one run for the callers that need it at the same time, with real threads."""
import threading

from coupon.supply import SingleFlight
from tests.unit.threads import HANG, Raised, started, wait_until_waiting

CALLERS = 8


class Gate:
    """A call that records each run and blocks until opened; returns what `answer()` gives."""

    def __init__(self, answer):
        self.answer = answer
        self.runs = 0
        self.running, self.opened = threading.Event(), threading.Event()

    def __call__(self):
        self.runs += 1
        self.running.set()
        assert self.opened.wait(HANG), "the gate was never opened"
        return self.answer()


def flight_with_waiters(gate):
    """A SingleFlight whose run of `gate` is in progress with CALLERS - 1 callers waiting for it;
    every caller's thread (the one running first)."""
    flight = SingleFlight()
    leader = started(flight.run, gate)
    assert gate.running.wait(HANG)
    assert flight.busy
    waiters = []
    for _ in range(CALLERS - 1):
        waiters.append(started(flight.run, gate))
        wait_until_waiting(waiters[-1], SingleFlight.run)
    return flight, [leader, *waiters]


def test_concurrent_callers_share_one_run_and_its_result():
    result = object()
    gate = Gate(lambda: result)
    flight, callers = flight_with_waiters(gate)
    gate.opened.set()
    outcomes = [caller.outcome() for caller in callers]
    assert gate.runs == 1
    assert all(outcome is result for outcome in outcomes), outcomes
    assert not flight.busy


def test_the_error_of_the_run_is_raised_to_every_caller():
    error = RuntimeError("lease failed")

    def fail():
        raise error

    gate = Gate(fail)
    flight, callers = flight_with_waiters(gate)
    gate.opened.set()
    outcomes = [caller.outcome() for caller in callers]
    assert gate.runs == 1
    assert all(outcome == Raised(error) for outcome in outcomes), outcomes  # the same one
    assert not flight.busy


def test_a_call_after_a_run_runs_again():
    flight = SingleFlight()
    answers = iter(["first", "second"])
    runs = []

    def call():
        runs.append(1)
        return next(answers)

    assert flight.run(call) == "first"
    assert flight.run(call) == "second"  # nothing is remembered between runs
    assert len(runs) == 2 and not flight.busy


def test_a_failed_run_leaves_the_next_one_free():
    flight = SingleFlight()

    def fail():
        raise ValueError("once")

    try:
        flight.run(fail)
    except ValueError:
        pass
    else:
        raise AssertionError("the error of the run was swallowed")
    assert not flight.busy
    assert flight.run(lambda: 42) == 42
