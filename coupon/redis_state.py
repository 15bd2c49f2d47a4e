"""A campaign's live state in Redis, written, read and deleted here, and its claims read back.

The state is its meta hash (total, cursor, status, window, layout) and its claim shards' state
hashes (issued, closes_at, layout); the claims read back are those of its users. The keys are
named in keys.py; the scripts that change this state as users ask are in lua/."""
import uuid
from collections import Counter
from typing import NamedTuple

from coupon.clock import now_ms, to_ms
from coupon.errors import CampaignLost
from coupon.keys import ACTIVE, SERIALS_WANTED, bucket_count
from coupon.scripts import StoredClaim


class Layout(NamedTuple):
    """What stays fixed while a campaign's Redis state lives, in its meta hash and shard states.

    It is the same in the meta hash and every shard state: the epoch (new when `recover` rebuilds
    the state: lease.lua and claim.lua refuse serials leased in another), the claims buckets per
    shard (keys.bucket_count) and the time base the claims' issued_at is stored from
    (scripts.StoredClaim)."""

    epoch: str
    buckets: int
    time_base: int  # epoch ms

    @classmethod
    def new(cls, total, shards):
        """The layout of a new state for a campaign of `total` coupons."""
        return cls(uuid.uuid4().hex[:12], bucket_count(total, shards), now_ms())

    @classmethod
    def of(cls, fields):
        """The layout in a meta hash or shard state (their fields); None if it has none.

        None too for one of the version before the claims buckets (docs/operations.md,
        "Upgrading")."""
        if not fields or not fields.get("epoch") or "buckets" not in fields:
            return None
        return cls(fields["epoch"], int(fields["buckets"]), int(fields["time_base"]))

    def fields(self):
        return {"epoch": self.epoch, "buckets": self.buckets, "time_base": self.time_base}


class Meta(NamedTuple):
    """A campaign's meta hash as workers read it (its total and cursor are the scripts')."""

    status: str
    opens_at: int = 0  # epoch ms; 0: none
    closes_at: int = 0
    wanted: int = 0  # epoch ms a worker last ran dry and asked the others for serials (lease.lua)
    layout: Layout = None  # None: not live in Redis (released after close)

    @classmethod
    def decode(cls, fields):
        return cls(fields.get("status", "pending"), int(fields.get("opens_at") or 0),
                   int(fields.get("closes_at") or 0), int(fields.get("wanted") or 0), Layout.of(fields))


def campaigns_wanted(redis):
    """The ids of the campaigns a worker ran dry of lately while others held serials.

    See Scripts.ask_holders."""
    return {int(c) for c in redis.zrange(SERIALS_WANTED, 0, -1)}


def read_meta(redis, keys):
    """The campaign's Meta, or None if Redis does not hold it."""
    fields = redis.hgetall(keys.meta)
    return Meta.decode(fields) if fields else None


def meta_fields(total, status, opens_at, closes_at, layout):
    """The meta hash of a campaign (times as naive UTC datetimes or None), less its cursor."""
    return {"total": total, "status": status, "opens_at": to_ms(opens_at),
            "closes_at": to_ms(closes_at), **layout.fields()}


def shard_state(issued, closes_at, layout):
    """The state hash of a claim shard (closes_at a naive UTC datetime or None: not written)."""
    state = {"issued": issued, "flushed": issued, **layout.fields()}  # every claim is in the database
    if closes_at:
        state["closes_at"] = to_ms(closes_at)
    return state


