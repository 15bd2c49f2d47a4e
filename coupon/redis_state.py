"""A campaign's live state in Redis: its meta hash (total, cursor, status, window, epoch) and
its claim shards' state hashes (issued, closes_at, epoch), written, read and deleted here. The
keys are named in keys.py; the scripts that change this state as users ask are in lua/."""
import uuid

from coupon.clock import to_ms
from coupon.errors import CampaignLost
from coupon.keys import ACTIVE


def new_epoch():
    """A campaign's epoch: its Redis state's identity, new when `recover` rebuilds it (lease.lua
    and claim.lua refuse serials leased in another)."""
    return uuid.uuid4().hex[:12]


def meta_fields(total, status, opens_at, closes_at, epoch):
    """The meta hash of a campaign (times as naive UTC datetimes or None), less its cursor."""
    return {"total": total, "status": status, "opens_at": to_ms(opens_at),
            "closes_at": to_ms(closes_at), "epoch": epoch}


def preload(redis, keys, total, status, opens_at, closes_at):
    """Write a campaign's window and stock into Redis; keep the cursor and epoch if they are there
    already. Durable: replicas hold it before it counts (REDIS_REPLICA_ACKS).

    The meta hash last: until it says so, the campaign is not open, and a failure before it
    (one node down) leaves the campaign as it was."""
    epoch = redis.hget(keys.meta, "epoch") or new_epoch()
    batch = redis.batch(durable=True)
    for shard in keys.all_shards():
        batch.on(shard.state).hsetnx(shard.state, "issued", 0)  # the shard is live while it exists
        batch.on(shard.state).hset(shard.state, "epoch", epoch)
        if closes_at:
            batch.on(shard.state).hset(shard.state, "closes_at", to_ms(closes_at))
        else:
            batch.on(shard.state).hdel(shard.state, "closes_at")
    batch.on(keys.meta).hsetnx(keys.meta, "cursor", 0)
    batch.on(ACTIVE).sadd(ACTIVE, keys.campaign_id)
    batch.execute()
    batch = redis.batch(durable=True)
    batch.on(keys.meta).hset(keys.meta, mapping=meta_fields(total, status, opens_at, closes_at, epoch))
    batch.execute()


def restore(redis, keys, row, status, cursor, per_shard):
    """Write the state of a campaign rebuilt from its rows (recover) under a new epoch: the shards'
    state (from here they take claims) and the registry of active campaigns; then the meta hash,
    alone and last: from it workers serve the campaign again."""
    epoch = new_epoch()
    batch = redis.batch(durable=True)
    for shard, issued in zip(keys.all_shards(), per_shard):
        state = {"issued": issued, "epoch": epoch}
        if row.closes_at:
            state["closes_at"] = to_ms(row.closes_at)
        batch.on(shard.state).hset(shard.state, mapping=state)
    batch.on(ACTIVE).sadd(ACTIVE, keys.campaign_id)
    batch.execute()
    batch = redis.batch(durable=True)
    batch.on(keys.meta).hset(keys.meta, mapping={
        **meta_fields(row.total, status, row.opens_at, row.closes_at, epoch), "cursor": cursor})
    batch.execute()


def redis_holds(redis, keys, row):
    """Whether Redis holds the campaign of a campaigns row; False once it was released after close.
    Raise CampaignLost for one not closed that Redis no longer holds (restarted empty, a cluster
    rebuilt): preloaded again it would issue serials the database has, and closed it would lose
    the claims of its users; `recover` rebuilds it from the database first."""
    if redis.exists(keys.meta):
        return True
    if row.status != "closed":
        raise CampaignLost(f"Redis no longer holds campaign {row.id}: `flask campaign recover "
                           f"{row.id}` rebuilds it from the database")
    return False


def close_claim_shards(batch, keys):
    """Queue what makes every claim shard of a campaign refuse claims from now on."""
    for shard in keys.all_shards():
        batch.on(shard.state).hset(shard.state, "closes_at", 0)  # 0: closed, whatever the clock


def stop_claims(redis, keys):
    """Every claim shard refuses from now on, and the meta hash says closed (workers answer
    CLOSED within STATE_REFRESH). Durable: a close lost at failover would reopen the sale."""
    batch = redis.batch(durable=True)
    close_claim_shards(batch, keys)
    batch.on(keys.meta).hset(keys.meta, "status", "closed")
    batch.execute()


def release(redis, keys):
    """Delete a closed campaign's Redis keys; from now on it is read from the database."""
    redis.srem(ACTIVE, keys.campaign_id)
    delete_keys(redis, keys)


def delete_keys(redis, keys):
    """Delete every key of a campaign, one by one (they live on several nodes); the meta hash
    last, so that until it is gone a close run again finds the campaign and finishes."""
    batch = redis.batch()
    for key in keys.every_key():
        if key != keys.meta:
            batch.on(key).delete(key)
    batch.execute()
    redis.delete(keys.meta)


def issued_in_redis(redis, keys):
    """Sum the issued counters of a campaign's claim shards; None if Redis does not hold it."""
    stock = stock_in_redis(redis, keys)
    return stock and stock[1]


def stock_in_redis(redis, keys):
    """(total, issued) of a campaign as Redis holds it (issued: its shards' counters summed);
    None if Redis does not hold it."""
    return stocks_in_redis(redis, [keys]).get(keys.campaign_id)


def stocks_in_redis(redis, campaigns):
    """{campaign id: (total, issued)} of these campaigns' keys, of those Redis holds: one batch."""
    batch = redis.batch()
    for keys in campaigns:
        batch.on(keys.meta).hget(keys.meta, "total")
        for shard in keys.all_shards():
            batch.on(shard.state).hget(shard.state, "issued")
    replies, stocks, at = batch.execute(), {}, 0
    for keys in campaigns:
        total, *counts = replies[at:at + 1 + keys.shards]
        at += 1 + keys.shards
        if total is not None:
            stocks[keys.campaign_id] = (int(total), sum(int(c or 0) for c in counts))
    return stocks
