"""The rate limit's fixed windows (counting needs Redis: tests/test_rate_limit.py)."""
import time

from hypothesis import given
from hypothesis import strategies as st

from coupon.rate_limit import RateLimit


@given(seconds=st.integers(-5, 100_000))
def test_a_rate_window_is_the_fixed_window_of_now_with_the_seconds_left_in_it(seconds):
    rate = RateLimit(10, seconds)
    assert rate.seconds == max(1, seconds)
    before = int(time.time())
    window, left = rate.window()
    after = int(time.time())
    assert 1 <= left <= rate.seconds
    assert before <= window * rate.seconds + (rate.seconds - left) <= after