def preload(redis, keys, total, status, opens_at, closes_at):
    """Write a campaign's window and stock into Redis; keep the cursor and layout if already there.

    Durable: replicas hold it before it counts (REDIS_REPLICA_ACKS).

    The meta hash last: until it says so, the campaign is not open, and a failure before it
    (one node down) leaves the campaign as it was."""
    layout = Layout.of(redis.hgetall(keys.meta)) or Layout.new(total, keys.shards)
    batch = redis.batch(durable=True)
    for shard in keys.all_shards():
        batch.on(shard.state).hsetnx(shard.state, "issued", 0)  # the shard is live while it exists
        batch.on(shard.state).hsetnx(shard.state, "flushed", 0)
        batch.on(shard.state).hset(shard.state, mapping=layout.fields())
        if closes_at:
            batch.on(shard.state).hset(shard.state, "closes_at", to_ms(closes_at))
        else:
            batch.on(shard.state).hdel(shard.state, "closes_at")
    batch.on(keys.meta).hsetnx(keys.meta, "cursor", 0)
    batch.on(ACTIVE).sadd(ACTIVE, keys.campaign_id)
    batch.execute()
    batch = redis.batch(durable=True)
    batch.on(keys.meta).hset(keys.meta, mapping=meta_fields(total, status, opens_at, closes_at, layout))
    batch.execute()


def restore(redis, keys, row, status, cursor, per_shard, layout):
    """Write the state of a campaign rebuilt from its rows (recover) in a new layout.

    The layout is the one its claims were written back in. Written: the shards' state (from here
    they take claims) and the registry of active campaigns; then the meta hash, alone and last:
    from it workers serve the campaign again."""
    batch = redis.batch(durable=True)
    for shard, issued in zip(keys.all_shards(), per_shard):
        batch.on(shard.state).hset(shard.state, mapping=shard_state(issued, row.closes_at, layout))
    batch.on(ACTIVE).sadd(ACTIVE, keys.campaign_id)
    batch.execute()
    batch = redis.batch(durable=True)
    batch.on(keys.meta).hset(keys.meta, mapping={
        **meta_fields(row.total, status, row.opens_at, row.closes_at, layout), "cursor": cursor})
    batch.execute()


def holds(redis, keys):
    """Whether Redis holds the campaign (its meta hash)."""
    return bool(redis.exists(keys.meta))


def queue_holds(batch, keys):
    """Queue holds() into a batch; its Reply (a count: 1 or 0)."""
    return batch.on(keys.meta).exists(keys.meta)


def redis_holds(redis, keys, row):
    """Whether Redis holds the campaign of a campaigns row; False once it was released after close.

    Raise CampaignLost for one not closed that Redis no longer holds (restarted empty, a cluster
    rebuilt): preloaded again it would issue serials the database has, and closed it would lose
    the claims of its users; `recover` rebuilds it from the database first."""
    if holds(redis, keys):
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
    """Every claim shard refuses from now on, and the meta hash says closed.

    Workers answer CLOSED within STATE_REFRESH. Durable: a close lost at failover would reopen the
    sale."""
    batch = redis.batch(durable=True)
    close_claim_shards(batch, keys)
    batch.on(keys.meta).hset(keys.meta, "status", "closed")
    batch.execute()


def release(redis, keys):
    """Delete a closed campaign's Redis keys; from now on it is read from the database."""
    redis.srem(ACTIVE, keys.campaign_id)
    delete_keys(redis, keys)


def delete_keys(redis, keys):
    """Delete every key of a campaign, one by one (they live on several nodes).

    The meta hash last, so that until it is gone a close run again finds the campaign and finishes.
    The claims buckets as many as the meta hash or any shard state says (a shard's state goes after
    its buckets, so a delete cut short is finished when run again)."""
    batch = redis.batch()
    said = [batch.on(key).hget(key, "buckets")
            for key in [keys.meta, *(shard.state for shard in keys.all_shards())]]
    batch.execute()
    buckets = max(int(n.get() or 0) for n in said)
    batch = redis.batch()
    for key in keys.every_key(buckets):
        if key != keys.meta:
            batch.on(key).delete(key)
    batch.execute()
    redis.delete(keys.meta)


def issued_in_redis(redis, keys):
    """Sum the issued counters of a campaign's claim shards; None if Redis does not hold it."""
    stock = stock_in_redis(redis, keys)
    return stock and stock[1]


def issued_counted(redis, keys):
    """The sum of a campaign's claim shards' issued counters (a shard gone: 0), in one batch."""
    batch = redis.batch()
    issued = queue_issued(batch, keys)
    batch.execute()
    return issued()


