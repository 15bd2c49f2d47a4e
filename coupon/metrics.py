"""Prometheus metrics: what operators watch during a sale or a load test.

Under gunicorn each worker writes its values to files in PROMETHEUS_MULTIPROC_DIR (set up by
gunicorn.conf.py) and /metrics sums them over the workers; without that variable (tests,
`flask run`) they live in this process. On the hot path a request only appends its outcome and
duration to a queue, never writes a file nor calls Redis: the queue is counted in bulk (one
write per outcome) whenever the worker has no issue request in progress, at least every
FLUSH_EVERY seconds under load, and before each scrape.

The global figures (the same whichever host answers: outbox, stock, leases, lost campaigns, the
scheduler's leader and jobs, the events to publish) and this host's readiness are read from
Redis and the database when /metrics is scraped, at most once per SCRAPE_CACHE seconds per
worker, a bounded number of commands whatever the request rate. Redis or the database down
fails no scrape: the figures read from it are absent (coupon_ready says why).

The jobs process calls record_flushed(n), record_events_published(n) and record_job_failure(name);
those figures show in the web's /metrics when it runs with the same PROMETHEUS_MULTIPROC_DIR (the
files of live processes survive a gunicorn restart). It records each job's last success in Redis
(record_job_success; the leader, or for the flush any scheduler), which every host exports.
"""
import os
import threading
import time
from collections import deque

from prometheus_client import (
    CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest,
)
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
FLUSH_EVERY = 0.25  # seconds answers may wait to be counted while requests are in progress
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
# where an issue request's time goes (IssueParts): waiting to be read (from its arrival stamp:
# the kernel's, or a trusted front proxy's X-Request-Start), for its turn (ARRIVAL_ORDER), the
# admission (the campaign's state), the token check, waiting for a serial (a refill), the claim
# round trip (shared by the batch it went in)
ISSUE_PARTS = ("queued", "turn", "admit", "token", "serial", "claim")
FLUSH_PARTS = ("read", "write", "ack")  # a flush round: the outbox read, the database, the ack
LOOP_LAG_TICK = 0.05  # seconds the loop-lag watch sleeps: how late it wakes is the lag


class IssueParts:
    """Seconds one issue request spent in each of ISSUE_PARTS, filled in as it goes (a part it
    never reached stays at the class's 0.0: most answers, sold out, reach one or two)."""

    queued = turn = admit = token = serial = claim = 0.0


