"""A load test the way operators run one: `make loadtest SCENARIO=rush|ramp [USERS= STOCK= DURATION=]`,
or in Locust's web UI: `make locust-ui`.

Runs Locust (loadtest/locustfile.py) against the running service (`make run`). Each test Locust
starts (headless: at once; the web UI: each START) opens a fresh campaign of the stock asked for;
when it ends (its run time, the ramp's end, STOP, Ctrl-C or SIGTERM) the campaign is closed as
`flask campaign close` closes it, the invariants are checked against Redis and the database, Locust's
HTML report is written under reports/, and a one-screen summary is printed: Locust's test_start and
test_stop events, whose listeners are in the locustfile; the figures and checks are here.

Settings (SECRET_KEY, REDIS_URL, DATABASE_URL) are the service's: config.settings, as `make run`.
"""
import argparse
import datetime as dt
import os
import signal
import subprocess
import sys
import urllib.request
from collections import Counter

from sqlalchemy import select

from coupon import db
from coupon.campaigns import close_campaign
from coupon.errors import CouponError
from loadtest.harness import ROOT

# the second post's k6 stages: users at the end of each, as a share of the peak
RAMP_SHARES = (1 / 6, 1, 1, 0)  # of the peak, at the end of each stage of the ramp
CLIMB = max(b - a for a, b in zip((0, *RAMP_SHARES), RAMP_SHARES))  # the steepest stage's rise
RUSH_STOCK = 5000  # every request of the rush is a new user: it sells out within seconds


def ramp_rate(peak, stage):
    """The ramp-up rate (users started a second) of the climb to the peak, with stages of `stage` s."""
    return CLIMB * peak / stage


def ramp_stage(peak, rate):
    """The seconds of a stage of the ramp to `peak` users that climbs at `rate` users a second."""
    return CLIMB * peak / rate


def ramp_stages(peak, rate, run_time=None):
    """The ramp as [(seconds, users at the end)]: the stages that move users each as long as the
    climb to the peak at `rate` users a second; the peak held for what `run_time` leaves of the
    whole (no run time: as long as the others, the post's equal stages)."""
    stage = ramp_stage(peak, rate)
    moves = [a != b for a, b in zip((0, *RAMP_SHARES), RAMP_SHARES)]
    held = stage if not run_time else max(0.0, (run_time - sum(moves) * stage) / moves.count(False))
    return [(stage if move else held, round(peak * share)) for move, share in zip(moves, RAMP_SHARES)]


def ramp_text(stages, rate):
    """The ramp's stages for people: users and seconds, and the whole."""
    parts, users = [], 0
    for seconds, target in stages:
        parts.append(f"held {seconds:.1f} s" if target == users else f"to {target} in {seconds:.1f} s")
        users = target
    return (f"ramp: {', '.join(parts)} (climbing {rate:g} users/s): "
            f"{sum(seconds for seconds, _ in stages):.1f} s in all")


def parse_args():
    p = argparse.ArgumentParser(description="Run a Locust scenario against the running service.")
    p.add_argument("--scenario", choices=("rush", "ramp"), default="rush")
    p.add_argument("--users", type=int, help="virtual users (ramp: the peak) [rush 500, ramp 1000]")
    p.add_argument("--stock", type=int, default=0,
                   help=f"coupons of each test's campaign [0: rush {RUSH_STOCK}, ramp half the users]")
    p.add_argument("--duration", type=int, default=30,
                   help="seconds (rush: the run; ramp: the whole ramp, 4 equal stages)")
    p.add_argument("--host", default=os.environ.get("LOADTEST_HOST", "http://127.0.0.1:8000"))
    p.add_argument("--ui", action="store_true", help="serve Locust's web UI instead")
    p.add_argument("--web-port", type=int, default=8089, help="the web UI's port [8089]")
    args = p.parse_args()
    args.users = args.users or (500 if args.scenario == "rush" else 1000)
    return args