def stock_in_redis(redis, keys):
    """(total, issued) of a campaign as Redis holds it; None if Redis does not hold it.

    issued: its shards' counters summed."""
    return stocks_in_redis(redis, [keys]).get(keys.campaign_id)


def stocks_in_redis(redis, campaigns):
    """{campaign id: (total, issued)} of these campaigns' keys, of those Redis holds: one batch."""
    batch = redis.batch()
    stocks = queue_stocks(batch, campaigns)
    batch.execute()
    return stocks()


def queue_stocks(batch, campaigns):
    """Queue the reads of stocks_in_redis into a batch; return what reads its answer.

    Call what it returns once the batch has run."""
    reads = [(keys, queue_total(batch, keys), queue_issued(batch, keys)) for keys in campaigns]

    def stocks():
        return {keys.campaign_id: (int(total.get()), issued())
                for keys, total, issued in reads if total.get() is not None}
    return stocks


def queue_total(batch, keys):
    """Queue the read of a campaign's total (its meta hash's); return its Reply.

    The Reply holds None if Redis does not hold the campaign."""
    return batch.on(keys.meta).hget(keys.meta, "total")


def queue_issued(batch, keys):
    """Queue the reads of a campaign's coupons issued; return what sums them.

    The reads are its claim shards' counts; call what it returns once the batch has run."""
    counts = [batch.on(shard.state).hget(shard.state, "issued") for shard in keys.all_shards()]
    return lambda: sum(int(count.get() or 0) for count in counts)


def queue_unflushed(batch, keys):
    """Queue the reads of a campaign's claims not yet in the database; return what sums them.

    Each claim shard's issued less its flushed (ack_outbox.lua counts them); call what it returns
    once the batch has run."""
    counts = [batch.on(shard.state).hmget(shard.state, "issued", "flushed")
              for shard in keys.all_shards()]

    def unflushed():
        return sum(int(issued or 0) - int(flushed or 0)
                   for issued, flushed in (count.get() for count in counts))
    return unflushed


def issues_per_second(redis, keys):
    """({epoch second: new tickets} of a campaign, the meta hash node's epoch second now).

    The tickets are its shards' counts summed (claim.lua); the second now is that of the meta hash
    node's clock: every claim stamped before it is counted."""
    batch = redis.batch()
    clock = batch.on(keys.meta).time()
    shards = [batch.on(shard.per_second).hgetall(shard.per_second) for shard in keys.all_shards()]
    batch.execute()
    per_second = Counter()
    for counts in shards:
        for second, n in counts.get().items():
            per_second[int(second)] += int(n)
    return per_second, clock.get()[0]


def write_issues_per_second(batch, shard, per_second):
    """Queue writing a shard's new tickets per second ({epoch second: n}), as recover counted them."""
    if per_second:
        batch.on(shard.per_second).hset(shard.per_second, mapping=per_second)


def stored_claim(redis, keys, user_id):
    """The StoredClaim of the user's ticket, or None if Redis holds none (or not the campaign)."""
    shard = keys.shard(keys.shard_of(user_id))
    layout = Layout.of(redis.hgetall(shard.state))
    held = layout and redis.hget(keys.claims_of(user_id, layout.buckets), user_id)
    return StoredClaim.decode(held, layout.time_base) if held else None


def shard_claims(redis, shard, per_round=100):
    """(user, StoredClaim) of every claim of one shard, `per_round` buckets a round trip."""
    client = redis.client_for(shard.state)
    layout = Layout.of(client.hgetall(shard.state))
    if layout is None:
        return
    for first in range(0, layout.buckets, per_round):
        pipe = client.pipeline(transaction=False)
        for i in range(first, min(first + per_round, layout.buckets)):
            pipe.hgetall(shard.bucket(i))
        for claims in pipe.execute():
            for user, value in claims.items():
                yield user, StoredClaim.decode(value, layout.time_base)
