"""Flush job: move outbox entries into the database; back off while the database is down.

It runs on every scheduler, leader or not: their flushers share the entries (coupon/flusher.py)."""
import logging
import os
import socket
import time

from sqlalchemy.exc import SQLAlchemyError

from coupon.flusher import Flusher
from jobs.outage import Outage

log = logging.getLogger(__name__)
MAX_BACKOFF = 30.0  # seconds between tries at most, while the database is down


class FlushJob:
    def __init__(self, svc, interval):
        # a consumer of its own per scheduler process: what it leaves pending when it dies is
        # taken over by the others after FLUSH_CLAIM_IDLE
        self.flusher = Flusher(svc, consumer=f"jobs:{socket.gethostname()}:{os.getpid()}")
        svc.metrics.flushers.set(1)  # summed over the live scheduler processes
        self.interval = interval
        self.outage = Outage(log, "database", base=interval, cap=MAX_BACKOFF)

    def __call__(self):
        """Flush what the outbox holds; False while the database is down.

        That is, after a failed try, or while waiting out the backoff before the next."""
        moved = self.outage.attempt(
            # stop after a while so that the other jobs and the leader lease keep their turn
            lambda: self.flusher.flush(until=time.monotonic() + 5 * self.interval + 1), SQLAlchemyError,
            lambda e: f"database unreachable, outbox entries wait in Redis: {e.__class__.__name__}")
        return moved is not None  # its rows counted a round at a time (metrics.record_flush_round)
