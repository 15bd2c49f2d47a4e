"""Recover: rebuild a campaign's Redis state from the database, for a Redis that lost it.

What the rows imply is written back: each claim into its shard (its claims bucket, the
claimed-serials bitmap, the issued counter, the count of its second), the cursor at the highest serial issued, every
serial below it that no row holds onto the returned list (leased and never claimed, or claimed
and lost with Redis: they are handed out again first), the status and window. Then the sale goes
on.

What the database never had is gone: claims Redis acknowledged and had not flushed yet. The last
stock sync's count against the rows says how many at least. The state gets a new layout (epoch,
claims buckets of the total, time base), so that serials leased before the loss are refused
(lease.lua, claim.lua).
"""
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from coupon import redis_state
from coupon.campaigns import drain_outbox
from coupon.clock import utcnow
from coupon.errors import NothingToRecover
from coupon.queries import campaign_row, claims_by_serial
from coupon.scripts import StoredClaim

ROWS = 10_000  # serials whose rows are read, and their claims written, a round
RETURNED = 2000  # serials per RPUSH


@dataclass
class RecoveryReport:
    campaign_id: int
    status: str
    per_shard: list  # rows restored (users holding a ticket) per claim shard
    cursor: int  # the highest serial of a row: leases go on from there
    returned: int  # serials below the cursor that no row holds: handed out again first
    drained: int  # claims moved from the outbox streams Redis still held, before the rebuild
    last_synced: int  # issued, as the last stock sync before the loss counted it

    @property
    def rows(self):
        return sum(self.per_shard)

    @property
    def possibly_lost(self):
        """Claims the last stock sync counted that no row holds: acknowledged, never flushed."""
        return max(0, self.last_synced - self.rows)

    def lines(self):
        """The report for people: what was restored, then what may have been lost."""
        out = [
            f"campaign {self.campaign_id}: restored {self.rows} claims from the database "
            f"(users per claim shard {min(self.per_shard)}..{max(self.per_shard)}), cursor "
            f"{self.cursor}, {self.returned} serials returned for issue, status {self.status}"
        ]
        if self.drained:
            out.append(f"  first drained {self.drained} claims from the outbox streams Redis still held")
        counted = f"counted {self.last_synced} issued, the database holds {self.rows} rows"
        if self.possibly_lost:
            out += [
                f"  possibly lost: {self.possibly_lost} claims: the last stock sync {counted}.",
                "    Acknowledged to users, never flushed before Redis lost them: their serials may be",
                "    issued again (they are returned, or above the cursor), and the users told of them",
                "    have no row.",
            ]
        else:
            out.append(f"  possibly lost: none that the last stock sync counted: it {counted}.")
        out.append("  Not counted: any claims acknowledged after that stock sync and not flushed; "
                   "they are lost as well.")
        return out


def recover_campaign(svc, campaign_id, progress=None):
    """Rebuild a campaign's Redis state from its rows, for a Redis that lost it; return a report.

    Refuses while Redis holds the campaign (its meta hash), and for a closed campaign. The meta
    hash is written last: until then workers do not serve the campaign, and recover may run
    again after a failure. progress, if given, is called with the rows restored by each round.
    """
    row = lost_campaign(svc, campaign_id)
    keys = svc.keys(campaign_id)
    drained = save_what_redis_kept(svc, keys)
    layout = redis_state.Layout.new(row.total, keys.shards)
    per_shard, cursor, returned = restore_claims(svc, keys, layout, progress)
    status = live_status(row)
    redis_state.restore(svc.redis, keys, row, status, cursor, per_shard, layout)
    return RecoveryReport(campaign_id, status, per_shard, cursor, returned, drained, row.issued)


def lost_campaign(svc, campaign_id):
    """The campaigns row of a campaign Redis lost.

    Raise NothingToRecover for one it holds or a closed one (CampaignNotFound for an unknown
    id)."""
    row = campaign_row(svc.engine, campaign_id)
    if row.status == "closed":
        raise NothingToRecover(f"campaign {campaign_id} is closed; it is read from the database")
    if redis_state.holds(svc.redis, svc.keys(campaign_id)):
        raise NothingToRecover(
            f"Redis still holds campaign {campaign_id}; recover is only for a Redis that lost it")
    return row


