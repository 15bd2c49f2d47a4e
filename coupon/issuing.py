"""The hot path: issue one coupon to one user, exactly, in about one shared round trip.

Per worker process and campaign we keep a small state: the window and status (refreshed from
Redis at most every STATE_REFRESH seconds), a sold-out flag (re-checked as often), and a local
block of serials leased from Redis. A request that can be answered from that state (sold out,
not open, closed) is answered before any other work. Otherwise it takes a serial from the block
and claims it in one round trip shared with the concurrent requests of the same worker: one
script call per claim shard, all in one pipeline (see ClaimBatcher, Issuer._batcher). With no
serial at hand, a request first asks whether the user already holds a ticket, and waits for a
refill (one for all who wait: SingleFlight) only if not.
"""
import itertools
import os
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass

from redis.exceptions import NoScriptError, RedisError
from sqlalchemy import select

from coupon import db, metrics
from coupon.errors import CampaignNotFound, Closed, NotOpen, RateLimited, SoldOut, Unavailable
from coupon.keys import CampaignKeys

NEW, HELD, SERIAL_TAKEN, CLAIM_CLOSED, RATE_LIMITED, NEEDS_SERIAL = 1, 2, 3, 4, 5, 6  # claim.lua
LEASED, LEASE_SOLD_OUT, LEASE_UNKNOWN, LEASE_NOT_OPEN, LEASE_CLOSED = 1, 0, -1, -2, -3  # lease.lua
# seconds between looks at the campaign while stock runs low (leases cut below BLOCK_SIZE): for
# serials other workers were asked to give back, and for such requests from a worker that ran dry
TAIL_RECHECK = 0.1
# When the stock is gone but other workers hold serials, these are claims in flight, and what
# one of them leaves unused (rate limited, closed, a ticket the user got meanwhile) comes back
# within milliseconds: look again a few times before answering SOLD_OUT, so a refusal neither
# overtakes the last claims nor misses a serial that comes back (BENCHMARKS.md, "The tail").
TAIL_TRIES, TAIL_WAIT = 4, 0.01
GAUGE_STEP = 32  # the local-block gauge moves in steps of this many serials (and at 0)


@dataclass
class Ticket:
    campaign_id: int
    user_id: str
    serial: int
    code: str
    issued_at_ms: int
    new: bool = True


def now_ms():
    return int(time.time() * 1000)


class _Pending:
    __slots__ = ("args", "event", "reply", "error", "lead")

    def __init__(self, args):
        self.args = args
        self.event = threading.Event()
        self.reply = self.error = None
        self.lead = False