def stock_of(scenario, stock, users):
    """The coupons of a test's campaign: `stock`, or 0 for the scenario's default."""
    return stock or (RUSH_STOCK if scenario == "rush" else max(1, users // 2))


def wait_for_service(host):
    try:
        with urllib.request.urlopen(host + "/healthz", timeout=5) as resp:
            if resp.status == 200:
                return
    except OSError as e:
        sys.exit(f"the service does not answer at {host} ({e}); start it with `make run`")


def run_locust(args):
    """Run Locust until it ends by itself or is stopped; return its exit status (the last test's
    checks: 0 all ok, 1 not)."""
    users, duration = args.users, args.duration
    # rush: every user at once; ramp: the climb's rate that makes 4 equal stages of the duration
    rate = users if args.scenario == "rush" else float(f"{ramp_rate(users, duration / len(RAMP_SHARES)):.3g}")
    name = f"{args.scenario}-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    env = dict(os.environ, SCENARIO=args.scenario, PYTHONPATH=ROOT)
    # -u, -r, -t and --stock fill in the web form's fields, which mean what their labels say
    cmd = [os.path.join(os.path.dirname(sys.executable), "locust"),
           "-f", os.path.join(ROOT, "loadtest", "locustfile.py"), "--host", args.host,
           "--loglevel", "WARNING", "-u", str(users), "-r", f"{rate:g}", "--stock", str(args.stock),
           # Locust's figures of the last test as it exits (else it prints them after our summary)
           "--json-file", f"reports/{name}"]
    if args.ui or args.scenario == "rush":  # the headless ramp ends by itself
        cmd += ["-t", f"{duration}s"]
    if args.ui:
        cmd += ["--web-host", "127.0.0.1", "--web-port", str(args.web_port)]
        print(f"Locust UI on http://localhost:{args.web_port} (host {args.host}, scenario {args.scenario}). "
              f"Each START opens a fresh campaign of the form's stock (Custom parameters; 0: "
              + (f"{RUSH_STOCK}" if args.scenario == "rush" else "half the users")
              + "); when the test ends (its run time, STOP, or Ctrl-C here) it is closed and checked "
              "here, and Ctrl-C then quits.", flush=True)
        if args.scenario == "ramp":
            print(f"The ramp: the form's users are its peak, its ramp up the climb to the peak, its run "
                  f"time (Advanced options) the whole; as filled in: "
                  f"{ramp_text(ramp_stages(users, rate, duration), rate)}.", flush=True)
        log = None
    else:
        cmd += ["--headless", "--only-summary", "--stop-timeout", "5"]
        log = open(f"reports/{name}.log", "w")
    # Locust in a process group of its own: Ctrl-C reaches this process alone, which stops Locust
    # with SIGTERM as a service manager would. One way to stop, and gevent prints no
    # KeyboardInterrupt. A second Ctrl-C kills it.
    locust = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stderr=log,
                              start_new_session=True)
    signals = []

    def stop(signum, _frame):
        signals.append(signum)
        if len(signals) == 1:
            locust.terminate()
        else:
            print("killed: its campaign may be left open (`flask campaign close ID`)", flush=True)
            locust.kill()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        status = locust.wait(timeout=None if args.ui else duration + 120)
    except subprocess.TimeoutExpired:
        stop(signal.SIGTERM, None)
        status = locust.wait()
    if log and os.path.getsize(log.name):
        print(f"Locust's warnings and errors: {log.name}")
    return status


def locust_totals(entries):
    """Locust's figures of a test from its stats entries (StatsEntry.serialize()): requests,
    failures, req/s, and latency in ms (p50, p95, p99, max)."""
    times = Counter()
    for entry in entries:
        times.update({int(ms): n for ms, n in entry["response_times"].items()})
    requests = sum(e["num_requests"] for e in entries)
    first = min((e["start_time"] for e in entries), default=0)
    last = max((e["last_request_timestamp"] or first for e in entries), default=0)

    def percentile(q):  # as Locust computes them: the time under which a share q of requests fell
        below = 0
        for ms in sorted(times):
            below += times[ms]
            if below >= q * requests:
                return ms
        return 0

    return {"requests": requests, "failures": sum(e["num_failures"] for e in entries),
            "rps": requests / (last - first) if last > first else 0.0,
            "p50": percentile(0.5), "p95": percentile(0.95), "p99": percentile(0.99),
            "max": max((e["max_response_time"] or 0 for e in entries), default=0)}


def database_tickets(svc, campaign_id):
    with svc.engine.connect() as conn:
        rows = conn.execute(select(db.coupons.c.user_id, db.coupons.c.serial)
                            .where(db.coupons.c.campaign_id == campaign_id)).all()
    return rows


def close(svc, campaign_id, said="closed: "):
    """Close the campaign (stop, drain, reconcile, release) and say what happened."""
    try:
        report = close_campaign(svc, campaign_id)
    except CouponError as e:
        return f"close failed: {e.code}: {e.message}"
    return said + "; ".join(report.lines())


def check(stock, timeline, claims, rows):
    """The invariants, as (ok, text) lines."""
    answers = Counter(outcome for _, _, outcome, _ in timeline)
    asked = {user for _, user, _, _ in timeline}
    new = {user: int(serial) for _, user, outcome, serial in timeline if outcome == "NEW"}
    expected = min(stock, len(asked))
    serials = list(claims.values())
    db_users = [u for u, _ in rows]
    db_serials = [s for _, s in rows]
    return [
        (len(claims) == expected,
         f"issued in Redis {len(claims)} = min(stock {stock}, users who asked {len(asked)}) = {expected}"),
        (len(set(serials)) == len(serials) and all(1 <= s <= stock for s in serials),
         f"distinct serials in Redis, all in 1..{stock}: {len(set(serials))} of {len(serials)}"),
        (answers["NEW"] == len(new) and all(claims.get(u) == s for u, s in new.items()),
         f"201 answers {answers['NEW']}, one per user, each matching its Redis claim"),
        (len(rows) == answers["NEW"] and dict(rows) == new,
         f"rows in the database {len(rows)} = 201 answers {answers['NEW']}, same users and serials"
         + ("" if rows else " (none yet: is the flush job running, `flask jobs run`?)")),
        (len(set(db_users)) == len(db_users) and len(set(db_serials)) == len(db_serials),
         "no duplicate user or serial in the database"),
    ]


def scrape(base_url, sample, label):
    """{label value: value} of one sample of the service's /metrics (summed over the workers);
    {} if it does not answer."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(base_url + "/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return {}
    values = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == sample:
                values[s.labels[label]] = values.get(s.labels[label], 0) + s.value
    return values


def server_latency(host):
    """{bucket bound in s: issue answers at most that slow} so far."""
    buckets = scrape(host, "coupon_issue_duration_seconds_bucket", "le")
    return {float(bound): n for bound, n in buckets.items()}


def server_line(before, after):
    """The server's own view of the run's latency: time in the worker, queueing before it not
    included; beside Locust's figures, it tells the load generator's tail from the service's."""
    if not after:
        return "server side: no figures (/metrics unreachable)"
    run = {bound: after[bound] - before.get(bound, 0) for bound in after}
    total = run.get(float("inf"), 0)
    if not total:
        return "server side: no issue answers during the run"
    p99 = min(bound for bound, n in run.items() if n >= 0.99 * total)
    return (f"server side (time in the worker, /metrics): {run[0.025] / total:.1%} under 25 ms, "
            f"{run[0.1] / total:.1%} under 100 ms, p99 <= {p99 * 1000:g} ms")


def summary(test, totals, timeline, checks, closed, server):
    """The one screen printed at the end of a test (`test`: the locustfile's Test)."""
    answers = Counter(outcome for _, _, outcome, _ in timeline)
    last_new = max((t for t, _, outcome, _ in timeline if outcome == "NEW"), default=None)
    early = sum(1 for t, _, o, _ in timeline if o == "SOLD_OUT" and last_new and t < last_new)
    first_sold_out = min((t for t, _, o, _ in timeline if o == "SOLD_OUT"), default=None)
    lines = [
        f"== loadtest {test.scenario}: campaign {test.campaign_id}, stock {test.stock}, host {test.host}",
        f"requests {totals['requests']}  failures {totals['failures']}  req/s {totals['rps']:.0f}"
        + ("" if totals["requests"] == len(timeline) else
           f"  (answers recorded: {len(timeline)}; the difference did not finish before Locust stopped)"),
        f"latency ms  p50 {totals['p50']}  p95 {totals['p95']}  p99 {totals['p99']}  max {totals['max']:.0f}",
        f"            {server}",
        "answers     " + "  ".join(f"{k} {v}" for k, v in sorted(answers.items())),
        # from the opening, as the operators' page counts
        f"issued      {answers['NEW']} " + (f"(last at +{last_new - test.opened:.2f} s)" if last_new else ""),
        f"SOLD_OUT answers received before the last coupon was handed out: {early}"
        + (f" (from +{first_sold_out - test.opened:.2f} s, {last_new - first_sold_out:.3f} s before it)"
           if early else ""),
        f"close       {closed}",
        "checks",
    ]
    lines += [f"  {'ok  ' if ok else 'FAIL'} {text}" for ok, text in checks]
    lines.append(f"report      {test.report}")
    return "\n".join(lines)


def main():
    args = parse_args()
    os.chdir(ROOT)
    os.makedirs("reports", exist_ok=True)
    wait_for_service(args.host)
    sys.exit(run_locust(args))


if __name__ == "__main__":
    main()
