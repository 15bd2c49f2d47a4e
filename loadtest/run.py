"""A load test the way operators run one: `make loadtest SCENARIO=rush|ramp [USERS= STOCK= DURATION=]`.

Creates and opens a fresh campaign, runs Locust headless against the running service (`make run`),
writes Locust's HTML report and CSVs under reports/, closes the campaign, checks the invariants
against Redis and the database, and prints a one-screen summary. With --ui it serves Locust's web
UI on http://localhost:8089 instead, and closes and checks when you stop it (Ctrl-C).

Settings (SECRET_KEY, REDIS_URL, DATABASE_URL) are the service's: config.settings, as `make run`.
"""
import argparse
import csv
import datetime as dt
import glob
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections import Counter

from sqlalchemy import select

from coupon import create_app, db
from coupon.campaigns import close_campaign
from coupon.errors import CouponError
from coupon.reconcile import redis_claims
from loadtest.harness import ROOT, open_campaign

# the second post's k6 stages: users at the end of each, as a share of the peak (equal lengths)
RAMP_SHARES = (1 / 6, 1, 1, 0)  # of the peak, at the end of each stage of the ramp
CLIMB = max(b - a for a, b in zip((0, *RAMP_SHARES), RAMP_SHARES))  # the steepest stage's rise


def ramp_rate(peak, stage):
    """The ramp-up rate (users started a second) of the climb to the peak, with stages of `stage` s."""
    return CLIMB * peak / stage


def ramp_stage(peak, rate):
    """The seconds of a stage of the ramp to `peak` users that climbs at `rate` users a second."""
    return CLIMB * peak / rate


