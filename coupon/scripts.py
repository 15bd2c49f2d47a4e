"""The Lua protocol: the scripts and what their replies and stored values mean.

The scripts are one file each in lua/, registered once per Redis client. Nothing outside this
module indexes a script's reply or splits a value a script stored.

Scripts run by EVALSHA on the node serving their keys, loaded there again after NOSCRIPT (a
restarted Redis, a promoted replica): redis_nodes.
"""
import enum
import time
from pathlib import Path
from typing import NamedTuple

from coupon.keys import SERIALS_WANTED
from coupon.redis_nodes import Script

SCRIPT_DIR = Path(__file__).parent / "lua"
WANTED_KEEP_MS = 5_000  # a worker that ran dry is taken off SERIALS_WANTED after this long


class Claim(enum.IntEnum):
    """What claim.lua answers for one (user, serial, code) triplet."""

    NEW = 1  # a new ticket: claim and outbox entry written together
    HELD = 2  # the user already held this ticket; the offered serial is unused
    SERIAL_TAKEN = 3  # the offered serial was claimed before: offer another
    CLOSED = 4  # the campaign is closed; the offered serial is unused
    RATE_LIMITED = 5  # the user is over the rate limit; the offered serial is unused
    NEEDS_SERIAL = 6  # (serial 0: only asking) the user holds no ticket
    STALE = 7  # the shard is gone or of another epoch (Redis lost the campaign): load it again


NO_SERIAL = 0  # offered to claim.lua to ask whether the user holds a ticket, and claim nothing
# claims an outbox entry holds at most (claim.lua writes a call's new claims in entries of up to
# this many): the flush reads FLUSH_BATCH rows' worth of entries a stream and round, by the size
# of the stream's last ones, so a round grows past FLUSH_BATCH rows this many times at most
OUTBOX_ENTRY_MOST = 32


def claim_args(campaign_id, limit, seconds, epoch, claims):
    """claim.lua's ARGV for claims (user id, serial, code) of one shard, in order.

    The rate limit is `limit` requests (0: none) per window of `seconds`; its KEYS are
    keys.ShardKeys.claim_keys, and each claim's reply is ClaimReply.decode. The code is not sent:
    Redis stores none, it is derived from the serial."""
    args = [campaign_id, limit, seconds, epoch, OUTBOX_ENTRY_MOST]
    for user_id, serial, _ in claims:
        args += (user_id, serial)
    return args


class ClaimReply(NamedTuple):
    outcome: Claim
    serial: int = 0  # NEW, HELD: the ticket
    code: str = ""
    issued_at_ms: int = 0

    @classmethod
    def decode(cls, raw, code_of):
        """One element of claim.lua's reply: {outcome[, serial, issued_at_ms]}.

        The ticket's code is code_of(serial) (claims store no code)."""
        if len(raw) == 1:
            return cls(Claim(raw[0]))
        serial = int(raw[1])
        return cls(Claim(raw[0]), serial, code_of(serial), int(raw[2]))

    @property
    def ticket(self):
        return self.outcome in (Claim.NEW, Claim.HELD)

    @property
    def serial_unused(self):
        """The serial offered with this claim is free for another request."""
        return self.outcome in (Claim.HELD, Claim.CLOSED, Claim.RATE_LIMITED)


SERIAL_DIGITS = 8  # of a stored claim: every serial is at most campaigns.MAX_STOCK (10,000,000)


class StoredClaim(NamedTuple):
    """A claim as claim.lua stores it in a claims bucket (keys.ShardKeys.bucket).

    It is the decimal digits of issued_at_ms less the state's time base, then the serial in
    SERIAL_DIGITS digits: "53100000042" is serial 42, issued 531 ms after the base. Within 2.9 years
    of the base it is a 64-bit integer, which a listpack keeps in 9 bytes. The code is derived from
    the serial (signing.Signer.ticket_code), never stored."""

    serial: int
    issued_at_ms: int

    @classmethod
    def decode(cls, value, time_base):
        return cls(int(value[-SERIAL_DIGITS:]), int(value[:-SERIAL_DIGITS]) + time_base)

    def encode(self, time_base):
        """The value as claim.lua stores it."""
        return self.value(self.serial, self.issued_at_ms, time_base)

    @staticmethod
    def value(serial, issued_at_ms, time_base):
        """encode() without making the tuple (recover writes millions of claims back)."""
        return "%d%0*d" % (issued_at_ms - time_base, SERIAL_DIGITS, serial)


