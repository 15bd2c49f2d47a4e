"""The serial supply: one worker's serials of one campaign, leased from Redis in blocks.

A request takes a serial from the current lease; when it is empty, one refill (for every request
waiting: SingleFlight) leases the next block. As stock runs low, leases shrink to a fair share,
and the last SINGLE_LEASE_TAIL serials are leased only as requests wait for them (the tail), so
no worker sits on serials while another answers SOLD_OUT. A lease is settled in Redis once none
of its serials is in flight: the unused ones go back to the campaign at once. A lease whose
claims' outcome is unknown (Redis error) is left to expire instead, and the reclaim job returns
what was never claimed. A lease is used only once replicas hold it (REDIS_REPLICA_ACKS); a
refill whose lease's outcome is unknown, or was not acknowledged, asks again under the same
lease id, which answers the same serials rather than leasing more.

The supply knows nothing of the campaign's window or status: what lease.lua refuses with is
raised (SoldOut, NotOpen, Closed, CampaignGone) for the issuer to act on.
"""
import math
import threading
import time
from collections import deque
from dataclasses import dataclass

from redis.exceptions import RedisError

from coupon.errors import Closed, NotOpen, SoldOut, Unavailable
from coupon.scripts import LeaseOutcome

# seconds between looks at the campaign while stock runs low (leases cut below BLOCK_SIZE): for
# serials other workers were asked to give back, and for such requests from a worker that ran dry
TAIL_RECHECK = 0.1
# seconds between looks at the campaign by a worker holding serials of it while stock runs low,
# whether or not requests of it come: a worker that ran dry asks the holders for their unused
# serials (meta `wanted`), and an idle holder must not keep them from its users (issuing.Issuer)
HOLDER_WATCH = 0.02
# When the stock is gone but other workers hold serials, they are claims in flight or serials
# asked back: what one of them leaves unused (rate limited, closed, a ticket the user got
# meanwhile) or gives back comes within a few HOLDER_WATCH: look again until then before
# answering SOLD_OUT, so a refusal neither overtakes the last claims nor misses a serial that
# comes back (BENCHMARKS.md, "The tail").
TAIL_WAIT = 0.01
TAIL_TRIES = 1 + round(5 * HOLDER_WATCH / TAIL_WAIT)
GAUGE_STEP = 32  # the local-block gauge moves in steps of this many serials (and at 0)
# In arrival order (ARRIVAL_ORDER): the last this many serials of a campaign go to bids in arrival
# order across workers (lease.lua), never in blocks: more than the requests a flood keeps waiting
# at once, so that those served from blocks before would have been served anyway
ORDERED_TAIL = 10_000
BIDDER_STALE_MS = 1_000  # a worker not heard from for this long is gone: its bids keep nothing
# a worker lists itself as a bidder of a campaign once it has read a request of it, and the opening
# flood (OPENING_MS from opens_at) may swamp one for hundreds of ms before it does: meanwhile it may
# hold the earliest requests. So at the opening no bid is answered until every worker on the roll
# (arrival.WorkerRoll) is listed; with the roll unknown (no gunicorn), none before UNLISTED_MS after
# it arrived. After the opening a worker under a flood is listed already, and one that joins later
# reads its first request at once
UNLISTED_MS = 20
OPENING_MS = 1_000
# a bidder whose frontier is at most this many ms behind Redis's now is caught up (no queue): it
# holds no one back, so with no queue anywhere a bid is answered at once, out of order by
# CAUGHT_UP_MS at most (docs/api.md); one further behind holds the watermark at its frontier. The
# bound is on the sum of the bidder's own lag (what it has not bid or read: ReadMarks looks three
# turns of the loop back, the loop turns at least every PUBLISH_EVERY) and the age of its word
# (its publication's, or its last bid's, round trip and period). Split into two bounds of half
# each, a word's trip through a loaded machine counted as lag: at 1,000 requests/s here the
# watermark stood at such a worker's frontier in 125 of 647 calls that bid, with the sum in 19 of
# 627 (BENCHMARKS.md, "First come, first served")
CAUGHT_UP_MS = 20
# With no queue anywhere (every bidder caught up, no bid waiting), a bid is granted up to AHEAD_MOST
# serials more, for its worker's requests that arrive within AHEAD_MS: they take one at once, where
# each would wait for a bid's round trip before its claim (at 1,000/s a winner's median wait fell
# from 6.3-9.1 ms to 2.0-4.2: BENCHMARKS.md, "Coupons granted ahead"). Such a request may pass one
# at another worker by CAUGHT_UP_MS + AHEAD_MS at most (docs/api.md); what is not taken by then
# goes back at once
AHEAD_MS = 10
AHEAD_MOST = 8
# seconds between bids that got no answer yet (the watermark moves on), unless a new one comes:
# it is sent at once, as its request's frontier holds every other worker's bids back till then
ORDER_WAIT = 0.002
# seconds a bid waits for an answer at most (a worker that holds the watermark back stalls, Redis
# fails over); then UNAVAILABLE, to be asked again, and withdrawn: not SOLD_OUT while stock is left
ORDER_PATIENCE = 2.0
# a bid is sent once and stays in Redis; every this many seconds all are sent again, which places
# again those dropped while this worker was taken for gone (BIDDER_STALE_MS)
BIDS_AGAIN = 0.1