class Metrics:
    """The service's metrics, one instance per process (app.extensions["coupon"].metrics)."""

    def __init__(self):
        self.multiprocess_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if self.multiprocess_dir:  # in that mode each metric below opens a file there
            os.makedirs(self.multiprocess_dir, exist_ok=True)
        # registry=None: in multiprocess mode the files are what /metrics reads; else the
        # registry of /metrics below, not the process-wide default one
        self.issues = Counter(
            "coupon_issue", "Issue requests by outcome: NEW (201), HELD (200) or the error code.",
            ["outcome"], registry=None)
        self.issue_seconds = Histogram(
            "coupon_issue_duration_seconds", "Time to answer an issue request, in the worker.",
            buckets=LATENCY_BUCKETS, registry=None)
        self.block = Gauge(
            "coupon_local_block_serials", "Serials left in the workers' local blocks.",
            ["campaign_id"], multiprocess_mode="livesum", registry=None)
        self.flushed = Counter("coupon_flushed", "Claims the flush job wrote to the database.",
                               registry=None)
        self.events_published = Counter(
            "coupon_events_published", "Events the broker confirmed to the events job.", registry=None)
        # where the time goes: summed here, divided by the requests (or rounds) in PromQL
        self.issue_part_seconds = Counter(
            "coupon_issue_part_seconds", "Seconds issue requests spent in each part: queued (from "
            "the arrival stamp), turn, admit, token, serial (waiting for one), claim (round trip).",
            ["part"], registry=None)
        self.claim_round_trips = Counter(
            "coupon_claim_round_trips", "Claim batches sent to Redis, one round trip each.",
            registry=None)
        self.claims_sent = Counter(
            "coupon_claims_sent", "Claims those batches carried.", registry=None)
        self.loop_lag = Gauge(
            "coupon_event_loop_lag_seconds", "How late a worker's event loop ran a timer, the most "
            "in the last second (the worst worker's).", multiprocess_mode="livemax", registry=None)
        self.flush_part_seconds = Counter(
            "coupon_flush_part_seconds", "Seconds flush rounds spent reading the outbox, writing "
            "to the database (committed) and acknowledging.", ["part"], registry=None)
        self.flush_rounds = Counter("coupon_flush_rounds", "Flush rounds that moved rows.",
                                    registry=None)
        self.flushers = Gauge("coupon_flushers", "Scheduler processes that flush (every one).",
                              multiprocess_mode="livesum", registry=None)
        # "name", not "job": Prometheus gives every series of a target a "job" label of its own
        self.job_failures = Counter(
            "coupon_job_failures", "Runs of a scheduled job that did not succeed, in this host's "
            "scheduler.", ["name"], registry=None)
        # In multiprocess mode every inc/observe takes a lock, calls getpid() and writes a file:
        # ~3 us each. So requests only queue (outcome, seconds); deque and list appends and pops
        # are atomic, so this holds under threads as well as greenlets.
        self._outcomes = {}  # code -> counter child, resolved once: .labels() takes a lock
        self._parts = {part: self.issue_part_seconds.labels(part) for part in ISSUE_PARTS}
        self._answers = deque()
        self._claim_batches = deque()  # claims per round trip, counted with the answers
        self._requests_in_progress = []  # one entry per issue request in progress
        self._counted_at = 0.0
        self._registry = None
        self._totals_registry = None

    def record_flushed(self, n):
        """Count n claims moved from the outbox into the database (called by the flush job)."""
        if n:
            self.flushed.inc(n)

    def record_events_published(self, n):
        """Count n events the broker confirmed (called by the events job)."""
        if n:
            self.events_published.inc(n)

    def record_flush_round(self, seconds):
        """Count a flush round that moved rows: {part: seconds} of FLUSH_PARTS (the flush job)."""
        self.flush_rounds.inc()
        for part, spent in seconds.items():
            self.flush_part_seconds.labels(part).inc(spent)

    def record_job_failure(self, name):
        """Count a run of the scheduler's job `name` that did not succeed."""
        self.job_failures.labels(name).inc()

    def block_gauge(self, campaign_id):
        """The gauge child of one campaign's local block (its serial supply keeps it up to date)."""
        return self.block.labels(str(campaign_id))

    def issue_started(self):
        """Note an issue request in progress; return its start, for issue_answered."""
        self._requests_in_progress.append(None)
        return time.perf_counter()

    def issue_answered(self, code, started, parts):
        """Count an issue request's outcome (NEW, HELD or an error code), its duration and where
        it went (IssueParts)."""
        self._answers.append((code, time.perf_counter() - started, parts))
        self._requests_in_progress.pop()
        # idle: count now, so a scrape of any worker sees every answer already given
        if not self._requests_in_progress or time.monotonic() - self._counted_at > FLUSH_EVERY:
            self.count_answers()

    def count_answers(self):
        """Count the queued answers: one write per outcome, one observation per answer."""
        self._counted_at = time.monotonic()
        counts, spent = {}, dict.fromkeys(ISSUE_PARTS, 0.0)
        for _ in range(len(self._answers)):
            code, seconds, parts = self._answers.popleft()
            counts[code] = counts.get(code, 0) + 1
            self.issue_seconds.observe(seconds)
            for part, seconds in vars(parts).items():  # the parts it reached
                spent[part] += seconds
        for code, n in counts.items():
            child = self._outcomes.get(code)
            if child is None:
                child = self._outcomes[code] = self.issues.labels(code)
            child.inc(n)
        for part, seconds in spent.items():
            if seconds:
                self._parts[part].inc(seconds)
        batches = [self._claim_batches.popleft() for _ in range(len(self._claim_batches))]
        if batches:
            self.claim_round_trips.inc(len(batches))
            self.claims_sent.inc(sum(batches))

    def claim_batch_sent(self, claims):
        """Note a claim round trip that carried `claims` claims (claims.ClaimBatcher)."""
        self._claim_batches.append(claims)

    def watch_loop_lag(self):
        """In a worker: note every second the most its event loop was late to wake a timer
        (a greenlet of its own; a thread outside gevent)."""
        def watch():
            worst, since = 0.0, time.monotonic()
            while True:
                slept = time.perf_counter()
                time.sleep(LOOP_LAG_TICK)
                worst = max(worst, time.perf_counter() - slept - LOOP_LAG_TICK)
                if time.monotonic() - since >= 1.0:
                    self.loop_lag.set(worst)
                    worst, since = 0.0, time.monotonic()
        threading.Thread(target=watch, daemon=True, name="loop-lag").start()

    def _host_registry(self):
        """A registry of this host's values: every worker's (from their files), or this process's."""
        registry = CollectorRegistry()
        if self.multiprocess_dir:
            from prometheus_client import multiprocess

            multiprocess.MultiProcessCollector(registry)
        else:
            for collector in (self.issues, self.issue_seconds, self.block, self.flushed,
                              self.events_published, self.job_failures, self.issue_part_seconds,
                              self.claim_round_trips, self.claims_sent, self.loop_lag,
                              self.flush_part_seconds, self.flush_rounds, self.flushers):
                registry.register(collector)
        return registry

    def scrape(self, svc):
        """(text, content type) of /metrics, with every answer given so far counted."""
        if self._registry is None:  # built on the first scrape
            self._registry = self._host_registry()
            outbox = OutboxCollector(svc.redis, svc.keys, svc.config["CLAIM_SHARDS"])
            for collector in (outbox, ReadinessCollector(svc), SchedulerCollector(svc.redis),
                              CampaignsCollector(svc), LostCampaignsCollector(svc),
                              EventsCollector(svc.engine)):
                self._registry.register(collector)
        self.count_answers()
        return generate_latest(self._registry), CONTENT_TYPE_LATEST

    def totals(self):
        """This host's counters so far, for the operators' page (which turns them into rates):
        {"answers": {outcome: n}, "latency_buckets": [[bound in s, answers at most that slow]],
        "flushed": n, "block_serials": {campaign id: serials in local blocks},
        "time": where the time goes: {"issue": {part: seconds}, "claim_round_trips": n,
        "claims_sent": n, "loop_lag_seconds": the worst worker's, "flush": {part: seconds},
        "flush_rounds": n, "flushers": n}}."""
        if self._totals_registry is None:
            self._totals_registry = self._host_registry()
        self.count_answers()
        answers, buckets, flushed, block = {}, {}, 0, {}
        spent = {"issue": dict.fromkeys(ISSUE_PARTS, 0.0), "flush": dict.fromkeys(FLUSH_PARTS, 0.0),
                 "claim_round_trips": 0, "claims_sent": 0, "loop_lag_seconds": 0.0,
                 "flush_rounds": 0, "flushers": 0}
        sums = {"coupon_claim_round_trips_total": "claim_round_trips",
                "coupon_claims_sent_total": "claims_sent", "coupon_flush_rounds_total": "flush_rounds",
                "coupon_flushers": "flushers"}
        for family in self._totals_registry.collect():
            for s in family.samples:
                if s.name == "coupon_issue_part_seconds_total":
                    spent["issue"][s.labels["part"]] += s.value
                elif s.name == "coupon_flush_part_seconds_total":
                    spent["flush"][s.labels["part"]] += s.value
                elif s.name in sums:
                    spent[sums[s.name]] += int(s.value)
                elif s.name == "coupon_event_loop_lag_seconds":
                    spent["loop_lag_seconds"] = max(spent["loop_lag_seconds"], s.value)
                elif s.name == "coupon_issue_total":
                    answers[s.labels["outcome"]] = answers.get(s.labels["outcome"], 0) + int(s.value)
                elif s.name == "coupon_issue_duration_seconds_bucket":
                    bound = float(s.labels["le"])
                    buckets[bound] = buckets.get(bound, 0) + int(s.value)
                elif s.name == "coupon_flushed_total":
                    flushed += int(s.value)
                elif s.name == "coupon_local_block_serials":
                    campaign = s.labels["campaign_id"]
                    block[campaign] = block.get(campaign, 0) + int(s.value)
        return {"answers": answers, "flushed": flushed, "block_serials": block, "time": spent,
                # JSON has no infinity: the last bucket (+Inf) as null
                "latency_buckets": [[None if b == float("inf") else b, n]
                                    for b, n in sorted(buckets.items())]}


