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
from coupon.redis_state import Layout, Meta, read_meta
from coupon.scripts import Claim
from coupon.supply import TAIL_RECHECK, CampaignGone, SerialSupply
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
        """Take in the campaign's redis_state.Meta; return True if another worker asked for
        serials since."""
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

    def issue(self, user_id, turn=None):
        """Issue the user's ticket (once admitted), or return the one they hold. Raises what the
        claim answers instead (Closed, RateLimited), Unavailable if Redis failed, CampaignGone if
        Redis no longer holds this state of the campaign (the issuer loads it afresh). turn: the
        request's place in the arrival order (arrival.Turn), if kept."""
        try:
            if not self.supply.at_hand:
                # no serial at hand (the tail is never at hand): first ask whether the user already
                # holds a ticket, so that those who do (most of the asking at the tail) take no
                # serial and wait for no refill
                try:
                    reply = self.claims.ask(user_id)
                except RedisError:
                    raise Unavailable() from None
                if reply.outcome is not Claim.NEEDS_SERIAL:
                    return self._ticket(user_id, reply)
            while True:
                lease, serial = self.supply.take(turn)
                try:
                    reply = self.claims.claim(user_id, serial)
                except OutOfMemoryError:
                    # at maxmemory (noeviction) Redis refuses a script at its first write: claim.lua
                    # wrote nothing, and the serial is free for the next request
                    self.supply.done(lease, serial, unused=True)
                    raise Unavailable() from None
                except RedisError:
                    self.supply.done(lease, serial, uncertain=True)
                    raise Unavailable() from None
                self.supply.done(lease, serial, unused=reply.serial_unused)
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

    def __init__(self, redis, scripts, engine, signer, config, keys, metrics, rate_limit, clock,
                 worker_id, gate=None):
        self.redis = redis
        self.scripts = scripts
        self.engine = engine
        self.signer = signer
        self.config = config
        self.keys = keys  # campaign id -> CampaignKeys
        self.metrics = metrics
        self.rate_limit = rate_limit
        self.clock = clock  # clock.RedisClock: the window is judged by Redis's clock, as lease.lua does
        self.gate = gate  # arrival.ArrivalGate when serving in arrival order, else None
        self.refresh = config["STATE_REFRESH"]
        lease_numbers = itertools.count(1)
        # this worker's lease ids: its id among the workers of every host, then a count
        self._new_lease_id = lambda: "%s:%d" % (worker_id, next(lease_numbers))
        self._campaigns = {}
        self._unknown = {}  # campaign id -> monotonic time until which it is known not to exist
        self._load_lock = threading.Lock()

    # --- the hot path -------------------------------------------------------------------

    def admit(self, campaign_id):
        """Raise what this worker already knows the answer is (sold out, not open, closed);
        else return the campaign, for issue()."""
        campaign = self.campaign(campaign_id)
        campaign.admit(self.clock.now_ms())
        return campaign

    def admit_known(self, campaign_id):
        """admit() by what this worker holds now, never waiting for Redis (nothing to raise for a
        campaign not loaded yet): the early answers before a request waits its turn."""
        campaign = self._campaigns.get(campaign_id)
        if campaign is not None:
            campaign.admit(self.clock.now_ms(measure=False))

    def issue(self, campaign, user_id, turn=None, reloaded=False):
        """Issue the user's ticket of an admitted campaign, or return the one they hold."""
        try:
            return campaign.issue(user_id, turn)
        except CampaignGone:  # released after close, lost, or recovered since: load it afresh
            self._campaigns.pop(campaign.campaign_id, None)
            fresh = self.admit(campaign.campaign_id)  # raises what the reloaded state knows
            if reloaded:
                raise Unavailable() from None
            return self.issue(fresh, user_id, turn, reloaded=True)

    # --- campaign state ---------------------------------------------------------------

    def campaign(self, campaign_id):
        """Return this worker's state of a campaign, loading or refreshing it as needed."""
        campaign = self._campaigns.get(campaign_id)
        if campaign is None:
            with self._load_lock:
                campaign = self._campaigns.get(campaign_id) or self._load(campaign_id)
        elif (time.monotonic() - campaign.loaded_at > (
                TAIL_RECHECK if campaign.supply.low_stock else self.refresh)
              and campaign.refresh_lock.acquire(False)):
            try:  # one request refreshes; the others go on with what is known
                self._refresh(campaign)
            finally:
                campaign.refresh_lock.release()
        return campaign

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
        supply = SerialSupply(keys, layout.epoch, self.redis, self.scripts, self.config,
                              self._new_lease_id, self.metrics.block_gauge(campaign_id), self.gate)
        code_of = functools.partial(self.signer.ticket_code, campaign_id)
        sender = ClaimSender(self.redis, self.scripts.claim, keys, layout, self.rate_limit, code_of)
        claims = Claims(sender, self.config["CLAIM_BATCH_MAX"])
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
