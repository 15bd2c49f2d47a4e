"""The per-user rate limit: RATE_LIMIT requests per fixed window of RATE_LIMIT_WINDOW seconds.

The requests are summed over every worker and host, issue calls and ticket lookups together.

Counted in one hash per claim shard and window (keys.ShardKeys.rate) that expires by itself:
claim.lua counts an issue call in the same call as its claim (no extra round trip), and
count_lookup.lua a ticket lookup, both by the one rule of lua/lib/rate_limit.lua. Not counted: the
call that gets the user a new ticket (a user gets one; counting it cost every coupon a write to a
hash of every user), and answers a worker gives from its own state (sold out, not open, closed):
they cost nothing. Windows are numbered by Redis's clock, so that every host counts in the same one
whatever its own clock says.
"""
from coupon.errors import RateLimited


class RateLimit:
    def __init__(self, limit, seconds, clock):
        self.limit = limit  # 0: no limit
        self.seconds = max(1, int(seconds))
        self.clock = clock  # clock.RedisClock

    def window(self):
        """(number of the current window, seconds left in it)."""
        now = self.clock.now_ms() // 1000
        return now // self.seconds, self.seconds - now % self.seconds

    def exceeded(self):
        """The answer to a request over the limit: retry once this window is over."""
        return RateLimited(retry_after=self.window()[1])

    def count_lookup(self, scripts, shard, user_id):
        """Count a ticket lookup of the user; raise RateLimited past the limit.

        It is counted in the window hash claim.lua counts issue calls in."""
        if not self.limit:
            return
        window, left = self.window()
        if scripts.count_lookup(shard.rate(window), user_id, self.limit, self.seconds):
            raise RateLimited(retry_after=left)
