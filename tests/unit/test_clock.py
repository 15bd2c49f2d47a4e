"""Time: ISO 8601 in (any offset, UTC without one), naive UTC datetimes inside, epoch ms in
Redis, ISO 8601 with milliseconds and Z out."""
import datetime as dt
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from redis.exceptions import RedisError

from coupon.clock import RedisClock, from_ms, iso, iso_ms, parse_time, to_ms

UTC = dt.timezone.utc
# naive UTC datetimes as the service keeps them: the database's DATETIME(3) holds milliseconds
moments = st.datetimes(dt.datetime(1970, 1, 2), dt.datetime(9999, 12, 30)).map(
    lambda d: d.replace(microsecond=d.microsecond // 1000 * 1000))
offsets = st.integers(-14 * 60, 14 * 60).map(lambda m: dt.timezone(dt.timedelta(minutes=m)))


@pytest.mark.parametrize("text, expected", [
    ("2030-01-02T03:04:05Z", dt.datetime(2030, 1, 2, 3, 4, 5)),
    ("2030-01-02T03:04:05", dt.datetime(2030, 1, 2, 3, 4, 5)),  # no offset: UTC
    ("2030-01-02T12:04:05+09:00", dt.datetime(2030, 1, 2, 3, 4, 5)),
    ("2030-01-01T22:04:05.250-05:00", dt.datetime(2030, 1, 2, 3, 4, 5, 250_000)),
    ("  2030-01-02 03:04:05Z\n", dt.datetime(2030, 1, 2, 3, 4, 5)),
    ("2030-01-02", dt.datetime(2030, 1, 2)),
])
def test_parse_time_gives_naive_utc(text, expected):
    value = parse_time(text)
    assert value == expected and value.tzinfo is None


@pytest.mark.parametrize("text", ["", "tomorrow", "2030-13-01T00:00:00", "2030-01-02T25:00",
                                  "1700000000", "2030-01-02T03:04:05+25:00"])
def test_parse_time_refuses_what_is_not_iso_8601(text):
    with pytest.raises(ValueError, match="not an ISO 8601 time"):
        parse_time(text)


@given(moment=moments, offset=offsets)
def test_parse_time_reads_a_time_at_any_offset_as_the_same_utc_moment(moment, offset):
    local = moment.replace(tzinfo=UTC).astimezone(offset)
    assert parse_time(local.isoformat()) == moment


def test_to_ms_and_iso_of_known_moments():
    moment = dt.datetime(2023, 11, 14, 22, 13, 20, 123_000)
    assert to_ms(moment) == 1_700_000_000_123
    assert iso(moment) == "2023-11-14T22:13:20.123Z"
    assert iso_ms(1_700_000_000_123) == "2023-11-14T22:13:20.123Z"
    assert iso(dt.datetime(2023, 11, 14, 22, 13, 20, 123_999)) == "2023-11-14T22:13:20.123Z"


def test_no_time_is_zero_ms_and_no_iso():
    """A campaign without opens_at/closes_at: 0 in Redis's meta hash, null in the API."""
    assert to_ms(None) == 0
    assert iso(None) is None


@given(moment=moments)
def test_iso_of_a_moment_reads_back_as_it(moment):
    assert parse_time(iso(moment)) == moment


# every ms a DATETIME can hold after the epoch (kept in integers: no float rounding)
exact_ms = st.integers(0, 253_402_300_799_999)
EPOCH = dt.datetime(1970, 1, 1)


@given(ms=exact_ms)
def test_a_moment_through_epoch_ms_renders_as_itself(ms):
    """A ticket's issued_at goes into Redis as ms (recover: to_ms of the row) and out as ISO
    (iso_ms): the answer after a recovery must be the one the user had."""
    moment = EPOCH + dt.timedelta(milliseconds=ms)
    assert to_ms(moment) == ms
    assert iso_ms(to_ms(moment)) == iso(moment)


@given(ms=exact_ms)
def test_epoch_ms_through_iso_comes_back_as_it(ms):
    assert to_ms(parse_time(iso_ms(ms))) == ms


def test_to_ms_is_exact_where_float_seconds_were_not():
    """Found by Hypothesis: float seconds * 1000 truncated to the ms before for these."""
    for ms in (545_417_903_578, 2_192_929_573_200):  # 1987-04-14, 2039-06-29
        assert to_ms(EPOCH + dt.timedelta(milliseconds=ms)) == ms
        assert from_ms(ms) == EPOCH + dt.timedelta(milliseconds=ms)


# --- Redis's clock, as a worker reads it ---

def test_redis_clock_is_the_local_clock_plus_the_offset_it_measured():
    clock = RedisClock(lambda: time.time() * 1000 - 3000)  # a Redis 3 s behind this host
    assert abs(clock.now_ms() - (time.time() * 1000 - 3000)) <= 5
    assert abs(clock.offset_ms + 3000) <= 5


def test_the_sample_of_the_shortest_round_trip_counts_among_the_last_few():
    clock = RedisClock(None)
    for round_trip, offset in [(0.040, 900), (0.001, 100), (0.030, -700)]:
        clock.add(round_trip, offset)
    assert clock.offset_ms == 100
    for _ in range(RedisClock.KEEP):  # the fast one ages out
        clock.add(0.020, 300)
    assert clock.offset_ms == 300


def test_an_old_sample_counts_less_than_a_fresh_one_as_the_clocks_may_drift_apart():
    clock = RedisClock(None)
    now = time.monotonic()
    clock.add(0.0002, 100, at=now - 600)  # 0.1 ms of round trip, but 10 minutes old: 6.1 ms
    clock.add(0.004, 200, at=now - 60)  # 2 ms, one minute old: 2.6 ms
    clock.add(0.008, 300)  # 4 ms, now
    assert clock.offset_ms == 200


def test_a_worker_calibrates_its_clock_with_a_few_samples_before_it_serves():
    reads = []
    clock = RedisClock(lambda: reads.append(1) or time.time() * 1000 + 250)
    clock.calibrate()
    assert len(reads) == RedisClock.CALIBRATION and abs(clock.offset - 250) < 5


def test_it_samples_on_the_first_call_then_every_few_seconds_and_keeps_its_offset_while_redis_fails():
    calls, offset = [], [1000]

    def read():
        calls.append(1)
        if offset[0] is None:
            raise RedisError("down")
        return time.time() * 1000 + offset[0]

    clock = RedisClock(read)
    clock.now_ms()
    clock.now_ms()
    assert len(calls) == 1 and abs(clock.offset_ms - 1000) <= 5
    offset[0] = None
    clock.next_sample = 0  # the next call samples again: Redis fails, the offset stands
    assert abs(clock.now_ms() - (time.time() * 1000 + 1000)) <= 5
    assert len(calls) == 2 and clock.next_sample > time.monotonic()


def test_arrivals_are_ordered_by_redis_clock_to_the_microsecond_not_the_whole_ms():
    clock = RedisClock(lambda: time.time() * 1000 - 3000.25)
    fine = clock.fine_now_ms()
    assert abs(fine - (time.time() * 1000 - 3000.25)) < 0.5  # a whole ms would be off by up to 1
    assert clock.offset == pytest.approx(-3000.25, abs=0.2) and clock.offset_ms == -3000
