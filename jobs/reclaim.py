"""Reclaim job: unclaimed serials of expired leases go back to the campaign's returned list.

Such a lease expired because a worker died holding it; its serials were never claimed. Refills
take from the returned list first.

A round looks at the campaigns that hold leases, and at the others only once a lease taken since
the last look could have expired (LEASE_TTL later): a campaign nobody asks for costs one command
per LEASE_TTL."""
import time

from coupon.keys import active_campaigns
from coupon.scripts import decode_serials


def claimed_serials(redis, keys, serials):
    """The serials among `serials` that any claim shard has marked claimed, as replicas hold them.

    Replicas: a claim a failover loses must not keep its serial from being issued."""
    batch = redis.batch(durable=True)
    bits = [(serial, batch.on(shard.claimed).getbit(shard.claimed, serial))
            for shard in keys.all_shards() for serial in serials]
    batch.execute()
    return {serial for serial, bit in bits if bit.get()}


def reclaim_expired(svc, grace, campaign_ids=None):
    """Return unclaimed serials of leases expired more than `grace` seconds ago; return the count.

    The leases are those of these campaigns (every active one if None)."""
    returned = 0
    for campaign_id in active_campaigns(svc.redis) if campaign_ids is None else campaign_ids:
        keys = svc.keys(campaign_id)
        now_ms = svc.redis.time_at(keys.leases)  # the clock lease.lua stamped the expiries with
        for lease_id in svc.redis.zrangebyscore(keys.leases, "-inf", now_ms - int(grace * 1000)):
            serials = decode_serials(svc.redis.hget(keys.lease_serials, lease_id) or "")
            claimed = claimed_serials(svc.redis, keys, serials)
            given = svc.scripts.give_back(keys, lease_id, [s for s in serials if s not in claimed])
            returned += given or 0
    return returned


class ReclaimJob:
    def __init__(self, svc, grace):
        self.svc = svc
        self.grace = grace
        self.quiet_for = svc.config["LEASE_TTL"]  # a lease taken after a look expires no sooner
        self._next_look = {}  # campaign id -> monotonic time before which it needs no look

    def __call__(self):
        svc, now = self.svc, time.monotonic()
        active = active_campaigns(svc.redis)
        due = [c for c in active if self._next_look.get(c, 0) <= now]
        batch, leases = svc.redis.batch(), {}
        for campaign_id in due:
            key = svc.keys(campaign_id).leases
            leases[campaign_id] = batch.on(key).zcard(key)
        if due:
            batch.execute()
        holding = [c for c, n in leases.items() if n.get()]
        returned = reclaim_expired(svc, self.grace, holding)
        live = set(active)
        self._next_look = {c: t for c, t in self._next_look.items() if c in live}
        self._next_look.update({c: now + self.quiet_for for c in due if c not in holding})
        return returned
