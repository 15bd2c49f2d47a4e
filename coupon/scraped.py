"""The figures /metrics reads from Redis and the database when it is scraped.

They are the global ones (the same whichever host answers: outbox, stock, leases, lost campaigns,
the scheduler's leader and jobs, the events to publish) and this host's readiness. Each collector
reads at most once per SCRAPE_CACHE seconds per worker, a bounded number of commands whatever the
request rate. Redis or the database down fails no scrape: the figures read from it are absent
(coupon_ready says why). The jobs process records each job's last success in Redis
(record_job_success), which every host exports. This process's own counters are coupon/metrics.py's.
"""
import time

from prometheus_client.core import GaugeMetricFamily
from redis.exceptions import RedisError
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from coupon import db, events
from coupon.fairness import PLAIN_LEAD_MS, SaleOrder
from coupon.health import check_readiness
from coupon.keys import JOB_SUCCESS, SCHEDULER_LEADER, active_campaigns
from coupon.outbox import campaigns_with_news, outbox_stats
from coupon.redis_state import queue_holds, queue_issued, queue_total

SCRAPE_CACHE = 2.0  # seconds a scrape reuses the figures read from Redis or the database


def record_job_success(redis, name):
    """Note in Redis that the scheduler's job `name` has just succeeded.

    Every host's /metrics reads it. The scheduler host's clock: Prometheus compares it with its
    own."""
    redis.hset(JOB_SUCCESS, name, round(time.time(), 3))


class ScrapeCollector:
    """Figures read at scrape time by read(), at most once per SCRAPE_CACHE seconds.

    Absent (None) until the next read when Redis or the database failed (and not asked again
    before then: a Redis that hangs costs a scrape REDIS_TIMEOUT once per SCRAPE_CACHE, not every
    time)."""

    def __init__(self):
        self._read_at = float("-inf")
        self._figures = None

    def figures(self):
        if time.monotonic() - self._read_at > SCRAPE_CACHE:
            try:
                self._figures = self.read()
            except (RedisError, SQLAlchemyError):
                self._figures = None
            self._read_at = time.monotonic()
        return self._figures

    def read(self):
        raise NotImplementedError

    def collect(self):
        figures = self.figures()
        return [] if figures is None else self.families(figures)


class OutboxCollector(ScrapeCollector):
    """Outbox backlog and flush lag of the active campaigns.

    Per read: the registry, the outbox news sets, and a batch of 2 x CLAIM_SHARDS commands per
    campaign with claims to flush (the others have none: 0 and 0)."""

    def __init__(self, redis, keys, shards):
        super().__init__()
        self.redis = redis
        self.keys = keys  # campaign id -> CampaignKeys
        self.shards = shards

    def read(self):
        flushing = campaigns_with_news(self.redis, self.shards)
        return {c: outbox_stats(self.redis, self.keys(c)) if c in flushing else (0, 0.0)
                for c in active_campaigns(self.redis)}

    def families(self, figures):
        backlog = GaugeMetricFamily(
            "coupon_outbox_backlog", "Claims in Redis not yet in the database.", labels=["campaign_id"]
        )
        lag = GaugeMetricFamily(
            "coupon_flush_lag_seconds", "Age of the oldest claim not yet in the database.",
            labels=["campaign_id"],
        )
        for campaign_id, (entries, seconds) in figures.items():
            backlog.add_metric([str(campaign_id)], entries)
            lag.add_metric([str(campaign_id)], seconds)
        return [backlog, lag]


class EventsCollector(ScrapeCollector):
    """Events not yet confirmed by the broker, and the age of the oldest.

    Per read: a count and a first row of each event table (empty tables without EVENTS_URL)."""

    def __init__(self, engine):
        super().__init__()
        self.engine = engine

    def read(self):
        return events.pending(self.engine)

    def families(self, figures):
        count, age = figures
        return [GaugeMetricFamily("coupon_events_pending",
                                  "Events in the database not yet confirmed by the broker.", value=count),
                GaugeMetricFamily("coupon_events_lag_seconds",
                                  "Age of the oldest event not yet confirmed by the broker.", value=age)]


class ReadinessCollector(ScrapeCollector):
    """This host's readiness check by check (those of /readyz), and each Redis master's replicas.

    Per read: one INFO per master and one SELECT 1."""

    def __init__(self, svc):
        super().__init__()
        self.svc = svc

    def read(self):
        return check_readiness(self.svc)

    def families(self, figures):
        ready = GaugeMetricFamily(
            "coupon_ready", "1 if this host's readiness check passes (as /readyz), else 0.",
            labels=["check"])
        for check, state in figures.checks.items():
            ready.add_metric([check], 1 if state == "ok" else 0)
        replicas = GaugeMetricFamily(
            "coupon_redis_master_replicas", "Replicas keeping up with a Redis master.",
            labels=["master"])
        for master, n in figures.replicas.items():
            replicas.add_metric([master], n)
        required = GaugeMetricFamily(
            "coupon_redis_replicas_required",
            "Replicas each master needs to acknowledge a write (REDIS_REPLICA_ACKS).",
            value=self.svc.redis.replica_acks)
        return [ready, replicas, required]


