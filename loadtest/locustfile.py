"""Locust scenarios of an opening minute. `make loadtest` / `make locust-ui` run them for you.

    SCENARIO=rush locust -f loadtest/locustfile.py --host http://127.0.0.1:8000 [--stock 300]

Each test (headless: the run; in the web UI: each START) opens a fresh campaign when it starts,
of --stock coupons (the form's Custom parameters; 0: half the users for the ramp, 5,000 for the
rush). When it ends (its run time, the ramp's end, STOP, Ctrl-C or SIGTERM), the campaign is
closed as `flask campaign close` closes it, the invariants are checked against Redis and the
database, Locust's HTML report goes to reports/, and a summary is printed (loadtest/run.py).
The exit status is the last test's checks: 0 all ok, 1 not. Locust's test_start and test_stop
events do it, so every way a test starts or ends does.

rush: a flood of distinct users, like the Locust run of the first post (wait_time 0): every
      request comes from a user who has not asked before, so the answers are 201 until the stock
      is gone and 409 SOLD_OUT after. (A virtual user repeating its own id would be answered 429 by
      the per-user rate limit, RATE_LIMIT per RATE_LIMIT_WINDOW, which is right but not a rush.)
ramp: the k6 stages of the second post (10 s to 1/6 of the peak, 10 s to the peak, 10 s at the peak,
      10 s down to 0) with a 1 s think time: the peak is -u (the form's users), the climb to it
      runs at -r (the form's ramp up) and sets how long each stage that moves users lasts, and -t
      (the form's run time) is the whole, the peak held for what the others leave (no run time:
      as long as they). Each virtual user is one user who asks again after each answer (200 once
      it holds a ticket).

Tokens are minted here as `flask token` mints them: the project's Signer with the service's settings.
201, 200 and 409 SOLD_OUT are successes; anything else is a failure.

Environment: SCENARIO (rush), USER_PREFIX (user ids, default lt-), and the service's settings
(SECRET_KEY, REDIS_URL, DATABASE_URL: config.settings, as `make run`).
"""
import datetime as dt
import functools
import gc
import itertools
import json
import os
import time

from locust import FastHttpUser, LoadTestShape, constant, events, task
from locust.html import get_html_report

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from coupon import create_app, db
from coupon.clock import to_ms
from coupon.health import readiness
from coupon.queries import campaign_row
from coupon.reconcile import redis_claims
from coupon.signing import Signer
from loadtest.harness import ROOT, open_campaign
from loadtest.run import (
    check, close, database_tickets, locust_totals, ramp_stages, ramp_text, server_latency, server_line,
    stock_of, summary,
)

SCENARIO = os.environ.get("SCENARIO", "rush")
if SCENARIO not in ("rush", "ramp"):
    raise SystemExit(f"SCENARIO must be rush or ramp, not {SCENARIO!r}")
USER_PREFIX = os.environ.get("USER_PREFIX", "lt-")

_numbers = itertools.count(1)
_timeline = []  # (received at, user id, outcome, serial) of the test under way


class Test:
    """The test under way: its campaign, opened when it started."""

    def __init__(self, options, host):
        self.scenario, self.host = SCENARIO, host
        self.stock = stock_of(SCENARIO, options.stock, options.num_users)
        started = dt.datetime.now()
        self.name = f"{SCENARIO}-{started.strftime('%Y%m%d-%H%M%S')}"
        self.report = os.path.join("reports", f"{self.name}.html")
        self.latency_before = server_latency(host)
        # the campaigns row keeps its opening to the second, and the operators' page counts from
        # there: opened on a whole second, the page's "sold out after" and ours are the same
        time.sleep(1 - time.time() % 1)
        self.campaign_id = open_campaign(service(), self.stock, f"loadtest {self.name}")
        self.opened = to_ms(campaign_row(service().engine, self.campaign_id).opens_at) / 1000


test = None  # the Test under way, or the last one


@events.init_command_line_parser.add_listener
def stock_option(parser):
    # shown in the web form (Custom parameters); required there: an empty field is no number
    parser.add_argument("--stock", type=int, default=0, is_required=True,
                        help="coupons of the campaign each START opens; 0: half the users for "
                             "the ramp, 5000 for the rush")


