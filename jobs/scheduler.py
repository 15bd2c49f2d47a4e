"""The scheduler process: one APScheduler BlockingScheduler running the jobs.

Several may run (one per host, say). Each flushes the outbox (the consumer group shares the entries
among them); the jobs that must run once (stock sync, lifecycle, reclaim, and with EVENTS_URL the
events) run on the leader only: a leader lease in Redis lets exactly one act at a time. The others
stand by for those and take over within one lease period after the leader dies.
"""
import datetime as dt
import logging
import os
import signal
import socket
import time
import uuid

from apscheduler.schedulers.blocking import BlockingScheduler
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError

from coupon import events
from coupon.extensions import services
from coupon.keys import SCHEDULER_LEADER
from coupon.scraped import record_job_success
from jobs.events import EventsJob
from jobs.flush import FlushJob
from jobs.lifecycle import LifecycleJob
from jobs.reclaim import ReclaimJob
from jobs.stock_sync import StockSyncJob

log = logging.getLogger(__name__)


class LeaderLease:
    def __init__(self, scripts, ttl):
        self.scripts = scripts
        self.ttl = ttl
        self.ident = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.valid_until = 0.0  # monotonic; acting after it could overlap the next leader

    def keep(self):
        """Take the lease if it is free, renew it if it is ours."""
        sent = time.monotonic()
        try:
            leads = self.scripts.lead(SCHEDULER_LEADER, self.ident, int(self.ttl * 1000))
        except RedisError as e:
            log.warning("cannot reach Redis to keep the leader lease: %s", e)
            return
        was_leader = self.leads()
        self.valid_until = sent + self.ttl * 0.8 if leads else 0.0
        if leads and not was_leader:
            log.info("scheduler %s leads", self.ident)
        elif was_leader and not leads:
            log.warning("scheduler %s lost the lead", self.ident)

    def leads(self):
        return time.monotonic() < self.valid_until

    def resign(self):
        self.valid_until = 0.0
        try:
            self.scripts.resign(SCHEDULER_LEADER, self.ident)
        except RedisError:
            pass


def run_scheduler(app):
    """Run the jobs until SIGTERM or Ctrl-C."""
    svc = services(app)
    config = svc.config
    lease = LeaderLease(svc.scripts, config["SCHEDULER_LEASE"])
    # it logs each job added before the start and every run at INFO, and a skipped overlapping
    # run (a long flush) at WARNING
    logging.getLogger("apscheduler").setLevel(logging.ERROR)
    # pika logs each try to reach the broker, at ERROR when it fails, and each notice of an alarm:
    # the events job says so itself, once per outage
    logging.getLogger("pika").setLevel(logging.CRITICAL)
    scheduler = BlockingScheduler(
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 60}
    )

    def scheduled(name, job, everywhere=False):
        """The job, run only while this scheduler leads (everywhere: whether or not).

        A run fails when the job raises or returns False (the flush job while the database is
        down: it logs that itself); each failure is counted (coupon_job_failures_total), each
        success recorded in Redis for every host's /metrics
        (coupon_job_last_success_timestamp_seconds: the latest of any scheduler's, for the
        flush)."""
        failing = []  # the error of the current outage, logged once
        svc.metrics.job_failures.labels(name)  # 0 from the start, so that rate() sees the first

        def run():
            # a Redis that would lose claims, in production: idle until it is fixed (redis_guard)
            if not (everywhere or lease.leads()) or svc.redis_guard.verdict().refuses:
                return
            with app.app_context():
                try:
                    done = job()
                except (RedisError, SQLAlchemyError) as e:  # an outage: once, not every run
                    svc.metrics.record_job_failure(name)
                    if not failing:
                        log.error("job %s failed, retrying every run: %s", name, e.__class__.__name__)
                    failing[:] = [e]
                    return
                except Exception:  # a bug: log it in full, and try again at the next run
                    svc.metrics.record_job_failure(name)
                    log.exception("job %s failed", name)
                    return
            if done is False:
                svc.metrics.record_job_failure(name)
                return
            try:
                record_job_success(svc.redis, name)
            except RedisError:
                pass  # Redis went down just now: the next run fails, and says so
            if failing:
                log.warning("job %s works again", name)
                failing.clear()

        return run

    now = dt.datetime.now()
    scheduler.add_job(lease.keep, "interval", seconds=config["SCHEDULER_LEASE"] / 5,
                      next_run_time=now, id="leader")
    # each job's cost follows what moved, not how many campaigns are live (BENCHMARKS.md, "Many
    # campaigns at once, nobody asking")
    jobs = {
        "flush": (FlushJob(svc, config["FLUSH_INTERVAL"]), config["FLUSH_INTERVAL"]),
        "stock_sync": (StockSyncJob(svc), config["STOCK_SYNC_INTERVAL"]),
        "lifecycle": (LifecycleJob(svc), config["LIFECYCLE_INTERVAL"]),
        "reclaim": (ReclaimJob(svc, grace=2 * config["REDIS_TIMEOUT"]), config["RECLAIM_INTERVAL"]),
    }
    if events.enabled(config):
        jobs["events"] = (EventsJob(svc, config["EVENTS_INTERVAL"]), config["EVENTS_INTERVAL"])
    for name, (job, interval) in jobs.items():
        scheduler.add_job(scheduled(name, job, everywhere=name == "flush"), "interval",
                          seconds=interval, id=name, next_run_time=now + dt.timedelta(seconds=interval))

    def stop(signum, frame):
        # a service manager's TERM to the process group and `make run`'s own both arrive, the
        # second maybe while resigning below: stop once
        if scheduler.running:
            scheduler.shutdown(wait=False)

    signal.signal(signal.SIGTERM, stop)
    log.info("scheduler %s started; jobs: %s", lease.ident, ", ".join(jobs))
    svc.redis_guard.verdict()  # say at once what in Redis's settings would lose claims
    try:
        scheduler.start()
    except KeyboardInterrupt:
        pass
    finally:
        lease.resign()  # a standby takes over at once instead of after the lease
        if "events" in jobs:
            jobs["events"][0].close()
        log.info("scheduler %s stopped", lease.ident)
