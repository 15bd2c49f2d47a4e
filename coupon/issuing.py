"""The hot path: issue one coupon to one user, exactly, in about one shared round trip.

Per worker process and campaign we keep a LiveCampaign: its window and status (refreshed from
Redis at most every STATE_REFRESH seconds), its serial supply (supply.py) and its claims
(claims.py). admit() answers what that state already knows (sold out, not open, closed) before
any other work. Its issue() then takes a serial from the supply and claims it in one round trip
shared with the concurrent requests of the same worker. With no serial at hand, a request first
asks whether the user already holds a ticket, and waits for a refill only if not.
"""
import functools
import itertools
import threading
import time

from redis.exceptions import OutOfMemoryError, RedisError
from sqlalchemy import select

from coupon import db
from coupon.claims import Claims, ClaimSender
from coupon.errors import CampaignNotFound, Closed, NotOpen, SoldOut, Unavailable
from coupon.metrics import IssueParts
from coupon.redis_state import Layout, Meta, campaigns_wanted, read_meta
from coupon.scripts import Claim
from coupon.supply import (HOLDER_WATCH, TAIL_RECHECK, CampaignGone, SerialSupply, SupplySettings,
                           lease_id)
from coupon.tickets import Ticket


class LiveCampaign:
    """What one worker knows of one campaign, with its serial supply and its claims."""

    def __init__(self, keys, meta, supply, claims, rate_limit):
        self.keys = keys
        self.supply = supply
        self.claims = claims
        self.rate_limit = rate_limit
        self.refresh_lock = threading.Lock()
        self.asked_for_serials_at = meta.wanted  # the last call another worker made
        self.apply(meta)

    @property
    def campaign_id(self):
        return self.keys.campaign_id

    @property
    def epoch(self):
        """The epoch its serials were leased in: a new one in Redis means it was recovered."""
        return self.supply.epoch

    def apply(self, meta):
        """Take in the campaign's redis_state.Meta.

        Return True if another worker asked for serials since."""
        news, self.asked_for_serials_at = meta.wanted > self.asked_for_serials_at, meta.wanted
        self.status, self.opens_at, self.closes_at = meta.status, meta.opens_at, meta.closes_at
        self.loaded_at = time.monotonic()
        return news

    def admit(self, now):
        """Raise the answer that this worker already knows, if any, at `now` (Redis's clock, ms)."""
        if self.status == "closed" or (self.closes_at and now >= self.closes_at):
            raise Closed()
        if self.status == "pending" or now < self.opens_at:
            raise NotOpen()
        if self.supply.known_sold_out():
            raise SoldOut()

    def issue(self, user_id, turn, parts):
        """Issue the user's ticket (once admitted), or return the one they hold.

        Raises what the claim answers instead (Closed, RateLimited), Unavailable if Redis failed,
        CampaignGone if Redis no longer holds this state of the campaign (the issuer loads it
        afresh). turn: the request's place in the arrival order (arrival.Turn), if kept; parts:
        its metrics.IssueParts, whose serial and claim times are added here."""
        try:
            if not self.supply.at_hand and not self.supply.bids_at_once(turn):
                # no serial at hand (the tail is never at hand): first ask whether the user already
                # holds a ticket, so that those who do (most of the asking at the tail) take no
                # serial and wait for no refill. Not in the ordered tail: there the wait is for the
                # request's place in the order, and a holder's serial goes on to the next bid
                asked = time.perf_counter()
                try:
                    reply = self.claims.ask(user_id)
                except RedisError:
                    raise Unavailable() from None
                finally:
                    parts.claim += time.perf_counter() - asked
                if reply.outcome is not Claim.NEEDS_SERIAL:
                    return self._ticket(user_id, reply)
            while True:
                wanted = time.perf_counter()
                with self.supply.take(turn) as taken:
                    sent = time.perf_counter()
                    parts.serial += sent - wanted
                    try:
                        reply = self.claims.claim(user_id, taken.serial)
                    except OutOfMemoryError:
                        # at maxmemory (noeviction) Redis refuses a script at its first write:
                        # claim.lua wrote nothing, and the serial is free for the next request
                        taken.answered(unused=True)
                        raise Unavailable() from None
                    except RedisError:  # written or not: unknown, and so left unsaid
                        raise Unavailable() from None
                    finally:
                        parts.claim += time.perf_counter() - sent
                    taken.answered(unused=reply.serial_unused)
                if reply.outcome is not Claim.SERIAL_TAKEN:  # else drop that serial, take the next
                    return self._ticket(user_id, reply)
        except Closed:
            self.status = "closed"  # from now on answered at admission
            raise

    def _ticket(self, user_id, reply):
        """The ticket a claim's reply gives, or the error it means."""
        if reply.ticket:
            return Ticket(self.campaign_id, user_id, reply.serial, reply.code, reply.issued_at_ms,
                          new=reply.outcome is Claim.NEW)
        if reply.outcome is Claim.CLOSED:
            raise Closed()
        if reply.outcome is Claim.RATE_LIMITED:  # retry once this window is over
            raise self.rate_limit.exceeded()
        if reply.outcome is Claim.STALE:  # released, lost or recovered: the serial is not ours
            raise CampaignGone()
        raise AssertionError(f"no ticket in {reply}")


