"""The rate limit's fixed windows, numbered by Redis's clock (counting needs Redis:
tests/integration/test_rate_limit.py, tests/e2e/test_rate_limit.py)."""
import time

from hypothesis import given
from hypothesis import strategies as st

from coupon.clock import RedisClock
from coupon.rate_limit import RateLimit

# ms the offset measured may be off: the round trip, here two readings of the local clock, which a
# loaded 2-core machine may pause between (CI once saw 4 ms)
SLACK_MS = 50


@given(seconds=st.integers(-5, 100_000), offset_ms=st.integers(-10_000, 10_000))
def test_a_rate_window_is_the_fixed_window_of_redis_now_with_the_seconds_left_in_it(seconds, offset_ms):
    clock = RedisClock(lambda: time.time() * 1000 + offset_ms)
    rate = RateLimit(10, seconds, clock)
    assert rate.seconds == max(1, seconds)
    before = (clock.now_ms() - SLACK_MS) // 1000  # the offset measured is off by the round trip at most
    window, left = rate.window()
    after = (clock.now_ms() + SLACK_MS) // 1000
    assert 1 <= left <= rate.seconds
    assert before <= window * rate.seconds + (rate.seconds - left) <= after
    assert abs(clock.offset_ms - offset_ms) <= SLACK_MS
