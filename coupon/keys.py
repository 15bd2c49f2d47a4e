"""Names of every Redis key, in one place.

A campaign's home keys share the hash tag ``{c:ID}``; claim shard K has a tag of its own (below).
Each Lua script touches keys of one tag only, so the same code runs on Redis Cluster.

Shard tags. A tag's CRC16 decides the slot of its keys, so the node; tags that differ in a digit
or two do not spread: ``{c:ID:sK}`` and ``{c:ID:sK+4}`` land exactly 132 slots apart for every
campaign, so a campaign's 8 shards fell on 4 of 8 masters, and on 3 masters one master carried
half of the claims in 9 campaigns of 10. Instead shard K of S has a fixed tag chosen to fall
near slot (K + 1/2) * 16384 / S: S evenly spaced slots, whatever the campaign. Masters own
contiguous ranges of slots, so each owns its share of the shards (with the default 12 shards:
4 each on 3 masters, 3 on 4, 2 on 6). Campaigns share these slots; their home keys spread by id.

Claims. A shard's claims are spread over small hashes ("buckets", all under the shard's tag, so
claim.lua still touches one slot) that Redis keeps in its compact listpack encoding: ~22 B a
claim rather than ~100 in one big hash. A hash stays compact up to `hash-max-listpack-entries`
(512 by default; we count on 128 at the least); a campaign's Redis state has bucket_count(total)
buckets per shard, about BUCKET_FILL claims each at its total (of a million users, at most 99 in
one bucket), fixed while that state lives: `add-stock` only fills them further (a bucket past the
limit turns into a plain hash, bigger but as exact).
"""
import functools
import zlib

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

ACTIVE = "campaigns:active"  # set of campaign ids the jobs walk
SCHEDULER_LEADER = "scheduler:leader"
BUCKET_FILL = 64  # claims per bucket at the campaign's total: half of 128 (see above)
JOB_SUCCESS = "scheduler:job_success"  # hash: job name -> epoch seconds of its last success
# zset: campaign id -> epoch ms a worker last ran dry of it while others held its serials: one key
# for every campaign, which the holders poll (issuing.Issuer), rather than each campaign's meta
SERIALS_WANTED = "serials:wanted"
# zset: web worker id -> epoch ms (Redis's clock) of its last word: the workers serving, of every
# host (arrival.WorkerRoll)
WORKER_ROLL = "workers:roll"


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
        # hash: each worker's latest winning arrival, refusals by arrival ms (coupon/fairness.py)
        self.arrivals = home + ":arrivals"
        # in arrival order (lease.lua): zset of the tail's bids, hash of their bidders
        self.bids = home + ":bids"
        self.bidders = home + ":bidders"

    def shard_of(self, user_id):
        return zlib.crc32(user_id.encode()) % self.shards

    def bucket_of(self, user_id, buckets):
        """The index of the user's claims bucket within its shard (of `buckets`)."""
        return self.place(user_id, buckets)[1]

    def place(self, user_id, buckets):
        """(shard_of, bucket_of) the user from one hash (recover places millions).

        The shard comes from the hash's remainder, the bucket from the bits above."""
        above, shard = divmod(zlib.crc32(user_id.encode()), self.shards)
        return shard, above % buckets

    def claims_of(self, user_id, buckets):
        """The key of the claims bucket that holds (or will hold) the user's claim."""
        shard, bucket = self.place(user_id, buckets)
        return self.shard(shard).bucket(bucket)

    def shard(self, k):
        return ShardKeys(shard_tag(k, self.shards), self.campaign_id, k)

    def all_shards(self):
        return [self.shard(k) for k in range(self.shards)]

    def home_keys(self):
        """lease.lua's KEYS, in its order."""
        return [self.meta, self.leases, self.lease_serials, self.returned, self.bids, self.bidders]

    def every_key(self, buckets):
        """Every key of the campaign but the rate windows, with `buckets` claims buckets per shard.

        The rate windows are left out: they expire by themselves."""
        return [*self.home_keys(), self.arrivals,
                *(key for shard in self.all_shards() for key in shard.all(buckets))]


def bucket_count(total, shards):
    """Claims buckets per shard for a campaign of `total` coupons: BUCKET_FILL claims each."""
    return max(1, -(-total // (shards * BUCKET_FILL)))


@functools.lru_cache(maxsize=None)
def shard_tag(k, shards):
    """The hash tag of shard k of `shards`: the first "sK.N" whose slot is near the shard's middle.

    N counts 0, 1, ...; near is within 1/8 of a spacing of (k + 1/2) * 16384 / shards (a few
    dozen tries at most)."""
    spacing = REDIS_CLUSTER_HASH_SLOTS / shards
    target, near = (k + 0.5) * spacing, max(1.0, spacing / 8)
    n = 0
    while abs(key_slot(b"s%d.%d" % (k, n)) - target) > near:
        n += 1
    return "{s%d.%d}" % (k, n)


def outbox_news(shards):
    """The outbox news set of each claim shard (ShardKeys.news), by shard index."""
    return [news_of(shard_tag(k, shards)) for k in range(shards)]


def news_of(tag):
    return tag + ":outbox_news"


def outbox_drained(shards):
    """The outbox drained set of each claim shard (ShardKeys.drained), by shard index."""
    return [drained_of(shard_tag(k, shards)) for k in range(shards)]


def drained_of(tag):
    return tag + ":outbox_drained"


class ShardKeys:
    def __init__(self, tag, campaign_id, k):
        self.index = k
        self.campaign_id = campaign_id
        # the tag in braces decides the slot; the campaign id after it, which keys these are
        self.prefix = prefix = "%s:c:%d" % (tag, campaign_id)
        self.claimed = prefix + ":claimed"  # bitmap: serial -> claimed in this shard
        self.outbox = prefix + ":outbox"  # stream of claims not yet in MySQL
        self.state = prefix + ":state"  # hash: issued, flushed, closes_at, layout (redis_state.shard_state)
        # hash: epoch second -> new tickets (claim.lua; recover writes it back from the rows): the
        # sale per second while Redis holds it, one field a second of claims
        self.per_second = prefix + ":per_second"
        # shared by every campaign's shard K: the ids of the campaigns whose outbox stream of this
        # shard may hold entries (claim.lua adds, ack_outbox.lua removes once it is empty); what
        # the flush job reads, rather than every stream of every campaign
        self.news = news_of(tag)
        # shared too: the ids of the campaigns whose stream of this shard a flusher (of any
        # scheduler) emptied and took off the news set, until the stock sync takes them
        # (ack_outbox.lua adds, jobs/stock_sync.py pops)
        self.drained = drained_of(tag)
        self._bucket = prefix + ":claims:%d"  # bucket(i): formatted per claim

    def bucket(self, i):
        """Claims bucket i of the shard: hash user id -> scripts.StoredClaim (see above)."""
        return self._bucket % i

    def all(self, buckets):
        """The shard's keys, with `buckets` claims buckets; the state last (delete_keys)."""
        return [*(self.bucket(i) for i in range(buckets)), self.claimed, self.outbox, self.per_second,
                self.state]

    def claim_keys(self, window, buckets):
        """The KEYS of claim.lua, in its order: then the bucket key of each claim of the call."""
        return [self.claimed, self.outbox, self.state, self.rate(window), self.news, self.per_second,
                *buckets]

    def rate(self, window):
        """Hash of one rate-limit window: user id -> issue requests (expires after the window).

        Under the shard's tag, so claim.lua counts and claims in the same call.
        """
        return "%s:rate:%d" % (self.prefix, window)