class SchedulerCollector(ScrapeCollector):
    """Whether a scheduler leads and when each job last succeeded: two commands per read."""

    def __init__(self, redis):
        super().__init__()
        self.redis = redis

    def read(self):
        batch = self.redis.batch()
        batch.on(SCHEDULER_LEADER).exists(SCHEDULER_LEADER)
        batch.on(JOB_SUCCESS).hgetall(JOB_SUCCESS)
        return batch.execute()

    def families(self, figures):
        led, successes = figures
        leader = GaugeMetricFamily(
            "coupon_scheduler_leader", "1 if a scheduler (`flask jobs run`) holds the leader lease.",
            value=1 if led else 0)
        success = GaugeMetricFamily(
            "coupon_job_last_success_timestamp_seconds",
            "When a scheduled job last succeeded (epoch seconds, the scheduler host's clock).",
            labels=["name"])
        for name, at in sorted(successes.items()):
            success.add_metric([name], float(at))
        return [leader, success]


class CampaignsCollector(ScrapeCollector):
    """Stock, leases and order of the active campaigns.

    Per read: the registry, each node's clock, and one batch of 4 + CLAIM_SHARDS commands per
    campaign."""

    def __init__(self, svc):
        super().__init__()
        self.redis = svc.redis
        self.keys = svc.keys
        # the reclaim job settles leases expired more than 2 x REDIS_TIMEOUT ago (jobs/scheduler.py)
        # every RECLAIM_INTERVAL: one expired longer than both it has missed
        config = svc.config
        self.grace_ms = int((2 * config["REDIS_TIMEOUT"] + config["RECLAIM_INTERVAL"]) * 1000)

    def read(self):
        campaigns = [self.keys(c) for c in active_campaigns(self.redis)]
        clocks = {}  # node -> its clock (epoch ms), what lease.lua stamped the expiries with
        batch, reads = self.redis.batch(), []
        for keys in campaigns:
            node = self.redis.client_for(keys.leases)
            if node not in clocks:
                clocks[node] = self.redis.time_at(keys.leases)
            reads.append((keys, queue_total(batch, keys), queue_issued(batch, keys),
                          batch.on(keys.leases).zcard(keys.leases),
                          batch.on(keys.leases).zcount(keys.leases, "-inf", clocks[node] - self.grace_ms),
                          batch.on(keys.arrivals).hgetall(keys.arrivals)))
        batch.execute()
        figures = {}
        for keys, total, issued, leases, expired, arrivals in reads:
            if total.get() is not None:  # else released (closed) since the registry was read
                order = SaleOrder.of_fields(arrivals.get())
                figures[keys.campaign_id] = (int(total.get()), issued(), leases.get(), expired.get(),
                                             order.refused_ahead, order.refused_plainly)
        return figures

    def families(self, figures):
        labels = ["campaign_id"]
        total = GaugeMetricFamily("coupon_campaign_total", "Coupons of an active campaign.",
                                  labels=labels)
        issued = GaugeMetricFamily("coupon_campaign_issued",
                                   "Coupons of an active campaign issued so far (from Redis).",
                                   labels=labels)
        leases = GaugeMetricFamily("coupon_leases", "Leases of serials standing in Redis.",
                                   labels=labels)
        expired = GaugeMetricFamily(
            "coupon_leases_expired", "Leases expired longer ago than the reclaim job should take "
            "to give their serials back (2 x REDIS_TIMEOUT + RECLAIM_INTERVAL).", labels=labels)
        ahead = GaugeMetricFamily(
            "coupon_campaign_refused_ahead", "Issue requests of an active campaign refused "
            "SOLD_OUT although they arrived before its latest winning request (the service's "
            "arrival stamps; first come, first served: 0).", labels=labels)
        plainly = GaugeMetricFamily(
            "coupon_campaign_refused_ahead_plainly", f"Of those, the ones that arrived "
            f"{PLAIN_LEAD_MS} ms or more before it.", labels=labels)
        families = (total, issued, leases, expired, ahead, plainly)
        for campaign_id, figure in figures.items():
            for family, value in zip(families, figure):
                family.add_metric([str(campaign_id)], value)
        return list(families)


class LostCampaignsCollector(ScrapeCollector):
    """Whether Redis holds each campaign the database has not closed.

    Those it lost answer CAMPAIGN_LOST. Per read: one SELECT of their ids and one EXISTS per
    campaign."""

    def __init__(self, svc):
        super().__init__()
        self.svc = svc

    def read(self):
        with self.svc.engine.connect() as conn:
            ids = conn.execute(select(db.campaigns.c.id).where(db.campaigns.c.status != "closed")
                               .order_by(db.campaigns.c.id)).scalars().all()
        batch = self.svc.redis.batch()
        held = {campaign_id: queue_holds(batch, self.svc.keys(campaign_id)) for campaign_id in ids}
        if ids:
            batch.execute()
        return {campaign_id: reply.get() for campaign_id, reply in held.items()}

    def families(self, figures):
        lost = GaugeMetricFamily(
            "coupon_campaign_lost", "1 if Redis no longer holds a campaign the database has not "
            "closed (`flask campaign recover` it), else 0.", labels=["campaign_id"])
        for campaign_id, held in figures.items():
            lost.add_metric([str(campaign_id)], 0 if held else 1)
        return [lost]