def save_what_redis_kept(svc, keys):
    """Save into the database what Redis kept of the campaign, then delete its keys.

    Stop claims on the shards Redis still holds (a cluster that lost only some nodes) and drain
    their outbox streams into the database, then delete every key of the campaign: what is left
    of the lost state, or of a recover that failed halfway. Return the rows drained."""
    batch = svc.redis.batch(durable=True)
    redis_state.close_claim_shards(batch, keys)
    batch.execute()
    drained = drain_outbox(svc, keys.campaign_id)
    redis_state.delete_keys(svc.redis, keys)
    return drained


def restore_claims(svc, keys, layout, progress=None):
    """Write each row's claim back into its shard (in the new layout).

    It reads the rows in serial order: a chunk's claims of a shard in one call of
    restore_claims.lua, the shards' claimed-serials bitmaps and counts of claims per second built
    here and written whole at the end, and the serials between the rows that no row holds pushed
    onto the returned list. Return (rows per shard, the highest serial, serials returned). A failure
    midway leaves keys that recover, run again, deletes first."""
    shards = keys.all_shards()
    per_shard, cursor, returned = [0] * keys.shards, 0, 0
    bitmaps = [bytearray() for _ in shards]
    per_second = [Counter() for _ in shards]  # epoch second -> rows, what claim.lua counts
    chunks = claims_by_serial(svc.engine, keys.campaign_id, ROWS)
    # the next chunk read and the last one written while this one is placed: MariaDB, Redis
    # and this process busy at once (one write at a time: the returned list keeps its order)
    with ThreadPoolExecutor(2, thread_name_prefix="recover") as pool:
        reading, writing = pool.submit(next, chunks, None), None
        while (rows := reading.result()) is not None:
            reading = pool.submit(next, chunks, None)
            holes = []
            buckets = [[] for _ in shards]  # per shard: the bucket of each claim, and its (user, claim)
            claims = [[] for _ in shards]
            for user, serial, issued_at in rows:
                if serial > cursor + 1:
                    holes.extend(range(cursor + 1, serial))
                cursor = serial
                k, bucket = keys.place(user, layout.buckets)
                per_shard[k] += 1
                set_bit(bitmaps[k], serial)
                per_second[k][issued_at // 1000] += 1
                buckets[k].append(shards[k].bucket(bucket))
                claims[k] += (user, StoredClaim.value(serial, issued_at, layout.time_base))
            batch = svc.redis.batch(durable=True)
            for i in range(0, len(holes), RETURNED):
                batch.on(keys.returned).rpush(keys.returned, *holes[i:i + RETURNED])
            for shard_buckets, shard_claims in zip(buckets, claims):
                if shard_buckets:
                    batch.script(svc.scripts.restore_claims, shard_buckets, shard_claims)
            if writing:
                report(writing.result(), progress)
            writing = pool.submit(written, batch, len(rows))
            returned += len(holes)
        if writing:
            report(writing.result(), progress)
    batch = svc.redis.batch(durable=True)
    for shard, bitmap, counts in zip(shards, bitmaps, per_second):
        if bitmap:
            batch.on(shard.claimed).set(shard.claimed, bytes(bitmap))
        redis_state.write_issues_per_second(batch, shard, counts)
    batch.execute()
    return per_shard, cursor, returned


def written(batch, rows):
    batch.execute()
    return rows


def report(rows, progress):
    if progress:
        progress(rows)


def set_bit(bitmap, n):
    """Set bit n of a bitmap as Redis numbers them (SETBIT: bit 0 is the first byte's highest)."""
    byte = n >> 3
    if byte >= len(bitmap):
        bitmap.extend(bytes(byte + 1 - len(bitmap)))
    bitmap[byte] |= 0x80 >> (n & 7)


def live_status(row):
    """The status preload writes for a campaigns row: a scheduled one whose time has come is open."""
    if row.status == "scheduled" and row.opens_at <= utcnow():
        return "open"
    return row.status
