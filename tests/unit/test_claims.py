"""ClaimBatcher: the claims of concurrent requests coalesced into shared calls, with real threads
and a plain send function standing in for ClaimSender."""
import threading

from coupon.claims import ClaimBatcher
from tests.unit.threads import HANG, Raised, started, wait_until_waiting


class Sender:
    """A send function: records each batch, answers ("ok", claim) per claim (or the exception
    `errors` names for it); the first call blocks until `opened`, so that others queue up."""

    def __init__(self, errors=None, fail_first=None):
        self.batches = []
        self.errors = errors or {}
        self.fail_first = fail_first  # raised by the first call, after the gate
        self.sending, self.opened = threading.Event(), threading.Event()

    def __call__(self, claims):
        self.batches.append(list(claims))
        if len(self.batches) == 1:
            self.sending.set()
            assert self.opened.wait(HANG), "the gate was never opened"
            if self.fail_first is not None:
                raise self.fail_first
        return [self.errors.get(claim, ("ok", claim)) for claim in claims]


def queued(batcher, sender, first, *others):
    """Submit `first` (it leads and blocks in the send), then each of `others` in turn, once the
    one before waits in the queue. The threads, in that order."""
    leader = started(batcher.submit, first)
    assert sender.sending.wait(HANG)
    waiters = []
    for claim in others:
        waiters.append(started(batcher.submit, claim))
        wait_until_waiting(waiters[-1], ClaimBatcher.submit)
    return [leader, *waiters]


def test_a_lone_request_is_one_call_of_one_claim():
    sender = Sender()
    sender.opened.set()
    batcher = ClaimBatcher(sender, max_batch=256)
    assert batcher.submit("a") == ("ok", "a")
    assert sender.batches == [["a"]]
    assert batcher.submit("b") == ("ok", "b")  # the lead was given up: again one call
    assert sender.batches == [["a"], ["b"]]


def test_claims_queued_during_a_call_go_together_in_the_next_in_arrival_order():
    sender = Sender()
    batcher = ClaimBatcher(sender, max_batch=256)
    claims = [f"c{i}" for i in range(6)]
    threads = queued(batcher, sender, *claims)
    sender.opened.set()
    outcomes = [thread.outcome() for thread in threads]
    assert sender.batches == [claims[:1], claims[1:]]
    assert outcomes == [("ok", claim) for claim in claims]  # each its own reply


def test_batches_are_at_most_max_batch_oldest_first():
    sender = Sender()
    batcher = ClaimBatcher(sender, max_batch=2)
    claims = [f"c{i}" for i in range(6)]
    threads = queued(batcher, sender, *claims)
    sender.opened.set()
    outcomes = [thread.outcome() for thread in threads]
    assert sender.batches == [["c0"], ["c1", "c2"], ["c3", "c4"], ["c5"]]
    assert outcomes == [("ok", claim) for claim in claims]


def test_an_exception_in_a_claims_reply_is_raised_to_that_claim_only():
    shard_down = ConnectionError("shard 3 down")
    sender = Sender(errors={"bad": shard_down})
    batcher = ClaimBatcher(sender, max_batch=256)
    threads = queued(batcher, sender, "first", "ok1", "bad", "ok2")
    sender.opened.set()
    outcomes = [thread.outcome() for thread in threads]
    assert outcomes[0] == ("ok", "first")
    assert outcomes[1] == ("ok", "ok1") and outcomes[3] == ("ok", "ok2")
    assert outcomes[2] == Raised(shard_down)  # raised, not answered
    assert sender.batches == [["first"], ["ok1", "bad", "ok2"]]


def test_a_failed_call_fails_its_batch_only_and_the_queue_goes_on():
    boom = TimeoutError("Redis timed out")
    sender = Sender(fail_first=boom)
    batcher = ClaimBatcher(sender, max_batch=256)
    threads = queued(batcher, sender, "first", "second", "third")
    sender.opened.set()
    outcomes = [thread.outcome() for thread in threads]
    assert outcomes[0] == Raised(boom)
    assert outcomes[1:] == [("ok", "second"), ("ok", "third")]
    assert sender.batches == [["first"], ["second", "third"]]
    assert batcher.submit("fourth") == ("ok", "fourth")  # nobody holds the lead any more
