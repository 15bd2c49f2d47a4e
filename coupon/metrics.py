"""Prometheus metrics: what operators watch during a sale or a load test.

Under gunicorn each worker writes its values to files in PROMETHEUS_MULTIPROC_DIR (set up by
gunicorn.conf.py) and /metrics sums them over the workers; without that variable (tests,
`flask run`) they live in this process. On the hot path a request only appends its outcome and
duration to a queue, never writes a file nor calls Redis: the queue is counted in bulk (one
write per outcome) whenever the worker has no issue request in progress, at least every
FLUSH_EVERY seconds under load, and before each scrape. The outbox backlog and flush lag are
read from Redis when /metrics is scraped, at most once per OUTBOX_CACHE seconds per worker.

The jobs process calls record_flushed(n); its figure shows in the web's /metrics when it runs with
the same PROMETHEUS_MULTIPROC_DIR (the files of live processes survive a gunicorn restart).
"""
import os
import time
from collections import deque

from prometheus_client import (
    CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from redis.exceptions import RedisError

from coupon.keys import active_campaigns
from coupon.outbox import outbox_stats

OUTBOX_CACHE = 2.0  # seconds a scrape reuses the outbox figures read from Redis
FLUSH_EVERY = 0.25  # seconds answers may wait to be counted while requests are in progress
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


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
        # In multiprocess mode every inc/observe takes a lock, calls getpid() and writes a file:
        # ~3 us each. So requests only queue (outcome, seconds); deque and list appends and pops
        # are atomic, so this holds under threads as well as greenlets.
        self._outcomes = {}  # code -> counter child, resolved once: .labels() takes a lock
        self._answers = deque()
        self._requests_in_progress = []  # one entry per issue request in progress
        self._counted_at = 0.0
        self._registry = None
        self._totals_registry = None

    def record_flushed(self, n):
        """Count n claims moved from the outbox into the database (called by the flush job)."""
        if n:
            self.flushed.inc(n)

    def block_gauge(self, campaign_id):
        """The gauge child of one campaign's local block (its serial supply keeps it up to date)."""
        return self.block.labels(str(campaign_id))

    def issue_started(self):
        """Note an issue request in progress; return its start, for issue_answered."""
        self._requests_in_progress.append(None)
        return time.perf_counter()

    def issue_answered(self, code, started):
        """Count an issue request's outcome (NEW, HELD or an error code) and its duration."""
        self._answers.append((code, time.perf_counter() - started))
        self._requests_in_progress.pop()
        # idle: count now, so a scrape of any worker sees every answer already given
        if not self._requests_in_progress or time.monotonic() - self._counted_at > FLUSH_EVERY:
            self.count_answers()

    def count_answers(self):
        """Count the queued answers: one write per outcome, one observation per answer."""
        self._counted_at = time.monotonic()
        counts = {}
        for _ in range(len(self._answers)):
            code, seconds = self._answers.popleft()
            counts[code] = counts.get(code, 0) + 1
            self.issue_seconds.observe(seconds)
        for code, n in counts.items():
            child = self._outcomes.get(code)
            if child is None:
                child = self._outcomes[code] = self.issues.labels(code)
            child.inc(n)

    def _host_registry(self):
        """A registry of this host's values: every worker's (from their files), or this process's."""
        registry = CollectorRegistry()
        if self.multiprocess_dir:
            from prometheus_client import multiprocess

            multiprocess.MultiProcessCollector(registry)
        else:
            for collector in (self.issues, self.issue_seconds, self.block, self.flushed):
                registry.register(collector)
        return registry

    def scrape(self, redis, keys):
        """(text, content type) of /metrics, with every answer given so far counted."""
        if self._registry is None:  # built on the first scrape
            self._registry = self._host_registry()
            self._registry.register(OutboxCollector(redis, keys))
        self.count_answers()
        return generate_latest(self._registry), CONTENT_TYPE_LATEST

    def totals(self):
        """This host's counters so far, for the operators' page (which turns them into rates):
        {"answers": {outcome: n}, "latency_buckets": [[bound in s, answers at most that slow]],
        "flushed": n, "block_serials": {campaign id: serials in local blocks}}."""
        if self._totals_registry is None:
            self._totals_registry = self._host_registry()
        self.count_answers()
        answers, buckets, flushed, block = {}, {}, 0, {}
        for family in self._totals_registry.collect():
            for s in family.samples:
                if s.name == "coupon_issue_total":
                    answers[s.labels["outcome"]] = answers.get(s.labels["outcome"], 0) + int(s.value)
                elif s.name == "coupon_issue_duration_seconds_bucket":
                    bound = float(s.labels["le"])
                    buckets[bound] = buckets.get(bound, 0) + int(s.value)
                elif s.name == "coupon_flushed_total":
                    flushed += int(s.value)
                elif s.name == "coupon_local_block_serials":
                    campaign = s.labels["campaign_id"]
                    block[campaign] = block.get(campaign, 0) + int(s.value)
        return {"answers": answers, "flushed": flushed, "block_serials": block,
                # JSON has no infinity: the last bucket (+Inf) as null
                "latency_buckets": [[None if b == float("inf") else b, n]
                                    for b, n in sorted(buckets.items())]}


class OutboxCollector:
    """Outbox backlog and flush lag of the active campaigns, read from Redis at scrape time."""

    def __init__(self, redis, keys):
        self.redis = redis
        self.keys = keys  # campaign id -> CampaignKeys
        self._cached_at = float("-inf")
        self._figures = {}

    def figures(self):
        if time.monotonic() - self._cached_at > OUTBOX_CACHE:
            figures = {}
            try:
                for campaign_id in active_campaigns(self.redis):
                    figures[campaign_id] = outbox_stats(self.redis, self.keys(campaign_id))
            except RedisError:
                return self._figures  # the last known figures; Redis being down shows elsewhere
            self._figures, self._cached_at = figures, time.monotonic()
        return self._figures

    def collect(self):
        backlog = GaugeMetricFamily(
            "coupon_outbox_backlog", "Claims in Redis not yet in the database.", labels=["campaign_id"]
        )
        lag = GaugeMetricFamily(
            "coupon_flush_lag_seconds", "Age of the oldest claim not yet in the database.",
            labels=["campaign_id"],
        )
        for campaign_id, (entries, seconds) in self.figures().items():
            backlog.add_metric([str(campaign_id)], entries)
            lag.add_metric([str(campaign_id)], seconds)
        return [backlog, lag]