def record_job_success(redis, name):
    """Note in Redis that the scheduler's job `name` has just succeeded (read by every host's
    /metrics). The scheduler host's clock: Prometheus compares it with its own."""
    redis.hset(JOB_SUCCESS, name, round(time.time(), 3))


class ScrapeCollector:
    """Figures read at scrape time by read(), at most once per SCRAPE_CACHE seconds; absent
    (None) until the next read when Redis or the database failed (and not asked again before
    then: a Redis that hangs costs a scrape REDIS_TIMEOUT once per SCRAPE_CACHE, not every time)."""

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
    """Outbox backlog and flush lag of the active campaigns: per read, the registry, the outbox
    news sets, and a batch of 2 x CLAIM_SHARDS commands per campaign with claims to flush (the
    others have none: 0 and 0)."""

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
    """Events not yet confirmed by the broker, and the age of the oldest: a count and a first row
    of each event table per read (empty tables without EVENTS_URL)."""

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
    """This host's readiness check by check (those of /readyz), and each Redis master's replicas:
    one INFO per master and one SELECT 1 per read."""

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
    """Stock, leases and order of the active campaigns: per read, the registry, each node's
    clock, and one batch of 4 + CLAIM_SHARDS commands per campaign."""

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
    """Whether Redis holds each campaign the database has not closed (those it lost answer
    CAMPAIGN_LOST): per read, one SELECT of their ids and one EXISTS per campaign."""

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