def lease_id(worker_id, number):
    """A lease's id: its worker's id, then the worker's count of its leases.

    The worker's id is extensions.Services.worker_id: host:pid:random part."""
    return f"{worker_id}:{number}"


def lease_holder(lease_id):
    """host:pid of the worker a lease id names (lease_id's worker id less its random part)."""
    return lease_id.rsplit(":", 2)[0]


class CampaignGone(Exception):
    """Redis no longer holds the campaign (released after close, or lost)."""


class SingleFlight:
    """Run a call once for all the requests that need it at the same time.

    The first caller runs it; callers arriving meanwhile wait for that run and get its result or
    its error, all woken at once. (A lock held across the call would hand over to one waiter per
    turn of gevent's loop, each turn serving every other ready connection first: tens of ms per
    waiter under a ramp: BENCHMARKS.md, "The tail".)
    """

    def __init__(self):
        self._guard = threading.Lock()  # never held across I/O
        self._flight = None  # (done event, [result, error]) of the run in progress

    @property
    def busy(self):
        return self._flight is not None

    def run(self, call):
        with self._guard:
            flight = self._flight
            leading = flight is None
            if leading:
                flight = self._flight = (threading.Event(), [None, None])
        done, outcome = flight
        if not leading:
            done.wait()
            if outcome[1] is not None:
                raise outcome[1]
            return outcome[0]
        try:
            outcome[0] = call()
            return outcome[0]
        except Exception as e:
            outcome[1] = e
            raise
        finally:
            self._flight = None
            done.set()


@dataclass(frozen=True)
class SupplySettings:
    """What a serial supply takes from the configuration."""

    block_size: int  # BLOCK_SIZE
    tail_size: int  # SINGLE_LEASE_TAIL
    lease_ttl: float  # LEASE_TTL
    sold_out_recheck: float  # STATE_REFRESH

    @classmethod
    def of(cls, config):
        return cls(config["BLOCK_SIZE"], config["SINGLE_LEASE_TAIL"], config["LEASE_TTL"],
                   config["STATE_REFRESH"])


class Lease:
    """A block of serials leased to this worker, and what became of each of them."""

    __slots__ = ("id", "unused", "in_flight", "uncertain", "settled", "valid_until", "renew_at",
                 "ahead_until", "ahead_ends")

    def __init__(self, lease_id, serials):
        self.id = lease_id
        self.unused = deque(serials)
        self.in_flight = 0  # serials taken whose claim has not answered yet
        self.uncertain = False  # a claim's outcome is unknown: leave the lease to expire
        self.settled = False
        self.valid_until = 0.0  # monotonic; past it the serials must not be used
        self.renew_at = 0.0
        # granted ahead (lease.lua): its unused serials are for requests that arrive before
        # ahead_until (epoch ms, Redis's clock), and go back at ahead_ends (monotonic)
        self.ahead_until = 0
        self.ahead_ends = 0.0


