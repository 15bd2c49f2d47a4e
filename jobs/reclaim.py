"""Reclaim job: serials of expired leases (a worker died holding them) that were never claimed
go back to the campaign's returned list, which refills take from first."""
from coupon.keys import active_campaigns
from coupon.scripts import decode_serials


def claimed_serials(redis, keys, serials):
    """The serials among `serials` that any claim shard has marked claimed, as replicas hold them
    (a claim a failover loses must not keep its serial from being issued)."""
    batch = redis.batch(durable=True)
    for shard in keys.all_shards():
        for serial in serials:
            batch.on(shard.claimed).getbit(shard.claimed, serial)
    bits = batch.execute()
    n = len(serials)
    return {s for k in range(keys.shards) for s, bit in zip(serials, bits[k * n:(k + 1) * n]) if bit}


def reclaim_expired(svc, grace):
    """Return unclaimed serials of leases expired more than `grace` seconds ago; return the count."""
    returned = 0
    for campaign_id in active_campaigns(svc.redis):
        keys = svc.keys(campaign_id)
        now_ms = svc.redis.time_at(keys.leases)  # the clock lease.lua stamped the expiries with
        for lease_id in svc.redis.zrangebyscore(keys.leases, "-inf", now_ms - int(grace * 1000)):
            serials = decode_serials(svc.redis.hget(keys.lease_serials, lease_id) or "")
            claimed = claimed_serials(svc.redis, keys, serials)
            given = svc.scripts.give_back(keys, lease_id, [s for s in serials if s not in claimed])
            returned += given or 0
    return returned