class Issuer:
    """One per worker process: admits issue requests, issues tickets, caches campaign state."""

    UNKNOWN_CACHE_MAX = 4096

    def __init__(self, svc):
        """svc: the process's extensions.Services (its Issuer is this)."""
        self.redis = svc.redis
        self.scripts = svc.scripts
        self.engine = svc.engine
        self.signer = svc.signer
        self.keys = svc.keys  # campaign id -> CampaignKeys
        self.metrics = svc.metrics
        self.rate_limit = svc.rate_limit
        self.clock = svc.clock  # clock.RedisClock: the window is judged by Redis's clock, as lease.lua does
        # arrival.ArrivalGate when serving in arrival order, else None
        self.gate = svc.gate if svc.gate.enabled else None
        self.supply_settings = SupplySettings.of(svc.config)
        self.claim_batch_max = svc.config["CLAIM_BATCH_MAX"]
        self.refresh = svc.config["STATE_REFRESH"]
        lease_numbers = itertools.count(1)
        self._new_lease_id = lambda: lease_id(svc.worker_id, next(lease_numbers))
        self._campaigns = {}
        self._unknown = {}  # campaign id -> monotonic time until which it is known not to exist
        self._load_lock = threading.Lock()
        self._watching = None  # the thread of _watch_holders, while one runs
        self._watch_lock = threading.Lock()

    # --- the hot path -------------------------------------------------------------------

    def admit(self, campaign_id):
        """Raise what this worker already knows the answer is (sold out, not open, closed).

        Else return the campaign, for issue()."""
        campaign = self.campaign(campaign_id)
        campaign.admit(self.clock.now_ms())
        return campaign

    def admit_known(self, campaign_id):
        """admit() by what this worker holds now, never waiting for Redis.

        The early answers before a request waits its turn (nothing to raise for a campaign not
        loaded yet)."""
        campaign = self._campaigns.get(campaign_id)
        if campaign is not None:
            campaign.admit(self.clock.now_ms(measure=False))

    def issue(self, campaign, user_id, turn=None, parts=None, reloaded=False):
        """Issue the user's ticket of an admitted campaign, or return the one they hold.

        turn: the request's arrival.Turn, in arrival order (a call without one takes its turn
        now); parts: the request's metrics.IssueParts, if timed."""
        if self.gate is not None and turn is None:  # not from the API (a tool, a test)
            turn = self.gate.wait_turn(self.clock.fine_now_ms(), campaign.campaign_id)
            try:
                return self.issue(campaign, user_id, turn, parts)
            finally:
                self.gate.finished(turn)
        parts = parts or IssueParts()
        try:
            return campaign.issue(user_id, turn, parts)
        except CampaignGone:  # released after close, lost, or recovered since: load it afresh
            self._campaigns.pop(campaign.campaign_id, None)
            fresh = self.admit(campaign.campaign_id)  # raises what the reloaded state knows
            if reloaded:
                raise Unavailable() from None
            return self.issue(fresh, user_id, turn, parts, reloaded=True)
        finally:
            if campaign.supply.holds_low_stock:  # this request may have leased them
                self._watch()

    # --- campaign state ---------------------------------------------------------------

    def campaign(self, campaign_id):
        """Return this worker's state of a campaign, loading or refreshing it as needed."""
        campaign = self._campaigns.get(campaign_id)
        if campaign is None:
            with self._load_lock:
                campaign = self._campaigns.get(campaign_id) or self._load(campaign_id)
        elif time.monotonic() - campaign.loaded_at > (
                TAIL_RECHECK if campaign.supply.low_stock else self.refresh):
            self._refresh_once(campaign)
        return campaign

    def _refresh_once(self, campaign):
        if campaign.refresh_lock.acquire(False):
            try:  # one caller refreshes; the others go on with what is known
                self._refresh(campaign)
            finally:
                campaign.refresh_lock.release()

    def _watch(self):
        """Have _watch_holders run (the lock: it may be deciding to stop)."""
        with self._watch_lock:
            if self._watching is None:
                self._watching = threading.Thread(target=self._watch_holders, daemon=True,
                                                  name="holder-watch")
                self._watching.start()

    def _watch_holders(self):
        """Every HOLDER_WATCH, refresh the low-stock campaigns held here that a worker ran dry of.

        While this worker holds serials of campaigns whose stock runs low, look every HOLDER_WATCH
        which ones a worker ran dry of (one read for all), requests of them or not, and refresh
        those: an idle holder learns it was asked, and gives its serials back before the dry worker
        answers SOLD_OUT (supply.TAIL_TRIES)."""
        while True:
            time.sleep(HOLDER_WATCH)
            with self._watch_lock:
                holders = {c.campaign_id: c for c in list(self._campaigns.values())
                           if c.supply.holds_low_stock}
                if not holders:
                    self._watching = None
                    return
            try:
                wanted = campaigns_wanted(self.redis)
            except RedisError:
                continue  # the requests' own refreshes still tell, later
            for campaign_id in wanted & holders.keys():
                self._refresh_once(holders[campaign_id])

    def _refresh(self, campaign):
        try:
            meta = read_meta(self.redis, campaign.keys)
        except RedisError:
            return
        if not meta or not meta.layout or meta.layout.epoch != campaign.epoch:
            # released after close, lost, or recovered since: load afresh on the next request
            self._campaigns.pop(campaign.campaign_id, None)
        elif campaign.apply(meta):  # another worker ran dry: give back what we hold
            campaign.supply.retire()

    def _load(self, campaign_id):
        if self._unknown.get(campaign_id, 0) > time.monotonic():
            raise CampaignNotFound()
        keys = self.keys(campaign_id)
        try:
            meta = read_meta(self.redis, keys)
        except RedisError:
            raise Unavailable() from None
        if not meta:
            meta = self._meta_from_db(campaign_id)
        layout = meta.layout or Layout("", 1, 0)  # closed and released: nothing is claimed
        supply = SerialSupply(keys, layout.epoch, self.scripts, self.supply_settings,
                              self._new_lease_id, self.metrics.block_gauge(campaign_id), self.gate)
        code_of = functools.partial(self.signer.ticket_code, campaign_id)
        sender = ClaimSender(self.redis, self.scripts.claim, keys, layout, self.rate_limit, code_of)
        claims = Claims(sender, self.claim_batch_max, self.metrics.claim_batch_sent)
        campaign = self._campaigns[campaign_id] = LiveCampaign(keys, meta, supply, claims,
                                                               self.rate_limit)
        return campaign

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
            raise Unavailable("the campaign is not loaded in Redis; ask an operator to recover it")
        return Meta("closed")

    # --- shutdown ---------------------------------------------------------------------

    def give_back_all(self):
        """Return the unused serials of every lease (a clean shutdown, nothing in flight)."""
        for campaign in list(self._campaigns.values()):
            campaign.supply.give_back_all()