class OutboxEntry(NamedTuple):
    """A claim of an entry claim.lua appends to a shard's outbox stream.

    claim.lua appends one entry a call with the call's new claims, OUTBOX_ENTRY_MOST at most (more
    go in more entries). An entry has one field e, "<user id> <serial> [<user id> <serial> ...]
    <issued at, epoch ms>" (a user id has no space; the claims of a call share their time). Its
    campaign is the stream's, each code derived from its serial: neither is stored, which makes an
    entry cheaper to write and to read (BENCHMARKS.md, "Capacity"). One written before (fields c
    campaign id, u, s, k code, t) decodes too."""

    campaign_id: int
    user_id: str
    serial: int
    code: str
    issued_at_ms: int

    @classmethod
    def decode(cls, fields, campaign_id, code_of):
        """The claims of an entry, a list.

        code_of: serial -> its ticket code (Signer.ticket_code of the campaign)."""
        packed = fields.get("e")
        if packed is None:
            return [cls(int(fields["c"]), fields["u"], int(fields["s"]), fields["k"], int(fields["t"]))]
        *claims, issued_at_ms = packed.split(" ")
        at = int(issued_at_ms)
        return [cls(campaign_id, user_id, int(serial), code_of(int(serial)), at)
                for user_id, serial in zip(claims[::2], claims[1::2])]


class LeaseOutcome(enum.IntEnum):
    """What lease.lua answers first."""

    LEASED = 1
    SOLD_OUT = 0
    # Redis does not hold the campaign (released after close, or lost), or holds it in another
    # epoch (recovered since the caller loaded it)
    UNKNOWN = -1
    NOT_OPEN = -2
    CLOSED = -3
    EXPIRED = -4  # asked again for a lease that has expired meanwhile: ask under a new lease id
    # in arrival order, of the tail: serials (maybe none) for this worker's granted bids, the
    # others still waiting
    ORDERED = 5
    # in arrival order: none left, but other workers hold some (asked to give back): the bids
    # wait (decoded as ORDERED with others_hold)
    ORDERED_HELD = 6


class LeaseReply(NamedTuple):
    outcome: LeaseOutcome
    serials: tuple = ()  # LEASED: the serials, in the order to hand them out
    tail: bool = False  # LEASED: of the last SINGLE_LEASE_TAIL, only for the requests waiting now
    others_hold: bool = False  # SOLD_OUT, ORDERED: other workers hold serials (asked to give back)
    granted: tuple = ()  # ORDERED: this worker's bids (ids) the serials are for, in turn
    # ORDERED: the serials after the granted bids' are granted ahead, for this worker's requests
    # that arrive before this (epoch ms, Redis's clock; 0: none)
    ahead_until: int = 0

    @classmethod
    def decode(cls, raw):
        outcome = LeaseOutcome(raw[0])
        if outcome is LeaseOutcome.LEASED:
            start, end, tail, *returned = raw[1:]
            return cls(outcome, (*range(start, end + 1), *returned), bool(tail))
        if outcome is LeaseOutcome.ORDERED:
            start, end, granted, ahead_until, *returned = raw[1:]
            return cls(outcome, (*range(start, end + 1), *returned), True,
                       granted=tuple(map(int, granted)), ahead_until=ahead_until)
        if outcome is LeaseOutcome.SOLD_OUT:
            return cls(outcome, others_hold=bool(raw[1]))
        if outcome is LeaseOutcome.ORDERED_HELD:
            return cls(LeaseOutcome.ORDERED, tail=True, others_hold=True)
        return cls(outcome)


def decode_serials(encoded):
    """Decode a lease's serials: '1-5,9,12' -> [1, 2, 3, 4, 5, 9, 12].

    That is the format lease.lua records a lease's serials in; a final ',t' marks a lease of the
    tail."""
    serials = []
    for part in filter(None, encoded.split(",")):
        if part == "t":
            continue
        start, _, end = part.partition("-")
        serials.extend(range(int(start), int(end or start) + 1))
    return serials