class SingleFlight:
    """Run a call once for all the requests that need it at the same time.

    The first caller runs it; callers arriving meanwhile wait for that run and get its result or
    its error, all woken at once. (A lock held across the call would hand over to one waiter per
    turn of gevent's loop, each turn serving every other ready connection first: tens of ms per
    waiter under a ramp, BENCHMARKS.md.)
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


class ClaimBatcher:
    """Coalesce the claims that concurrent requests of one worker make on one campaign.

    The first request to arrive leads: it sends what is queued in one script call. While that
    call is in flight, others queue up; when it returns, the leader hands the lead to the oldest
    waiter, who sends the next batch. No timer, no extra greenlet: batches are as large as the
    concurrency, and a lone request pays exactly one round trip.
    """

    def __init__(self, send, max_batch):
        self._send = send  # list of args -> list of replies, in order
        self._max_batch = max_batch
        self._lock = threading.Lock()
        self._queue = []
        self._leading = False

    def submit(self, args):
        mine = _Pending(args)
        with self._lock:
            self._queue.append(mine)
            lead = not self._leading
            self._leading = True
        if not lead:
            mine.event.wait()
        if mine.lead or lead:
            self._lead()
        if mine.error is not None:
            raise mine.error
        return mine.reply

    def _lead(self):
        with self._lock:
            batch = self._queue[: self._max_batch]
            del self._queue[: self._max_batch]
        try:
            replies = self._send([p.args for p in batch])
            for p, reply in zip(batch, replies):
                if isinstance(reply, Exception):  # that claim's shard call failed
                    p.error = reply
                else:
                    p.reply = reply
        except Exception as e:  # every waiter of the batch gets it; the caller maps it
            for p in batch:
                p.error = e
        finally:
            with self._lock:
                if self._queue:
                    self._queue[0].lead = True
                    self._queue[0].event.set()
                else:
                    self._leading = False
            for p in batch:
                if not p.lead:
                    p.event.set()


class Lease:
    """A block of serials leased to this worker, and what became of each of them.

    A lease is settled in Redis once none of its serials is in flight: the unused ones go back
    to the campaign at once (give_back.lua). If a claim's outcome is unknown (Redis error), the
    lease is left to expire instead, and the reclaim job returns what was never claimed.
    """

    __slots__ = ("id", "unused", "in_flight", "uncertain", "settled", "valid_until", "renew_at")

    def __init__(self, lease_id, serials):
        self.id = lease_id
        self.unused = deque(serials)
        self.in_flight = 0  # serials taken whose claim has not answered yet
        self.uncertain = False
        self.settled = False
        self.valid_until = 0.0  # monotonic; past it the serials must not be used
        self.renew_at = 0.0


class CampaignState:
    """What one worker knows of one campaign, and its local block of serials."""

    def __init__(self, keys, meta):
        self.keys = keys
        self.batcher = None
        self.lease = None  # the Lease serials are taken from
        self.unsettled = []  # retired leases whose settling failed (Redis down): retried at refill
        self.sold_out_until = 0.0  # monotonic; until then answer SOLD_OUT without asking
        self.low_stock = False  # the last lease was cut to a fair share: look at meta more often
        self.refill = SingleFlight()
        self.wanting = 0  # requests of this worker waiting for a serial of this campaign
        self.handed = None  # the last tail lease, whose serials the requests it woke are taking
        self.block_gauge = metrics.block_gauge(keys.campaign_id)
        self.renew_lock = threading.Lock()
        self.refresh_lock = threading.Lock()
        self.wanted = int(meta.get("wanted") or 0)  # the last call for serials this worker saw
        self.apply(meta)

    def apply(self, meta):
        """Take in the campaign's meta hash; return True if another worker wants serials since."""
        wanted = int(meta.get("wanted") or 0)
        news, self.wanted = wanted > self.wanted, wanted
        self.status = meta["status"]
        self.opens_at = int(meta.get("opens_at") or 0)
        self.closes_at = int(meta.get("closes_at") or 0)
        self.loaded_at = time.monotonic()
        return news

    def early_out(self):
        """Raise the answer that this worker's state already knows, if any."""
        now = now_ms()
        if self.status == "closed" or (self.closes_at and now >= self.closes_at):
            raise Closed()
        if self.status == "pending" or now < self.opens_at:
            raise NotOpen()
        if self.sold_out_until and (
            time.monotonic() < self.sold_out_until or self.refill.busy
        ):
            raise SoldOut()


