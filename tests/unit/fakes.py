"""A fake of the Redis side of the serial supply (coupon.scripts.Scripts: lease.lua, renew.lua,
give_back.lua and the supply's two plain commands), kept as lease.lua keeps it, in memory: the
rule of SerialSupply is tested here; lease.lua itself against real Redis
(tests/integration/test_leases.py, tests/integration/test_replica_acks.py,
tests/integration/test_ordered_tail.py)."""
import math
from types import SimpleNamespace

from redis.exceptions import ConnectionError as RedisConnectionError

from coupon.scripts import LeaseOutcome, LeaseReply
from coupon.supply import SupplySettings

SETTINGS = SupplySettings(block_size=100, tail_size=8, lease_ttl=30.0, sold_out_recheck=1.0)
KEYS = SimpleNamespace(campaign_id=7)


class FakeScripts:
    """One campaign of `total` serials, not in arrival order."""

    def __init__(self, total):
        self.total, self.cursor = total, 0
        self.returned = []  # serials given back, leased again first
        self.leases = {}  # lease id -> its serials, while it lives
        self.expired = set()  # lease ids expired (expire_lease), for the reclaim job
        self.others_hold = False  # another worker holds serials (lease.lua's others_hold)
        self.failures = 0  # the next this many calls raise as a dropped connection would
        self.lease_ids = []  # every lease id asked for, in turn (failed calls too)
        self.given_back = []  # (lease id, serials) of each give back
        self.holders_asked = 0

    def _call(self):
        if self.failures:
            self.failures -= 1
            raise RedisConnectionError("dropped")

    def lease(self, keys, epoch, lease_id, most, ttl_ms, tail, waiting, order=None):
        self.lease_ids.append(lease_id)
        self._call()
        if lease_id in self.expired:
            return LeaseReply(LeaseOutcome.EXPIRED)
        if lease_id in self.leases:
            return LeaseReply(LeaseOutcome.LEASED, tuple(self.leases[lease_id]))
        remaining = self.total - self.cursor + len(self.returned)
        if remaining <= 0:
            return LeaseReply(LeaseOutcome.SOLD_OUT, others_hold=self.others_hold or bool(self.leases))
        want = min(most, max(1, math.ceil(remaining / (4 * (len(self.leases) + 1)))))
        in_tail = remaining <= tail
        if in_tail:
            want = max(1, min(remaining, waiting))
        serials = self.returned[:want]
        del self.returned[:want]
        fresh = min(want - len(serials), self.total - self.cursor)
        serials += range(self.cursor + 1, self.cursor + fresh + 1)
        self.cursor += fresh
        self.leases[lease_id] = serials
        return LeaseReply(LeaseOutcome.LEASED, tuple(serials), in_tail)

    def renew(self, keys, ttl_ms, lease_id):
        self._call()
        return lease_id in self.leases

    def give_back(self, keys, lease_id, serials):
        self._call()
        self.given_back.append((lease_id, list(serials)))
        if self.leases.pop(lease_id, None) is None:
            return None
        self.returned += serials
        return len(serials)

    def expire_lease(self, keys, lease_id):
        self._call()
        self.expired.add(lease_id)

    def ask_holders(self, keys):
        self._call()
        self.holders_asked += 1


class Gauge:
    def __init__(self):
        self.value = None

    def set(self, value):
        self.value = value
