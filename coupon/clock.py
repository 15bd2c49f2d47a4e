"""Times, one set of helpers: the database keeps naive UTC datetimes, Redis and the wire epoch
milliseconds, people ISO 8601."""
import datetime as dt
import time

UTC = dt.timezone.utc


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
    return int(value.replace(tzinfo=UTC).timestamp() * 1000) if value else 0


def from_ms(ms):
    """Epoch milliseconds as a naive UTC datetime."""
    return dt.datetime.fromtimestamp(ms / 1000, UTC).replace(tzinfo=None)


def iso(value):
    """A naive UTC datetime as ISO 8601 with milliseconds and Z; None as None."""
    return value.replace(tzinfo=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z") if value else None


def iso_ms(ms):
    return iso(from_ms(ms))
