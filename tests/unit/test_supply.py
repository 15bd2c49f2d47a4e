"""SingleFlight: one run for the callers that need it at the same time, with real threads; and
SerialSupply's rule (a serial taken once, every lease settled), against a fake of its scripts."""
import itertools
import threading

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from coupon.errors import SoldOut, Unavailable
from coupon.supply import TAIL_TRIES, SerialSupply, SingleFlight
from tests.unit.fakes import KEYS, SETTINGS, FakeScripts, Gauge
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


# --- SerialSupply: its rule against a fake of the scripts (tests/unit/fakes.py) ---------------

def supply_of(total):
    scripts = FakeScripts(total)
    numbers = itertools.count(1)
    supply = SerialSupply(KEYS, "e1", scripts, SETTINGS, lambda: f"w:{next(numbers)}", Gauge())
    return supply, scripts


def test_a_serial_is_taken_once_and_a_used_up_lease_is_settled_at_once():
    supply, scripts = supply_of(10)  # a fair share of 10: 3
    served = []
    for _ in range(3):
        with supply.take() as taken:
            served.append(taken.serial)
            taken.answered(unused=False)
    assert served == [1, 2, 3]
    assert scripts.given_back == [("w:1", [])] and not scripts.leases  # it holds nothing now
    assert supply.current is None and not supply.held


def test_a_serial_its_claim_left_unused_is_the_next_one_taken():
    supply, _ = supply_of(10)
    with supply.take() as taken:
        taken.answered(unused=True)
    with supply.take() as again:
        again.answered(unused=False)
    assert again.serial == taken.serial == 1


@pytest.mark.parametrize("error", [ValueError("a reply it could not read"), RedisConnectionError()])
def test_whatever_is_raised_while_a_serial_is_taken_leaves_its_lease_to_the_reclaim_job(error):
    supply, scripts = supply_of(10)
    with pytest.raises(type(error)):
        with supply.take():
            raise error  # its claim may or may not have been written
    with supply.take() as taken:  # the others of the lease are still served
        taken.answered(unused=False)
    assert taken.serial == 2
    supply.retire()
    assert scripts.expired == {"w:1"} and scripts.given_back == []  # never given back


def test_a_refill_that_failed_asks_again_under_the_same_lease_id():
    supply, scripts = supply_of(500)
    scripts.failures = 1
    with pytest.raises(Unavailable):
        supply.take()
    with supply.take() as taken:
        taken.answered(unused=False)
    assert scripts.lease_ids == ["w:1", "w:1"]


def test_a_lease_that_expired_before_it_was_asked_again_is_asked_under_a_new_id():
    supply, scripts = supply_of(500)
    scripts.failures = 1
    with pytest.raises(Unavailable):
        supply.take()
    scripts.expired.add("w:1")
    with supply.take() as taken:
        taken.answered(unused=False)
    assert scripts.lease_ids == ["w:1", "w:1", "w:2"]


def test_dry_while_others_hold_it_asks_them_once_and_looks_again_before_sold_out():
    supply, scripts = supply_of(0)
    scripts.others_hold = True
    with pytest.raises(SoldOut):
        supply.take()
    assert len(scripts.lease_ids) == TAIL_TRIES and scripts.holders_asked == 1
    assert supply.known_sold_out()  # for TAIL_RECHECK, without asking


def test_dry_it_takes_a_serial_another_worker_gives_back_while_it_looks_again():
    supply, scripts = supply_of(0)
    scripts.others_hold = True
    lease = scripts.lease

    def given_back_at_the_third_look(*args):
        if len(scripts.lease_ids) == 2:
            scripts.returned.append(42)
        return lease(*args)

    scripts.lease = given_back_at_the_third_look
    with supply.take() as taken:
        taken.answered(unused=False)
    assert taken.serial == 42 and len(scripts.lease_ids) == 3


def test_a_lease_of_the_tail_is_only_for_the_requests_waiting_and_never_at_hand():
    supply, scripts = supply_of(5)  # all of it within the tail (8)
    with supply.take() as taken:  # one request waiting: one serial
        assert scripts.leases == {"w:1": [1]} and not supply.at_hand
        taken.answered(unused=True)
    assert scripts.given_back == [("w:1", [1])]  # back at once, for whoever asks next


def test_a_give_back_that_failed_is_done_at_the_next_refill():
    supply, scripts = supply_of(10)
    with supply.take() as taken:
        taken.answered(unused=False)
    scripts.failures = 1
    supply.retire()  # its give back fails: Redis is down
    assert supply.unsettled and "w:1" in scripts.leases
    with supply.take() as taken:
        taken.answered(unused=False)
    assert scripts.given_back == [("w:1", [2, 3])] and not supply.unsettled
    assert taken.serial == 2  # given back, and leased again first
