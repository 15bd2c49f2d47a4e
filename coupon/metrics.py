"""Prometheus metrics: what operators watch during a sale or a load test.

Under gunicorn each worker writes its values to files in PROMETHEUS_MULTIPROC_DIR (set up by
config/gunicorn.conf.py) and /metrics sums them over the workers; without that variable (tests,
`flask run`) they live in this process. On the hot path a request only appends its outcome and
duration to a queue, never writes a file nor calls Redis: the queue is counted in bulk (one
write per outcome and bucket) whenever the worker has no issue request in progress, at least
every FLUSH_EVERY seconds under load, and before each scrape. The outbox backlog and flush lag
are read from Redis when /metrics is scraped, at most once per OUTBOX_CACHE seconds per worker.

The jobs process calls record_flushed(n); its figure shows in the web's /metrics when it runs with
the same PROMETHEUS_MULTIPROC_DIR (the files of live processes survive a gunicorn restart).
"""
import os
import time
from bisect import bisect_left
from collections import deque

from flask import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from redis.exceptions import RedisError

from coupon.keys import ACTIVE, CampaignKeys

OUTBOX_CACHE = 2.0  # seconds a scrape reuses the outbox figures read from Redis
FLUSH_EVERY = 0.25  # seconds answers may wait to be counted while requests are in progress

if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # in that mode each metric below opens a file there
    os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)

ISSUES = Counter(
    "coupon_issue", "Issue requests by outcome: NEW (201), HELD (200) or the error code.", ["outcome"]
)
ISSUE_SECONDS = Histogram(
    "coupon_issue_duration_seconds", "Time to answer an issue request, in the worker.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
BLOCK = Gauge(
    "coupon_local_block_serials", "Serials left in the workers' local blocks.", ["campaign_id"],
    multiprocess_mode="livesum",
)
FLUSHED = Counter("coupon_flushed", "Claims the flush job wrote to the database.")

_OUTCOMES = {}  # code -> ISSUES child, resolved once: .labels() takes a lock and a dict lookup

# In multiprocess mode every inc/observe takes a lock, calls getpid() and writes a file: ~3 us
# each, three per request. So requests only queue (outcome child, seconds); deque and list
# appends and pops are atomic, so this holds under threads as well as greenlets.
_pending = deque()
_busy = []  # one entry per issue request in progress in this process
_flushed_at = [0.0]


def record_flushed(n):
    """Count n claims moved from the outbox into the database (called by the flush job)."""
    if n:
        FLUSHED.inc(n)


def block_gauge(campaign_id):
    """The gauge child of one campaign's local block (the issuer keeps it up to date)."""
    return BLOCK.labels(str(campaign_id))


def _outcome(code):
    child = _OUTCOMES.get(code)
    if child is None:
        child = _OUTCOMES[code] = ISSUES.labels(code)
    return child


def issue_started():
    """Note an issue request in progress; return its start, for issue_answered."""
    _busy.append(None)
    return time.perf_counter()


def issue_answered(code, started):
    """Count an issue request's outcome (NEW, HELD or an error code) and its duration."""
    _pending.append((_outcome(code), time.perf_counter() - started))
    _busy.pop()
    # idle: count now, so a scrape of any worker sees every answer already given
    if not _busy or time.monotonic() - _flushed_at[0] > FLUSH_EVERY:
        flush()


def flush():
    """Count the queued answers: one write per outcome and per latency bucket."""
    _flushed_at[0] = time.monotonic()
    counts, buckets, total = {}, {}, 0.0
    bounds = ISSUE_SECONDS._upper_bounds  # the histogram's own buckets, +Inf last
    for _ in range(len(_pending)):
        child, seconds = _pending.popleft()
        counts[child] = counts.get(child, 0) + 1
        i = bisect_left(bounds, seconds)  # the first bucket with seconds <= bound, as observe()
        buckets[i] = buckets.get(i, 0) + 1
        total += seconds
    for child, n in counts.items():
        child.inc(n)
    if buckets:  # observe() in bulk: prometheus-client's own _sum and _buckets values (pinned)
        ISSUE_SECONDS._sum.inc(total)
        for i, n in buckets.items():
            ISSUE_SECONDS._buckets[i].inc(n)


class OutboxCollector:
    """Outbox backlog and flush lag of the active campaigns, read from Redis at scrape time."""

    def __init__(self, redis, shards):
        self.redis = redis
        self.shards = shards
        self._cached_at = float("-inf")
        self._figures = {}

    def figures(self):
        if time.monotonic() - self._cached_at > OUTBOX_CACHE:
            from coupon.outbox import outbox_stats  # the flush job's own measure

            figures = {}
            try:
                for campaign_id in sorted(int(c) for c in self.redis.smembers(ACTIVE)):
                    figures[campaign_id] = outbox_stats(self.redis, CampaignKeys(campaign_id, self.shards))
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


def make_registry(redis, shards):
    """The registry /metrics serves: every worker's values (or this process's), and the outbox."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = CollectorRegistry()
        for collector in (ISSUES, ISSUE_SECONDS, BLOCK, FLUSHED):
            registry.register(collector)
    registry.register(OutboxCollector(redis, shards))
    return registry


def metrics_response(registry):
    flush()
    return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
