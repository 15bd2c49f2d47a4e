"""Events job: publish the event outbox to RabbitMQ (coupon/events.py).

It backs off while the broker is away, refusing, or blocking publishers. Rows wait in the
database meanwhile.

It runs on the leader only: two publishers would send each event twice."""
import logging
import time

from coupon.events import BrokerUnavailable, Publisher
from jobs.outage import Outage

log = logging.getLogger(__name__)
MAX_BACKOFF = 10.0  # seconds between tries at most, while the broker is away


class EventsJob:
    def __init__(self, svc, interval):
        self.metrics = svc.metrics
        self.publisher = Publisher(svc.engine, svc.config)
        self.outage = Outage(log, "event broker", base=interval, cap=MAX_BACKOFF)

    def __call__(self):
        """Publish what the event outbox holds; False while the broker is away.

        That is, after a failed try, or while waiting out the backoff before the next."""
        sent = self.outage.attempt(
            # stop after a while so that the other jobs and the leader lease keep their turn
            lambda: self.publisher.publish(until=time.monotonic() + 5), BrokerUnavailable,
            lambda e: f"event broker unavailable, events wait in the database: {e}")
        if sent is None:
            return False
        self.metrics.record_events_published(sent)
        return True

    def close(self):
        self.publisher.close()
