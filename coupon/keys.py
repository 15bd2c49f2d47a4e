"""Names of every Redis key, in one place.

A campaign's home keys share the hash tag ``{c:ID}``; claim shard K of it has ``{c:ID:sK}``.
Each Lua script touches keys of one tag only, so the same code runs on Redis Cluster.
"""
import time
import zlib

ACTIVE = "campaigns:active"  # set of campaign ids the jobs walk
SCHEDULER_LEADER = "scheduler:leader"


class RateLimit:
    """The per-user rate limit: `limit` requests (0: no limit) per fixed window of `seconds`,
    counted by claim.lua for issue calls and by campaigns.count_request for ticket lookups."""

    def __init__(self, limit, seconds):
        self.limit = limit
        self.seconds = max(1, int(seconds))

    def window(self):
        """(number of the current window, seconds left in it)."""
        now = int(time.time())
        return now // self.seconds, self.seconds - now % self.seconds


def active_campaigns(redis):
    """The ids of the campaigns Redis holds, in order: what the jobs walk (never SCAN)."""
    return sorted(int(c) for c in redis.smembers(ACTIVE))


class CampaignKeys:
    def __init__(self, campaign_id, shards):
        self.campaign_id = int(campaign_id)
        self.shards = shards
        home = "{c:%d}" % self.campaign_id
        self.meta = home + ":meta"  # hash: total, cursor, status, opens_at, closes_at (epoch ms)
        self.leases = home + ":leases"  # zset: lease id -> expiry (epoch ms)
        self.lease_serials = home + ":lease_serials"  # hash: lease id -> encoded serials
        self.returned = home + ":returned"  # list: serials to hand out again first

    def shard_of(self, user_id):
        return zlib.crc32(user_id.encode()) % self.shards

    def shard(self, k):
        return ShardKeys(self.campaign_id, k)

    def all_shards(self):
        return [ShardKeys(self.campaign_id, k) for k in range(self.shards)]

    def home_keys(self):
        return [self.meta, self.leases, self.lease_serials, self.returned]

    def every_key(self):
        """Every key of the campaign but the rate windows (they expire by themselves)."""
        return [*self.home_keys(), *(key for shard in self.all_shards() for key in shard.all())]


class ShardKeys:
    def __init__(self, campaign_id, k):
        tag = self.tag = "{c:%d:s%d}" % (campaign_id, k)
        self.index = k
        self.claims = tag + ":claims"  # hash: user id -> "serial|code|issued_at_ms"
        self.claimed = tag + ":claimed"  # bitmap: serial -> claimed in this shard
        self.outbox = tag + ":outbox"  # stream of claims not yet in MySQL
        self.state = tag + ":state"  # hash: issued (count), closes_at (epoch ms)

    def all(self):
        return [self.claims, self.claimed, self.outbox, self.state]

    def rate(self, window):
        """Hash of one rate-limit window: user id -> issue requests (expires after the window).

        Under the shard's tag, so claim.lua counts and claims in the same call.
        """
        return "%s:rate:%d" % (self.tag, window)