class CouponUser(FastHttpUser):
    wait_time = constant(0) if SCENARIO == "rush" else constant(1)

    def on_start(self):
        self.path = f"/api/v1/campaigns/{test.campaign_id}/issue"
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
        """The second post's k6 stages (RAMP_SHARES of the peak at each stage's end), shaped by
        the web form's users, ramp up and run time (or -u, -r and -t): loadtest.run.ramp_stages."""

        use_common_options = True  # the form's fields mean what their labels say

        def tick(self):
            options = self.runner.environment.parsed_options
            t, start, users = self.get_run_time(), 0.0, 0
            for seconds, target in ramp_stages(options.num_users, options.spawn_rate, options.run_time):
                if t < start + seconds:  # move from `users` to `target` over this stage
                    return target, max(1.0, abs(target - users) / seconds)
                start, users = start + seconds, target
            return None


@functools.cache
def app():
    """The service's app, with its settings and gateways (Redis, the database): at the first use."""
    return create_app()


def service():
    return app().extensions["coupon"]


@functools.cache
def signer():
    """The service's Signer (HS256 under its AUTH_JWT_SECRET or SECRET_KEY, with its issuer and
    audience)."""
    return Signer.from_config(app().config)


@events.init.add_listener
def reach_the_service(**_):
    """Refuse to start without the service's Redis and database, before any form is filled in."""
    svc = service()
    problems = [f"{name} {state}" for name, state in readiness(svc).items() if state != "ok"]
    try:
        with svc.engine.connect() as conn:
            conn.execute(select(db.campaigns.c.id).limit(1))
    except SQLAlchemyError as e:
        problems.append(f"no campaigns table ({type(e).__name__})")
    if problems:
        raise SystemExit(f"the service's Redis or database: {'; '.join(problems)}. Are REDIS_URL and "
                         "DATABASE_URL those of `make run`?")


@events.test_start.add_listener
def open_sale(environment, **_):
    """A fresh campaign for each test, opened as it starts, of the stock the form asks for."""
    global test
    options = environment.parsed_options
    _timeline.clear()
    test = Test(options, environment.host)
    if environment.shape_class:  # its clock starts with the sale
        environment.shape_class.reset_time()
    if SCENARIO == "ramp":
        how = ramp_text(ramp_stages(options.num_users, options.spawn_rate, options.run_time),
                        options.spawn_rate)
    else:
        how = f"rush: {options.num_users} users at once (ramp up {options.spawn_rate:g}/s), each request a new user"
    print(f"campaign {test.campaign_id} opened: stock {test.stock}; {how}. When the test ends it is "
          f"closed here, as `flask campaign close {test.campaign_id}` would, and checked.", flush=True)


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
def close_and_check(environment, **_):
    """Close the test's campaign, check it, write the report and print the summary."""
    if test is None:  # Locust quits before any test
        return
    svc = service()
    time.sleep(0.5)  # let answers in flight land before the set is read
    claims = {user: claim.serial for user, claim in
              redis_claims(svc.redis, svc.keys(test.campaign_id))[0].items()}
    server = server_line(test.latency_before, server_latency(test.host))
    closed = close(svc, test.campaign_id)
    checks = check(test.stock, _timeline, claims, database_tickets(svc, test.campaign_id))
    stats = environment.runner.stats
    totals = locust_totals([entry.serialize() for entry in stats.entries.values()])
    os.makedirs(os.path.join(ROOT, "reports"), exist_ok=True)
    with open(os.path.join(ROOT, test.report), "w", encoding="utf-8") as f:
        f.write(get_html_report(environment, show_download_link=False))
    print(summary(test, totals, sorted(_timeline), checks, closed, server), flush=True)
    environment.process_exit_code = 0 if all(ok for ok, _ in checks) else 1


@events.quitting.add_listener
def end_the_test(environment, **_):
    """A test still running when Locust quits (SIGTERM) ends here: Locust takes its exit status
    from process_exit_code before it stops the runner itself."""
    environment.runner.stop()
    if test is None:
        print("no test was started: no campaign opened", flush=True)