class Taken:
    """A serial taken from a lease, as a context: leaving it tells the supply what became of it.

    It tells it exactly once, whatever was raised. Say it with answered(): unused (free for the
    next request) or used. Left unsaid (a Redis error, any other exception), the claim may or may
    not have been written: the lease is left to expire and the reclaim job sorts it out."""

    __slots__ = ("supply", "lease", "serial", "unused", "known")

    def __init__(self, supply, lease, serial):
        self.supply, self.lease, self.serial = supply, lease, serial
        self.unused = self.known = False

    def answered(self, unused):
        self.known, self.unused = True, unused

    def __enter__(self):
        return self

    def __exit__(self, *raised):
        self.supply._done(self.lease, self.serial, unused=self.unused, uncertain=not self.known)


class SerialSupply:
    """One worker's serials of one campaign: take one (a Taken), say what its claim answered."""

    def __init__(self, keys, epoch, scripts, settings, new_lease_id, gauge, gate=None):
        self.keys = keys
        self.epoch = epoch  # the campaign's, as loaded: lease.lua refuses another
        self.scripts = scripts
        self.new_lease_id = new_lease_id
        self.gauge = gauge
        self.block_size = settings.block_size
        self.tail_size = settings.tail_size
        self.lease_ttl = settings.lease_ttl
        # stop using a block this long before Redis may consider its lease expired
        self.lease_margin = min(self.lease_ttl / 3, 5.0)
        self.sold_out_recheck = settings.sold_out_recheck
        self.current = None  # the Lease serials are taken from
        self.tail_lease = None  # the last tail lease, whose serials the requests it woke are taking
        self.unsettled = []  # retired leases whose settling failed (Redis down): retried at refill
        self.sold_out_until = 0.0  # monotonic; until then answer SOLD_OUT without asking
        self.low_stock = False  # the last lease was cut to a fair share: look more often
        self.waiting_requests = 0  # requests waiting for a serial of this supply
        self.unanswered_lease_id = None  # of a refill that failed: the next one asks under it
        self._refill = SingleFlight()
        self._renew_lock = threading.Lock()
        # in arrival order (arrival.ArrivalGate): the waiting requests' bids, and their answers
        self.gate = gate
        self._bidding = {}  # Turn id -> Turn of the requests waiting for a serial
        self._granted = {}  # Turn id -> (lease, serial) served to its bid
        self._placed = {}  # Turn id -> monotonic deadline of the bids in Redis, not answered yet
        self._withdrawn = []  # Turn ids of bids in Redis whose requests went without a serial
        self._bids_again_at = 0.0  # monotonic: when to send every bid again
        self._new_bid = threading.Event()  # a request began bidding since the last bids were sent
        self._asked_holders_at = -HOLDER_WATCH  # monotonic: the bids last asked the holders
        self.ahead = None  # the Lease of the serials granted ahead last
        # requests in arrival order since the last bids, and since when (_ahead_most)
        self._turns, self._turns_since = 0, time.monotonic()
        if gate is not None:
            self.tail_size = max(self.tail_size, ORDERED_TAIL)

    @property
    def at_hand(self):
        """A serial can be taken without waiting (never at the tail)."""
        return self.current is not None and bool(self.current.unused)

    @property
    def held(self):
        """Serials of the current lease not handed out yet."""
        return len(self.current.unused) if self.current else 0

    def bids_at_once(self, turn):
        """A request with this turn bids for the ordered tail as it takes a serial.

        turn: one in arrival order."""
        return turn is not None and self.low_stock

    def known_sold_out(self):
        """Sold out as far as this worker knows, without asking Redis."""
        return bool(self.sold_out_until) and (
            time.monotonic() < self.sold_out_until or self._refill.busy)

    @property
    def holds_low_stock(self):
        """This worker holds serials of a campaign whose stock runs low: others may want them."""
        return self.low_stock and self.held > 0

    def take(self, turn=None):
        """Return a Taken: a serial of the current lease, refilled as needed.

        To be used as `with supply.take() as taken:`. turn: the request's arrival.Turn, its bid for
        the tail in arrival order."""
        waiting = False
        self._turns += turn is not None
        try:
            while True:
                if turn is not None and turn.id in self._granted:
                    return Taken(self, *self._granted.pop(turn.id))
                if turn is not None and self._ahead_for(turn):
                    self.gate.placed(turn)  # served: it holds no one back
                    return Taken(self, self.ahead, self._take_from(self.ahead))
                if turn is not None and self._placed.get(turn.id, float("inf")) < time.monotonic():
                    raise Unavailable()
                lease = self.current
                if lease is not None and lease.unused and time.monotonic() < lease.valid_until:
                    if time.monotonic() >= lease.renew_at:
                        self._renew(lease)
                    if lease.unused and lease is self.current:
                        return Taken(self, lease, self._take_from(lease))
                    continue
                if time.monotonic() < self.sold_out_until:
                    raise SoldOut()
                if not waiting:
                    waiting = True
                    self.waiting_requests += 1
                    if turn is not None:
                        self._bidding[turn.id] = turn
                        self._new_bid.set()
                fresh = self._refill.run(lambda: self.current is lease and self._lease_more())
                if fresh and fresh.unused and not fresh.settled:  # the requests that waited go first
                    return Taken(self, fresh, self._take_from(fresh))
        finally:
            if waiting:
                self.waiting_requests -= 1
            if turn is not None:
                self._bidding.pop(turn.id, None)
                if self._placed.pop(turn.id, None) is not None:
                    self._withdrawn.append(turn.id)  # its bid must not keep a serial
                granted = self._granted.pop(turn.id, None)  # left before it saw it: unused
                if granted is not None:
                    self._done(*granted, unused=True)

    def _done(self, lease, serial, unused, uncertain):
        """What became of a taken serial (Taken says it).

        `unused`: the serial is free for the next request; `uncertain`: its claim may or may not
        have been written."""
        if unused:
            lease.unused.appendleft(serial)
        if uncertain:
            lease.uncertain = True
        lease.in_flight -= 1
        if lease.in_flight:
            return
        if lease is not self.current:
            if not (lease.unused and time.monotonic() < lease.ahead_ends):
                self._settle(lease)  # the last answer of a retired (or tail) lease
        elif not lease.unused:
            self.retire()  # used up: end it now, so it no longer counts as a holder

    def retire(self):
        """Stop taking serials from the current lease; settle it once nothing of it is in flight."""
        old, self.current = self.current, None
        if old is not None:
            self.gauge.set(0)
            if old.in_flight == 0:
                self._settle(old)  # else the last answer in flight settles it

    def give_back_all(self):
        """Return the unused serials of the current lease and those ahead (a clean shutdown)."""
        lease, self.current = self.current, None
        for held in (lease, self.ahead):
            if held is not None and held.in_flight == 0:
                self._settle(held)

    def _take_from(self, lease):
        lease.in_flight += 1
        serial = lease.unused.popleft()
        # the gauge shows the current lease only; a write is a file write, so in steps
        if lease is self.current and len(lease.unused) % GAUGE_STEP == 0:
            self.gauge.set(len(lease.unused))
        return serial

    def _lease_more(self):
        """The refill: settle what is pending, retire the current lease, lease the next block."""
        for lease in list(self.unsettled):
            self._settle(lease)
        self.retire()
        lease_id = self.unanswered_lease_id or self.new_lease_id()
        # the requests waiting for a serial, but for those the last tail lease still holds one
        # for (they were woken, and take it as soon as they run)
        waiting = self.waiting_requests - (len(self.tail_lease.unused) if self.tail_lease else 0)
        # the bids not in Redis yet (or all again), but for those answered already (their
        # requests have not run since)
        again = time.monotonic() >= self._bids_again_at
        if again:
            self._bids_again_at = time.monotonic() + BIDS_AGAIN
        bids = [turn for turn in self._bidding.values()
                if turn.id not in self._granted
                and (again or turn.id not in self._placed)]
        withdrawn, self._withdrawn = self._withdrawn, []
        self._new_bid.clear()
        ahead = self._ahead_most() if self.gate is not None else 0  # once a refill, not a try
        for attempt in range(TAIL_TRIES):
            if attempt:
                time.sleep(TAIL_WAIT)
            sent = time.monotonic()
            order = None
            if self.gate is not None:
                order = (self.gate.worker_id, self.gate.frontier(self.keys.campaign_id, bids),
                         BIDDER_STALE_MS, UNLISTED_MS, OPENING_MS, CAUGHT_UP_MS,
                         self.gate.workers_serving(), ahead, AHEAD_MS,
                         [(turn.id, turn.arrival) for turn in bids] + [(i, "") for i in withdrawn])
            try:
                reply = self.scripts.lease(self.keys, self.epoch, lease_id, self.block_size,
                                           int(self.lease_ttl * 1000), self.tail_size, waiting,
                                           order)
            except RedisError:
                # leased or not, replicated or not: unknown. Never use it; ask again under the
                # same id, which answers the same serials if they were leased
                self.unanswered_lease_id = lease_id
                self._withdrawn += withdrawn
                raise Unavailable() from None
            self.unanswered_lease_id = None
            if reply.outcome is LeaseOutcome.EXPIRED:  # asked again too late: its serials are not ours
                lease_id = self.new_lease_id()
            elif not (reply.outcome is LeaseOutcome.SOLD_OUT and reply.others_hold):
                break
            elif not attempt:
                self._ask_holders()
        if reply.outcome is LeaseOutcome.ORDERED:
            if reply.others_hold and time.monotonic() - self._asked_holders_at >= HOLDER_WATCH:
                self._asked_holders_at = time.monotonic()  # (they look every HOLDER_WATCH)
                self._ask_holders()
            return self._answer_bids(lease_id, sent, bids, reply)
        if reply.outcome is LeaseOutcome.LEASED:
            lease = Lease(lease_id, reply.serials)
            self._renewed(lease, sent)
            # a lease of the last serials is only for the requests that waited for this refill
            # (newcomers would leave them to wait again); it is never current, so it ends, and
            # gives back what came back unused, as soon as none of it is in flight
            if reply.tail:
                self.tail_lease = lease
            else:
                self.current = lease
            self.low_stock = len(lease.unused) < self.block_size
            self.sold_out_until = 0.0
            self.gauge.set(self.held)  # the tail: 0
            return lease
        if reply.outcome is LeaseOutcome.SOLD_OUT:
            # others hold serials and were asked to give back the unused ones: look again soon
            # rather than answer SOLD_OUT for a whole STATE_REFRESH
            recheck = TAIL_RECHECK if reply.others_hold else self.sold_out_recheck
            self.sold_out_until = time.monotonic() + recheck
            raise SoldOut()
        if reply.outcome is LeaseOutcome.NOT_OPEN:
            raise NotOpen()
        if reply.outcome is LeaseOutcome.CLOSED:
            raise Closed()
        raise CampaignGone()

    def _ask_holders(self):
        """Ask the workers that hold serials for them, requests of the campaign or not.

        (lease.lua has asked them in the meta, which they read at their requests.)"""
        try:
            self.scripts.ask_holders(self.keys)
        except RedisError:
            pass  # they learn it at their next request of the campaign

    def _answer_bids(self, lease_id, sent, bids, reply):
        """lease.lua's answer to the bids: a serial for each granted one, of a tail lease.

        That lease is never current. The others wait in Redis, holding their place, and ask again
        once the watermark has moved on (sold out only once none is left or in flight). None: each
        request takes what its own bid got, never a serial another's was granted."""
        deadline = time.monotonic() + ORDER_PATIENCE
        for turn in bids:
            self.gate.placed(turn)
            self._placed.setdefault(turn.id, deadline)
        self.low_stock, self.sold_out_until = True, 0.0
        if not reply.granted:
            self._new_bid.wait(ORDER_WAIT)
            return None
        # each serial is its bid's, taken when its request runs; one for a bid whose request went
        # since is unused, given back with the lease once none of it is in flight
        lease = self.tail_lease = Lease(lease_id, ())
        self._renewed(lease, sent)
        for bid, serial in zip(reply.granted, reply.serials):
            if bid in self._bidding:
                self._placed.pop(bid, None)
                self._granted[bid] = (lease, serial)
                lease.in_flight += 1
            else:
                lease.unused.append(serial)
        lease.unused.extend(reply.serials[len(reply.granted):])  # granted ahead
        if reply.ahead_until and lease.unused:
            lease.ahead_until, lease.ahead_ends = reply.ahead_until, sent + AHEAD_MS / 1000
            self.ahead = lease
            threading.Timer(max(0.0, lease.ahead_ends - time.monotonic()), self._ahead_over,
                            (lease,)).start()
        elif not lease.in_flight:
            self._settle(lease)
        return None

    def _ahead_for(self, turn):
        """A serial granted ahead is at hand for this request (it arrived in time)."""
        lease = self.ahead
        return (lease is not None and bool(lease.unused) and not lease.settled
                and turn.arrival < lease.ahead_until and time.monotonic() < lease.valid_until)

    def _ahead_over(self, lease):
        """AHEAD_MS after a grant ahead: what is not taken goes back, now or at its last answer."""
        lease.ahead_ends = 0.0
        if self.ahead is lease:
            self.ahead = None
        if lease.in_flight == 0:
            self._settle(lease)

    def _ahead_most(self):
        """How many serials to ask ahead: this worker's requests in about AHEAD_MS (at least one).

        At their rate since its last bids."""
        now = time.monotonic()
        elapsed = max(now - self._turns_since, AHEAD_MS / 1000)
        most = min(AHEAD_MOST, max(1, math.ceil(self._turns * AHEAD_MS / 1000 / elapsed)))
        self._turns, self._turns_since = 0, now
        return most

    def _settle(self, lease):
        """Give a lease's unused serials back to Redis and end it, or leave it to the reclaim job."""
        if lease.settled:
            return
        lease.settled = True
        try:
            if lease.uncertain:
                self.scripts.expire_lease(self.keys, lease.id)
            else:
                self.scripts.give_back(self.keys, lease.id, lease.unused)
        except RedisError:
            # try again at the next refill: waiting for the lease to expire would keep its
            # serials from everyone for LEASE_TTL
            lease.settled = False
            if lease not in self.unsettled:
                self.unsettled.append(lease)
            return
        if lease in self.unsettled:
            self.unsettled.remove(lease)
        lease.unused.clear()

    def _renewed(self, lease, sent):
        lease.valid_until = sent + self.lease_ttl - self.lease_margin
        lease.renew_at = sent + self.lease_ttl / 3

    def _renew(self, lease):
        if not self._renew_lock.acquire(blocking=False):
            return
        try:
            sent = time.monotonic()
            if self.scripts.renew(self.keys, int(self.lease_ttl * 1000), lease.id):
                self._renewed(lease, sent)
            else:  # the lease was reclaimed: its serials are no longer ours
                lease.settled = True
                lease.unused.clear()
        except RedisError:
            pass  # try again on the next request; valid_until still guards the serials
        finally:
            self._renew_lock.release()
