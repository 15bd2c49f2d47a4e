"""Locust scenarios of an opening minute. `make loadtest` / `make locust-ui` run them for you.

    CAMPAIGN_ID=7 SCENARIO=rush locust -f loadtest/locustfile.py --host http://127.0.0.1:8000

rush: a flood of distinct users, like the Locust run of the first post (wait_time 0): every
      request comes from a user who has not asked before, so the answers are 201 until the stock
      is gone and 409 SOLD_OUT after. (A virtual user repeating its own id would be answered 429 by
      the per-user rate limit, RATE_LIMIT per RATE_LIMIT_WINDOW, which is right but not a rush.)
ramp: the k6 stages of the second post (10 s to 1/6 of the peak, 10 s to the peak, 10 s at the peak,
      10 s down to 0) with a 1 s think time, scaled by the peak (-u, or the web form's users) and
      the rate of the climb to it (-r, the form's ramp up); each virtual user is one user who asks
      again after each answer (200 once it holds a ticket).

Tokens are minted here as `flask token` mints them: the project's Signer with the service's settings.
201, 200 and 409 SOLD_OUT are successes; anything else is a failure. With TIMELINE_DIR set, each
locust process writes every answer (time received, user, outcome, serial) to a CSV there, which
loadtest/run.py reads for its checks.

Environment: CAMPAIGN_ID (required), SCENARIO, PEAK_USERS and RAMP_STAGE (seconds a stage, 10;
the ramp's, when no -u is given),
USER_PREFIX (user ids, default lt-), TIMELINE_DIR.
"""
import csv
import functools
import gc
import itertools
import json
import os
import time

from locust import FastHttpUser, LoadTestShape, constant, events, task

from flask import Config

from config import settings
from coupon.signing import Signer
from loadtest.run import RAMP_SHARES, ramp_stage

SCENARIO = os.environ.get("SCENARIO", "rush")
if SCENARIO not in ("rush", "ramp"):
    raise SystemExit(f"SCENARIO must be rush or ramp, not {SCENARIO!r}")
CAMPAIGN_ID = os.environ.get("CAMPAIGN_ID", "1")
PEAK_USERS = int(os.environ.get("PEAK_USERS", "1000"))
RAMP_STAGE = float(os.environ.get("RAMP_STAGE", "10"))
USER_PREFIX = os.environ.get("USER_PREFIX", "lt-")
TIMELINE_DIR = os.environ.get("TIMELINE_DIR")

_numbers = itertools.count(1)
_timeline = []  # (received at, user id, outcome, serial): appended in memory, written at the end


class CouponUser(FastHttpUser):
    wait_time = constant(0) if SCENARIO == "rush" else constant(1)

    def on_start(self):
        self.path = f"/api/v1/campaigns/{CAMPAIGN_ID}/issue"
        self.next_user()

    def next_user(self):
        # the pid keeps users of several locust processes apart; minting costs ~10 us
        self.user_id = f"{USER_PREFIX}{os.getpid()}-{next(_numbers)}"
        self.headers = {"Authorization": "Bearer " + signer().mint(self.user_id, 6 * 3600)}

    @task
    def issue(self):
        with self.client.post(self.path, headers=self.headers, name="/api/v1/campaigns/[id]/issue",
                              catch_response=True) as resp:
            status, serial = resp.status_code, ""
            if status in (200, 201):
                outcome = "NEW" if status == 201 else "HELD"
                serial = json.loads(resp.content)["serial"]
            elif status == 409 and b'"SOLD_OUT"' in (resp.content or b""):
                outcome = "SOLD_OUT"
                resp.success()  # an expected answer, not a failure
            else:
                outcome = f"HTTP_{status}"
                resp.failure(f"{status}: {(resp.text or '')[:200]}")
            _timeline.append((time.time(), self.user_id, outcome, serial))
        if SCENARIO == "rush":
            self.next_user()  # the next request comes from a user who has not asked before


if SCENARIO == "ramp":

    class OpeningRamp(LoadTestShape):
        """The second post's k6 stages (RAMP_SHARES of the peak at each stage's end), each as long
        as the climb to the peak takes at the ramp-up rate. The peak and that rate are the web
        form's fields, or -u and -r (`make loadtest` and `make locust-ui` fill them in); without
        -u, PEAK_USERS and RAMP_STAGE."""

        use_common_options = True  # the form's users and ramp up mean what their labels say

        def tick(self):
            options = self.runner.environment.parsed_options
            peak = options.num_users or PEAK_USERS
            stage = ramp_stage(peak, options.spawn_rate) if options.num_users else RAMP_STAGE
            t = self.get_run_time()
            start, users = 0.0, 0
            for i, share in enumerate(RAMP_SHARES):
                end, target = stage * (i + 1), round(peak * share)
                if t < end:  # move from `users` to `target` over this stage
                    return target, max(1.0, abs(target - users) / (end - start))
                start, users = end, target
            return None


@functools.cache
def signer():
    """The service's Signer (HS256 under its AUTH_JWT_SECRET or SECRET_KEY, with its issuer and
    audience), made at the first use, not at import."""
    return Signer.from_config(settings.load_into(Config(os.getcwd())))


@events.test_start.add_listener
def no_collector_pauses(**_):
    """Python's full collections paused this process, and so every request in flight, for 29-78 ms
    at 1000 users: Locust's own tail, not the service's (BENCHMARKS.md). A load test's garbage is
    freed by reference counting; what cycles it makes wait for the collection at the end."""
    gc.disable()


@events.test_stop.add_listener
def collect_again(**_):
    gc.enable()
    gc.collect()


@events.test_stop.add_listener
def write_timeline(**_):
    if TIMELINE_DIR and _timeline:
        os.makedirs(TIMELINE_DIR, exist_ok=True)
        with open(os.path.join(TIMELINE_DIR, f"timeline-{os.getpid()}.csv"), "a", newline="") as f:
            csv.writer(f).writerows(_timeline)
        _timeline.clear()
