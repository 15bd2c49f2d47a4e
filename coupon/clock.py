"""Times, one set of helpers: the database keeps naive UTC datetimes, Redis and the wire epoch
milliseconds, people ISO 8601."""
import datetime as dt
import time

UTC = dt.timezone.utc
EPOCH = dt.datetime(1970, 1, 1)
MS = dt.timedelta(milliseconds=1)


def utcnow():
    """Now, as the database keeps times: a naive UTC datetime."""
    return dt.datetime.now(UTC).replace(tzinfo=None)


def now_ms():
    return int(time.time() * 1000)


def parse_time(text):
    """Parse an ISO 8601 time; a time without offset is UTC. Returns a naive UTC datetime; raises
    ValueError for anything else."""
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
