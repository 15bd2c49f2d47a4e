"""Prometheus metrics: what operators watch during a sale or a load test.

Under gunicorn each worker writes its values to files in PROMETHEUS_MULTIPROC_DIR (set up by
gunicorn.conf.py) and /metrics sums them over the workers; without that variable (tests,
`flask run`) they live in this process. On the hot path a request only appends its outcome and
duration to a queue, never writes a file nor calls Redis: the queue is counted in bulk (one
write per outcome) whenever the worker has no issue request in progress, at least every
FLUSH_EVERY seconds under load, and before each scrape.

The global figures and this host's readiness, read from Redis and the database at scrape time,
are coupon/scraped.py's. In the jobs process, each flusher calls record_flush_round(...) a round
at a time, and the jobs record_events_published(n) and record_job_failure(name); those figures
show in the web's /metrics when it runs with the same PROMETHEUS_MULTIPROC_DIR (the files of live
processes survive a gunicorn restart).
"""
import os
import threading
import time
from collections import deque

from prometheus_client import (
    CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest,
)

from coupon.scraped import (
    CampaignsCollector, EventsCollector, LostCampaignsCollector, OutboxCollector,
    ReadinessCollector, SchedulerCollector,
)

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
    """Seconds one issue request spent in each of ISSUE_PARTS, filled in as it goes.

    A part it never reached stays at the class's 0.0: most answers, sold out, reach one or two."""

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
        # the flush's figures by flusher (its consumer name: one per scheduler process, and a
        # close's drain): each one's own rows/s and batch time, and summed, the whole flush's
        self.flushed = Counter("coupon_flushed", "Claims flushers wrote to the database, by flusher.",
                               ["flusher"], registry=None)
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
            "to the database (committed) and acknowledging, by flusher.", ["part", "flusher"],
            registry=None)
        self.flush_rounds = Counter("coupon_flush_rounds", "Flush rounds that moved rows, by flusher.",
                                    ["flusher"], registry=None)
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

    def record_events_published(self, n):
        """Count n events the broker confirmed (called by the events job)."""
        if n:
            self.events_published.inc(n)

    def record_flush_round(self, flusher, seconds, rows):
        """Count a flush round of `flusher` that moved `rows` claims: {part: seconds} of FLUSH_PARTS.

        Rows are those it acknowledged (each claim counted once, whichever flusher wrote it)."""
        self.flush_rounds.labels(flusher).inc()
        if rows:
            self.flushed.labels(flusher).inc(rows)
        for part, spent in seconds.items():
            self.flush_part_seconds.labels(part, flusher).inc(spent)

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
        """Count an issue request's outcome, its duration and where it went.

        The outcome is NEW, HELD or an error code; where it went is its IssueParts."""
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
        """In a worker: note every second the most its event loop was late to wake a timer.

        The watch runs in a greenlet of its own (a thread outside gevent)."""
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
        """This host's counters so far, for the operators' page (which turns them into rates).

        {"answers": {outcome: n}, "latency_buckets": [[bound in s, answers at most that slow]],
        "flushed": n, "block_serials": {campaign id: serials in local blocks},
        "time": where the time goes: {"issue": {part: seconds}, "claim_round_trips": n,
        "claims_sent": n, "loop_lag_seconds": the worst worker's, "flush": {part: seconds},
        "flush_rounds": n, "flushers": n, "by_flusher": {flusher: {"rows": n, "rounds": n,
        "seconds": its rounds' time}}}}."""
        if self._totals_registry is None:
            self._totals_registry = self._host_registry()
        self.count_answers()
        answers, buckets, flushed, block = {}, {}, 0, {}
        spent = {"issue": dict.fromkeys(ISSUE_PARTS, 0.0), "flush": dict.fromkeys(FLUSH_PARTS, 0.0),
                 "claim_round_trips": 0, "claims_sent": 0, "loop_lag_seconds": 0.0,
                 "flush_rounds": 0, "flushers": 0, "by_flusher": {}}
        sums = {"coupon_claim_round_trips_total": "claim_round_trips",
                "coupon_claims_sent_total": "claims_sent", "coupon_flushers": "flushers"}

        def of_flusher(sample):
            return spent["by_flusher"].setdefault(sample.labels["flusher"],
                                                  {"rows": 0, "rounds": 0, "seconds": 0.0})

        for family in self._totals_registry.collect():
            for s in family.samples:
                if s.name == "coupon_issue_part_seconds_total":
                    spent["issue"][s.labels["part"]] += s.value
                elif s.name == "coupon_flush_part_seconds_total":
                    spent["flush"][s.labels["part"]] += s.value
                    of_flusher(s)["seconds"] += s.value
                elif s.name == "coupon_flush_rounds_total":
                    spent["flush_rounds"] += int(s.value)
                    of_flusher(s)["rounds"] += int(s.value)
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
                    of_flusher(s)["rows"] += int(s.value)
                elif s.name == "coupon_local_block_serials":
                    campaign = s.labels["campaign_id"]
                    block[campaign] = block.get(campaign, 0) + int(s.value)
        return {"answers": answers, "flushed": flushed, "block_serials": block, "time": spent,
                # JSON has no infinity: the last bucket (+Inf) as null
                "latency_buckets": [[None if b == float("inf") else b, n]
                                    for b, n in sorted(buckets.items())]}