def parse_args():
    p = argparse.ArgumentParser(description="Run a Locust scenario against the running service.")
    p.add_argument("--scenario", choices=("rush", "ramp"), default="rush")
    p.add_argument("--users", type=int, help="virtual users (ramp: the peak) [rush 500, ramp 1000]")
    p.add_argument("--stock", type=int,
                   help="coupons of the fresh campaign [rush 5000: every request is a new user, so "
                        "it sells out within seconds; ramp: half the users]")
    p.add_argument("--duration", type=int, default=30,
                   help="seconds (rush: the run; ramp: the whole ramp, 4 stages)")
    p.add_argument("--host", default=os.environ.get("LOADTEST_HOST", "http://127.0.0.1:8000"))
    p.add_argument("--ui", action="store_true", help="serve Locust's web UI on :8089 instead")
    args = p.parse_args()
    args.users = args.users or (500 if args.scenario == "rush" else 1000)
    args.stock = args.stock or (5000 if args.scenario == "rush" else max(1, args.users // 2))
    return args


def wait_for_service(host):
    try:
        with urllib.request.urlopen(host + "/healthz", timeout=5) as resp:
            if resp.status == 200:
                return
    except OSError as e:
        sys.exit(f"the service does not answer at {host} ({e}); start it with `make run`")


def run_locust(args, campaign_id, name, timeline_dir):
    users = args.users
    # rush: every user at once; ramp: the climb's rate that makes stages of duration / 4
    rate = users if args.scenario == "rush" else ramp_rate(users, args.duration / len(RAMP_SHARES))
    env = dict(os.environ, CAMPAIGN_ID=str(campaign_id), SCENARIO=args.scenario,
               USER_PREFIX=f"{name}-", TIMELINE_DIR=timeline_dir, PYTHONPATH=ROOT)
    cmd = [os.path.join(os.path.dirname(sys.executable), "locust"),
           "-f", os.path.join(ROOT, "loadtest", "locustfile.py"), "--host", args.host,
           "--html", f"reports/{name}.html", "--csv", f"reports/{name}", "--loglevel", "WARNING",
           "--json-file", f"reports/{name}", "-u", str(users), "-r", f"{rate:g}"]
    if args.ui:  # -u and -r fill in the form's fields, which mean what their labels say
        cmd += ["--web-host", "127.0.0.1", "--web-port", "8089"]
        print(f"Locust UI on http://localhost:8089 (host {args.host}, campaign {campaign_id}, "
              f"scenario {args.scenario}); Ctrl-C to stop, close the campaign and check.", flush=True)
        if args.scenario == "ramp":
            print(f"The ramp: its peak is the form's users ({users}), its climb to the peak starts "
                  f"users at the form's ramp up ({rate:g}/s); 4 stages as long as that climb.", flush=True)
        locust = subprocess.Popen(cmd, cwd=ROOT, env=env)
        try:
            locust.wait()
        except KeyboardInterrupt:  # Locust got the same Ctrl-C: it stops and writes its report
            locust.wait(timeout=60)
        return
    cmd += ["--headless"]
    if args.scenario == "rush":  # every user at once, for --duration seconds (the ramp ends itself)
        cmd += ["-t", f"{args.duration}s"]
    cmd += ["--only-summary", "--stop-timeout", "5"]
    print(f"locust {args.scenario}: {users} users, {args.duration} s, campaign {campaign_id} ...", flush=True)
    # exit status 1 only says there were failures; the summary shows them
    subprocess.run(cmd, cwd=ROOT, env=env, timeout=args.duration + 120,
                   stdout=subprocess.DEVNULL, stderr=open(f"reports/{name}.log", "w"))


def read_timeline(folder):
    rows = []
    for path in glob.glob(os.path.join(folder, "timeline-*.csv")):
        with open(path) as f:
            rows += [(float(t), user, outcome, serial) for t, user, outcome, serial in csv.reader(f)]
    return sorted(rows)


def locust_totals(name):
    """Locust's final figures, from its JSON file: requests, failures, req/s, and latency in ms
    (p50, p95, p99, max); None if Locust wrote none (it did not run, or was killed). Not from its
    stats CSV: that is rewritten every second while the test runs, and the last second's requests
    never reach it."""
    try:
        with open(f"reports/{name}.json") as f:
            entries = json.load(f)
    except (OSError, ValueError):
        return None
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


def summary(args, name, campaign_id, timeline, checks, closed, server):
    totals = locust_totals(name)
    answers = Counter(outcome for _, _, outcome, _ in timeline)
    if totals is None:
        locust = [f"Locust wrote no final figures (reports/{name}.json): stopped before it started?"]
    else:
        locust = [
            f"requests {totals['requests']}  failures {totals['failures']}  req/s {totals['rps']:.0f}"
            + ("" if totals["requests"] == len(timeline) else
               f"  (answers recorded: {len(timeline)}; the difference did not finish before Locust stopped)"),
            f"latency ms  p50 {totals['p50']}  p95 {totals['p95']}  p99 {totals['p99']}  "
            f"max {totals['max']:.0f}"]
    last_new = max((t for t, _, outcome, _ in timeline if outcome == "NEW"), default=None)
    early = sum(1 for t, _, o, _ in timeline if o == "SOLD_OUT" and last_new and t < last_new)
    first_sold_out = min((t for t, _, o, _ in timeline if o == "SOLD_OUT"), default=None)
    first = timeline[0][0] if timeline else 0
    lines = [
        f"== loadtest {args.scenario}: campaign {campaign_id}, stock {args.stock}, host {args.host}",
        *locust,
        f"            {server}",
        "answers     " + "  ".join(f"{k} {v}" for k, v in sorted(answers.items())),
        f"issued      {sum(1 for o in answers.elements() if o == 'NEW')} "
        + (f"(last at +{last_new - first:.2f} s)" if last_new else ""),
        f"SOLD_OUT answers received before the last coupon was handed out: {early}"
        + (f" (from +{first_sold_out - first:.2f} s, {last_new - first_sold_out:.3f} s before it)"
           if early else ""),
        f"close       {closed}",
        "checks",
    ]
    lines += [f"  {'ok  ' if ok else 'FAIL'} {text}" for ok, text in checks]
    lines.append(f"report      reports/{name}.html, reports/{name}_*.csv")
    return "\n".join(lines)


def main():
    args = parse_args()
    os.chdir(ROOT)
    os.makedirs("reports", exist_ok=True)
    wait_for_service(args.host)
    app = create_app()
    svc = app.extensions["coupon"]
    name = f"{args.scenario}-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    campaign_id = open_campaign(svc, args.stock, f"loadtest {name}")
    timeline_dir = os.path.join("reports", f"{name}-timeline")
    latency_before = server_latency(args.host)
    try:
        run_locust(args, campaign_id, name, timeline_dir)
        time.sleep(0.5)  # let answers in flight land before the set is read
        claims = {user: claim.serial for user, claim in
                  redis_claims(svc.redis, svc.keys(campaign_id))[0].items()}
        server = server_line(latency_before, server_latency(args.host))
    finally:
        closed = close(svc, campaign_id)
    timeline = read_timeline(timeline_dir)
    checks = check(args.stock, timeline, claims, database_tickets(svc, campaign_id))
    print(summary(args, name, campaign_id, timeline, checks, closed, server))
    shutil.rmtree(timeline_dir, ignore_errors=True)
    svc.engine.dispose()
    sys.exit(0 if all(ok for ok, _ in checks) else 1)


if __name__ == "__main__":
    main()