class Issuer:
    """One per worker process: issues tickets and keeps the per-campaign state."""

    UNKNOWN_CACHE_MAX = 4096

    def __init__(self, redis, scripts, engine, signer, config):
        self.redis = redis
        self.scripts = scripts
        self.engine = engine
        self.signer = signer
        self.shards = config["CLAIM_SHARDS"]
        self.block_size = config["BLOCK_SIZE"]
        self.single_tail = config["SINGLE_LEASE_TAIL"]
        self.lease_ttl = config["LEASE_TTL"]
        # stop using a block this long before Redis may consider its lease expired
        self.lease_margin = min(self.lease_ttl / 3, 5.0)
        self.refresh = config["STATE_REFRESH"]
        self.max_batch = config["CLAIM_BATCH_MAX"]
        # per user and fixed window, counted by claim.lua in the claim's own round trip
        self.rate_limit = config["RATE_LIMIT"]
        self.rate_window = max(1, int(config["RATE_LIMIT_WINDOW"]))
        self.worker_id = "%s:%d:%s" % (os.uname().nodename, os.getpid(), uuid.uuid4().hex[:8])
        self._lease_numbers = itertools.count(1)
        self._campaigns = {}
        self._unknown = {}  # campaign id -> monotonic time until which it is known not to exist
        self._load_lock = threading.Lock()

    # --- the hot path -------------------------------------------------------------------

    def early_out(self, campaign_id):
        """Raise what this worker already knows the answer is (sold out, not open, closed);
        else return its state of the campaign, for issue_after."""
        state = self.campaign(campaign_id)
        state.early_out()
        return state

    def issue(self, campaign_id, user_id):
        """Issue the user's ticket of a campaign, or return the one they hold."""
        return self.issue_after(self.early_out(campaign_id), user_id)

    def issue_after(self, state, user_id):
        """issue(), once early_out() has returned `state` (the API checks the token between)."""
        campaign_id = state.keys.campaign_id
        shard = state.keys.shard_of(user_id)
        if not (state.lease and state.lease.unused):
            # no serial at hand (the tail is never at hand): first ask whether the user already
            # holds a ticket, so that those who do (most of the asking at the tail) take no serial
            # and wait for no refill
            try:
                reply = self._batcher(state).submit((shard, user_id, 0, ""))
            except RedisError:
                raise Unavailable() from None
            if reply[0] != NEEDS_SERIAL:
                return self._ticket(state, user_id, reply)
        while True:
            lease, serial = self._take_serial(state)
            code = self.signer.ticket_code(campaign_id, serial)
            try:
                reply = self._batcher(state).submit((shard, user_id, serial, code))
            except RedisError:
                lease.uncertain = True  # the claim may or may not have been written
                self._answered(state, lease)
                raise Unavailable() from None
            if reply[0] in (HELD, CLAIM_CLOSED, RATE_LIMITED):
                lease.unused.appendleft(serial)  # not used: offer it again (or give it back)
            self._answered(state, lease)
            ticket = self._ticket(state, user_id, reply)
            if ticket is not None:
                return ticket
            # SERIAL_TAKEN: drop that serial, take the next

    def _ticket(self, state, user_id, reply):
        """The ticket a claim's reply gives, or the error it means; None: offer another serial."""
        kind = reply[0]
        if kind in (NEW, HELD):
            serial, code, issued_at_ms = int(reply[1]), reply[2], int(reply[3])
            return Ticket(state.keys.campaign_id, user_id, serial, code, issued_at_ms,
                          new=kind == NEW)
        if kind == CLAIM_CLOSED:
            state.status = "closed"
            raise Closed()
        if kind == RATE_LIMITED:  # retry once this window is over
            raise RateLimited(self.rate_window - int(time.time()) % self.rate_window)
        return None

    def _batcher(self, state):
        """The campaign's ClaimBatcher: a batch is one claim.lua call per shard it touches, all
        sent in one pipeline, so the round trip (and its client CPU) is shared by the whole
        batch rather than by the few claims that fall on one of CLAIM_SHARDS shards."""
        if state.batcher is None:
            shards = [state.keys.shard(k) for k in range(self.shards)]
            shard_keys = [shard.all() for shard in shards]
            campaign_id = state.keys.campaign_id
            claim = self.scripts.claim
            limit, window = self.rate_limit, self.rate_window

            def send(claims):
                groups = {}  # shard -> indexes of its claims, in order
                for i, c in enumerate(claims):
                    groups.setdefault(c[0], []).append(i)
                replies = [None] * len(claims)
                for attempt in (1, 2):
                    pipe = self.redis.pipeline(transaction=False)
                    rate_window = int(time.time()) // window
                    for shard, indexes in groups.items():
                        keys = [*shard_keys[shard], shards[shard].rate(rate_window)]
                        args = [campaign_id, limit, window]
                        for i in indexes:
                            args += claims[i][1:]  # user id, serial, code
                        pipe.evalsha(claim.sha, len(keys), *keys, *args)
                    retry = {}
                    results = pipe.execute(raise_on_error=False)
                    for (shard, indexes), result in zip(groups.items(), results):
                        if isinstance(result, NoScriptError) and attempt == 1:
                            retry[shard] = indexes  # not run: Redis lost its scripts (restarted)
                        elif isinstance(result, Exception):  # each claim of that call gets it
                            for i in indexes:
                                replies[i] = result
                        else:
                            for i, reply in zip(indexes, result):
                                replies[i] = reply
                    if not retry:
                        break
                    self.redis.script_load(claim.script)
                    groups = retry
                return replies

            state.batcher = ClaimBatcher(send, self.max_batch)
        return state.batcher

    def _take_serial(self, state):
        """Return (lease, serial): a serial of this worker's current lease, refilled as needed."""
        waiting = False
        try:
            while True:
                lease = state.lease
                if lease is not None and lease.unused and time.monotonic() < lease.valid_until:
                    if time.monotonic() >= lease.renew_at:
                        self._renew(state, lease)
                    if lease.unused and lease is state.lease:
                        return self._take(state, lease)
                    continue
                if time.monotonic() < state.sold_out_until:
                    raise SoldOut()
                if not waiting:
                    waiting, state.wanting = True, state.wanting + 1
                fresh = state.refill.run(lambda: state.lease is lease and self._refill(state))
                if fresh and fresh.unused and not fresh.settled:  # the requests that waited go first
                    return self._take(state, fresh)
        finally:
            if waiting:
                state.wanting -= 1

    def _take(self, state, lease):
        lease.in_flight += 1
        serial = lease.unused.popleft()
        # the gauge shows the current lease only; a write is a file write, so in steps
        if lease is state.lease and len(lease.unused) % GAUGE_STEP == 0:
            state.block_gauge.set(len(lease.unused))
        return lease, serial

    def _refill(self, state):
        keys = state.keys
        for unsettled in list(state.unsettled):
            self._settle(state, unsettled)
        self._retire(state)
        lease_id = "%s:%d" % (self.worker_id, next(self._lease_numbers))
        # the requests still waiting for a serial, but for those the last tail lease still holds
        # one for (they were woken, and take it as soon as they run)
        waiting = state.wanting - (len(state.handed.unused) if state.handed else 0)
        for attempt in range(TAIL_TRIES):
            if attempt:
                time.sleep(TAIL_WAIT)
            sent = time.monotonic()
            try:
                reply = self.scripts.lease(
                    keys=keys.home_keys(),
                    args=[lease_id, self.block_size, int(self.lease_ttl * 1000), self.single_tail,
                          waiting],
                )
            except RedisError:
                raise Unavailable() from None
            if reply[:2] != [LEASE_SOLD_OUT, 1]:
                break
        status = reply[0]
        if status == LEASED:
            start, end = reply[1], reply[2]
            lease = Lease(lease_id, itertools.chain(range(start, end + 1), reply[4:]))
            self._lease_renewed(lease, sent)
            # a lease of the last serials is only for the requests that waited for this refill
            # (newcomers would leave them to wait again); it is never current, so it ends, and
            # gives back what came back unused, as soon as none of it is in flight
            if reply[3] == 1:
                state.handed = lease
            else:
                state.lease = lease
            state.low_stock = len(lease.unused) < self.block_size
            state.sold_out_until = 0.0
            state.block_gauge.set(len(state.lease.unused) if state.lease else 0)  # the tail: 0
            return lease
        if status == LEASE_SOLD_OUT:
            # reply[1]: other workers still hold serials and were asked to give back the unused
            # ones (see _retire); look again soon rather than answer SOLD_OUT for a whole second
            recheck = TAIL_RECHECK if reply[1] else self.refresh
            state.sold_out_until = time.monotonic() + recheck
            raise SoldOut()
        if status == LEASE_NOT_OPEN:
            raise NotOpen()
        if status == LEASE_CLOSED:
            state.status = "closed"
            raise Closed()
        # LEASE_UNKNOWN: Redis no longer holds the campaign (released after close, or lost)
        self._campaigns.pop(keys.campaign_id, None)
        self.campaign(keys.campaign_id).early_out()
        raise Unavailable()

    def _retire(self, state):
        """Stop taking serials from the current lease; settle it once nothing of it is in flight."""
        old, state.lease = state.lease, None
        if old is not None:
            state.block_gauge.set(0)
            if old.in_flight == 0:
                self._settle(state, old)  # else the last answer in flight settles it

    def _answered(self, state, lease):
        lease.in_flight -= 1
        if lease.in_flight:
            return
        if lease is not state.lease:
            self._settle(state, lease)  # the last answer of a retired lease
        elif not lease.unused:
            self._retire(state)  # used up: end it now, so it no longer counts as a holder

    def _settle(self, state, lease):
        """Give a lease's unused serials back to Redis and end it, or leave it to the reclaim job."""
        if lease.settled:
            return
        lease.settled = True
        keys = state.keys
        try:
            if lease.uncertain:
                self.redis.zadd(keys.leases, {lease.id: 0}, xx=True)  # expired: reclaim sorts it out
            else:
                self.scripts.give_back(
                    keys=[keys.leases, keys.lease_serials, keys.returned], args=[lease.id, *lease.unused]
                )
        except RedisError:
            # try again at the next refill: waiting for the lease to expire would keep its
            # serials from everyone for LEASE_TTL
            lease.settled = False
            if lease not in state.unsettled:
                state.unsettled.append(lease)
            return
        if lease in state.unsettled:
            state.unsettled.remove(lease)
        lease.unused.clear()

    def _lease_renewed(self, lease, sent):
        lease.valid_until = sent + self.lease_ttl - self.lease_margin
        lease.renew_at = sent + self.lease_ttl / 3

    def _renew(self, state, lease):
        if not state.renew_lock.acquire(blocking=False):
            return
        try:
            sent = time.monotonic()
            (renewed,) = self.scripts.renew(
                keys=[state.keys.leases], args=[int(self.lease_ttl * 1000), lease.id]
            )
            if renewed:
                self._lease_renewed(lease, sent)
            else:  # the lease was reclaimed: its serials are no longer ours
                lease.settled = True
                lease.unused.clear()
        except RedisError:
            pass  # try again on the next request; valid_until still guards the serials
        finally:
            state.renew_lock.release()

    # --- campaign state ---------------------------------------------------------------

    def campaign(self, campaign_id):
        """Return this worker's state of a campaign, loading or refreshing it as needed."""
        state = self._campaigns.get(campaign_id)
        if state is None:
            with self._load_lock:
                state = self._campaigns.get(campaign_id) or self._load(campaign_id)
        elif (time.monotonic() - state.loaded_at > (TAIL_RECHECK if state.low_stock else self.refresh)
              and state.refresh_lock.acquire(False)):
            try:  # one request refreshes; the others go on with what is known
                meta = self.redis.hgetall(state.keys.meta)
                if not meta:  # released after close (or lost): load afresh on the next request
                    self._campaigns.pop(campaign_id, None)
                elif state.apply(meta):  # another worker ran dry: give back what we hold
                    self._retire(state)
            except RedisError:
                pass
            finally:
                state.refresh_lock.release()
        return state

    def _load(self, campaign_id):
        if self._unknown.get(campaign_id, 0) > time.monotonic():
            raise CampaignNotFound()
        keys = CampaignKeys(campaign_id, self.shards)
        try:
            meta = self.redis.hgetall(keys.meta)
        except RedisError:
            raise Unavailable() from None
        if not meta:
            meta = self._meta_from_db(campaign_id)
        state = self._campaigns[campaign_id] = CampaignState(keys, meta)
        return state

    def _meta_from_db(self, campaign_id):
        """A campaign that Redis does not hold: released after close, or unknown."""
        with self.engine.connect() as conn:
            status = conn.execute(
                select(db.campaigns.c.status).where(db.campaigns.c.id == campaign_id)
            ).scalar()
        if status is None:
            if len(self._unknown) > self.UNKNOWN_CACHE_MAX:
                self._unknown.clear()
            self._unknown[campaign_id] = time.monotonic() + self.refresh
            raise CampaignNotFound()
        if status != "closed":
            raise Unavailable("the campaign is not loaded in Redis; ask an operator to open it")
        return {"status": "closed"}

    # --- shutdown ---------------------------------------------------------------------

    def give_back_all(self):
        """Return the unused serials of every lease (a clean shutdown, nothing in flight)."""
        for state in list(self._campaigns.values()):
            lease, state.lease = state.lease, None
            if lease is not None and lease.in_flight == 0:
                self._settle(state, lease)
