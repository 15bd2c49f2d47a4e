"""Times, one set of helpers; and Redis's clock, which judges every window (RedisClock).

The database keeps naive UTC datetimes, Redis and the wire epoch milliseconds, people ISO 8601."""
import datetime as dt
import threading
import time
from collections import deque

from redis.exceptions import RedisError

UTC = dt.timezone.utc
EPOCH = dt.datetime(1970, 1, 1)
MS = dt.timedelta(milliseconds=1)


def utcnow():
    """Now, as the database keeps times: a naive UTC datetime."""
    return dt.datetime.now(UTC).replace(tzinfo=None)


def now_ms():
    return int(time.time() * 1000)


def parse_time(text):
    """Parse an ISO 8601 time; a time without offset is UTC.

    Returns a naive UTC datetime; raises ValueError for anything else."""
    try:
        value = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"not an ISO 8601 time: {text!r}") from None
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value


def to_ms(value):
    """A naive UTC datetime as epoch milliseconds; None as 0 (no time)."""
    return (value - EPOCH) // MS if value else 0  # in integers: a float's rounding loses 1 ms


def from_ms(ms):
    """Epoch milliseconds as a naive UTC datetime."""
    return EPOCH + ms * MS


def iso(value):
    """A naive UTC datetime as ISO 8601 with milliseconds and Z; None as None."""
    return value.replace(tzinfo=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z") if value else None


def iso_ms(ms):
    return iso(from_ms(ms))


class RedisClock:
    """Redis's clock as this process reads it: the local clock plus its offset to Redis's TIME.

    The scripts judge a campaign's window by Redis's clock; a worker that judged it by its own
    would answer NOT_OPEN after the opening, or CLOSED before the close, by however far its
    host's clock is off. So the offset is measured (several times as a worker starts: calibrate;
    then on the first call every SAMPLE_EVERY seconds), corrected for half the round trip; of the
    last KEEP samples the one known best counts: the least half round trip, plus DRIFT for each
    second since (a round trip stretched by a busy loop tells least, and under a flood every round
    trip is). Redis down: the last offset stands."""

    SAMPLE_EVERY = 5.0
    KEEP = 60  # five minutes of samples
    DRIFT = 1e-5  # how far two hosts' clocks may drift apart, NTP keeping them (10 ppm)
    # samples as a worker starts, its loop idle, CALIBRATION_PAUSE s apart (workers starting
    # together share the cores: one of the round trips falls between their starts)
    CALIBRATION, CALIBRATION_PAUSE = 20, 0.005

    def __init__(self, read_redis_ms):
        self.read_redis_ms = read_redis_ms  # () -> Redis's TIME in epoch ms
        self.samples = deque(maxlen=self.KEEP)  # (round trip in s, offset in ms, monotonic s)
        self.offset = 0.0  # ms, as measured
        self.offset_ms = 0  # in whole ms, as the windows are judged
        self.next_sample = 0.0  # monotonic
        self._sampling = threading.Lock()

    def now_ms(self, measure=True):
        """Redis's now (epoch ms).

        measure=False: by the offset measured last, never waiting for Redis (but once, if none was
        measured yet)."""
        self._measure(measure)
        return now_ms() + self.offset_ms

    def fine_now_ms(self):
        """Redis's now to the microsecond (epoch ms, a float), by the offset measured last.

        It orders requests that arrive a fraction of a ms apart (coupon.arrival)."""
        self._measure(False)
        return time.time() * 1000 + self.offset

    def _measure(self, measure):
        if (measure or not self.samples) and time.monotonic() >= self.next_sample \
                and self._sampling.acquire(blocking=False):
            try:
                self.sample()
            finally:
                self._sampling.release()

    def calibrate(self):
        """Measure the offset a few times, before the worker serves.

        With its loop idle, a round trip is as short as it gets (Redis down: once, then as it
        comes)."""
        for i in range(self.CALIBRATION):
            if i:
                time.sleep(self.CALIBRATION_PAUSE)
            if not self.sample():
                return

    def sample(self):
        self.next_sample = time.monotonic() + self.SAMPLE_EVERY
        sent = time.time()
        try:
            redis_ms = self.read_redis_ms()
        except RedisError:
            return False
        received = time.time()
        self.add(received - sent, redis_ms - (sent + received) * 500)
        return True

    def add(self, round_trip, offset_ms, at=None):
        now = time.monotonic()
        self.samples.append((round_trip, offset_ms, now if at is None else at))
        best = min(self.samples, key=lambda s: s[0] / 2 + (now - s[2]) * self.DRIFT)
        self.offset = best[1]
        self.offset_ms = round(self.offset)
