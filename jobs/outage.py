"""A dependency's outage as a job sees it: tries spaced out, its start and its end said once.

The dependency is the database for the flush, the broker for the events. Tries are spaced out
exponentially while the outage lasts; it is said once when it starts and once when it ends, not
at every try."""
import time

from redis.backoff import ExponentialBackoff


class Outage:
    def __init__(self, log, what, base, cap):
        self.log, self.what = log, what  # what: "database", say ("database back after 3.2 s")
        self.backoff = ExponentialBackoff(cap=cap, base=base)
        self.failures = 0
        self.retry_at = 0.0
        self.since = None

    def attempt(self, work, errors, message):
        """work()'s result; None while the backoff is still to be waited out, or after a failed try.

        A failed try: work raised one of `errors`; message(error) is logged if the outage starts
        now."""
        if time.monotonic() < self.retry_at:  # the backoff after a failed try
            return None
        try:
            done = work()
        except errors as e:
            self.failures += 1
            self.retry_at = time.monotonic() + self.backoff.compute(self.failures)
            if self.since is None:  # the outage starts now: said once
                self.since = time.monotonic()
                self.log.error(message(e))
            return None
        if self.since is not None:  # the outage is over: said once
            self.log.warning("%s back after %.1f s", self.what, time.monotonic() - self.since)
            self.since = None
        self.failures = 0
        return done