class Scripts:
    """The scripts, each behind a thin wrapper that names its reply."""

    def __init__(self, redis):
        self.redis = redis  # redis_nodes.RedisNodes

        def load(name, *rules):
            # each rule (lua/lib/<rule>.lua) goes before the script: one home for what scripts
            # share (a Lua error's line number counts its lines too)
            text = "".join((SCRIPT_DIR / "lib" / f"{rule}.lua").read_text() for rule in rules)
            return Script(text + (SCRIPT_DIR / f"{name}.lua").read_text())

        # claim.lua itself: the claims module sends it pipelined, per shard (claims.ClaimSender)
        self.claim = load("claim", "rate_limit")
        self._count_lookup = load("count_lookup", "rate_limit")
        self._lease, self._renew, self._give_back = load("lease"), load("renew"), load("give_back")
        self._leader, self._resign = load("leader"), load("resign")
        self._raise_total = load("raise_total")
        self._frontier = load("frontier")
        self._note_arrivals = load("note_arrivals")
        # recover sends it pipelined, per shard (recovery.restore_claims)
        self.restore_claims = load("restore_claims")
        # the flusher sends it pipelined, per stream (flusher.Flusher)
        self.ack_outbox = load("ack_outbox")

    def lease(self, keys, epoch, lease_id, most, ttl_ms, tail, waiting, order=None):
        """Lease up to `most` serials for `ttl_ms` (the same ones again for the same lease id).

        Leased once replicas hold the lease (else NotReplicated); see lease.lua. order, in arrival
        order: (bidder id, its frontier ms or None, stale ms, unlisted ms, opening ms, caught-up ms,
        workers on the roll (0: unknown), most serials ahead, ahead ms, [(bid id, arrival ms or "":
        withdrawn)] of the bids new (or sent again) and withdrawn)."""
        args = [lease_id, most, ttl_ms, tail, waiting, epoch]
        if order is not None:
            bidder, frontier, *limits, bids = order
            args += ["-" if frontier is None else repr(frontier), bidder, *limits]
            for bid, arrival in bids:  # arrival "": withdrawn
                args += [bid, arrival if arrival == "" else repr(arrival)]
        raw = self.redis.run(self._lease, keys.home_keys(), args, durable=True)
        return LeaseReply.decode(raw)

    def renew(self, keys, ttl_ms, lease_id):
        """Extend a lease; False if it had expired or was reclaimed (its serials are gone).

        Raises NotReplicated if replicas do not hold the new expiry: the lease must not count on
        it."""
        (renewed,) = self.redis.run(self._renew, [keys.leases], [ttl_ms, lease_id], durable=True)
        return renewed == 1

    def give_back(self, keys, lease_id, serials):
        """Give a lease's unused serials back and end it; None if it was already settled."""
        given = self.redis.run(self._give_back, [keys.leases, keys.lease_serials, keys.returned],
                               [lease_id, *serials])
        return None if given < 0 else given

    # --- the two plain commands the serial supply sends besides its scripts (so that a fake of
    # this class stands for Redis in its unit tests)

    def ask_holders(self, keys):
        """Say where every worker looks that one ran dry while others hold the campaign's serials.

        lease.lua noted it in the meta, for them to give back what they do not use."""
        now = int(time.time() * 1000)
        batch = self.redis.batch()
        batch.on(SERIALS_WANTED).zadd(SERIALS_WANTED, {keys.campaign_id: now})
        batch.on(SERIALS_WANTED).zremrangebyscore(SERIALS_WANTED, "-inf", now - WANTED_KEEP_MS)
        batch.execute()

    def expire_lease(self, keys, lease_id):
        """Mark a lease expired, whatever its expiry was: the reclaim job settles it.

        A lease whose claims' outcome is unknown cannot be given back."""
        self.redis.zadd(keys.leases, {lease_id: 0}, xx=True)

    def raise_total(self, keys, total):
        """Raise a campaign's stock to `total` (never lower it), once replicas hold it.

        Return the total Redis holds now, or None if it does not hold the campaign."""
        held = self.redis.run(self._raise_total, [keys.meta], [total], durable=True)
        return None if held < 0 else held

    def frontier(self, keys, worker_id, frontier, listed=True):
        """Publish a worker's frontier of a campaign (ms, Redis's clock); see frontier.lua.

        frontier None: none of its requests that has not bid; listed False: it lists itself as a
        bidder no more."""
        said = ("-" if frontier is None else repr(frontier)) if listed else ""
        self.redis.run(self._frontier, [keys.meta, keys.bidders], [worker_id, said])

    def note_arrivals(self, keys, worker_id, latest_win, refused):
        """Note a worker's latest winning arrival and its refusals of a campaign.

        The arrival is ms or None, the refusals {arrival ms: count}. False if Redis does not hold
        the campaign (see note_arrivals.lua)."""
        args = [worker_id, "" if latest_win is None else repr(latest_win)]
        for ms, count in refused.items():
            args += [ms, count]
        return self.redis.run(self._note_arrivals, [keys.meta, keys.arrivals], args) == 1

    def lead(self, key, ident, ttl_ms):
        """Take or keep the scheduler's leader lease; True if `ident` leads now."""
        return self.redis.run(self._leader, [key], [ident, ttl_ms]) == 1

    def resign(self, key, ident):
        """Give up the leader lease if `ident` holds it."""
        return self.redis.run(self._resign, [key], [ident]) == 1

    def count_lookup(self, rate_key, user_id, limit, seconds):
        """Count a ticket lookup of the user in a rate hash; True if it is over `limit`."""
        return self.redis.run(self._count_lookup, [rate_key], [user_id, limit, seconds]) == 1
