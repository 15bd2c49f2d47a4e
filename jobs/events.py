"""Events job: publish the event outbox to RabbitMQ (coupon/events.py); back off while the
broker is away, refusing, or blocking publishers. Rows wait in the database meanwhile.

It runs on the leader only: two publishers would send each event twice."""
import logging
import time

from redis.backoff import ExponentialBackoff

from coupon.events import BrokerUnavailable, Publisher

log = logging.getLogger(__name__)
MAX_BACKOFF = 10.0  # seconds between tries at most, while the broker is away


class EventsJob:
    def __init__(self, svc, interval):
        self.metrics = svc.metrics
        self.publisher = Publisher(svc.engine, svc.config)
        self.interval = interval
        self.backoff = ExponentialBackoff(cap=MAX_BACKOFF, base=interval)
        self.failures = 0
        self.retry_at = 0.0
        self.outage_since = None

    def __call__(self):
        """Publish what the event outbox holds; False while the broker is away (a failed try, or
        waiting out the backoff before the next)."""
        if time.monotonic() < self.retry_at:
            return False
        try:
            # stop after a while so that the other jobs and the leader lease keep their turn
            sent = self.publisher.publish(until=time.monotonic() + 5)
        except BrokerUnavailable as e:
            self.failures += 1
            self.retry_at = time.monotonic() + self.backoff.compute(self.failures)
            if self.outage_since is None:  # once per outage, not once per try
                self.outage_since = time.monotonic()
                log.error("event broker unavailable, events wait in the database: %s", e)
            return False
        if self.outage_since is not None:
            log.warning("event broker back after %.1f s", time.monotonic() - self.outage_since)
            self.outage_since = None
        self.failures = 0
        self.metrics.record_events_published(sent)
        return True

    def close(self):
        self.publisher.close()
